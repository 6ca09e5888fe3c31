"""Streamlit flows with AppTest on the bundled demo."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"


def test_home_shows_the_demo_card(demo_fitted):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    assert not at.exception
    labels = {m.label: m.value for m in at.metric}
    assert labels["Dataset"] == "fashion-mnist" and labels["Algorithm"] == "ProtoNet"
    assert labels["Test accuracy"].endswith("%") and float(labels["Test accuracy"][:-1]) > 50
    assert at.session_state["model_path"].endswith("protonet-fashion-mnist")
    assert any(m.value.startswith("**Influence fit:** cached") for m in at.markdown)


def test_home_reports_a_bad_folder(tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    at.sidebar.radio(key="home_source").set_value("Run folder").run()
    at.sidebar.text_input(key="home_folder").input(str(tmp_path)).run()
    assert not at.exception
    assert at.error and "Cannot open" in at.error[0].value


def test_tasks_page_shows_thumbnails_with_superclasses():
    at = AppTest.from_file(str(REPO / "pages" / "1_Tasks.py"), default_timeout=120)
    at.session_state["model_path"] = str(DEMO)
    at.run()
    assert not at.exception
    at.number_input(key="tasks_id").set_value(5).run()
    assert not at.exception
    images = at.get("image")
    captions = [img.proto.imgs[0].caption for img in images]
    assert at.query_params["task"] in (["5"], "5")
    assert len(images) == 3 and all(img.proto.imgs[0].url.endswith(".png") for img in images)
    assert all(c.endswith(("(tops)", "(footwear)", "(other)")) for c in captions), captions


def _zip_of(folder: Path, names=None) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(folder.iterdir()):
            if f.is_file() and (names is None or f.name in names):
                z.write(f, f"run/{f.name}")
    return buf.getvalue()


def _upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.sidebar.radio(key="home_source").set_value("Upload").run()
    return at.sidebar.file_uploader(key="home_upload").upload(name, data, "application/zip").run()


def test_upload_of_a_checkpoint_shows_its_card(tmp_path, monkeypatch):
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    at = _upload(AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run(), "demo.zip", _zip_of(DEMO))
    assert not at.exception and not at.error
    labels = {m.label: m.value for m in at.metric}
    assert labels["Algorithm"] == "ProtoNet" and labels["Network"].endswith("7,248 params")
    assert Path(at.session_state["model_path"]).parent == tmp_path / "cache" / "uploads"
    assert any(m.value.startswith("**Influence fit:** not fitted yet") for m in at.markdown)  # empty cache here


def test_bad_uploads_give_a_clear_error_and_nothing_is_unpickled(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in DEMO.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes(pickle.dumps(Exploit()))
    cases = {"not-a-zip.zip": b"hello", "pickle.zip": _zip_of(bad), "no-meta.zip": _zip_of(DEMO, {"model.safetensors"})}
    for name, data in cases.items():
        at = _upload(AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run(), name, data)
        assert not at.exception, name
        assert at.error and at.error[0].value.startswith("Cannot use this upload"), name
        assert not at.metric, name  # no card for a refused file
    assert not marker.exists()
