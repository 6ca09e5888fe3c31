"""Meta-training: the loss goes down, accuracy beats chance, and a killed run resumes exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from metainf_core.checkpoint import load_checkpoint
from metainf_core.config import TaskConfig, TrainConfig
from metainf_core.exceptions import ConfigError
from metainf_core.train import meta_batch_ids, train


def test_training_lowers_meta_loss(synthetic_run):
    meta = load_checkpoint(synthetic_run).meta
    curve = meta["curve"]
    first, last = np.mean([c["loss"] for c in curve[:5]]), np.mean([c["loss"] for c in curve[-5:]])
    assert last < 0.8 * first, (first, last)
    assert meta["complete"] and meta["step"] == 150
    assert meta["test"]["accuracy"] > 1 / 3 + 0.1  # 3-way chance is 1/3


def test_protonet_trains_on_fashion_mnist(tmp_path):
    task_cfg = TaskConfig(dataset="fashion-mnist", ways=3, shots=5, queries=5, train_tasks=64, test_tasks=32)
    train_cfg = TrainConfig(algo="protonet", arch="conv4", filters=8, steps=30, meta_batch=8, checkpoint_every=15)
    meta = load_checkpoint(train(task_cfg, train_cfg, tmp_path / "pn", progress=False, device="cpu")).meta
    assert meta["test"]["accuracy"] > 0.5, meta["test"]


def test_meta_batches_are_a_function_of_seed_and_step():
    a = meta_batch_ids(100, 32, seed=0, step=5)
    assert len(set(a.tolist())) == 32
    np.testing.assert_array_equal(a, meta_batch_ids(100, 32, seed=0, step=5))
    assert not np.array_equal(a, meta_batch_ids(100, 32, seed=0, step=6))


def _cli_train(python_exe, out, steps, resume=False, checkpoint_every=10):
    cmd = [
        python_exe, "-m", "metainf_core", "train", "--dataset", "synthetic", "--algo", "maml", "--arch", "mlp-synthetic",
        "--ways", "3", "--train-tasks", "40", "--test-tasks", "8", "--steps", str(steps), "--meta-batch", "8",
        "--lr", "0.01", "--checkpoint-every", str(checkpoint_every), "--out", str(out), "--quiet",
    ]  # fmt: skip
    return cmd + (["--resume"] if resume else [])


def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path, python_exe):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli_train(python_exe, out, 1_000_000), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meta_path = out / "meta.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if meta_path.exists() and json.loads(meta_path.read_text()).get("step", 0) >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(meta_path.read_text())["step"]
    assert saved >= 20 and not json.loads(meta_path.read_text())["complete"]
    target = saved + 25  # not a multiple of the interval: the last step is checkpointed too
    res = subprocess.run(_cli_train(python_exe, out, target, resume=True), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    ref = subprocess.run(_cli_train(python_exe, tmp_path / "ref", target), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    resumed, reference = load_checkpoint(out), load_checkpoint(tmp_path / "ref")
    assert resumed.meta["step"] == reference.meta["step"] == target
    for k in reference.params:
        torch.testing.assert_close(resumed.params[k], reference.params[k], rtol=0, atol=1e-6)
    assert resumed.meta["test"]["accuracy"] == pytest.approx(reference.meta["test"]["accuracy"])
    # a fresh train into a used folder is refused, and so is resuming with another configuration
    again = subprocess.run(_cli_train(python_exe, out, target), capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--resume" in again.stderr
    with pytest.raises(ConfigError, match="differs"):
        train(
            TaskConfig(dataset="synthetic", ways=3, train_tasks=40, test_tasks=8),
            TrainConfig(algo="maml", arch="mlp-synthetic", steps=target + 5, meta_batch=8, lr=0.02, checkpoint_every=10),
            out, resume=True, progress=False,
        )  # fmt: skip


def test_sigterm_saves_the_step_it_finished_and_resumes_exactly(tmp_path, python_exe):
    """SIGTERM (a session ending, `kill`) stops training after the step in progress, saves it even
    between checkpoints, exits with status 2 naming that step; resuming gives the uninterrupted run."""
    import re

    out = tmp_path / "stopped"
    proc = subprocess.Popen(_cli_train(python_exe, out, 1_000_000, checkpoint_every=7), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    meta_path = out / "meta.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (meta_path.exists() and json.loads(meta_path.read_text()).get("step", 0) >= 14):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "stopped by signal 15" in err, err
    stopped_at = int(re.search(r"after step (\d+)", err).group(1))
    assert json.loads(meta_path.read_text())["step"] == stopped_at >= 14  # the stop step is saved, checkpoint or not
    target = stopped_at + 5
    for c in (_cli_train(python_exe, out, target, resume=True, checkpoint_every=7),
              _cli_train(python_exe, tmp_path / "ref", target, checkpoint_every=7)):
        res = subprocess.run(c, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
    resumed, reference = load_checkpoint(out), load_checkpoint(tmp_path / "ref")
    for k in reference.params:  # same code path on the same machine: equal up to float noise of 1e-6
        torch.testing.assert_close(resumed.params[k], reference.params[k], rtol=0, atol=1e-6)


def test_retained_allocations_nest_and_restore_once(monkeypatch):
    """The glibc setting is process-wide: nested blocks (a fit inside a page run, two sessions'
    threads) set it once and the last block to leave restores the defaults, also after an error."""
    import metainf_core.train as tr

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(tr, "_libc_mallopt", lambda: lambda param, value: calls.append((param, value)) or 1)
    with pytest.raises(RuntimeError):
        with tr.retained_allocations():
            with tr.retained_allocations():
                assert calls == [(tr._M_MMAP_MAX, 0), (tr._M_TRIM_THRESHOLD, 2**30)]
            assert len(calls) == 2, "the inner block must not restore while the outer one runs"
            raise RuntimeError("a failing step")
    assert calls[2:] == [(tr._M_MMAP_MAX, tr._DEFAULT_MMAP_MAX), (tr._M_TRIM_THRESHOLD, tr._DEFAULT_TRIM_THRESHOLD)]
    assert tr._retained_users == 0


def test_leave_out_retraining_never_draws_excluded_tasks(synthetic_run, tmp_path):
    from metainf_core.leave_out import leave_out_retrain
    from metainf_core.service import open_run

    excluded = (0, 5, 7)
    drawn = np.concatenate([meta_batch_ids(48, 16, 0, s, excluded) for s in range(200)])
    assert not set(drawn.tolist()) & set(excluded) and len(set(drawn.tolist())) == 45
    np.testing.assert_array_equal(meta_batch_ids(48, 16, 0, 3), meta_batch_ids(48, 16, 0, 3, ()))  # default unchanged
    res = leave_out_retrain(open_run(synthetic_run), excluded, tmp_path / "loo", steps=40)
    meta = load_checkpoint(res["out"]).meta
    assert meta["train_config"]["exclude_tasks"] == [0, 5, 7] and meta["step"] == 40
    assert 0 <= res["test"]["accuracy"] <= 1 and res["seconds"] > 0
    # a resumed leave-out run keeps its exclusion (the saved config round-trips through JSON)
    task_cfg = TaskConfig.from_dict(meta["task_config"])
    train_cfg = TrainConfig.from_dict({**meta["train_config"], "steps": 50})
    train(task_cfg, train_cfg, res["out"], resume=True, progress=False)
    assert load_checkpoint(res["out"]).meta["step"] == 50


def test_cli_default_arch_follows_the_dataset(tmp_path, python_exe):
    """`train --dataset synthetic` without --arch trains the 2-D points' network (mlp-synthetic),
    not the image default conv4 (which refuses 2-D inputs)."""
    from metainf_core.config import default_arch

    assert (default_arch("synthetic"), default_arch("fashion-mnist")) == ("mlp-synthetic", TrainConfig().arch)
    cmd = [python_exe, "-m", "metainf_core", "train", "--dataset", "synthetic", "--algo", "maml", "--train-tasks", "16",
           "--test-tasks", "4", "--meta-batch", "4", "--steps", "3", "--checkpoint-every", "3", "--out", str(tmp_path / "s"),
           "--quiet"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["num_parameters"] == 63  # TLXML B.3's 2-4-4-3 network
    meta = load_checkpoint(tmp_path / "s").meta
    assert meta["train_config"]["arch"] == "mlp-synthetic" and meta["step"] == 3
