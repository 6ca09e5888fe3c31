"""The Edit page's sentences, made from the numbers they state (no streamlit): the four figures
of its tiles as shown, what an edit did to them in one sentence, and why accuracy and loss moved
the same way. ``tests/test_app_edit.py`` recomputes each claim from the tiles."""

from __future__ import annotations

from collections.abc import Sequence

from metainf_core.words import CHANGE_DIGITS, flipped_images, percent, plural, same_way_reading, same_way_words

FIGURES = {  # the four numbers of the tiles and the sentence: (as a percentage, decimals shown)
    "task_acc": (True, 1), "task_loss": (False, 3), "set_acc": (True, CHANGE_DIGITS), "set_loss": (False, 3),
}  # fmt: skip
Figures = dict[str, tuple[float, float, str, str]]  # figure -> (before, after, both as shown)


def shown(x: float, as_percent: bool = False, digits: int = 3) -> str:
    return percent(x, digits) if as_percent else f"{x:.{digits}f}"


def figures(test_id: int, before: tuple, after: tuple) -> Figures:
    """Each of FIGURES from two (per-task loss, per-task accuracy, taskset summary) evaluations:
    raw value before and after, and both as shown."""
    (loss0, acc0, s0), (loss1, acc1, s1) = before, after
    raw = {"task_acc": (acc0[test_id], acc1[test_id]), "task_loss": (loss0[test_id], loss1[test_id]),
           "set_acc": (s0["accuracy"], s1["accuracy"]), "set_loss": (s0["loss"], s1["loss"])}  # fmt: skip
    return {k: (float(x0), float(x1), shown(x0, *FIGURES[k]), shown(x1, *FIGURES[k])) for k, (x0, x1) in raw.items()}


def direction(before: str, after: str) -> int:
    """+1 / -1 / 0: which way a value moved as shown (0 when the shown values agree)."""
    if before == after:
        return 0
    return 1 if float(after.rstrip(" %")) > float(before.rstrip(" %")) else -1


def shown_change(fig: Figures, name: str) -> float:
    """The change of a figure as shown (so that the tiles add up)."""
    return float(fig[name][3].rstrip(" %")) - float(fig[name][2].rstrip(" %"))


def weight_words(xi: float) -> str:
    """What ξ means for the tasks it applies to: each counts (1 + ξ) times as much as in training."""
    w = 1 + xi
    if w == 1:
        return "no change"
    if w == 0:
        return "about the same as removing them"
    if w < 0:
        return "beyond removing them: pushing the model away from them"
    return "as if they counted twice" if w == 2 else f"as if they counted {w:g}× as much"


def change_words(what: str, before: str, after: str) -> str:
    """ "raised its loss from 0.912 to 0.950" / "left its loss at 0.912" (compares what is shown)."""
    d = direction(before, after)
    return f"left {what} at {after}" if not d else f"{'raised' if d > 0 else 'lowered'} {what} from {before} to {after}"


def edit_sentence(block: Sequence[int], enhance: Sequence[int], xi_b: float, xi_e: float, test_id: int, fig: Figures,
                  n_query: int, n_test: int) -> str:
    """One plain sentence: what was applied and what it did, with the numbers the tiles show."""
    parts = []
    if block:
        parts.append(f"Blocking {plural(len(block), 'training task')} at ξ = {xi_b:+g} ({weight_words(xi_b)})")
    if enhance:
        parts.append(f"{'enhancing' if parts else 'Enhancing'} {plural(len(enhance), 'training task')} at ξ = {xi_e:+g} "
                     f"({weight_words(xi_e)})")
    right0, right1 = (round(x * n_query) for x in fig["task_acc"][:2])
    right = f"{right1}" if right0 == right1 else f"{right0} → {right1}"
    acc, loss, set_acc, set_loss = (fig[k][2:] for k in FIGURES)
    task_acc = f"test task {test_id}'s accuracy"
    return (
        f"{' and '.join(parts)} {change_words(task_acc, *acc)} "
        f"({right} of its {n_query} query images right) and {change_words('its loss', *loss)}. "
        f"On all {n_test} test tasks: accuracy {' → '.join(set_acc)}, loss {' → '.join(set_loss)}."
    )


def disagreement(test_id: int, fig: Figures, n_query: int, n_test: int) -> str | None:
    """Why accuracy and loss moved the same way (normally accuracy up goes with loss down), with the
    real number of query images whose top guess flipped where it happened."""
    images = {"task": n_query, "set": n_query * n_test}
    where = {"task": f"On test task {test_id}", "set": f"On all {n_test} test tasks"}
    said = []
    for part in ("task", "set"):
        acc_d, loss_d = direction(*fig[f"{part}_acc"][2:]), direction(*fig[f"{part}_loss"][2:])
        if acc_d and acc_d == loss_d:
            flips = flipped_images(fig[f"{part}_acc"][0], fig[f"{part}_acc"][1], images[part])
            said.append(same_way_words(where[part], flips, loss_rose=loss_d > 0))
    return same_way_reading(said) if said else None
