"""The public Python API: open a run, fit TLXML, rank training tasks, validate, drill down, edit.

A thin facade in the shape of kronfluence's ``Analyzer`` and captum's ``TracInCP``: one object
that holds the task definition (:class:`~metainf_core.service.Run`, from :func:`open_run` or
:func:`import_run`), one that computes (:class:`Explainer`, configured by one frozen
:class:`ExplainerConfig`), and plain result arrays (:class:`Rankings`: test × train, as
kronfluence's pairwise scores) that turn into DataFrames. Every number comes from ``service``,
``explain``, ``drilldown`` and ``detect``; nothing is computed here.

Sign convention (METHODS §2, kronfluence's): ``score`` = helpfulness = −I_perf; positive means
up-weighting the training task lowers the test task's loss.

>>> from metainf_core import Explainer, open_run
>>> explainer = Explainer(open_run("protonet-fashion-mnist")).fit()   # doctest: +SKIP
>>> explainer.rank(7).to_pandas().head(5)                               # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metainf_core.config import InfluenceConfig, default_dtype
from metainf_core.edit import EditSpec, edit_report, edited_params, save_edited_checkpoint
from metainf_core.exceptions import CheckpointError, ConfigError, NotFittedError
from metainf_core.fits import fit_influence
from metainf_core.importing import import_run
from metainf_core.leave_out import leave_out_retrain
from metainf_core.ranking import Target, group_scores, ranking_table, score_parts, task_rows, test_score_matrix
from metainf_core.service import Run
from metainf_core.service import open_run as _open_folder
from metainf_core.validate import validation_report

if TYPE_CHECKING:
    import pandas as pd

    from metainf_core.detect import DetectionCurve
    from metainf_core.drilldown import TargetImageShares, TrainingTaskDrilldown
    from metainf_core.influence import TaskInfluence
    from metainf_core.learners import Params

__all__ = [
    "DEMO_DIR", "EditResult", "Explainer", "ExplainerConfig", "NotFittedError", "Rankings", "Run", "demos", "import_run",
    "open_run",
]  # fmt: skip

DEMO_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo"  # bundled demos (a source checkout)
COLUMNS = ("test_task", "train_task", "score", "rank", "classes", "superclasses", "corruption")


# ---- runs ---------------------------------------------------------------------------------
def demos() -> list[str]:
    """Names of the bundled demo runs (``assets/demo/<name>``, each with its Eq. 10–12 fit shipped)."""
    return sorted(p.name for p in DEMO_DIR.glob("*") if (p / "meta.json").is_file())


def open_run(path_or_demo: str | Path, device: str = "auto") -> Run:
    """A trained meta-learner ω̂ with its network, data and fixed tasksets (TLXML Eq. 1–2): a run
    folder, or a bundled demo by name (:func:`demos`); ``device`` auto = CUDA when present."""
    path = Path(path_or_demo)
    if not path.exists() and "/" not in str(path_or_demo) and (DEMO_DIR / str(path_or_demo) / "meta.json").is_file():
        path = DEMO_DIR / str(path_or_demo)
    elif not path.exists():
        raise CheckpointError(f"{path_or_demo}: neither a run folder nor a bundled demo ({', '.join(demos())})")
    return _open_folder(path, device=device)


# ---- configuration ------------------------------------------------------------------------
@dataclass(frozen=True)
class ExplainerConfig(InfluenceConfig):
    """InfluenceConfig's fit settings (TLXML Eq. 5 exact, Eq. 10–12 Gauss-Newton and pseudo-inverse)
    plus the device a run is opened on; every field keeps InfluenceConfig's meaning and checks.

    ``dtype`` "" chooses as the CLI does: float64 for ``method="exact"``, float32 for ``"gn"`` (the
    shipped demo fits are float32 Gauss-Newton, so the defaults load them at once). ``device`` is
    used when the Explainer opens the run itself; results and cache entries do not depend on it.
    """

    dtype: str = ""
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.dtype:
            object.__setattr__(self, "dtype", default_dtype(self.method))
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        super().__post_init__()

    @property
    def influence(self) -> InfluenceConfig:
        """The InfluenceConfig these settings fit with (its ``to_dict`` keys the disk cache)."""
        return InfluenceConfig(**{f.name: getattr(self, f.name) for f in fields(InfluenceConfig)})

    def to_dict(self) -> dict[str, Any]:
        """The fit settings' dict (as InfluenceConfig writes it) plus ``device``."""
        return {**self.influence.to_dict(), "device": self.device}


# ---- results ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Rankings:
    """Helpfulness of every training task for each test task: ``scores`` T × M (kronfluence's
    pairwise-scores layout, query × train), ``ranks`` T × M (0 = most helpful, ties by id), and
    per training task its fine classes, superclasses and corruption ("none", "noise", "label_flip")."""

    test_tasks: tuple[int, ...]
    scores: np.ndarray
    ranks: np.ndarray
    classes: tuple[tuple[str, ...], ...]
    superclasses: tuple[tuple[str, ...], ...]
    corruption: tuple[str, ...]

    def _row(self, test_task: int) -> int:
        if test_task not in self.test_tasks:
            raise ConfigError(f"test task {test_task} is not ranked here (ranked: {list(self.test_tasks)})")
        return self.test_tasks.index(test_task)

    def top(self, k: int = 10, test_task: int | None = None) -> np.ndarray:
        """The k training tasks of largest helpfulness (Eq. 9, 12) for ``test_task`` (default: the first
        ranked), captum's proponents; ``top(-k)``: the k most harmful, most harmful first (opponents)."""
        order = np.argsort(self.ranks[self._row(self.test_tasks[0] if test_task is None else test_task)], kind="stable")
        return order[:k].copy() if k >= 0 else order[::-1][:-k].copy()

    def to_dicts(self) -> list[dict[str, Any]]:
        """One dict per (test task, training task) pair of Eq. 9's scores, keys :data:`COLUMNS`, by test task then rank."""
        rows = []
        for t, i in enumerate(self.test_tasks):
            for j in np.argsort(self.ranks[t], kind="stable"):
                rows.append({
                    "test_task": i, "train_task": int(j), "score": float(self.scores[t, j]), "rank": int(self.ranks[t, j]),
                    "classes": self.classes[j], "superclasses": self.superclasses[j], "corruption": self.corruption[j],
                })  # fmt: skip
        return rows

    def to_pandas(self) -> pd.DataFrame:
        """Eq. 9's scores as a long DataFrame (:meth:`to_dicts`): int64 ids and ranks, float64 scores, tuples of names."""
        import pandas as pd

        frame = pd.DataFrame(self.to_dicts(), columns=list(COLUMNS))
        return frame.astype({"test_task": "int64", "train_task": "int64", "score": "float64", "rank": "int64"})


@dataclass(frozen=True, eq=False)
class EditResult:
    """A one-step edit ω' = ω̂ + δω (TLXML Eq. 13) and its effect on the test taskset (``report``:
    ``edit.edit_report``, loss and accuracy before and after with 95 % intervals)."""

    run: Run
    spec: EditSpec
    params: Params
    report: dict[str, Any]

    @property
    def accuracy_before(self) -> float:
        """Mean query accuracy of ω̂ over the test taskset (after adaptation, TLXML Eq. 1)."""
        return float(self.report["taskset"]["before"]["accuracy"])

    @property
    def accuracy_after(self) -> float:
        """Mean query accuracy of the edited ω' over the test taskset."""
        return float(self.report["taskset"]["after"]["accuracy"])

    def save(self, out: str | Path) -> Path:
        """Write ω' (Eq. 13) as a run folder of its own, recording the edit (``edit.save_edited_checkpoint``)."""
        edit = {"block": list(self.spec.block), "xi_block": self.spec.xi_block, "enhance": list(self.spec.enhance),
                "xi_enhance": self.spec.xi_enhance, "test": self.report["taskset"]["after"]}  # fmt: skip
        return save_edited_checkpoint(self.run, self.params, out, edit)


def _edit_spec(
    block: Sequence[int], enhance: Sequence[int], xi: float | None, xi_block: float, xi_enhance: float
) -> EditSpec:
    """Eq. 13's sets and shifts; ``xi`` is the ξ of the one set given."""
    if xi is not None:
        if bool(len(block)) == bool(len(enhance)):
            raise ConfigError("xi sets the ξ of one set: give block or enhance, or use xi_block and xi_enhance")
        xi_block, xi_enhance = (xi, xi_enhance) if len(block) else (xi_block, xi)
    return EditSpec(tuple(block), float(xi_block), tuple(enhance), float(xi_enhance))


# ---- the explainer ------------------------------------------------------------------------
def _progress_bar():
    """A tqdm bar per fit stage ("curvature", then "gradients") on stderr."""
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage) or bars.setdefault(stage, tqdm(total=total, desc=stage, unit="task", file=sys.stderr))
        bar.n = done
        bar.refresh()

    return progress, lambda: [b.close() for b in bars.values()]


class Explainer:
    """TLXML on one run (kronfluence's Analyzer): ``fit()`` once, then rank, validate, drill down, edit."""

    def __init__(self, run: Run | str | Path, config: ExplainerConfig | None = None) -> None:
        """Explain ``run`` (a Run, a run folder or a demo name, opened on ``config.device``) with ``config``."""
        self.config = ExplainerConfig() if config is None else config
        if not isinstance(self.config, ExplainerConfig):
            raise ConfigError(f"config must be an ExplainerConfig, got {type(self.config).__name__}")
        self.run = run if isinstance(run, Run) else open_run(run, device=self.config.device)
        self._influence: TaskInfluence | None = None

    def __repr__(self) -> str:
        state = f"fitted, k = {self._influence.truncation}" if self._influence is not None else "not fitted"
        return f"Explainer({self.run.checkpoint.path.name!r}, method={self.config.method!r}, {state})"

    # ---- fit ----
    def fit(self, progress: bool = True) -> Explainer:
        """Fit H⁺ and the projections Uᵀg_j (TLXML Eq. 5/10–12, Algorithms 1–3) on the training
        taskset; from the disk cache or the run's shipped fit when present, resuming a killed fit."""
        bar, close = _progress_bar() if progress else (None, lambda: None)
        try:
            self._influence = fit_influence(self.run, self.config.influence, progress=bar)
        finally:
            close()
        return self

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has run (H⁺ of Eq. 12 is at hand)."""
        return self._influence is not None

    @property
    def influence(self) -> TaskInfluence:
        """The fitted TLXML (U, P = GU, signs, truncation k); NotFittedError before :meth:`fit`."""
        if self._influence is None:
            raise NotFittedError("call .fit() first (it loads a cached or shipped fit at once)")
        return self._influence

    @property
    def num_tasks(self) -> int:
        """M, the number of training tasks (the 1/M of Eq. 4)."""
        return len(self.run.train_tasks)

    @cached_property
    def _train_labels(self) -> tuple[tuple, tuple, tuple]:
        m = np.arange(self.num_tasks)
        rows = task_rows(self.run, m, np.zeros(len(m)), m)
        return (
            tuple(tuple(r["classes"]) for r in rows),
            tuple(tuple(r["superclasses"]) for r in rows),
            tuple(r["corruption"] for r in rows),
        )

    def _ids(self, test_tasks: int | Sequence[int] | str) -> tuple[int, ...]:
        """Test task ids from one id, several, or ``"all"``."""
        if isinstance(test_tasks, str) and test_tasks == "all":
            return tuple(range(len(self.run.test_tasks)))
        ids = (test_tasks,) if isinstance(test_tasks, (int, np.integer)) else tuple(test_tasks)
        if not ids or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
            raise ConfigError(f"test tasks must be one or more integer ids or 'all', got {test_tasks!r}")
        return tuple(self.run.test_tasks.check_id(int(i)) for i in ids)

    # ---- scores ----
    def scores(self, test_tasks: int | Sequence[int] | str) -> np.ndarray:
        """T × M helpfulness −I_perf(i, j) = (1/M) g_iᵀ H⁺ g_j (TLXML Eq. 9, 12) of every training task j."""
        return test_score_matrix(self.run, self.influence, self.config.dtype, self._ids(test_tasks))

    def rank(self, test_tasks: int | Sequence[int] | str) -> Rankings:
        """Every training task ranked by helpfulness (TLXML Eq. 9, 12) for each test task (ids or "all") separately.

        Helpfulness is linear in the target's gradient, so ``scores.mean(0)`` scores the average loss
        of these test tasks together (the CLI's ``rank --test-task 1,2,3``).
        """
        ids = self._ids(test_tasks)
        scores = self.scores(ids)
        ranks = np.stack([ranking_table(row)[1] for row in scores])
        classes, superclasses, corruption = self._train_labels
        return Rankings(ids, scores, ranks, classes, superclasses, corruption)

    def score_parts(self, test_task: int) -> dict[str, Any]:
        """Helpfulness = test_size · size · alignment for every training task (TLXML Eq. 9 split in the H⁺ metric)."""
        return score_parts(self.run, self.influence, Target(self._ids(test_task)), self.config.dtype)

    def group_scores(self, test_task: int, grouping: str = "superclass") -> dict[str, float]:
        """Group influence Σ_{j∈G} helpfulness(i, j) per superclass set (TLXML A.3 applied to Eq. 9)."""
        return group_scores(self.run, self.scores(test_task)[0], grouping)

    def self_influence(self) -> np.ndarray:
        """(M,) self-influence (1/M) g_jᵀ H⁺ g_j of each training task (Eq. 12 with i = j; Koh & Liang's)."""
        from metainf_core.detect import self_influence

        return self_influence(self.influence)

    def audit(self, score: str = "self") -> DetectionCurve:
        """Fraction of the planted noise / label-flip tasks found vs fraction inspected in ``score``
        order ("self", "mean" or "rank"; seed 001 §6.3); ConfigError when none were planted."""
        from metainf_core.detect import corrupted_ids, detection_curve, detection_scores

        bad = corrupted_ids(self.run)
        return detection_curve(
            detection_scores(self.run, self.influence, self.config.dtype, score), bad, self.num_tasks
        )

    # ---- checks and images ----
    def validate(self, **options: Any) -> dict[str, Any]:
        """Self-rank table, noise and superclass proper tests with binomial σ (TLXML 5.1, B.2–B.4);
        ``options``: ``validate.validation_report``'s (self_rank, noise, superclass, max_tests, exact_agreement)."""
        return validation_report(self.run, self.influence, self.config.influence, **options)

    def drilldown(self, test_task: int, train_task: int) -> TrainingTaskDrilldown:
        """Which images of ``train_task`` carry its helpfulness for ``test_task`` (Eq. 9 split over
        query images, support effects ∂score/∂w; seed 001 Prop. 4.8)."""
        from metainf_core.drilldown import drill_training_task

        return drill_training_task(self.run, self.influence, test_task, train_task, dtype=self.config.dtype)

    def test_image_shares(self, test_task: int) -> TargetImageShares:
        """n_q × M table: each query image of ``test_task``'s part of every training task's Eq. 9 score
        (g_i is a mean over its images, so each column sums to that task's helpfulness)."""
        from metainf_core.drilldown import target_image_shares

        return target_image_shares(self.run, self.influence, test_task, dtype=self.config.dtype)

    def thumbnails(self, task_id: int, split: str = "train", scale: int = 2) -> np.ndarray:
        """A task's support set S_j (Eq. 1; corruptions applied, class-major) as one H × W × 3 uint8 strip."""
        from metainf_core.figures import thumbnail_strip
        from metainf_core.service import task_view

        if not self.run.dataset.is_image:
            raise ConfigError(f"{self.run.dataset.name} has no images (2-D points)")
        return thumbnail_strip(task_view(self.run, split, task_id).support_images, scale=scale)

    # ---- edits ----
    def edit(
        self, block: Sequence[int] = (), enhance: Sequence[int] = (), xi: float | None = None, *,
        xi_block: float = -1.0, xi_enhance: float = 1.0, test_task: int | None = None,
    ) -> EditResult:  # fmt: skip
        """One-step update ω' = ω̂ + ξ_B Σ_B I_meta + ξ_E Σ_E I_meta (TLXML Eq. 13) and accuracies before/after.

        ``xi`` is the ξ of whichever one set is given (e.g. ``block=ids, xi=-4``); with both sets,
        give ``xi_block`` and ``xi_enhance``. ``test_task`` also reports that task before and after.
        """
        spec = _edit_spec(block, enhance, xi, xi_block, xi_enhance)
        params = edited_params(self.run, self.influence, spec)
        return EditResult(self.run, spec, params, edit_report(self.run, params, test_task))

    def leave_out(self, exclude: Sequence[int], out: str | Path, steps: int | None = None) -> dict[str, Any]:
        """Retrain from scratch never drawing ``exclude`` (TLXML Table 3's leave-out, the slow baseline of Eq. 13)."""
        return leave_out_retrain(self.run, exclude, out, steps)
