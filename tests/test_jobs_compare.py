"""Issue 25 item 1: the Compare page on a run without test tables scores them as background jobs
(``jobs.submit_compare_table``: a method's scores for every test task, ``compare.test_score_table``),
through the same submit / progress / cancel path as the other jobs. Real data: a small MAML run on
the synthetic 2-D data (48 training tasks, 16 test tasks, 63 parameters), trained here.

Tolerance: the job computes the same float64 scores in another process (one intra-op thread, as
here); summation order inside BLAS may differ per process, ~1e-15 relative, so tables are compared
at rtol 1e-9 with an absolute floor of 1e-12 of the largest score. A wrong test task, method or run
changes scores at the 1e-2 level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import fit_from_page, page_with  # tests/helpers.py

from metainf_core import jobs
from metainf_core.compare import CompareConfig, method_scores, pair_agreement
from metainf_core.compare import test_table_entry as table_entry  # not collected as a test
from metainf_core.config import TaskConfig, TrainConfig
from metainf_core.ranking import Target
from metainf_core.service import open_run

REPO = Path(__file__).resolve().parents[1]
PAGE = str(REPO / "views" / "5_Compare.py")
CFG = CompareConfig(dtype="float64")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    from metainf_core.train import train

    task_cfg = TaskConfig(dataset="synthetic", ways=3, shots=5, queries=5, train_tasks=48, test_tasks=16, noise_tasks=6)
    train_cfg = TrainConfig(algo="maml", arch="mlp-synthetic", steps=60, meta_batch=8, lr=0.01, inner_lr=0.4, checkpoint_every=60)
    return train(task_cfg, train_cfg, tmp_path_factory.mktemp("compare-run") / "run", progress=False, device="cpu")


def _direct(run, name: str) -> np.ndarray:  # noqa: ANN001 - a Run
    return np.stack([method_scores(run, Target((i,)), name, CFG) for i in range(len(run.test_tasks))])


def test_a_stopped_table_resumes_from_its_saved_test_tasks(small_run, job_cache):
    """A table stopped after 10 of 16 test tasks keeps the first 8 (saved every 8) and no result; the
    next call resumes from them (its result says so), and the table is scoring each test task directly."""
    from metainf_core.compare import test_score_table

    run = open_run(small_run)
    entry = table_entry(run, "task-if", CFG)

    def stop_after_ten(done: int, _total: int) -> None:
        if done == 10:
            raise KeyboardInterrupt  # what a stopped process leaves

    with pytest.raises(KeyboardInterrupt):
        test_score_table(run, "task-if", CFG, progress=stop_after_ten)
    assert not entry.complete and entry.partial_progress()["rows_done"] == 8
    seen = []
    table = test_score_table(run, "task-if", CFG, progress=lambda done, total: seen.append(done))
    assert seen == list(range(9, 17)) and entry.load()[1]["resumed_from"] == 8
    direct = _direct(run, "task-if")
    np.testing.assert_allclose(table, direct, rtol=1e-9, atol=1e-12 * np.abs(direct).max())


def test_same_table_requests_share_one_job_whose_table_is_the_direct_scores(small_run, job_cache):
    """Two sessions asking for a method's table get one job; it ends *done* with every test task
    reported, its table is scoring each test task directly, and asking again starts nothing."""
    run = open_run(small_run)
    a, b = jobs.submit_compare_table(run, "grad-sim", CFG), jobs.submit_compare_table(run, "grad-sim", CFG)
    assert a.id and a.id == b.id and a.request["kind"] == "compare_table" and a.request["method"] == "grad-sim"
    done = jobs.wait(a, timeout=600)
    assert (done.state, done.stage, done.done, done.total) == ("done", "test_tasks", 16, 16)
    direct = _direct(run, "grad-sim")
    table = table_entry(run, "grad-sim", CFG).load()[0]["scores"].numpy()
    np.testing.assert_allclose(table, direct, rtol=1e-9, atol=1e-12 * np.abs(direct).max())
    again = jobs.submit_compare_table(run, "grad-sim", CFG)
    assert again.state == "done" and not again.id
    with pytest.raises(Exception, match="unknown|not a method|no method"):
        jobs.submit_compare_table(run, "no-such-method", CFG)


def test_compare_page_scores_a_run_without_tables_as_jobs(small_run, job_cache):
    """A run without tables: after its fit, the page offers to score each chosen method; each click
    starts a job (progress, cancel for its starter), and when both end the comparison shows, equal to
    ``compare_methods`` scoring the test task directly; another test task then needs no job."""
    from ui import COMPARE_CONFIG

    run = open_run(small_run)
    at = fit_from_page(page_with(PAGE, model_path=str(small_run)))
    a, b = at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value
    assert (a, b) == ("tlxml-gn", "grad-sim")
    assert not at.metric and {bt.key for bt in at.button} >= {"compare_table_tlxml-gn", "compare_table_grad-sim"}
    for n in (a, b):
        at.button(key=f"compare_table_{n}").click().run()
        assert not at.exception, at.exception
    started = [j for j in jobs.list_jobs(job_cache) if j.request.get("kind") == "compare_table"]
    assert sorted(j.request["method"] for j in started) == sorted((a, b))
    assert all(j.id in at.session_state["_my_jobs"] for j in started)
    for j in started:
        assert jobs.wait(j, timeout=600).state == "done", jobs.job_status(j.directory)
    at.run()
    assert not at.exception, at.exception
    for test_id in (0, 7):
        if test_id:
            at.number_input(key="_test_task_input").set_value(test_id).run()
            assert not at.exception, at.exception
        direct = [method_scores(run, Target((test_id,)), n, COMPARE_CONFIG) for n in (a, b)]  # not the tables
        shown = next(m.value for m in at.metric if m.label.startswith("Same order? (Spearman)"))
        assert shown == f"{pair_agreement(*direct, 5)['spearman']:+.2f}", (test_id, shown)
    assert len([j for j in jobs.list_jobs(job_cache) if j.request.get("kind") == "compare_table"]) == 2


def test_one_test_task_as_a_job_then_another_test_task_asks_again(small_run, job_cache):
    """"Score test task i" scores only that test task (``compare.test_task_scores`` in a job): the page then
    compares test task i with the direct scores' Spearman, and another test task offers the buttons again."""
    from ui import COMPARE_CONFIG

    run = open_run(small_run)
    at = fit_from_page(page_with(PAGE, model_path=str(small_run)))
    a, b = at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value
    for n in (a, b):
        at.button(key=f"compare_one_{n}").click().run()
        assert not at.exception, at.exception
    started = [j for j in jobs.list_jobs(job_cache) if j.request.get("kind") == "compare_test_task"]
    assert sorted((j.request["method"], j.request["test_id"]) for j in started) == sorted([(a, 0), (b, 0)])
    for j in started:
        assert jobs.wait(j, timeout=600).state == "done", jobs.job_status(j.directory)
    at.run()
    assert not at.exception, at.exception
    direct = [method_scores(run, Target((0,)), n, COMPARE_CONFIG) for n in (a, b)]
    shown = next(m.value for m in at.metric if m.label.startswith("Same order? (Spearman)"))
    assert shown == f"{pair_agreement(*direct, 5)['spearman']:+.2f}"
    assert not table_entry(run, a, COMPARE_CONFIG).complete  # only test task 0 was scored
    at.number_input(key="_test_task_input").set_value(5).run()
    assert not at.exception and not at.metric and any(bt.key == f"compare_one_{a}" for bt in at.button)
