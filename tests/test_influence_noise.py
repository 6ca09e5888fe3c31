"""TLXML 5.1.2 / B.3 on the synthetic set: noise tasks score below normal tasks in a clear
majority of test tasks, with the exact Hessian and with Gauss-Newton; self-rank far from random."""

from __future__ import annotations

import pytest

from metainf_core.config import InfluenceConfig, TaskConfig, TrainConfig
from metainf_core.fits import fit_influence
from metainf_core.service import open_run
from metainf_core.train import train
from metainf_core.validate import validation_report

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """63-parameter MAML on 128 synthetic tasks, 16 of them noise (TLXML B.3 at 1/8 scale)."""
    task_cfg = TaskConfig(dataset="synthetic", ways=3, shots=5, queries=5, train_tasks=128, test_tasks=64, noise_tasks=16)
    train_cfg = TrainConfig(algo="maml", arch="mlp-synthetic", steps=1000, meta_batch=32, lr=0.01, checkpoint_every=1000)
    return open_run(train(task_cfg, train_cfg, tmp_path_factory.mktemp("noisy"), progress=False, device="cpu"))


@pytest.mark.parametrize("method", ["exact", "gn"])
def test_noise_tasks_score_below_normal_tasks(noisy_run, method, tmp_path, monkeypatch):
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path))
    assert noisy_run.meta["test"]["accuracy"] > 0.8
    cfg = InfluenceConfig(method=method, n_orth=512, dtype="float64", self_rank_sample=128)
    inf = fit_influence(noisy_run, cfg)
    rep = validation_report(noisy_run, inf, cfg, superclass=False, max_tests=64)
    print(method, rep["noise"], rep["self_rank_at_truncation"], inf.truncation)
    assert rep["noise"]["total"] == 64
    assert rep["noise"]["z"] > 2.5, rep["noise"]  # measured: exact 46/64 (+3.5σ), GN 50/64 (+4.5σ)
    if method == "gn":  # GN vs exact scores on the same tests (TLXML B.3: Pearson 0.715 ± 0.092); measured 0.68 ± 0.14
        agree = rep["exact_vs_gn"]
        assert agree["num_tests"] == 64 and agree["pearson_mean"] > 0.5, agree
    self_rank = rep["self_rank_at_truncation"]
    assert self_rank["mean"] < 0.1 * self_rank["random_mean"] and self_rank["fraction_top1"] > 0.3


def test_noise_tasks_score_below_normal_tasks_on_fashion_mnist(demo_fitted):
    """Real data (TLXML 5.1.2): the bundled ProtoNet demo, 64 of its 512 training tasks noise images,
    Gauss-Newton fit of the app; every one of the 128 test tasks is one proper test."""
    from ui import DEFAULT_INFLUENCE

    run = open_run(demo_fitted)
    inf = fit_influence(run, DEFAULT_INFLUENCE)  # from the disk cache
    rep = validation_report(run, inf, DEFAULT_INFLUENCE, self_rank=False, superclass=False, max_tests=128)
    print("fashion-mnist ProtoNet demo, noise vs normal:", rep["noise"])
    assert rep["noise"]["total"] == 128
    # measured on the demo retrained 2026-12-02: 77/128 (+2.3σ), the same with the shipped float16 fit and the
    # float32 one; the closest test task is decided by 3.5e-5 of its largest score, far above float32 rounding
    assert rep["noise"]["z"] > 2.0, rep["noise"]
