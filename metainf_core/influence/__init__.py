"""Task-level influence functions for meta-learning (TLXML; METHODS §2, §3, §5).

Public API::

    inf = fit_exact(model, spec, params, train_tasks, dataset)          # q ≲ 3,000
    inf = fit_gauss_newton(model, spec, params, train_tasks, dataset)   # real models
    g = target_gradient(model, spec, params, test_tasks, dataset, [i])  # one test task (or a set)
    inf.rank(g)            # training tasks by helpfulness = −I_perf (positive: lowers test loss)
    inf.i_meta(j)          # −(1/M) H⁺ g_j
    inf.self_rank_table()  # [(k, mean self-rank)], inf.truncation the chosen k
"""

from metainf_core.influence.exact import CurvatureFactor, meta_hessian, spectral_factor
from metainf_core.influence.fit import (
    CurvatureMode,
    fit_exact,
    fit_gauss_newton,
    influence_from_factor,
    influence_from_projections,
)
from metainf_core.influence.flat import ParamLayout
from metainf_core.influence.gauss_newton import GaussNewtonConfig, GaussNewtonFit
from metainf_core.influence.gradients import target_gradient, task_gradients
from metainf_core.influence.scores import Ranking, TaskInfluence, sum_by_group, superclass_groups, truncation_candidates

__all__ = [
    "CurvatureFactor",
    "CurvatureMode",
    "GaussNewtonConfig",
    "GaussNewtonFit",
    "ParamLayout",
    "Ranking",
    "TaskInfluence",
    "fit_exact",
    "fit_gauss_newton",
    "influence_from_factor",
    "influence_from_projections",
    "meta_hessian",
    "spectral_factor",
    "sum_by_group",
    "superclass_groups",
    "target_gradient",
    "task_gradients",
    "truncation_candidates",
]
