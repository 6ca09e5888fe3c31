"""Frozen, validated, serialisable configuration for each stage: tasks and training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import TYPE_CHECKING, Any

from metainf_core.exceptions import ConfigError

if TYPE_CHECKING:
    from metainf_core.learners import LearnerSpec


class Algorithm(str, Enum):
    """Meta-learners (TLXML A.1; proximal MAML: METHODS §1, seed 001)."""

    MAML = "maml"
    PROTONET = "protonet"
    PROXIMAL_MAML = "proximal-maml"

    @property
    def has_classifier_head(self) -> bool:
        """Whether the network ends in a ``ways``-output head (the MAML family) or in an embedding (ProtoNet)."""
        return self is not Algorithm.PROTONET


class Architecture(str, Enum):
    """Networks of TLXML 5.1 / B.2–B.4."""

    CONV3 = "conv3"  # 3 conv blocks (+ linear head for MAML)
    CONV4 = "conv4"  # 4 conv blocks (+ linear head for MAML)
    MLP = "mlp"  # FFT 6x6 features -> 32 -> ways, batch norm (TLXML B.2, 1,413 params)
    MLP_SYNTHETIC = "mlp-synthetic"  # 2-4-4-3 with batch norm (TLXML B.3, 63 params)


EXTERNAL_ARCH = "external"  # TrainConfig.arch of a run whose network is a constructor expression
# ProtoNet embeds support and query in separate network calls (metainf's training: batch-norm
# statistics per set) or in one (learn2learn's ProtoNet example: statistics over both).
EMBEDDINGS = ("separate", "joint")

# Datasets whose inputs the default conv4 cannot take, and the network they train with instead.
DATASET_ARCHITECTURES = {"synthetic": Architecture.MLP_SYNTHETIC}  # 2-D points (TLXML B.3)


def default_arch(dataset: str) -> str:
    """The network a dataset trains with when none is chosen: ``mlp-synthetic`` for the 2-D
    synthetic points, ``TrainConfig``'s default (conv4) for the image datasets."""
    arch = DATASET_ARCHITECTURES.get(dataset)
    return arch.value if arch is not None else TrainConfig.arch


def check_damping_and_dtype(damping: float, dtype: str) -> None:
    """Shared checks of influence settings: finite λ_d ≥ 0 and a float dtype name."""
    if not (damping >= 0 and damping < float("inf")):
        raise ConfigError(f"damping must be a finite non-negative number, got {damping!r}")
    if dtype not in ("float32", "float64"):
        raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}")


def default_dtype(method: str) -> str:
    """The fit's dtype when none is chosen (CLI ``--dtype`` left out, ``api.ExplainerConfig(dtype="")``):
    float64 for the exact meta-Hessian (TLXML Eq. 5: small models, where its pseudo-inverse needs the
    precision), float32 for Gauss-Newton (Eq. 10–11: large models; the shipped demo fits are float32)."""
    return "float64" if METHOD_ALIASES.get(method) is InfluenceMethod.EXACT else "float32"  # "exact" or "tlxml-exact"


def setting(default: Any, help: str, *, flag: str = "", choices: tuple[str, ...] = (), metavar: str = "") -> Any:
    """A config field that is also a command-line option (``cli.py`` makes ``--field-name``, or
    ``flag``, from it with this help): a new setting is added in one place, its default in one.
    A field typed ``X | None`` with default None is an option of type X whose absence means None."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "metavar": metavar})


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class TaskConfig:
    """What the fixed training and test tasksets are drawn from (TLXML 3, B.1).

    ``noise_tasks`` / ``label_flip_tasks`` training tasks are corrupted (TLXML 5.1.2, seed 001
    §6.3); their ids are chosen at random from the seed and recorded in the manifest.
    """

    dataset: str = setting("fashion-mnist", "what the tasks are drawn from (e.g. fashion-mnist, omniglot, synthetic)")
    ways: int = setting(3, "classes per task (c)")
    shots: int = setting(5, "support images per class (n_s)")
    queries: int = setting(5, "query images per class (n_q)")
    train_tasks: int = setting(512, "training tasks M")
    test_tasks: int = setting(128, "test tasks")
    seed: int = setting(0, "seed of the fixed tasksets", flag="--task-seed")
    noise_tasks: int = setting(0, "training tasks of pure-noise images (TLXML 5.1.2)")
    label_flip_tasks: int = setting(0, "training tasks with shuffled labels (seed 001 §6.3)")

    def __post_init__(self) -> None:
        _check_positive(self, "ways", "shots", "queries", "train_tasks", "test_tasks")
        if self.ways < 2:
            raise ConfigError("ways must be at least 2")
        for name in ("noise_tasks", "label_flip_tasks", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be a non-negative integer")
        if self.noise_tasks + self.label_flip_tasks > self.train_tasks:
            raise ConfigError("more corrupted tasks than training tasks")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskConfig:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class TrainConfig:
    """Meta-training hyper-parameters (TLXML 5.1: Adam, meta-batch 32; MAML one inner step).

    ``prox_*`` and ``cg_*`` are proximal MAML's (METHODS §1, §6), unused by the other learners:
    θ̂ = argmin_θ L(S; θ) + (λ/2)‖θ − ω‖² with λ = ``prox_lambda``, solved by at most
    ``prox_steps`` gradient steps of size ``prox_lr`` (stopping once ‖∇‖ ≤ ``prox_tol``); the
    implicit meta-gradient λ(H_in + λI)⁻¹ ∇_θ L_out solves its system by at most ``cg_steps``
    conjugate-gradient iterations (stopping once ‖residual‖ ≤ ``cg_tol``·‖∇_θ L_out‖).

    Defaults: λ = 1 lies between iMAML's 0.5 (MiniImageNet) and 2 (Omniglot); it makes the
    inner objective λ-strongly convex wherever H_in ⪰ 0, so gradient descent with step 0.1
    contracts the error by ≤ 1 − 0.1·λ = 0.9 a step (≈ 3·10⁻⁵ after 100 steps); 20 CG steps
    are plenty for an (H_in + λI) whose condition number is (‖H_in‖ + λ)/λ (iMAML used 5).
    """

    algo: str = setting("protonet", "meta-learner", choices=tuple(a.value for a in Algorithm))
    arch: str = setting("conv4", "network", choices=tuple(a.value for a in Architecture))
    filters: int = setting(16, "filters per conv block (hidden units of the mlp)")
    steps: int = setting(1000, "meta-batches to train on")
    meta_batch: int = setting(32, "tasks per meta-batch")
    lr: float = setting(1e-3, "Adam learning rate (outer)")
    inner_lr: float = setting(0.4, "MAML inner step size α")
    inner_steps: int = setting(1, "MAML inner (adaptation) steps")
    first_order: bool = setting(False, "first-order MAML (no second derivatives through the inner step)")
    seed: int = setting(0, "initialisation and meta-batch seed")
    checkpoint_every: int = setting(100, "meta-batches between checkpoints")
    keep_history: bool = setting(False, "also keep ω at every checkpoint (diagnostics)")
    exclude_tasks: tuple[int, ...] = setting((), "comma-separated training task ids never drawn (leave-out retraining)")
    prox_lambda: float = setting(1.0, "proximal MAML: λ, (λ/2)‖θ − ω‖²")
    prox_lr: float = setting(0.1, "proximal MAML: inner gradient step size")
    prox_steps: int = setting(100, "proximal MAML: most inner steps")
    prox_tol: float = setting(1e-4, "proximal MAML: inner stop at ‖∇‖ ≤ tol")
    cg_steps: int = setting(20, "proximal MAML: most CG steps")
    cg_tol: float = setting(1e-6, "proximal MAML: CG relative residual tolerance")
    # A network constructor expression (models.construct) in place of ``arch``: imported runs.
    model: str = setting("", 'a network constructor instead of --arch, e.g. "l2l.vision.models.CNN4(output_size=5, hidden_size=32)"',
                         metavar="CONSTRUCTOR")  # fmt: skip
    protonet_embedding: str = setting("separate", "ProtoNet: support and query through the network in two calls (separate) or one (joint)",
                                      choices=EMBEDDINGS)  # fmt: skip

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude_tasks", tuple(sorted({int(j) for j in self.exclude_tasks})))
        if any(j < 0 for j in self.exclude_tasks):
            raise ConfigError("exclude_tasks must be non-negative task ids")
        if self.model:
            object.__setattr__(self, "arch", EXTERNAL_ARCH)
        try:
            Algorithm(self.algo)
            if not self.model:
                Architecture(self.arch)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.protonet_embedding not in EMBEDDINGS:
            raise ConfigError(f"protonet_embedding must be one of {', '.join(EMBEDDINGS)}, got {self.protonet_embedding!r}")
        _check_positive(self, "filters", "steps", "meta_batch", "inner_steps", "checkpoint_every")
        _check_positive(self, "prox_steps", "cg_steps")
        if not (self.lr > 0 and self.inner_lr > 0 and self.prox_lr > 0):
            raise ConfigError("learning rates must be positive")
        if not (0 < self.prox_lambda < float("inf")):
            raise ConfigError(f"prox_lambda must be a finite positive number, got {self.prox_lambda!r}")
        if not (self.prox_tol >= 0 and self.cg_tol >= 0):
            raise ConfigError("prox_tol and cg_tol must be non-negative")

    @property
    def algorithm(self) -> Algorithm:
        return Algorithm(self.algo)

    @property
    def architecture(self) -> Architecture:
        return Architecture(self.arch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class InfluenceMethod(str, Enum):
    """How the meta-Hessian is obtained (TLXML Eq. 5 exact; Eq. 10–11 Gauss-Newton): the one
    vocabulary of TLXML methods. ``value`` is the canonical name (settings, cache keys, CLI);
    ``compare_name`` the method registry's (``compare.METHODS``); ``METHOD_ALIASES`` maps both to it."""

    EXACT = "exact"
    GN = "gn"

    @property
    def compare_name(self) -> str:
        """``tlxml-exact`` / ``tlxml-gn``: the name in the scoring-method registry beside task-IF and the rest."""
        return f"tlxml-{self.value}"


# every accepted name of a TLXML method (canonical, then compare's; the CLI's rank takes both) -> the method
METHOD_ALIASES: dict[str, InfluenceMethod] = {
    **{m.value: m for m in InfluenceMethod},
    **{m.compare_name: m for m in InfluenceMethod},
}


@dataclass(frozen=True)
class InfluenceConfig:
    """Settings of a TLXML fit; together with the checkpoint and taskset they key the disk cache.

    ``truncation`` 0 chooses k by self-rank (TLXML B.3); ``n_orth`` is Algorithm 1's N_orth
    (N_max = 2·N_orth); ``damping`` adds λ to the curvature (METHODS §8).

    Large backbones (Gauss-Newton only; ``influence/projection.py``): ``projection_dim`` d > 0
    sketches every q-vector to d dimensions with a seeded CountSketch (``projection_seed``),
    ``param_groups`` restricts influence to the parameters under these dotted name prefixes (e.g.
    ``("features.3", "head")``; empty = all); ``rows_per_task`` s > 0 replaces each task's
    n_q·(c−1) Gauss-Newton columns by s random combinations (an unbiased estimate of its block at
    s backward passes, seeded by ``projection_seed`` and the task id; ``columns.sample_cotangents``).
    They are left out of ``to_dict`` (the cache key) while at their defaults, so the keys of
    existing fits do not change.
    """

    method: str = setting("gn", "exact Hessian (small q) or Gauss-Newton", choices=("exact", "gn"))
    n_orth: int = setting(512, "Algorithm 1's N_orth (N_max = 2 N_orth)")
    damping: float = setting(0.0, "λ_d added to the curvature (METHODS §8)")
    truncation: int = setting(0, "kept eigen-directions k (0: choose by self-rank)")
    self_rank_sample: int = 256  # not a command-line option
    dtype: str = setting("float64", "arithmetic of the fit", choices=("float32", "float64"))
    task_batch: int = 8  # not a command-line option
    projection_dim: int = setting(0, "gn, large backbones: CountSketch every parameter-space vector to D dimensions (0: none)",
                                  metavar="D")  # fmt: skip
    projection_seed: int = setting(0, "seed of the --projection-dim sketch and the --rows-per-task samples")
    param_groups: tuple[str, ...] = setting((), "gn: influence w.r.t. these comma-separated parameter-name prefixes only, e.g. features.3,head",
                                            metavar="PREFIXES")  # fmt: skip
    rows_per_task: int = setting(0, "gn, large backbones: S random combinations of each task's n_q·(c−1) columns (S backward passes; 0: all)",
                                 metavar="S")  # fmt: skip

    # fields omitted from to_dict() at these values: cache keys predating them stay byte-identical
    _KEY_DEFAULTS = {"projection_dim": 0, "projection_seed": 0, "param_groups": (), "rows_per_task": 0}

    def __post_init__(self) -> None:
        groups = self.param_groups
        if isinstance(groups, str):
            groups = tuple(g for g in groups.split(",") if g.strip())
        if not isinstance(groups, (tuple, list)) or not all(isinstance(g, str) for g in groups):
            raise ConfigError(f"param_groups must be parameter-name prefixes (strings), got {self.param_groups!r}")
        groups = tuple(g.strip() for g in groups)
        bad = [g for g in groups if not g or g.startswith(".") or g.endswith(".") or ".." in g]
        if bad:
            raise ConfigError(f"param_groups: {bad[0]!r} is not a dotted parameter-name prefix (e.g. 'features.3' or 'head')")
        object.__setattr__(self, "param_groups", tuple(dict.fromkeys(groups)))
        for name in ("projection_dim", "projection_seed", "rows_per_task"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer (0 = off for projection_dim and rows_per_task), got {value!r}")
        try:  # settings hold canonical names only: one cache key per method
            InfluenceMethod(self.method)
        except ValueError:
            raise ConfigError(f"method must be 'exact' or 'gn', got {self.method!r}") from None
        _check_positive(self, "n_orth", "self_rank_sample", "task_batch")
        if not isinstance(self.truncation, int) or self.truncation < 0:
            raise ConfigError("truncation must be a non-negative integer (0 = choose by self-rank)")
        check_damping_and_dtype(self.damping, self.dtype)
        if (self.projection_dim or self.param_groups or self.rows_per_task) and InfluenceMethod(self.method) is not InfluenceMethod.GN:
            raise ConfigError("projection_dim, param_groups and rows_per_task apply to the Gauss-Newton method (method='gn') only")

    @property
    def reduces(self) -> bool:
        """Whether the fit is sketched and/or restricted to parameter groups."""
        return bool(self.projection_dim or self.param_groups)

    def to_dict(self) -> dict[str, Any]:
        """All fields, except the large-backbone ones while at their defaults (cache-key stability)."""
        d = asdict(self)
        for name, default in self._KEY_DEFAULTS.items():
            if d[name] == default or (name == "projection_seed" and not (self.projection_dim or self.rows_per_task)):
                del d[name]
        if "param_groups" in d:
            d["param_groups"] = list(d["param_groups"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InfluenceConfig:
        values = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        if "param_groups" in values:
            values["param_groups"] = tuple(values["param_groups"])
        return cls(**values)


SOLVERS = ("auto", "dense", "cg", "lanczos", "neumann")  # task-IF / direct IF's linear solves (compare.solver_for)


@dataclass(frozen=True)
class CompareConfig:
    """Settings shared by compare's methods (``compare.METHODS``): ``damping`` λ_d of task-IF / direct IF,
    ``dtype`` of all computations, ``n_orth`` of the Gauss-Newton fit (its default is InfluenceConfig's),
    and the solver of task-IF / direct IF's linear systems (seed 001 Eq. 4–6); TLXML's truncation is
    chosen by self-rank. ``python -m metainf_core compare`` makes its options from these fields."""

    damping: float = setting(0.0, "λ_d of task-if and direct-if")
    dtype: str = setting("float64", "arithmetic of every method", choices=("float32", "float64"))
    n_orth: int = setting(InfluenceConfig.n_orth, "tlxml-gn: Algorithm 1's N_orth")
    solver: str = setting("auto", "task-if / direct-if: dense q × q solves, or cg / lanczos (the dense positive part) / neumann on Hessian-vector products "
                                  "(auto: dense when q ≤ 5,000, else lanczos; hours on a CPU for the demos)", choices=SOLVERS)
    tol: float = setting(1e-6, "relative residual ‖(H + λ_d I)x − g‖/‖g‖ the matrix-free solves stop at")
    max_iter: int = setting(200, "Hessian-vector products (cg, lanczos) or series terms (neumann) per matrix-free solve")

    def __post_init__(self) -> None:
        check_damping_and_dtype(self.damping, self.dtype)
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if not (self.tol > 0 and self.max_iter >= 1):
            raise ConfigError(f"tol must be positive and max_iter at least 1, got {self.tol}, {self.max_iter}")
        _check_positive(self, "n_orth")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LDSConfig:
    """The task-level LDS's retrainings (``lds.task_lds``; TRAK's LDS with training tasks as the
    data points): K subsets of fraction ``alpha`` drawn with ``subset_seed``, each retrained with
    ``seeds`` R training seeds for ``steps`` meta-batches (0 = as the run was trained).
    ``python -m metainf_core lds`` makes its options from these fields."""

    subsets: int = setting(20, "K random training-task subsets")
    alpha: float = setting(0.5, "fraction of the training tasks each subset keeps")
    seeds: int = setting(4, "R training seeds per subset (the run's seed, +1, ...); ≥ 2 for the ceiling")
    subset_seed: int = setting(0, "seed of the random subsets")
    steps: int = setting(0, "steps of each retraining (0: as trained)")

    def __post_init__(self) -> None:
        if not isinstance(self.subsets, int) or self.subsets < 3:
            raise ConfigError(f"subsets must be an integer ≥ 3 (a Spearman correlation over K subsets), got {self.subsets!r}")
        if not (0.0 < self.alpha < 1.0):
            raise ConfigError(f"alpha must lie strictly between 0 and 1, got {self.alpha!r}")
        for name in ("seeds", "subset_seed", "steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "seeds" else 0):
                raise ConfigError(f"{name} must be a {'positive' if name == 'seeds' else 'non-negative'} integer, got {value!r}")

    def subset_size(self, num_tasks: int) -> int:
        """round(α·M), which must leave at least one task in and one out."""
        n = round(self.alpha * num_tasks)
        if not 1 <= n < num_tasks:
            raise ConfigError(f"alpha = {self.alpha} keeps {n} of {num_tasks} training tasks; it must keep between 1 and M − 1")
        return n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DiagnosticsConfig:
    """What the landscape diagnostics compute (``diagnostics``, seed 003): T and α of the trajectories
    (None: the learner's inner_steps, inner_lr; ProtoNet: 1 step), eigen-solver budgets, and how many
    test tasks (the first ones). ``python -m metainf_core diagnose`` makes its options from the settings;
    ``to_dict()`` keys the diagnostics cache (the demos ship entries under it)."""

    steps: int | None = setting(None, "adaptation steps T (default: the learner's)")
    step_size: float | None = setting(None, "adaptation step α (default: the learner's)")
    num_tasks: int = setting(60, "test tasks used (the first ones; seed 003 uses 60)", flag="--tasks")
    power_iters: int = 100
    power_tol: float = 1e-5
    lanczos_iters: int = 20
    lanczos_tol: float = 1e-8
    seed: int = 0

    def __post_init__(self) -> None:
        _check_positive(self, "num_tasks", "power_iters", "lanczos_iters")
        if self.num_tasks < 2:
            raise ConfigError("coherence needs num_tasks ≥ 2")
        if self.steps is not None:
            _check_positive(self, "steps")
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(f"step_size must be positive, got {self.step_size!r}")
        if not (self.power_tol >= 0 and self.lanczos_tol >= 0):
            raise ConfigError("tolerances must be non-negative")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def trajectory(self, spec: LearnerSpec) -> tuple[int, float]:
        """(T, α) for ``spec``."""
        protonet = Algorithm(spec.algo) is Algorithm.PROTONET
        steps = self.steps if self.steps is not None else (1 if protonet else spec.inner_steps)
        return steps, self.step_size if self.step_size is not None else spec.inner_lr


REMOVAL_ESTIMATORS = ("task-if", "direct-if", "tlxml-exact", "tlxml-gn")  # fidelity.py's cheap removal estimates


def check_removal_estimates(methods: Sequence[str], retrain_seeds: Sequence[int]) -> None:
    """Known removal estimators (``REMOVAL_ESTIMATORS``) and distinct retraining seeds, at least one."""
    for name in methods:
        if name not in REMOVAL_ESTIMATORS:
            raise ConfigError(f"unknown removal estimator {name!r}; choose from {', '.join(REMOVAL_ESTIMATORS)}")
    if not retrain_seeds or len(set(retrain_seeds)) != len(retrain_seeds):
        raise ConfigError(f"retrain_seeds must be distinct and at least one, got {list(retrain_seeds)}")


@dataclass(frozen=True)
class FidelityConfig:
    """Removal fidelity (``fidelity.fidelity_report``, seed 001 Table 1): ``draws`` random sets of ``k``
    training tasks drawn with ``seed``, removed by retraining (once per seed in ``retrain_seeds``, for
    ``retrain_steps`` meta-batches; None: as trained) and by each of ``methods`` (task-IF / direct IF
    with damping λ_d = ``damping``). ``python -m metainf_core fidelity`` makes its options from these fields."""

    k: int = setting(8, "tasks removed per draw")
    draws: int = setting(5, "random removal sets (detect.random_removal_sets)")
    seed: int = setting(0, "seed of the random removal sets")
    methods: tuple[str, ...] = setting(
        REMOVAL_ESTIMATORS, f"comma-separated (default all): {','.join(REMOVAL_ESTIMATORS)}"
    )
    retrain_seeds: tuple[int, ...] = setting((0, 1, 2), "training seeds of the retraining interval")
    retrain_steps: int | None = setting(None, "steps of each retraining (default: as trained)")
    damping: float = setting(0.01, "λ_d of task-if and direct-if")

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))  # lists from Python or JSON: hashable, as the CLI's
        object.__setattr__(self, "retrain_seeds", tuple(self.retrain_seeds))
        _check_positive(self, "k", "draws")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        check_removal_estimates(self.methods, self.retrain_seeds)
        if self.retrain_steps is not None:
            _check_positive(self, "retrain_steps")
        check_damping_and_dtype(self.damping, "float64")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
