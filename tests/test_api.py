"""The public API (metainf_core.api) on the bundled ProtoNet demo: its numbers are the CLI's and
explain's, its tables have the documented columns, and the README's example and the notebook run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli  # tests/helpers.py

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"
TEST_TASKS = (7, 3)
# Scores of one test task from a batch of test tasks (vmap over the batch, a T × r matrix product)
# and alone (explain.all_scores: a vector product) differ by float32 rounding only: a few ulps of
# the largest |score| (eps 1.2e-7, scores summed over r = 512 directions).
SCORE_ATOL = 1e-5


@pytest.fixture(scope="module")
def explainer(one_thread):
    from metainf_core import Explainer, ExplainerConfig

    return Explainer("protonet-fashion-mnist", ExplainerConfig(device="cpu")).fit(progress=False)


@pytest.fixture(scope="module")
def ranking(explainer):
    return explainer.rank(TEST_TASKS)


def cli_top(test_task: int | str, top: int = 10) -> tuple[list[int], list[int]]:
    """Most helpful and most harmful task ids of ``python -m metainf_core rank DEMO --test-task N``."""
    proc = run_cli("rank", DEMO, "--test-task", test_task, "--top", top, "--quiet", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    return [r["task"] for r in out["most_helpful"]], [r["task"] for r in out["most_harmful"]]


def test_import_is_lazy():
    """``import metainf_core`` (the CLI's first step) loads neither torch nor the API module."""
    code = (
        "import sys, metainf_core; print(sorted(m for m in ('torch', 'numpy', 'metainf_core.api') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"
    import metainf_core
    from metainf_core import api

    assert metainf_core.Explainer is api.Explainer and set(api.__all__) <= set(dir(metainf_core))
    with pytest.raises(AttributeError):
        metainf_core.no_such_name  # noqa: B018


def test_open_run_and_config():
    from metainf_core import Explainer, ExplainerConfig, NotFittedError, demos, open_run
    from metainf_core.config import InfluenceConfig
    from metainf_core.exceptions import CheckpointError, ConfigError

    assert {"protonet-fashion-mnist", "maml-fashion-mnist"} <= set(demos())
    with pytest.raises(CheckpointError, match="neither a run folder nor a bundled demo"):
        open_run("no-such-demo")
    # dtype follows the CLI (float32 Gauss-Newton, float64 exact); the cache key is InfluenceConfig's
    assert ExplainerConfig().dtype == "float32" and ExplainerConfig(method="exact").dtype == "float64"
    assert ExplainerConfig(n_orth=64).influence == InfluenceConfig(n_orth=64, dtype="float32")
    assert ExplainerConfig.from_dict(ExplainerConfig(damping=0.1, device="cpu").to_dict()) == ExplainerConfig(
        damping=0.1, device="cpu"
    )
    with pytest.raises(ConfigError):
        ExplainerConfig(method="gauss_newton")
    run = open_run(DEMO, device="cpu")
    with pytest.raises(NotFittedError):
        Explainer(run).rank(0)


def test_rank_equals_cli_and_all_scores(explainer, ranking):
    from metainf_core.exceptions import ConfigError
    from metainf_core.ranking import Target, all_scores

    run, inf = explainer.run, explainer.influence
    for t, i in enumerate(TEST_TASKS):
        torch.testing.assert_close(
            ranking.scores[t], all_scores(run, inf, Target((i,)), "float32"), rtol=0, atol=SCORE_ATOL
        )
        helpful, harmful = cli_top(i)
        assert ranking.top(10, i).tolist() == helpful
        assert ranking.top(-10, i).tolist() == harmful
    assert ranking.top(3).tolist() == ranking.top(3, TEST_TASKS[0]).tolist()
    assert explainer._ids("all") == tuple(range(len(run.test_tasks)))
    for bad in ("7", [], [1.5], True):
        with pytest.raises(ConfigError):
            explainer.rank(bad)
    with pytest.raises(ConfigError):  # unknown in this ranking
        ranking.top(3, test_task=0)
    # the CLI's several-task target (their average loss) is the mean of the rows: scores are linear in g_i
    helpful, _ = cli_top(",".join(map(str, TEST_TASKS)))
    assert np.argsort(-ranking.scores.mean(0), kind="stable")[:10].tolist() == helpful


def test_to_pandas_columns_and_dtypes(explainer, ranking):
    from metainf_core.api import COLUMNS
    from metainf_core.ranking import task_rows

    frame = ranking.to_pandas()
    m = explainer.num_tasks
    assert tuple(frame.columns) == COLUMNS and len(frame) == len(TEST_TASKS) * m
    assert {c: str(frame[c].dtype) for c in ("test_task", "train_task", "score", "rank")} == {
        "test_task": "int64", "train_task": "int64", "score": "float64", "rank": "int64"}  # fmt: skip
    for i, part in frame.groupby("test_task", sort=False):
        assert part["rank"].tolist() == list(range(m))  # ordered by rank, every rank once
        assert np.all(np.diff(part["score"].to_numpy()) <= 0)  # rank 0 = most helpful
        assert sorted(part["train_task"]) == list(range(m))
        row = ranking.test_tasks.index(i)
        np.testing.assert_array_equal(part.sort_values("train_task")["score"].to_numpy(), ranking.scores[row])
    # labels of a training task as the CLI prints them; corruption from the taskset manifest
    j = int(frame.loc[0, "train_task"])
    cli_row = task_rows(explainer.run, [j], [0.0], [0])[0]
    assert frame.loc[0, "classes"] == tuple(cli_row["classes"]) and frame.loc[0, "superclasses"] == tuple(
        cli_row["superclasses"]
    )
    noise = set(explainer.run.train_tasks.ids_with("noise").tolist())
    assert noise and set(frame.loc[frame["corruption"] == "noise", "train_task"]) == noise
    assert ranking.to_dicts() == frame.to_dict("records")


def test_group_scores_and_self_influence(explainer, ranking):
    from metainf_core.ranking import Target, all_scores

    groups = explainer.group_scores(TEST_TASKS[0])
    # every training task is in exactly one superclass group: the group sums add up to the total
    assert sum(groups.values()) == pytest.approx(float(ranking.scores[0].sum()), abs=SCORE_ATOL * explainer.num_tasks)
    self_inf = explainer.self_influence()
    inf = explainer.influence
    diagonal = inf.train_score_matrix().diagonal().cpu().numpy() / inf.num_tasks  # the matrix omits 1/M
    torch.testing.assert_close(self_inf, diagonal, rtol=1e-5, atol=0)  # float32 sums of the same k products, two orders
    # from a fresh gradient of training task j as the target ("train:J", the self-rank probe) rather
    # than the fit's stored projection P_j: float32 gradients batched differently (the fit's chunks
    # of 32 tasks vs one), so agreement to float32 rounding amplified by the k = 512 kept directions
    for j in ranking.top(2):
        probe = all_scores(explainer.run, inf, Target((int(j),), "train"), "float32")[j]
        assert self_inf[j] == pytest.approx(float(probe), rel=1e-4)
    assert (self_inf >= 0).all()  # the kept eigenvalues are positive (TLXML 5.1.1): H⁺ ⪰ 0
    curve = explainer.audit("self")
    assert curve.num_corrupted == len(explainer.run.train_tasks.ids_with("noise")) and curve.auc > curve.auc_random


def test_edit_equals_edit_report(explainer, ranking, tmp_path):
    from metainf_core import open_run
    from metainf_core.api import _edit_spec
    from metainf_core.edit import EditSpec, edit_report, edited_params
    from metainf_core.exceptions import ConfigError

    run, inf = explainer.run, explainer.influence
    harmful = ranking.top(-64)
    edit = explainer.edit(block=harmful, xi=-4.0, test_task=TEST_TASKS[0])
    params = edited_params(run, inf, EditSpec(block=tuple(harmful), xi_block=-4.0))
    assert all(torch.equal(edit.params[k], params[k]) for k in params)
    expected = edit_report(run, params, TEST_TASKS[0])
    assert edit.accuracy_before == expected["taskset"]["before"]["accuracy"]  # same evaluation of the same weights
    assert edit.accuracy_after == expected["taskset"]["after"]["accuracy"]
    assert edit.report["test_task"] == expected["test_task"]
    assert edit.accuracy_after != edit.accuracy_before
    # xi is the ξ of the one set given; both sets need xi_block and xi_enhance
    assert _edit_spec((), [1, 2], 2.0, -1.0, 1.0) == EditSpec(enhance=(1, 2), xi_enhance=2.0)
    assert _edit_spec([3], [1], None, -2.0, 0.5) == EditSpec((3,), -2.0, (1,), 0.5)
    with pytest.raises(ConfigError, match="xi sets"):
        explainer.edit(block=[1], enhance=[2], xi=2.0)  # refused before any evaluation
    saved = open_run(edit.save(tmp_path / "edited"), device="cpu")
    assert all(torch.equal(saved.params[k], params[k].cpu()) for k in params)
    assert saved.meta["edit"]["xi_block"] == -4.0 and saved.meta["edit"]["block"] == harmful.tolist()


def test_drilldown_and_score_parts_match_ranking(explainer, ranking):
    i, j = TEST_TASKS[0], int(ranking.top(1)[0])
    drill = explainer.drilldown(i, j)
    assert drill.fitted_score == pytest.approx(float(ranking.scores[0, j]), abs=SCORE_ATOL)
    shares = explainer.test_image_shares(i)
    torch.testing.assert_close(shares.scores, ranking.scores[0].astype(np.float64), rtol=0, atol=SCORE_ATOL)
    parts = explainer.score_parts(i)  # helpfulness = test_size · size · alignment
    torch.testing.assert_close(parts["helpfulness"], ranking.scores[0], rtol=0, atol=SCORE_ATOL)
    product = parts["test_size"] * parts["size"] * parts["alignment"]
    torch.testing.assert_close(
        product, parts["helpfulness"], rtol=1e-4, atol=SCORE_ATOL
    )  # float32, divided then multiplied
    assert explainer.thumbnails(j).dtype == np.uint8


def readme_python_example() -> str:
    """The first ```python block of the README's "Use from Python" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use from Python", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_example_gives_the_clis_top_tasks(one_thread, capsys):
    namespace: dict = {}
    exec(compile(readme_python_example(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    ranking, edit = namespace["ranking"], namespace["edit"]
    helpful, harmful = cli_top(ranking.test_tasks[0])
    assert ranking.top(10).tolist() == helpful and ranking.top(-10).tolist() == harmful
    assert "test accuracy" in capsys.readouterr().out and edit.spec.xi_block == -1.0


def test_notebook_quickstart_runs_in_a_minute(tmp_path):
    """The jupytext example as a plain script, from the repository root, in under 60 s (issue 26)."""
    # one thread, as one_thread: OpenMP barriers crawl on the shared 2-core machine
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    started = time.monotonic()
    script = [sys.executable, "examples/notebook_quickstart.py"]
    proc = subprocess.run(script, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "figure: 5 thumbnail strips" in proc.stdout
    before, after = map(float, re.search(r"test taskset accuracy ([\d.]+) -> ([\d.]+)", proc.stdout).groups())
    assert 0 < before < 1 and 0 < after < 1 and before != after
    assert time.monotonic() - started < 60


def test_validate_counts_the_noise_tests(explainer):
    """The noise proper test recounted from the API's own score matrix (TLXML 5.1.2): a test task is
    proper when normal training tasks score higher on average than noise tasks."""
    t = 16
    report = explainer.validate(self_rank=False, superclass=False, exact_agreement=False, max_tests=t)
    scores = explainer.scores(range(t))
    noise = np.zeros(explainer.num_tasks, dtype=bool)
    noise[explainer.run.train_tasks.ids_with("noise")] = True
    proper = int((scores[:, ~noise].mean(1) > scores[:, noise].mean(1)).sum())
    assert report["noise"]["proper"] == proper and report["noise"]["total"] == t
    assert report["noise"]["z"] == pytest.approx((proper - t / 2) / np.sqrt(t / 4))
    assert report["truncation"] == explainer.influence.truncation


def test_fit_shows_progress_then_loads_from_the_cache(synthetic_run, tmp_path, monkeypatch, capsys, one_thread):
    """fit() on an unfitted run draws a bar per stage (curvature, gradients) and writes the disk
    cache; a second Explainer loads the same fit from it, without a bar."""
    from metainf_core import Explainer, ExplainerConfig

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path))
    cfg = ExplainerConfig(n_orth=32, device="cpu")
    first = Explainer(synthetic_run, cfg).fit()
    err = capsys.readouterr().err
    assert "curvature" in err and "gradients" in err and f"{first.num_tasks}/{first.num_tasks}" in err
    second = Explainer(synthetic_run, cfg).fit()
    assert capsys.readouterr().err == ""
    # the cache stores the fitted tensors as they are: reading them back must give them bit for bit
    torch.testing.assert_close(second.influence.projections, first.influence.projections, rtol=0, atol=0)
    assert second.rank(0).top(5).tolist() == first.rank(0).top(5).tolist()


def test_leave_out_retrains_without_the_tasks(synthetic_run, tmp_path, one_thread):
    """leave_out() is explain.leave_out_retrain: a run trained with the tasks never drawn."""
    from metainf_core import Explainer, open_run

    out = Explainer(synthetic_run, None).leave_out([0, 5], tmp_path / "left-out", steps=3)
    assert open_run(out["out"], device="cpu").meta["train_config"]["exclude_tasks"] == [0, 5]
    assert out["test"]["num_tasks"] == 16 and 0 <= out["test"]["accuracy"] <= 1
