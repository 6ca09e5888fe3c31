"""Numbers and names as a visitor of the dashboard reads them: one format per kind of number, one
plain name per method, corruption and column, and the sentences that state a comparison — made
here from the numbers they state, so a test can recompute each claim (no streamlit).

Formats:
- accuracy as a percentage with one decimal and a space: ``percent(0.7938) == "79.4 %"``; two decimals
  (``CHANGE_DIGITS``) where a taskset's accuracy is compared before and after an edit;
- changes with an ASCII sign (``signed``, ``points``): Streamlit's ``st.metric`` reads the sign of
  its ``delta`` text to pick the arrow and colour, and it does not read the Unicode minus "−" as
  negative (a fall would show a green ↑);
- scientific notation never in a sentence or a card (``score``): raw values are in the CSV downloads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from metainf_core.config import METHOD_ALIASES

# ---- numbers -------------------------------------------------------------------------------------
ACCURACY_DIGITS = 1  # one format for accuracy everywhere: "79.4 %"
CHANGE_DIGITS = 2  # a taskset's accuracy before and after an edit: one image in 1,920 moves it 0.05 points


def percent(x: float, digits: int = ACCURACY_DIGITS) -> str:
    """A share in [0, 1] as a percentage: ``percent(0.7938) == "79.4 %"``."""
    return f"{100 * x:.{digits}f} %"


def signed(x: float, digits: int | None = None) -> str:
    """A change or a score with its sign, ASCII "-" (read by ``st.metric``): ``digits`` decimals,
    or by default 3 significant digits (``signed(-0.1514) == "-0.151"``, ``signed(0.0361) ==
    "+0.0361"``); a value that rounds to zero is written without a sign."""
    text = f"{x:+.3g}" if digits is None else f"{x:+.{digits}f}"
    return text[1:] if float(text) == 0 else text


def score(x: float) -> str:
    """A task's score in a sentence or a card: ``signed`` (3 significant digits), "about 0" when it
    would need scientific notation (|x| < 0.0005): raw values are in the CSV downloads."""
    return signed(x) if abs(x) >= 5e-4 else "about 0"


def points(dx: float, digits: int = ACCURACY_DIGITS) -> str:
    """A change of accuracy (a share) in percentage points: ``points(-0.002) == "-0.2 points"``."""
    return f"{signed(100 * dx, digits)} points"


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``plural(1, "training task") == "1 training task"``, ``plural(16, ...) == "16 training tasks"``."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"


def listed(items: Iterable[str]) -> str:
    """Items as a sentence lists them: ``"A"``, ``"A and B"``, ``"A, B and C"``."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def class_list(names: Iterable[str]) -> str:
    """Classes as one readable cell: ``"Trouser; Sandal; Pullover"`` (not a Python list)."""
    return "; ".join(str(n) for n in names)


# ---- plain names -----------------------------------------------------------------------------------
METHOD_NAMES = {  # compare.METHODS keys -> what a visitor reads
    "tlxml-gn": "TLXML (Gauss-Newton)",
    "tlxml-exact": "TLXML (exact)",
    "task-if": "Task influence (through adaptation)",
    "direct-if": "Direct influence (adapted weights only)",
    "grad-sim": "Gradient similarity",
    "direct-if-ekfac": "Direct influence with a fast curvature approximation (EK-FAC)",
    "dattri-if-explicit": "Influence by the dattri library (exact solve)",
    "dattri-if-cg": "Influence by the dattri library (iterative solve)",
    "dattri-trak": "TRAK by the dattri library (random projections)",
    "task-if/cg": "Task influence, solved iteratively (conjugate gradient)",  # lds: a registry method with solver "cg"
    "direct-if/cg": "Direct influence, solved iteratively (conjugate gradient)",
}

METHOD_HELP = {  # one plain sentence per scoring method (the paper's description stays in compare.METHODS)
    "tlxml-gn": "Follows how each training task moved the trained weights, using a fast approximation of the model's curvature.",
    "tlxml-exact": "The same, with the model's exact curvature: only feasible for small networks.",
    "task-if": "Follows each training task through the model's adaptation step as well.",
    "direct-if": "Looks only at the weights after adaptation, ignoring how the adaptation itself depends on training.",
    "grad-sim": "How much each training task's gradient points the same way as the test task's, with no curvature at all.",
    "direct-if-ekfac": "Direct influence, with the curvature approximated layer by layer so that it fits larger networks.",
    "dattri-if-explicit": "Another library's influence estimate (dattri), treating each training task as one example.",
    "dattri-if-cg": "The same library's estimate, solved step by step instead of all at once.",
    "dattri-trak": "The same library's TRAK method: compares compressed gradients of the tasks, with no curvature, so it fits large networks.",
}

# tasks.CORRUPTIONS -> (one task, several tasks, what such a task holds)
CORRUPTIONS = {
    "noise": ("pure-noise task", "pure-noise tasks", "random images, no real class"),
    "label_flip": ("task with shuffled labels", "tasks with shuffled labels", "real images, labels shuffled"),
}

COLUMN_NAMES = {  # table columns as a visitor reads them
    "task": "training task", "rank": "rank", "rank_by_score": "rank by score", "helpfulness": "score (helpfulness)",
    "size": "size", "alignment": "alignment", "classes": "classes", "superclasses": "superclasses",
    "corruption": "corrupted", "step": "training step", "accuracy": "test accuracy", "accuracy_ci95": "accuracy ± (95 %)",
    "loss": "test loss", "num_tasks": "test tasks used",
}  # fmt: skip


def method_name(key: str) -> str:
    """A scoring method's plain name (``"grad-sim"`` -> ``"Gradient similarity"``); a fit's method
    (``"gn"``, ``"exact"``) is read through the one vocabulary (``config.METHOD_ALIASES``)."""
    return METHOD_NAMES.get(METHOD_ALIASES[key].compare_name if key in METHOD_ALIASES else key, key)


def corruption_name(kind: str, n: int = 1) -> str:
    """``"noise"`` -> "pure-noise task(s)", ``"label_flip"`` -> "task(s) with shuffled labels"; "" for none."""
    if kind == "none":
        return ""
    one, many, _ = CORRUPTIONS[kind]
    return one if n == 1 else many


def corrupted_among(counts: dict[str, int]) -> str:
    """A taskset's corrupted tasks, by kind (``{"noise": 64, "label_flip": 0}``): " (64 of them
    pure-noise tasks)"; "" when there are none."""
    parts = [(n, k) for k, n in counts.items() if n]
    if len(parts) == 1:
        return f" ({parts[0][0]} of them {corruption_name(parts[0][1], 2)})"
    return f" ({' and '.join(f'{n} {corruption_name(k, n)}' for n, k in parts)} among them)" if parts else ""


# what a corrupted task's images are, before its labels (tasks.CORRUPTIONS, the vocabulary tasksets record)
TASK_HOLDS = {"noise": "pure-noise images (no real class), labelled {labels}", "label_flip": "real images with shuffled labels: {labels}"}


def class_label(name: str, superclass: str) -> str:
    """A class as a visitor reads it, with its superclass: ``"Trouser (other)"``."""
    return f"{name} ({superclass})"


def task_summary(class_names: Sequence[str], superclasses: Sequence[str], corruption: str = "none") -> str:
    """What one task holds, in one line: its classes with superclasses, and first, for a corrupted
    task, what its images really are (``"real images with shuffled labels: Trouser (other), Bag (other)"``)."""
    labels = ", ".join(class_label(n, s) for n, s in zip(class_names, superclasses, strict=True))
    return TASK_HOLDS[corruption].format(labels=labels) if corruption in TASK_HOLDS else labels


def column_name(key: str) -> str:
    return COLUMN_NAMES.get(key, key.replace("_", " "))


# ---- comparisons stated in words ----------------------------------------------------------------------
SIGNIFICANT_SD = 2.0  # |z| beyond which a difference is unlikely by chance (about 5 %, two-sided)


def z_verdict(z: float, threshold: float = SIGNIFICANT_SD) -> int:
    """+1 when ``z`` ≥ ``threshold``, −1 when ``z`` ≤ −``threshold``, else 0 (NaN too): the one
    "unlikely by chance" decision (two-sided) behind every verdict the pages state."""
    return 1 if z >= threshold else -1 if z <= -threshold else 0


def chance_z(diff: float, sd: float) -> float:
    """A difference in units of the random draws' spread ``sd``; ±inf when every draw came out the
    same (sd 0) and the difference did not vanish, 0 when it did."""
    return diff / sd if sd > 0 else math.copysign(math.inf, diff) if diff else 0.0


def chance_words(verdict: int, z: float) -> str:
    """Removing chosen tasks against removing random ones, in words: ``verdict`` (``z_verdict``) and
    the distance ``z`` in the random draws' spread."""
    if verdict > 0:
        return f"better than the random removals (by {z:.1f} times their spread)"
    if verdict < 0:
        return f"worse than the random removals (by {-z:.1f} times their spread)"
    return "no clear difference from the random removals"


def order_words(verdict: int, sigma: float) -> str:
    """An inspection order against a random one, from ``verdict`` (``z_verdict``) of its AUC's
    distance ``sigma`` in sd (``detect.DetectionCurve.auc_sigma``)."""
    distance = f"{signed(sigma, 1)} sd"
    if verdict == 0:
        return f"this order finds the corrupted tasks no faster than a random order would ({distance})"
    return (f"this order finds the corrupted tasks {'sooner' if verdict > 0 else 'later'} than a random order would "
            f"({distance}: not by chance)")


def interval_words(gain: float, half_width: float, digits: int = CHANGE_DIGITS) -> str:
    """A paired change of accuracy with its 95 % interval, saying whether zero lies inside it."""
    text = f"{points(gain, digits)} ± {100 * half_width:.{digits}f}"
    if abs(gain) <= half_width:
        return text + " (the interval includes zero: no clear change from the model as trained)"
    return text + f" (clearly {'higher' if gain > 0 else 'lower'} than the model as trained)"


def two_comparisons(verdict: int, gain: float, half_width: float, digits: int = CHANGE_DIGITS) -> str | None:
    """When the comparison with random removals (``verdict``) and the one with the model as trained
    (``gain`` ± ``half_width``) seem to disagree, say why they need not. None when they agree."""
    if verdict == 0 or abs(gain) > half_width:
        return None
    text = (f"The two comparisons answer different questions. Against random removals of the same size, this removal did "
            f"{'better' if verdict > 0 else 'worse'}; against the model as trained, its change "
            f"({points(gain, digits)} ± {100 * half_width:.{digits}f}) could still be zero.")
    return text + (" So these tasks are a better choice to remove than chance, without a clear gain over keeping them."
                   if verdict > 0 else "")


def proper_test_verdict(z: float, threshold: float = SIGNIFICANT_SD) -> str:
    """A proper test's result in words, from its distance to chance in σ."""
    if not math.isfinite(z):
        return "no test tasks to count"
    verdict = z_verdict(z, threshold)
    if verdict > 0:
        return "significant: the expected tasks score higher"
    if verdict < 0:
        return "significant the wrong way: the expected tasks score lower"
    return "not significant: no better than chance"


def superclass_reading(rows: Sequence[tuple[int, float]], threshold: float = SIGNIFICANT_SD) -> str | None:
    """Why superclass proper tests at different thresholds can disagree (``rows``: (min_shared, z),
    by threshold): the first significant threshold above one that is not, said in words; None
    when no such pair exists."""
    rows = sorted(rows)
    for (low, z_low), (high, z_high) in zip(rows, rows[1:]):
        if z_verdict(z_high, threshold) == 1 and z_low < threshold:
            between = f"exactly {low}" if high == low + 1 else f"{low} to {high - 1}"
            low_says = "is not significant" if z_verdict(z_low, threshold) == 0 else "is significant the wrong way"
            return (f"Each superclass row draws its line at a different place. Training tasks that share {high} or more "
                    f"superclasses with the test task score clearly higher than the rest ({signed(z_high, 2)}σ); with "
                    f"those that share {between} added, the “{low} or more” row {low_says} ({signed(z_low, 2)}σ). "
                    f"So for this model sharing {high} superclasses goes with higher scores; sharing {low} is not enough "
                    "to show it.")
    return None


def outcome(*changes: float) -> int:
    """How an edit went from its accuracy changes (the test task's, the test taskset's): +1 when
    one rose and none fell, -1 when one fell and none rose, 0 when mixed or unchanged."""
    up, down = any(c > 0 for c in changes), any(c < 0 for c in changes)
    return 0 if up == down else 1 if up else -1


def flipped_images(acc_before: float, acc_after: float, images: int) -> int:
    """Net number of images whose top guess became right (negative: wrong) for an accuracy change
    over ``images`` images."""
    return round((acc_after - acc_before) * images)


def same_way_words(where: str, images: int, loss_rose: bool) -> str:
    """Why accuracy and loss moved the same way at ``where``: the real net number of images whose
    top guess flipped (``images``, signed), and which way the model's confidence went."""
    n = abs(images)
    verb = "gets" if n == 1 else "get"
    more = f"{plural(n, 'query image')} more {verb}" if images > 0 else f"{plural(n, 'query image')} fewer {verb}"
    return f"{where}, {more} the right top guess, while the model became {'less' if loss_rose else 'more'} sure of the rest"


def same_way_reading(said: Sequence[str]) -> str:
    """Why accuracy and loss moved the same way (normally accuracy up goes with loss down), from one
    or more ``same_way_words`` clauses: the one wording of the Edit and Audit pages."""
    return ("Accuracy and loss moved the same way. Accuracy only counts whether the model's top guess is right; the loss "
            "measures how sure it is on every image. " + "; ".join(said) + ".")


def xi_curve_words(test_id: int, xis: Sequence[float], task_acc: Sequence[float], task_loss: Sequence[float],
                   set_acc: Sequence[float], predicted: Sequence[float], n_test: int) -> str:
    """How to read accuracy along ξ for a set of training tasks: the ξ around 0 where test task
    ``test_id``'s loss moved the way the scores predict (``predicted``: first-order Δloss per ξ), and,
    when counting the tasks more (ξ > 0) lifts the test task above the model as trained, why."""
    i0 = list(xis).index(0.0)
    agrees = [x == 0 or (task_loss[i] - task_loss[i0]) * predicted[i] > 0 for i, x in enumerate(xis)]
    lo = hi = i0
    while lo > 0 and agrees[lo - 1]:
        lo -= 1
    while hi < len(xis) - 1 and agrees[hi + 1]:
        hi += 1
    text = (f"Test task {test_id}'s loss moved the way the influence scores predict for ξ from {xis[lo]:+g} to {xis[hi]:+g}"
            + ("" if (lo, hi) == (0, len(xis) - 1) else ", not beyond") + ". The scores describe small, straight-line steps "
            "from the trained model; the further ξ is from 0, the less they foresee.")
    lifted = [i for i, x in enumerate(xis) if x > 0 and task_acc[i] > task_acc[i0] and not agrees[i]]
    if lifted:
        at = ", ".join(f"{xis[i]:+g}" for i in lifted)
        text += (f" That is why counting these tasks more (ξ = {at}) also lifts test task {test_id}, to "
                 f"{' and '.join(dict.fromkeys(percent(task_acc[i]) for i in lifted))}, although the scores say that should hurt it: "
                 "a step this large takes the model somewhere the scores do not describe")
        falls = [percent(set_acc[i], CHANGE_DIGITS) for i in lifted if set_acc[i] < set_acc[i0]]
        text += (f", and there accuracy on all {n_test} test tasks falls (from {percent(set_acc[i0], CHANGE_DIGITS)} to "
                 f"{', '.join(falls)})." if len(falls) == len(lifted) else ".")
    return text


def _counts(rows: Sequence[dict]) -> dict[tuple[str, str], int]:
    """How many of ``rows`` hold each (class, superclass); corrupted tasks hold no real class."""
    out: dict[tuple[str, str], int] = {}
    for r in rows:
        if r["corruption"] != "none":
            continue
        for pair in set(zip(r["classes"], r["superclasses"], strict=True)):
            out[pair] = out.get(pair, 0) + 1
    return out


# ---- the Explain page's summary of a ranking -----------------------------------------------------------
SUMMARY_PHRASES = {  # order -> ((top: as subject, as the other side), (bottom: the same))
    "helpfulness": (("helped this test task most", "that helped it most"), ("hurt this test task most", "that hurt it most")),
    "alignment": (("point most the way this test task needs", "that point most its way"),
                  ("point most against this test task", "that point most against it")),
}  # fmt: skip


def _corrupted_words(rows: Sequence[dict]) -> list[tuple[int, str]]:
    kinds = [r["corruption"] for r in rows if r["corruption"] != "none"]
    return [(kinds.count(k), k) for k in sorted(set(kinds))]


def side_sentence(rows: Sequence[dict], other: Sequence[dict], phrase: str, other_phrase: str) -> str:
    """One side of the summary, every count over all of ``rows``: the class most over-represented
    against the other side (never one both hold as often), how many hold it on each side, and how
    many of the rows are corrupted, called what they are (their labels are not real classes)."""
    n, n_other = len(rows), len(other)
    mine, theirs = _counts(rows), _counts(other)
    corrupted = _corrupted_words(rows)
    n_bad = sum(c for c, _ in corrupted)
    bad = " and ".join(f"{c} {corruption_name(k, c)}" for c, k in corrupted)
    if n_bad == n:
        if len(corrupted) > 1:
            return f"All {n} training tasks that {phrase} are corrupted: {bad}."
        kind = corrupted[0][1]
        what = f"a {corruption_name(kind)}" if n == 1 else corruption_name(kind, n)
        return f"{'The training task' if n == 1 else f'All {n} training tasks'} that {phrase} {'is' if n == 1 else 'are'} {what} ({CORRUPTIONS[kind][2]})."
    margin = {pair: c - theirs.get(pair, 0) for pair, c in mine.items()}
    best = max((d, mine[pair]) for pair, d in margin.items())  # most distinctive, then most frequent
    if best[0] > 0:
        pair = min(p for p, d in margin.items() if (d, mine[p]) == best)  # ties: the first by name
        text = (f"{best[1]} of the {plural(n, 'training task')} that {phrase} "
                f"{'holds' if best[1] == 1 else 'hold'} {class_label(*pair)}, against {theirs.get(pair, 0)} of the {n_other} {other_phrase}")
    else:
        top = max(mine.values())
        pair = min(p for p, c in mine.items() if c == top)
        text = (f"No class is more common among the {plural(n, 'training task')} that {phrase} than among the {n_other} "
                f"{other_phrase}: the commonest here, {class_label(*pair)}, is in {top} of the {n} and in {theirs.get(pair, 0)} of those")
    if len(corrupted) == 1:
        text += f"; {n_bad} of the {n} {'is a' if n_bad == 1 else 'are'} {corruption_name(corrupted[0][1], n_bad)}"
    elif corrupted:
        text += f"; {n_bad} of the {n} are corrupted: {bad}"
    return text + "."


def ranking_summary(helpful: Sequence[dict], harmful: Sequence[dict], order: str = "helpfulness") -> str:
    """Two sentences for non-experts from the top and bottom rows of a ranking (``order``:
    helpfulness or alignment); every count is over all the rows of its side."""
    (top, top_ref), (bottom, bottom_ref) = SUMMARY_PHRASES[order]
    return side_sentence(helpful, harmful, top, bottom_ref) + " " + side_sentence(harmful, helpful, bottom, top_ref)
