"""Streamlit flows with AppTest on the bundled demo."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from helpers import upload_to_home as _upload  # tests/helpers.py
from helpers import zip_of as _zip_of

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"


def test_home_shows_the_demo_card(demo_fitted):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    assert not at.exception
    labels = {m.label: m.value for m in at.metric}
    assert labels["Dataset"] == "fashion-mnist" and labels["Algorithm"] == "ProtoNet"
    assert labels["Test accuracy"].endswith("%") and float(labels["Test accuracy"][:-1]) > 50
    assert at.session_state["model_path"].endswith("protonet-fashion-mnist")
    assert any(m.value.startswith("**Influence fit:** ready") for m in at.markdown)


def test_home_reports_a_bad_folder(tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    at.sidebar.radio(key="home_source").set_value("Run folder").run()
    at.sidebar.text_input(key="home_folder").input(str(tmp_path)).run()
    assert not at.exception
    assert at.error and "Cannot open" in at.error[0].value
    # the failed path does not silently change the model: the page says which one stays in use
    assert any("Still using the previous model" in w.value and "protonet-fashion-mnist" in w.value for w in at.warning)
    assert at.session_state["model_path"].endswith("protonet-fashion-mnist")


def test_home_keeps_the_sessions_model_and_mirrors_it_in_the_url(demo_fitted):
    """Coming back to Home with the MAML demo chosen must not switch back to the default demo."""
    maml = REPO / "assets" / "demo" / "maml-fashion-mnist"
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.session_state["model_path"] = str(maml)
    at.run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Algorithm"] == "MAML"
    assert at.sidebar.selectbox(key="home_demo").value == "maml-fashion-mnist"
    assert at.session_state["model_path"] == str(maml)
    assert at.query_params["model"] in (["maml-fashion-mnist"], "maml-fashion-mnist")


def test_a_shared_link_opens_its_model_and_test_task(demo_fitted):
    """?model=…&test=… on a fresh session (a shared link) selects both, on every page that uses them."""
    for page in ("2_Explain.py", "5_Compare.py"):
        at = AppTest.from_file(str(REPO / "views" / page), default_timeout=300)
        at.query_params["model"] = "protonet-fashion-mnist"
        at.query_params["test"] = "42"
        at.run()
        assert not at.exception, (page, at.exception)
        assert at.session_state["test_task"] == 42 and at.number_input(key="_test_task_input").value == 42, page
        assert any("**Test task:** 42" in m.value for m in at.sidebar.markdown), page


def test_tasks_page_shows_thumbnails_with_superclasses():
    at = AppTest.from_file(str(REPO / "views" / "1_Tasks.py"), default_timeout=120)
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


def test_upload_of_a_checkpoint_shows_its_card(tmp_path, monkeypatch):
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    at = _upload(AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run(), "demo.zip", _zip_of(DEMO))
    assert not at.exception and not at.error
    labels = {m.label: m.value for m in at.metric}
    assert labels["Algorithm"] == "ProtoNet" and labels["Network"].endswith("7,248 weights")
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
        # the refused file never becomes the model: the previous one stays, and the page says so
        assert at.session_state["model_path"] == str(DEMO), name
        assert any("Still using the previous model" in w.value for w in at.warning), name
    assert not marker.exists()


def test_home_card_says_a_model_was_edited(demo_fitted, tmp_path):
    """An edited checkpoint (saved by the Edit page / `edit --out`) says so on its card."""
    from metainf_core.edit import EditSpec, edited_params, save_edited_checkpoint
    from metainf_core.fits import fit_influence
    from metainf_core.service import open_run
    from ui import DEFAULT_INFLUENCE

    run = open_run(DEMO)
    params = edited_params(run, fit_influence(run, DEFAULT_INFLUENCE), EditSpec(block=(3, 7), xi_block=-2.0))
    out = save_edited_checkpoint(run, params, tmp_path / "edited", {"block": [3, 7], "xi_block": -2.0, "enhance": [], "xi_enhance": 0.0})
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.session_state["model_path"] = str(out)
    at.run()
    assert not at.exception, at.exception
    assert at.sidebar.radio(key="home_source").value == "Run folder"
    assert any("Edited model" in i.value and "2 training tasks blocked (ξ = -2)" in i.value for i in at.info), [i.value for i in at.info]


def test_demos_ship_their_training_snapshots_and_landscape(tmp_path, monkeypatch):
    """The Landscape page needs ω at each checkpoint: both demos carry them, and their default
    diagnostics, so on a fresh clone (empty cache) the page shows the curves without computing."""
    from metainf_core.diagnostics import DiagnosticsConfig, history_snapshots, load_cached_diagnostics
    from metainf_core.service import open_run

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path))
    for demo in ("protonet-fashion-mnist", "maml-fashion-mnist"):
        steps = [step for step, _ in history_snapshots(REPO / "assets" / "demo" / demo)]
        assert steps == list(range(50, 601, 50)), (demo, steps)
        rows, total = load_cached_diagnostics(open_run(REPO / "assets" / "demo" / demo), DiagnosticsConfig(num_tasks=16))
        assert total == len(rows) == 12 and [r.step for r in rows] == steps, demo
        at = AppTest.from_file(str(REPO / "views" / "6_Landscape.py"), default_timeout=120)
        at.session_state["model_path"] = str(REPO / "assets" / "demo" / demo)
        at.run()
        assert not at.exception, at.exception
        assert not any(b.key == "landscape_compute" for b in at.button) and len(at.get("plotly_chart")) >= 2, demo


def test_an_unknown_link_says_which_value_and_what_is_shown_instead(demo_fitted):
    """?model=nonsense and ?test=99999 on a shared link: the visitor is told, not silently redirected."""
    at = AppTest.from_file(str(REPO / "views" / "2_Explain.py"), default_timeout=300)
    at.query_params["model"] = "nonsense"
    at.query_params["test"] = "99999"
    at.run()
    assert not at.exception, at.exception
    said = [w.value for w in at.warning]
    assert any(w.startswith("The link asks for the model “nonsense”") and "“protonet-fashion-mnist” instead" in w for w in said), said
    assert "The link asks for test task “99999”, but this model's test tasks are 0–127; showing test task 127 instead." in said
    assert at.session_state["test_task"] == 127 and at.query_params["test"] in (["127"], "127")
    at.run()  # told once: the link now names what is shown
    assert not at.warning


def test_home_tells_about_an_unknown_model_link_and_counts_corrupted_tasks(demo_fitted):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.query_params["model"] = "nonsense"
    at.run()
    assert not at.exception, at.exception
    assert any("“nonsense”" in w.value for w in at.warning)
    assert any(m.value.startswith("**Tasksets:** 512 training tasks (64 of them pure-noise tasks) · ") for m in at.markdown)


def test_shuffled_label_tasks_are_described_as_the_taskset_records_them(monkeypatch):
    """Tasksets mark them "label_flip" (tasks.CORRUPTIONS): the description must not fall through to the labels."""
    from types import SimpleNamespace

    import ui

    view = SimpleNamespace(class_names=["Trouser", "Bag"], superclasses=["other", "other"], corruption="label_flip")
    monkeypatch.setattr(ui, "get_run", lambda path: None)
    monkeypatch.setattr(ui, "task_view", lambda run, split, task_id: view)
    assert ui.describe_task("run", "train", 3) == "real images with shuffled labels: Trouser (other), Bag (other)"


def test_tasks_page_names_a_noise_task_in_words():
    from metainf_core.service import open_run

    noise = int(open_run(DEMO).train_tasks.ids_with("noise")[0])
    at = AppTest.from_file(str(REPO / "views" / "1_Tasks.py"), default_timeout=120)
    at.session_state["model_path"] = str(DEMO)
    at.run()
    at.radio(key="tasks_split").set_value("train").run()
    at.number_input(key="tasks_id").set_value(noise).run()
    assert not at.exception, at.exception
    assert at.subheader[0].value == f"Train task {noise} · a pure-noise task"  # not "corrupted: noise"
    assert any(c.value.startswith("Planted on purpose") and "random images" in c.value for c in at.caption)
