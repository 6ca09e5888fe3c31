"""Drill-down inside tasks: which images carry a training task's TLXML score for a test task.

TLXML scores whole tasks: helpfulness(i, j) = g_iᵀ M g_j with M = (1/M) U_k diag(s_k) U_kᵀ
(Eq. 9 and 12; ``influence.scores``). With v = M g_i, one q-vector per test task, training task
j scores vᵀ g_j, and g_j = ∇_ω L(Q_j; A(S_j, ω)) (Eq. 1) splits over images three ways:

- query images of j: g_j is the mean of per-image gradients, so share_k = vᵀ∇_ω ℓ_k / n_q and
  the shares add up to the score exactly;
- support images of j act through the adaptation A(S_j, ω): the effect of image s is
  ∂score/∂w_s at w = 1 for a weight w_s on it (seed 001's instance-level influence of a
  training point, Prop. 4.8, taken on the task score);
- query images of test task i: g_i is a mean too, so share_k = (∇_ω ℓ_i,k)ᵀ M g_j / n_q adds up
  to the score of every training task j at once (an n_q × M table).

Every derivative here runs on the composite batch-norm copy of the network (``influence.flat``),
because torch's fused kernel gives wrong second derivatives. Batch statistics are never weighted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, jacrev, jvp

from metainf_core.config import Algorithm
from metainf_core.exceptions import ConfigError
from metainf_core.fits import params_as
from metainf_core.influence.flat import (
    ParamLayout,
    create_flat_forward_function,
    create_flat_logits_function,
    needs_second_order,
)
from metainf_core.influence.gradients import iter_task_batches, task_gradients
from metainf_core.influence.scores import TaskInfluence
from metainf_core.learners import LearnerSpec, Params, protonet_embeddings
from metainf_core.service import Run
from metainf_core.tasks import TaskBatch

# (x, query_weights u, support_weights w, sx, sy, qx, qy) -> Σ_k u_k ℓ_k(x; w) / n_q
DrillLossFunction = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


# ---- results ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TaskImages:
    """The support or query images of one task in the learner's order (their pixels, corruptions
    applied, are ``service.task_view``'s ``support_images`` / ``query_images``)."""

    split: str  # "train" or "test"
    task_id: int
    role: str  # "support" or "query"
    sample_index: np.ndarray  # (n,) dataset sample index (noise tasks: the image the noise replaced)
    label: np.ndarray  # (n,) label 0..ways-1 the learner was given (shuffled in label-flip tasks)
    class_name: tuple[str, ...]  # (n,) class name of that label
    true_label: np.ndarray  # (n,) position of the image's own class in the task
    true_class_name: tuple[str, ...]  # (n,) the image's own class
    corruption: str  # "none", "noise" or "label_flip"

    def __len__(self) -> int:
        return len(self.sample_index)


@dataclass(frozen=True, eq=False)
class ImageShares:
    """One number per image of ``images`` explaining ``total``: additive shares (sum = total) or,
    when ``additive`` is False, derivative effects ∂score/∂w (support images)."""

    images: TaskImages
    values: np.ndarray  # (n,)
    total: float
    additive: bool


@dataclass(frozen=True, eq=False)
class TrainingTaskDrilldown:
    """Images of training task ``train_task`` behind its helpfulness for test task ``test_task``.

    ``score`` = vᵀ g_j in the drill-down's dtype (= query.values.sum()); ``fitted_score`` is the
    ranking's number, inf.helpfulness(g_i)[j] (the fit's dtype: equal up to its rounding).
    ``support.values`` are effects ∂score/∂w_s (positive: up-weighting image s raises the score).
    """

    test_task: int
    train_task: int
    algo: str
    score: float
    fitted_score: float
    query: ImageShares
    support: ImageShares


@dataclass(frozen=True, eq=False)
class TargetImageShares:
    """``shares[k, j]`` = (∇_ω ℓ_i,k)ᵀ M g_j / n_q: test image k's part of training task j's score;
    each column sums to the task's helpfulness for the whole test task."""

    test_task: int
    images: TaskImages  # the test task's query images
    shares: np.ndarray  # (n_q, M)

    @property
    def scores(self) -> np.ndarray:
        """(M,) helpfulness of every training task (column sums)."""
        return self.shares.sum(0)

    def for_training_task(self, j: int) -> ImageShares:
        """Test-image shares of one training task's score."""
        if not 0 <= int(j) < self.shares.shape[1]:
            raise ConfigError(f"training task {j} is not in 0..{self.shares.shape[1] - 1}")
        col = self.shares[:, int(j)]
        return ImageShares(self.images, col.copy(), float(col.sum()), True)


# ---- pure functions of flat parameters ---------------------------------------------------------
def score_direction(inf: TaskInfluence, test_grad: Tensor) -> Tensor:
    """v = M g_i = (1/M) U_k diag(s_k) U_kᵀ g_i (TLXML Eq. 12), so helpfulness(i, j) = vᵀ g_j.

    Computed in ``test_grad``'s dtype and device (the factor is cast to it).
    """
    if test_grad.dim() != 1 or test_grad.shape[0] != inf.num_params:
        q = inf.num_params
        raise ConfigError(f"test gradient must be a vector of q = {q} entries, got {tuple(test_grad.shape)}")
    if inf.space is not None:  # sketched / parameter-group fit: v = (1/M) Rᵀ U_k diag(s) U_kᵀ R g_i
        return inf.score_direction(test_grad)
    k = inf.truncation
    u = inf.factor[:, :k].to(test_grad)
    return u @ (inf.signs[:k].to(test_grad) * (test_grad @ u)) / inf.num_tasks


def _check_learner(spec: LearnerSpec) -> Algorithm:
    algo = Algorithm(spec.algo)
    if algo is Algorithm.PROXIMAL_MAML:
        raise ConfigError(
            "image drill-down covers MAML and ProtoNet; proximal MAML's implicit adaptation "
            "has no forward-mode derivative"
        )
    return algo


def create_drill_loss_function(
    model: nn.Module, spec: LearnerSpec, layout: ParamLayout, w_hat: Tensor
) -> tuple[DrillLossFunction, Tensor]:
    """L(x; u, w) = Σ_k u_k ℓ_k / n_q with support weights w, and the point x0 where ∇_x L = g_j.

    MAML's inner loss is Σ_s w_s ℓ_s / n_s; ProtoNet's prototype of class l is Σ_{s∈l} w_s f(x_s) /
    Σ_{s∈l} w_s. u = w = 1 gives the learners' query loss (TLXML Eq. 1). x is ω for second-order
    MAML and ProtoNet; first-order MAML's g_j is ∇_θ L_Q at θ̂ (dθ̂/dω taken as I), so there x is an
    offset added to θ̂(ω̂, w) and x0 = 0. Batch-norm statistics stay unweighted.
    """
    algo = _check_learner(spec)
    forward = create_flat_forward_function(model, layout, second_order=True)  # composite batch norm

    def adapt(theta: Tensor, w: Tensor, sx: Tensor, sy: Tensor) -> Tensor:
        def inner_loss(t: Tensor) -> Tensor:
            return (w * F.cross_entropy(forward(t, sx), sy, reduction="none")).sum() / sx.shape[0]

        for _ in range(spec.inner_steps):
            theta = theta - spec.inner_lr * grad(inner_loss)(theta)
        return theta

    def weighted(u: Tensor, logits: Tensor, qy: Tensor) -> Tensor:
        return (u * F.cross_entropy(logits, qy, reduction="none")).sum() / qy.shape[0]

    if algo is Algorithm.PROTONET:

        def protonet_loss(x: Tensor, u: Tensor, w: Tensor, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
            s_emb, q_emb = protonet_embeddings(lambda inp: forward(x, inp), sx, qx, spec.protonet_embedding)
            onehot = (sy.unsqueeze(-1) == torch.arange(spec.ways, device=sy.device)).to(s_emb.dtype) * w.unsqueeze(1)
            centroids = (onehot.T @ s_emb) / onehot.sum(0).unsqueeze(1)
            return weighted(u, -((q_emb.unsqueeze(1) - centroids.unsqueeze(0)) ** 2).sum(-1), qy)

        return protonet_loss, w_hat
    if spec.first_order:

        def first_order_loss(x: Tensor, u: Tensor, w: Tensor, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
            return weighted(u, forward(adapt(w_hat, w, sx, sy) + x, qx), qy)

        return first_order_loss, torch.zeros_like(w_hat)

    def maml_loss(x: Tensor, u: Tensor, w: Tensor, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        return weighted(u, forward(adapt(x, w, sx, sy), qx), qy)

    return maml_loss, w_hat


def create_score_function(
    loss_fn: DrillLossFunction, x0: Tensor, v: Tensor, task: TaskBatch
) -> Callable[[Tensor, Tensor], Tensor]:
    """score(u, w) = vᵀ∇_x L(x0; u, w) for one task (unbatched tensors): the function whose
    derivatives at u = w = 1 are the image shares and effects (used for finite-difference checks)."""
    sx, sy, qx, qy = task.support_x, task.support_y, task.query_x, task.query_y

    def score(u: Tensor, w: Tensor) -> Tensor:
        return jvp(lambda x: loss_fn(x, u, w, sx, sy, qx, qy), (x0,), (v,))[1]

    return score


def image_effects(loss_fn: DrillLossFunction, x0: Tensor, v: Tensor, task: TaskBatch) -> tuple[Tensor, Tensor]:
    """(query shares (n_q), support effects (n_s)) = ∂score/∂(u, w) at u = w = 1, in one
    forward-over-reverse pass: the jvp along v of ∇_{u,w} L (a mixed second derivative)."""
    sx, sy, qx, qy = task.support_x, task.support_y, task.query_x, task.query_y
    u = torch.ones(qx.shape[0], dtype=x0.dtype, device=x0.device)
    w = torch.ones(sx.shape[0], dtype=x0.dtype, device=x0.device)
    grad_uw = grad(loss_fn, argnums=(1, 2))
    _, (du, dw) = jvp(lambda x: grad_uw(x, u, w, sx, sy, qx, qy), (x0,), (v,))
    return du, dw


def per_image_query_gradients(model: nn.Module, spec: LearnerSpec, params: Params, task: TaskBatch) -> Tensor:
    """n_q × q matrix of ∇_ω ℓ_k(A(S, ω)) at ``params``: the rows average to the task gradient
    g of ``influence.gradients`` (same adaptation, first order as the learner defines it)."""
    _check_learner(spec)
    layout = ParamLayout.from_params(params)
    logits_fn = create_flat_logits_function(model, spec, layout, second_order=needs_second_order(spec))
    sx, sy, qx, qy = task.support_x, task.support_y, task.query_x, task.query_y

    def losses(w: Tensor) -> Tensor:
        return F.cross_entropy(logits_fn(w, sx, sy, qx), qy, reduction="none")

    return jacrev(losses)(layout.flatten(params).detach()).detach()


# ---- a run's tasks ----------------------------------------------------------------------------
def _task_tensors(run: Run, split: str, task_id: int, dtype: torch.dtype) -> TaskBatch:
    """One task's tensors as the influence code loads them (corruptions applied), unbatched."""
    ts = run.test_tasks if split == "test" else run.train_tasks
    _, b = next(iter_task_batches(ts, run.dataset, [ts.check_id(task_id)], 1, dtype, run.device))
    return TaskBatch(b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0])


def task_images(run: Run, split: str, task_id: int, role: str, labels: Tensor | None = None) -> TaskImages:
    """Who each support or query image of a task is (``labels``: the learner's, if already loaded)."""
    if split not in ("train", "test") or role not in ("support", "query"):
        raise ConfigError(f"expected split train/test and role support/query, got {split!r}/{role!r}")
    ts = run.test_tasks if split == "test" else run.train_tasks
    task = ts.task(task_id, run.dataset)
    idx = np.asarray(task.support if role == "support" else task.query, dtype=np.int64)
    per_class = len(idx) // ts.ways
    true = np.repeat(np.arange(ts.ways), per_class)
    if labels is None:
        b = ts.batch([task.id], run.dataset)
        labels = (b.support_y if role == "support" else b.query_y)[0]
    label = labels.cpu().numpy().astype(np.int64)
    names = task.class_names
    return TaskImages(
        split, task.id, role, idx, label, tuple(names[k] for k in label),
        true, tuple(names[k] for k in true), task.corruption,
    )  # fmt: skip


def target_task_gradient(run: Run, test_task: int, dtype: str = "float64") -> Tensor:
    """g_i = ∇_ω L(Q_i; A(S_i, ω̂)) of one test task (TLXML Eq. 9), by the ranking's own code;
    compute it once and pass it to ``drill_training_task`` for every training task."""
    ids = [run.test_tasks.check_id(test_task)]
    return task_gradients(run.model, run.spec, params_as(run, dtype), run.test_tasks, run.dataset, ids)[0]


def drill_training_task(
    run: Run,
    inf: TaskInfluence,
    test_task: int,
    train_task: int,
    *,
    test_grad: Tensor | None = None,
    dtype: str = "float64",
) -> TrainingTaskDrilldown:
    """Query shares and support effects of training task ``train_task`` for ``test_task``.

    ``test_grad``: ``target_task_gradient(run, test_task, dtype)`` when already computed (one per
    test task). In ProtoNet the support effects of one class sum to zero (weights are normalised
    per prototype): they say which images pull the prototype which way, not how the score adds up.
    """
    if len(run.train_tasks) != inf.num_tasks:
        raise ConfigError(f"the fit scores {inf.num_tasks} training tasks, the run has {len(run.train_tasks)}")
    i, j = run.test_tasks.check_id(test_task), run.train_tasks.check_id(train_task)
    g = target_task_gradient(run, test_task, dtype) if test_grad is None else test_grad
    params = params_as(run, dtype)
    layout = ParamLayout.from_params(params)
    w_hat = layout.flatten(params).detach()
    v = score_direction(inf, g.to(w_hat))
    loss_fn, x0 = create_drill_loss_function(run.model, run.spec, layout, w_hat)
    task = _task_tensors(run, "train", j, w_hat.dtype)
    du, dw = image_effects(loss_fn, x0, v, task)
    shares, effects = du.detach().cpu().double().numpy(), dw.detach().cpu().double().numpy()
    score = float(shares.sum())
    fitted = float(inf.helpfulness(g)[j])
    query = ImageShares(task_images(run, "train", j, "query", task.query_y), shares, score, True)
    support = ImageShares(task_images(run, "train", j, "support", task.support_y), effects, score, False)
    return TrainingTaskDrilldown(i, j, run.spec.algo, score, fitted, query, support)


def target_image_shares(
    run: Run, inf: TaskInfluence, test_task: int, *, dtype: str = "float64"
) -> TargetImageShares:
    """The n_q × M table of test-image shares of every training task's score (one n_q × q jacobian,
    then the fitted factor: as cheap as scoring n_q test tasks)."""
    if len(run.train_tasks) != inf.num_tasks:
        raise ConfigError(f"the fit scores {inf.num_tasks} training tasks, the run has {len(run.train_tasks)}")
    task = _task_tensors(run, "test", test_task, getattr(torch, dtype))
    per_image = per_image_query_gradients(run.model, run.spec, params_as(run, dtype), task)
    shares = inf.helpfulness(per_image).double().cpu().numpy() / per_image.shape[0]
    images = task_images(run, "test", test_task, "query", task.query_y)
    return TargetImageShares(run.test_tasks.check_id(test_task), images, shares)


# ---- words ------------------------------------------------------------------------------------
def _describe(images: TaskImages, k: int) -> str:
    """'image 8 (Sneaker)', numbered from 1 within its row; corrupted images say what they are."""
    name, own = images.class_name[k], images.true_class_name[k]
    if images.corruption == "noise":
        what = f"noise labelled {name}"
    elif own != name:
        what = f"{'an' if own[0].lower() in 'aeiou' else 'a'} {own} labelled {name}"
    else:
        what = name
    return f"image {k + 1} ({what})"


def _carriers(values: np.ndarray, total: float, fraction: float) -> tuple[int, float]:
    """Fewest images whose shares, largest in the score's direction first, reach ``fraction`` of
    ``total``, and the part of ``total`` they carry (above 1 when the other images work against it)."""
    aligned = np.sort(np.sign(total) * values)[::-1]
    carried = np.cumsum(aligned) / abs(total)
    n = int(np.argmax(carried >= fraction - 1e-12)) + 1
    return n, float(carried[n - 1])


def plain_summary(result: TrainingTaskDrilldown | ImageShares, fraction: float = 0.8) -> str:
    """One sentence for non-experts: how few images carry most of a task's score and which one
    carries the largest part; for a training task also which support image mattered most.

    ``result``: a training-task drill-down or additive shares (``TargetImageShares.for_training_task``).
    Images are numbered from 1 within their row (support or query), in the learner's order.
    """
    shares = result.query if isinstance(result, TrainingTaskDrilldown) else result
    if not shares.additive or not 0 < fraction <= 1:
        raise ConfigError("plain_summary needs additive shares (query or test images) and 0 < fraction <= 1")
    values, total, images = shares.values, shares.total, shares.images
    row = "test" if images.split == "test" else "query"
    if total == 0 or abs(total) < 0.05 * float(np.abs(values).sum()):
        k = int(np.argmax(np.abs(values)))
        sentence = (
            f"The {len(values)} {row} images pull in opposite directions and nearly cancel out, so this training "
            f"task barely changes the test result; the strongest pull is {_describe(images, k)}, which "
            + ("helps" if values[k] > 0 else "hurts")
        )
    else:
        n, carried = _carriers(values, total, fraction)
        top = _describe(images, int(np.argmax(np.sign(total) * values)))
        head = f"{row.capitalize()} {top} alone carries" if n == 1 else f"{n} of the {len(values)} {row} images carry"
        over = carried > 1.0 + 1e-9
        part = "more than all" if over else f"{round(100 * carried)} %"
        sentence = f"{head} {part} of how much this training task {'helped' if total > 0 else 'hurt'} the test task"
        sentence += " (other images work against it)" if over else ""
        sentence += f"; the largest share is {top}" if n > 1 else ""
    if isinstance(result, TrainingTaskDrilldown):
        support = _describe(result.support.images, int(np.argmax(np.abs(result.support.values))))
        sentence += f"; of the images it learned from, support {support} changed the result most"
    return sentence + "."
