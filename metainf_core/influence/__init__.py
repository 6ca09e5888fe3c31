"""Task-level influence functions for meta-learning (TLXML; METHODS §2, §3, §5).

Public API::

    inf = fit_exact(model, spec, params, train_tasks, dataset)                # q ≲ 3,000
    inf, record = fit_gauss_newton(model, spec, params, train_tasks, dataset) # real models (1 process or torchrun)
    g = task_gradients(model, spec, params, test_tasks, dataset, [i]).mean(0) # a target's g_i (runs: ranking.target_gradient)
    inf.rank(g)            # training tasks by helpfulness = −I_perf (positive: lowers test loss)
    inf.i_meta(j)          # −(1/M) H⁺ g_j
    inf.self_rank_table()  # [(k, mean self-rank)], inf.truncation the chosen k
    solve_ihvp(hvp_of(f, w), v, method="cg")        # iHVP solvers with residual reports
    fit_task_if(model, spec, params, train_tasks, dataset).rank(g)  # task-IF (proximal MAML, seed 001)
"""

from metainf_core.influence.exact import CurvatureFactor, meta_hessian, spectral_factor
from metainf_core.influence.fit import (
    fit_exact,
    fit_gauss_newton,
    influence_from_factor,
    influence_from_projections,
    project_gradients,
)
from metainf_core.influence.flat import ParamLayout
from metainf_core.influence.gauss_newton import GaussNewtonConfig, GaussNewtonFit
from metainf_core.influence.gradients import task_gradients
from metainf_core.influence.hvp import (
    HVP,
    EigenEstimate,
    hessian_from_hvp,
    hessian_of,
    hvp_of,
    lanczos,
    power_iteration,
)
from metainf_core.influence.ihvp import (
    IHVPMethod,
    IHVPResult,
    solve_cg,
    solve_exact,
    solve_gauss_newton,
    solve_ihvp,
    solve_neumann,
)
from metainf_core.influence.projection import CountSketch, InfluenceSpace  # large backbones (issue 13 item 5)
from metainf_core.influence.scores import Ranking, TaskInfluence, sum_by_group, superclass_groups, truncation_candidates
from metainf_core.influence.task_if import (  # proximal MAML, seed 001 (METHODS §6)
    IFMode,
    InnerSolver,
    ProximalFunctions,
    ProximalTaskState,
    TaskIF,
    TaskIFConfig,
    create_proximal_functions,
    fit_task_if,
    fit_task_if_tasks,
    task_state,
    total_hessian_hvp,
)

__all__ = [
    "CurvatureFactor",
    "CountSketch",
    "EigenEstimate",
    "GaussNewtonConfig",
    "GaussNewtonFit",
    "HVP",
    "IFMode",
    "IHVPMethod",
    "IHVPResult",
    "InfluenceSpace",
    "InnerSolver",
    "ParamLayout",
    "ProximalFunctions",
    "ProximalTaskState",
    "Ranking",
    "TaskIF",
    "TaskIFConfig",
    "TaskInfluence",
    "create_proximal_functions",
    "fit_exact",
    "fit_gauss_newton",
    "fit_task_if",
    "fit_task_if_tasks",
    "hessian_from_hvp",
    "hessian_of",
    "hvp_of",
    "influence_from_factor",
    "influence_from_projections",
    "lanczos",
    "meta_hessian",
    "power_iteration",
    "project_gradients",
    "solve_cg",
    "solve_exact",
    "solve_gauss_newton",
    "solve_ihvp",
    "solve_neumann",
    "spectral_factor",
    "sum_by_group",
    "superclass_groups",
    "task_gradients",
    "task_state",
    "total_hessian_hvp",
    "truncation_candidates",
]
