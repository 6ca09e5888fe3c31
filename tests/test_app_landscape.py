"""AppTest flows of the Landscape page: a real Fashion-MNIST MAML run trained with --keep-history
(4 snapshots), the page's numbers against ``diagnostics_over_history``, and its disk cache."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
PAGE = str(REPO / "views" / "6_Landscape.py")
N_TASKS = 3  # test tasks of the statistics (slider); accuracy uses all 24

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def history_cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("landscape_cache")
        mp.setenv("METAINF_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="module")
def fmnist_history_run(tmp_path_factory: pytest.TempPathFactory, history_cache) -> Path:
    """1,413-parameter MAML (mlp on |FFT| features), 3-way 5-shot, snapshots at steps 30, 60, 90, 120."""
    from metainf_core.config import TaskConfig, TrainConfig
    from metainf_core.train import train

    task_cfg = TaskConfig(dataset="fashion-mnist", ways=3, shots=5, queries=5, train_tasks=32, test_tasks=24)
    train_cfg = TrainConfig(algo="maml", arch="mlp", steps=120, meta_batch=8, lr=0.003, inner_lr=0.4,
                            checkpoint_every=30, keep_history=True)  # fmt: skip
    return train(task_cfg, train_cfg, tmp_path_factory.mktemp("fmnist_history"), progress=False, device="cpu")


def _page(path: Path | str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=600)
    at.session_state["model_path"] = str(path)
    return at.run()


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_no_history_shows_the_retrain_command(history_cache, tmp_path):
    import shutil

    from metainf_core.cli import build_parser
    from metainf_core.config import TaskConfig, TrainConfig
    from metainf_core.service import open_run

    demo = tmp_path / "maml-fashion-mnist"  # the MAML demo as a run trained without --keep-history
    shutil.copytree(REPO / "assets" / "demo" / "maml-fashion-mnist", demo, ignore=shutil.ignore_patterns("history", "influence"))
    at = _page(demo)
    assert not at.exception, at.exception
    assert "This run was trained without `--keep-history`" in at.info[0].value
    assert not at.button and not at.metric  # nothing to compute
    cmd = at.code[0].value
    args = build_parser().parse_args(shlex.split(cmd)[3:])  # after "python -m metainf_core"
    meta = open_run(demo).meta
    assert args.keep_history and args.out == "runs/maml-fashion-mnist-history"
    assert (args.dataset, args.algo, args.arch, args.noise_tasks, args.steps, args.lr) == ("fashion-mnist", "maml", "conv4", 64, 600, 0.002)
    # every setting of the demo is reproduced (defaults left out of the command)
    task = TaskConfig(**{f: getattr(args, "task_seed" if f == "seed" else f) for f in TaskConfig().to_dict()})
    assert task == TaskConfig.from_dict(meta["task_config"])
    trained = TrainConfig.from_dict(meta["train_config"])
    assert TrainConfig(**{f: getattr(args, f) for f in trained.to_dict()}) == TrainConfig(**{**trained.to_dict(), "keep_history": True})


def test_compute_then_cached(fmnist_history_run, monkeypatch):
    from metainf_core import diagnostics, jobs
    from metainf_core.diagnostics import DiagnosticsConfig, diagnostics_cache_entry, diagnostics_over_history
    from metainf_core.landscape_metrics import METRICS, metric_correlations
    from metainf_core.service import open_run

    at = _page(fmnist_history_run)
    assert not at.exception, at.exception
    assert "4 training snapshots on 16 test tasks are not computed yet" in at.info[0].value
    assert not at.metric  # nothing shown before the button
    at.slider(key="landscape_tasks").set_value(N_TASKS).run()
    assert "on 3 test tasks" in at.info[0].value
    at.button(key="landscape_compute").click().run()  # starts a background job (tests/test_jobs_diagnostics.py)
    assert not at.exception, at.exception

    cfg = DiagnosticsConfig(num_tasks=N_TASKS)
    run = open_run(fmnist_history_run)
    assert jobs.wait(jobs.job_status(jobs.diagnostics_entry(run, cfg)), timeout=600).state == "done"
    at.run()  # what the progress fragment's st.rerun() does when it sees the job end
    assert not at.exception, at.exception
    direct = diagnostics_over_history(run, cfg)  # no cache: recomputed from the snapshots
    last, corr = direct[-1], metric_correlations(direct)
    print({k: round(v, 4) for k, v in last.to_dict().items()}, {k: round(c["spearman"], 3) for k, c in corr.items()})
    shown = _metrics(at)
    assert shown["Test accuracy at step 120"] == f"{100 * last.accuracy:.1f} %"
    assert shown["Sharpness at step 120"] == f"{last.sharpness_lanczos:.4g}"
    assert shown["Gradient agreement at step 120"] == f"{last.gradient_cosine:+.4f}"
    assert shown["Sharpness vs accuracy"] == f"{corr['sharpness_lanczos']['spearman']:+.2f}"
    table = at.dataframe[1].value  # [0]: correlations; headers as the tiles and the correlation table name them
    assert all("_" not in c for c in table.columns), list(table.columns)
    assert table["training step"].tolist() == [30, 60, 90, 120] and (table["test tasks used"] == N_TASKS).all()
    for col, header in (("accuracy", "test accuracy"), ("loss", "test loss"), *METRICS.items()):
        np.testing.assert_allclose(table[header], [getattr(r, col) for r in direct], rtol=1e-9, err_msg=col)
    # one adaptation step (inner_steps = 1): the two cosines are equal by construction, and the page says why
    np.testing.assert_allclose([r.gradient_cosine for r in direct], [r.trajectory_cosine for r in direct], atol=5e-4)  # 3 decimals shown
    assert any("the cosines between steps are the cosines between gradients" in c.value for c in at.caption)
    corr_table = at.dataframe[0].value.set_index("statistic")
    for m, label in METRICS.items():
        np.testing.assert_allclose(corr_table.loc[label, ["Spearman ρ", "Pearson r"]].to_numpy(dtype=float),
                                   [corr[m]["spearman"], corr[m]["pearson"]], rtol=1e-9, err_msg=m)  # fmt: skip
    assert len(at.get("plotly_chart")) == 2
    assert diagnostics_cache_entry(run, cfg).complete

    # A fresh session reads the disk cache: no button, same numbers, no diagnostics computed.
    def refuse(*_a, **_k):
        raise AssertionError("diagnostics recomputed instead of read from the cache")

    monkeypatch.setattr(diagnostics, "landscape_diagnostics", refuse)
    again = AppTest.from_file(PAGE, default_timeout=600)
    again.session_state["model_path"] = str(fmnist_history_run)
    again.session_state["landscape_tasks"] = N_TASKS
    again.run()
    assert not again.exception, again.exception
    assert not again.button and not again.info
    assert _metrics(again) == shown
