"""Checkpoints: round trip, learn2learn prefixes, and refusal of unsafe or damaged files."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from metainf_core.checkpoint import MODEL_FILE, load_checkpoint, load_tensors, read_meta
from metainf_core.exceptions import CheckpointError, UnsafeFileError
from metainf_core.service import open_run

from helpers import run_cli  # tests/helpers.py


def _info(path, python_exe=None):
    """``info PATH``: as a subprocess (the real ``python -m`` entry point) when ``python_exe`` is
    given, else in this process (tests/helpers.run_cli, no 3 s import of torch)."""
    if python_exe is None:
        return run_cli("info", path)
    return subprocess.run([python_exe, "-m", "metainf_core", "info", str(path)], capture_output=True, text=True, timeout=120)


def test_round_trip_and_info(synthetic_run, python_exe):
    ckpt = load_checkpoint(synthetic_run)
    run = open_run(synthetic_run)
    for k, v in dict(run.model.named_parameters()).items():
        assert ckpt.params[k].shape == v.shape
    assert ckpt.num_parameters == 63 and ckpt.meta["num_parameters"] == 63
    # the recorded test accuracy is reproduced by re-evaluating the loaded checkpoint
    assert run.evaluate().summary()["accuracy"] == pytest.approx(ckpt.meta["test"]["accuracy"], abs=1e-6)
    out = _info(synthetic_run, python_exe)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["algorithm"] == "maml" and info["task_config"]["train_tasks"] == 48
    assert {"torch", "learn2learn"} <= set(info["versions"])
    assert 0 <= info["test"]["accuracy"] <= 1 and info["test"]["accuracy_ci95"] > 0
    ev = subprocess.run([python_exe, "-m", "metainf_core", "evaluate", str(synthetic_run), "--train"], capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["test"]["accuracy"] == pytest.approx(info["test"]["accuracy"], abs=1e-6)
    assert result["test"]["num_tasks"] == 16 and result["train"]["num_tasks"] == 48


def test_evaluate_per_task_on_chosen_tasks(synthetic_run):
    """`evaluate DIR --split train --tasks 0,5,7 --per-task`: each task's adapted query loss and
    accuracy, as `Run.evaluate` gives them; an unknown task id exits 2 with one line."""
    from metainf_core.service import open_run

    cmd = ["evaluate", str(synthetic_run), "--split", "train", "--tasks", "0,5,7", "--per-task"]
    ev = run_cli(*cmd)  # in this process (tests/helpers.py)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert set(result) == {"train"} and result["train"]["num_tasks"] == 3
    rows = result["train"]["tasks"]
    direct = open_run(synthetic_run).evaluate(split="train", task_ids=[0, 5, 7])
    assert [r["id"] for r in rows] == [0, 5, 7]
    # same code, maybe another thread count (batched vs one call): float32 losses agree to rounding, ~1e-7
    assert [r["loss"] for r in rows] == pytest.approx(direct.loss.tolist(), rel=1e-5)
    assert [r["accuracy"] for r in rows] == pytest.approx(direct.accuracy.tolist(), abs=1e-6)
    bad = run_cli(*cmd[:-3], "--tasks", "0,480")
    assert bad.returncode == 2 and "480" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_info_refuses_a_crafted_pickle_without_running_it(tmp_path, python_exe):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name, payload in (("model.safetensors", pickle.dumps(Exploit())), ("evil.pt", pickle.dumps(Exploit()))):
        bad = tmp_path / "ckpt" / name
        bad.parent.mkdir(exist_ok=True)
        bad.write_bytes(payload)
        out = _info(bad, python_exe)
        assert out.returncode != 0
        assert "pickle" in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert not marker.exists()
    with pytest.raises(UnsafeFileError):
        load_tensors(tmp_path / "ckpt" / "evil.pt")
    # torch.save archives (zip) are refused too
    torch.save({"w": torch.zeros(2)}, tmp_path / "zip.pt")
    with pytest.raises(UnsafeFileError):
        load_tensors(tmp_path / "zip.pt")


def test_truncated_missing_and_mismatched_files(synthetic_run, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(synthetic_run, d)
    data = (d / MODEL_FILE).read_bytes()
    (d / MODEL_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_meta(d)
    out = _info(d)
    assert out.returncode != 0 and "truncated" in out.stderr
    # same size, altered bytes: caught by the content hash in meta.json
    altered = bytearray(data)
    altered[-1] ^= 0xFF
    (d / MODEL_FILE).write_bytes(bytes(altered))
    with pytest.raises(CheckpointError, match="hash"):
        read_meta(d)
    (d / MODEL_FILE).unlink()
    assert _info(d).returncode != 0
    assert _info(tmp_path / "nope").returncode != 0
    # weights of another shape than meta.json records
    shutil.copytree(synthetic_run, tmp_path / "shape")
    meta = json.loads((tmp_path / "shape" / "meta.json").read_text())
    t = load_tensors(tmp_path / "shape" / MODEL_FILE)
    first = next(iter(t))
    t[first] = torch.zeros(7, 7)
    save_file(t, str(tmp_path / "shape" / MODEL_FILE))
    meta["hashes"].pop(MODEL_FILE)
    (tmp_path / "shape" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "shape")


def test_learn2learn_module_prefix_loads(synthetic_run, tmp_path):
    import learn2learn as l2l

    run = open_run(synthetic_run)
    run.model.load_state_dict({k: v for k, v in run.checkpoint.params.items()})
    wrapped = l2l.algorithms.MAML(run.model, lr=0.4)
    state = {k: v for k, v in wrapped.state_dict().items()}
    assert all(k.startswith("module.") for k in state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "l2l.safetensors"))
    loaded = load_tensors(tmp_path / "l2l.safetensors")
    assert set(loaded) == set(run.checkpoint.params)
    for k in loaded:
        torch.testing.assert_close(loaded[k], run.checkpoint.params[k])


def _zip(files: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_import_uploaded_checkpoint_zip(synthetic_run, tmp_path):
    from metainf_core.checkpoint import import_checkpoint_zip

    good = _zip({f"run/{p.name}": p.read_bytes() for p in synthetic_run.iterdir() if p.is_file()})
    dest = import_checkpoint_zip(good, tmp_path / "uploads")
    assert load_checkpoint(dest).num_parameters == 63
    assert open_run(dest).evaluate().summary()["accuracy"] == pytest.approx(read_meta(synthetic_run)["test"]["accuracy"], abs=1e-6)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    files = {p.name: p.read_bytes() for p in synthetic_run.iterdir() if p.is_file()}
    bad_cases = {
        "pickle": {**files, "model.safetensors": pickle.dumps(Exploit())},
        "lacks": {k: v for k, v in files.items() if k != "meta.json"},
        "hash": {**files, "model.safetensors": files["model.safetensors"][:-4] + b"\x00\x00\x00\x00"},
    }
    for reason, content in bad_cases.items():
        with pytest.raises(CheckpointError, match=reason):
            import_checkpoint_zip(_zip(content), tmp_path / "uploads")
    with pytest.raises(CheckpointError, match="not a .zip"):
        import_checkpoint_zip(b"not a zip at all", tmp_path / "uploads")
    with pytest.raises(CheckpointError, match="limit"):
        import_checkpoint_zip(good, tmp_path / "uploads", max_bytes=1000)
    assert not marker.exists()
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == [dest.name]  # failed uploads leave nothing


def test_one_exporter_zips_an_edited_run_that_imports_back(synthetic_run, tmp_path):
    """edit.edited_checkpoint_zip (the Edit and Audit pages' download) -> checkpoint.import_checkpoint_zip:
    the same weights, tasksets and edit record come back, every file under the folder name."""
    import io
    import zipfile

    from metainf_core.checkpoint import import_checkpoint_zip, run_folder_zip
    from metainf_core.edit import edited_checkpoint_zip

    run = open_run(synthetic_run)
    params = {k: v + 0.25 for k, v in run.params.items()}  # any ω' other than ω̂
    record = {"block": [1, 2], "xi_block": -1.0, "enhance": [], "xi_enhance": 0.0, "test": run.evaluate(params).summary()}
    data = edited_checkpoint_zip(run, params, record, "cleaned")
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert {"cleaned/model.safetensors", "cleaned/meta.json", "cleaned/train_tasks.json", "cleaned/test_tasks.json"} <= set(names)
    assert all(n.startswith("cleaned/") and n.count("/") == 1 for n in names)
    back = open_run(import_checkpoint_zip(data, tmp_path / "uploads"))
    for k in params:  # safetensors stores the float32 weights as they are: a file round trip, no arithmetic
        torch.testing.assert_close(back.params[k], params[k], rtol=0, atol=0)
    assert back.meta["edit"]["block"] == [1, 2] and back.meta["edited_from"] == str(synthetic_run)
    assert back.train_tasks.fingerprint() == run.train_tasks.fingerprint()
    assert back.evaluate().summary()["accuracy"] == pytest.approx(record["test"]["accuracy"], abs=1e-6)
    plain = run_folder_zip(synthetic_run, "run")  # the original folder, zipped as it is
    assert load_checkpoint(import_checkpoint_zip(plain, tmp_path / "plain")).num_parameters == 63
