"""Gauss-Newton TLXML (TLXML 4.2, A.6) in float64 against brute force on the 63-parameter network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metainf_core.config import InfluenceMethod
from metainf_core.influence import (
    GaussNewtonConfig,
    GaussNewtonFit,
    fit_exact,
    fit_gauss_newton,
    task_gradients,
)
from metainf_core.exceptions import ConfigError, MetainfError
from metainf_core.influence.columns import create_columns_function, create_naive_columns_function
from metainf_core.influence.flat import ParamLayout

from helpers import explicit_gauss_newton, synthetic_tasksets, trained_synthetic  # tests/helpers.py

M = 24


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return synthetic_tasksets(M)


def _trained(algo: str, data, inner_steps: int = 1, steps: int = 150):
    return trained_synthetic(algo, data, inner_steps, steps)




@pytest.mark.parametrize(("algo", "inner_steps"), [("maml", 1), ("maml", 2), ("protonet", 1)])
def test_structured_columns_equal_naive_jacobian(data, algo, inner_steps):
    ds, train_ts, _ = data
    model, spec, params = _trained(algo, data, inner_steps, steps=20)
    layout = ParamLayout.from_params(params)
    w = layout.flatten(params)
    b = train_ts.batch([0, 1], ds)
    for hvp in ("reverse", "forward"):
        fast = create_columns_function(model, spec, layout, hvp=hvp, chunk=1 if hvp == "reverse" else None)
        naive = create_naive_columns_function(model, spec, layout)
        for k in range(2):
            args = (w, b.support_x[k].double(), b.support_y[k], b.query_x[k].double())
            torch.testing.assert_close(fast(*args), naive(*args), rtol=1e-5, atol=1e-10)


def test_streamed_gn_equals_explicit_and_pinv(data):
    """Prop. 4: V_orth V_orthᵀ = Σ JᵀAJ with N_orth ≥ rank; Prop. 5: U Uᵀ = pinv(H)."""
    ds, train_ts, _ = data
    model, spec, params = _trained("maml", data)
    h = explicit_gauss_newton(model, spec, params, data)
    fit = GaussNewtonFit(model, spec, params, train_ts, ds, GaussNewtonConfig(n_orth=64, task_batch=5))
    progress: list[tuple[int, int]] = []
    fit.add_tasks(np.arange(M), lambda done, total: progress.append((done, total)))
    assert fit.num_reductions >= 3 and progress[-1] == (M, M)
    rows = fit.orthogonal_rows()
    rel = ((rows.T @ rows / M - h).norm() / h.norm()).item()
    print(f"rank {torch.linalg.matrix_rank(h, rtol=1e-9, hermitian=True).item()}, reductions {fit.num_reductions}, "
          f"|VVᵀ/M − H|/|H| = {rel:.2e}")
    assert rel < 1e-10
    u = fit.factor(rtol=1e-9).factor
    pinv = torch.linalg.pinv(h, rtol=1e-9, hermitian=True)
    rel_pinv = ((u @ u.T - pinv).norm() / pinv.norm()).item()
    print(f"|UUᵀ − pinv(H)|/|pinv(H)| = {rel_pinv:.2e}")
    assert rel_pinv < 1e-5


def test_resume_from_state_dict(data):
    ds, train_ts, _ = data
    model, spec, params = _trained("maml", data, steps=20)
    cfg = GaussNewtonConfig(n_orth=64, task_batch=4)
    whole = GaussNewtonFit(model, spec, params, train_ts, ds, cfg)
    whole.add_tasks(np.arange(M))
    part = GaussNewtonFit(model, spec, params, train_ts, ds, cfg)
    part.add_tasks(np.arange(10))
    state = part.state_dict()
    assert state["done"].sum().item() == 10 and isinstance(state["num_reductions"], int)
    resumed = GaussNewtonFit.from_state_dict(state, model, spec, params, train_ts, ds)
    resumed.add_tasks(np.arange(M))  # the first 10 are skipped
    assert resumed.tasks_done == M
    a, b = whole.orthogonal_rows(), resumed.orthogonal_rows()
    torch.testing.assert_close(a.T @ a, b.T @ b, rtol=1e-9, atol=1e-12)

    # absorbing a fit over the other tasks (how a resumed fit takes over another process's buffer):
    # the same V Vᵀ (Prop. 3–4, N_orth = 64 > q = 63); 1e-9 relative: float64 rounding of other eighs
    rest = GaussNewtonFit(model, spec, params, train_ts, ds, GaussNewtonConfig(n_orth=64, task_batch=4, n_max=10**6))  # unreduced
    rest.add_tasks(np.arange(10, M))
    rest.config = cfg  # the same settings; its buffer holds more rows than N_max, as two full buffers together do
    assert rest.num_buffered > cfg.buffer_limit + part.num_buffered
    seen = []
    reduce = part._reduce
    part._reduce = lambda: (seen.append(part.num_buffered), reduce())  # noqa: E731 - record what each reduction sees
    part.absorb(rest)
    assert seen and max(seen) <= cfg.buffer_limit  # slices fill the buffer to N_max: no reduction holds more (memory)
    assert part.tasks_done == M and part.done.all()
    c = part.orthogonal_rows()
    torch.testing.assert_close(c.T @ c, a.T @ a, rtol=1e-9, atol=1e-12)
    with pytest.raises(MetainfError, match="share 14 tasks"):  # a task may count once
        part.absorb(rest)
    with pytest.raises(ConfigError):
        part.absorb(GaussNewtonFit(model, spec, params, train_ts, ds, GaussNewtonConfig(n_orth=32)))


@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_gn_self_rank_and_agreement_with_exact(data, algo):
    ds, train_ts, test_ts = data
    model, spec, params = _trained(algo, data)
    gn, record = fit_gauss_newton(model, spec, params, train_ts, ds, config=GaussNewtonConfig(n_orth=64), sample=None)
    assert gn.mode == InfluenceMethod.GN.value and record == {}  # one process: world size 1, no record
    print(f"{algo} GN: columns {gn.num_columns}, self-rank table {gn.self_ranks}, chosen k = {gn.truncation}")
    assert dict(gn.self_ranks)[gn.truncation] < M / 4  # random ranking: (M − 1)/2
    exact = fit_exact(model, spec, params, train_ts, ds, sample=None)
    g = task_gradients(model, spec, params, test_ts, ds)
    corr = [np.corrcoef(gn.helpfulness(gi).numpy(), exact.helpfulness(gi).numpy())[0, 1] for gi in g]
    print(f"{algo}: exact self-rank table {exact.self_ranks}; GN-vs-exact score correlation "
          f"{np.mean(corr):.3f} ± {np.std(corr):.3f} (TLXML B.3: 0.715 ± 0.092)")


def test_ranking_a_target(data):
    ds, train_ts, test_ts = data
    model, spec, params = _trained("maml", data, steps=20)
    gn, _ = fit_gauss_newton(model, spec, params, train_ts, ds, config=GaussNewtonConfig(n_orth=64), select=False)
    g = task_gradients(model, spec, params, test_ts, ds, [0, 1]).mean(0)  # the average loss of test tasks 0 and 1
    r = gn.rank(g, top=5)
    assert len(r.ids) == 5 and np.all(np.diff(r.scores) <= 0)
    full = gn.helpfulness(g)
    torch.testing.assert_close(torch.as_tensor(r.scores), full[torch.as_tensor(r.ids)])
    torch.testing.assert_close(-(g @ gn.i_meta(int(r.ids[0]))), full[int(r.ids[0])])
