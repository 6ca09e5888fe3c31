"""Issue 25: interactive work runs concurrently with no process-wide lock. Networks are called on
a thread's own copy of their modules (``learners.call_network``), so threads that share one Run
(as the dashboard's sessions share the cached one) get the numbers a serial run gets."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from metainf_core.api import Explainer, ExplainerConfig, open_run
from metainf_core.learners import call_network

REPO = Path(__file__).resolve().parents[1]
THREADS = 4


def _at_once(work: Callable[[Any], Any], args: list) -> list:
    """``work(a)`` for every ``a``, each in its own thread, all started together at a barrier."""
    barrier = threading.Barrier(len(args))

    def start(a: Any) -> Any:
        barrier.wait()
        return work(a)

    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(start, args))


def test_call_network_on_one_shared_module_from_many_threads_gives_each_its_own_parameters():
    """Each thread swaps in its own parameters, 300 times over, on the same module; every output is
    that thread's serial output, and the module's own parameters are never touched."""
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3)).double()
    own = {k: v.detach().clone() for k, v in model.named_parameters()}
    x = torch.randn(64, 2, dtype=torch.float64)
    params = [{k: torch.randn_like(v) for k, v in own.items()} for _ in range(THREADS)]
    expected = [call_network(model, p, x) for p in params]

    def repeat(t: int) -> float:
        return max(float((call_network(model, params[t], x) - expected[t]).abs().max()) for _ in range(300))

    worst = _at_once(repeat, list(range(THREADS)))
    # same kernels, same float64 inputs, one sample's product at a time: any difference is a swap
    # with another thread's parameters (O(1)), not rounding (< 1e-12 here)
    assert max(worst) < 1e-12, worst
    for k, v in model.named_parameters():
        assert torch.equal(v, own[k]) and isinstance(v, nn.Parameter)


@pytest.mark.parametrize("demo", ["protonet-fashion-mnist", "maml-fashion-mnist"])
def test_threads_ranking_different_test_tasks_get_the_serial_scores(demo: str):
    """Four sessions rank four different test tasks on one shared Run and fit (the demo's shipped
    fit, TLXML Eq. 9, 12) at the same time: the same scores as one after another."""
    explainer = Explainer(open_run(REPO / "assets" / "demo" / demo, device="cpu"),
                          ExplainerConfig(method="gn", n_orth=512, dtype="float32")).fit(progress=False)  # fmt: skip
    targets = [[0, 1], [2, 3], [4, 5], [6, 7]]
    serial = [explainer.scores(t) for t in targets]
    for _ in range(2):
        for got, want in zip(_at_once(explainer.scores, targets), serial, strict=True):
            # float32 gradients and products; threads change nothing but which core runs a kernel, so
            # agreement to 1e-5 of the largest score (rounding is ~1e-7 of it); a session that used
            # another's swapped-in parameters, or none, is off by O(1) or raises
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("demo", ["protonet-fashion-mnist", "maml-fashion-mnist"])
def test_evaluation_on_worker_threads_is_the_serial_evaluation(demo: str):
    """``evaluate_tasks`` runs its batches on a pool of threads (``default_eval_workers``); each batch
    is computed alone, so 2 or 3 workers — also while 3 sessions evaluate at once — give the losses
    and accuracies of one batch after another."""
    run = open_run(REPO / "assets" / "demo" / demo, device="cpu")
    serial = run.evaluate(workers=1)
    for got in (run.evaluate(workers=2), run.evaluate(workers=3), *_at_once(lambda w: run.evaluate(workers=w), [2, 2, 3])):
        # the same float32 kernels on the same batches; only which core runs them differs: agreement
        # to 1e-6 relative (rounding differences would be ~1e-7); a batch evaluated with another
        # thread's parameters or grad mode would be off by O(1e-2) or more
        np.testing.assert_array_equal(got.task_ids, serial.task_ids)
        np.testing.assert_allclose(got.loss, serial.loss, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got.accuracy, serial.accuracy, rtol=0, atol=1e-9)
