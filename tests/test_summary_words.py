"""The words the pages show (metainf_core.words): every count in the Explain summary recomputed from
the rows it summarises, corrupted tasks named by the vocabulary the tasksets record, signs that
Streamlit's metric reads, and verdicts that follow from the numbers beside them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metainf_core.tasks import CORRUPTIONS as RECORDED_CORRUPTIONS
from metainf_core.words import (
    CORRUPTIONS,
    chance_words,
    chance_z,
    class_list,
    interval_words,
    method_name,
    order_words,
    outcome,
    percent,
    points,
    proper_test_verdict,
    ranking_summary,
    score,
    signed,
    superclass_reading,
    task_summary,
    two_comparisons,
    xi_curve_words,
    z_verdict,
)

CLAIM = re.compile(r"(\d+) of the (\d+) training tasks? that (.+?) holds? (\w+) \((\w+)\), against (\d+) of the (\d+) that")
CORRUPT = re.compile(r"; (\d+) of the (\d+) (?:is a|are) (pure-noise tasks?|tasks? with shuffled labels)\.")


def row(classes: list[str], corruption: str = "none") -> dict:
    return {"classes": classes, "superclasses": ["other"] * len(classes), "corruption": corruption}


def holding(rows: list[dict], cls: str) -> int:
    return sum(cls in r["classes"] for r in rows if r["corruption"] == "none")


def check_side(sentence: str, rows: list[dict], other: list[dict]) -> None:
    """Recompute each count a side's sentence states from the rows themselves."""
    claim = CLAIM.match(sentence)
    if claim:
        mine, n, _, cls, _, theirs, n_other = claim.groups()
        assert int(n) == len(rows) and int(n_other) == len(other)
        assert int(mine) == holding(rows, cls) and int(theirs) == holding(other, cls)
        assert holding(rows, cls) > holding(other, cls)  # "against": it does set this side apart
    corrupt = CORRUPT.search(sentence)
    n_bad = sum(r["corruption"] != "none" for r in rows)
    assert (int(corrupt[1]) if corrupt else 0) == n_bad, sentence
    if corrupt:
        assert int(corrupt[2]) == len(rows)


def sides(text: str) -> tuple[str, str]:
    first, second = re.split(r"(?<=\.) (?=\d|No |All |The )", text, maxsplit=1)
    return first, second


ISSUE_CASES = [  # (helpful, harmful) as seen on 2026-12-07
    # "mostly contain Dress (other); 4 of them are pure-noise" — one real task, holding a Dress
    ([row(["Bag", "Coat", "Sandal"])] * 5, [row(["Dress", "Coat", "Shirt"])] + [row(["Sneaker", "Dress", "Bag"], "noise")] * 4),
    # "mostly contain Sneaker (footwear); 3 of them are pure-noise" — 2 of 5 hold a Sneaker
    ([row(["Sneaker", "Bag", "Coat"]), row(["Sneaker", "Shirt", "Dress"])] + [row(["Sneaker"] * 3, "noise")] * 3,
     [row(["Bag", "Coat", "Dress"])] * 5),
]


@pytest.mark.parametrize(("helpful", "harmful"), ISSUE_CASES)
def test_every_count_is_over_all_rows_of_its_side(helpful, harmful):
    text = ranking_summary(helpful, harmful)
    assert "mostly" not in text
    top, bottom = sides(text)
    check_side(top, helpful, harmful)
    check_side(bottom, harmful, helpful)


def test_the_issue_sentences_now_state_their_real_counts():
    text = ranking_summary(*ISSUE_CASES[0])
    assert "1 of the 5 training tasks that hurt this test task most holds Dress (other), against 0 of the 5" in text
    assert "4 of the 5 are pure-noise tasks" in text
    text = ranking_summary(*ISSUE_CASES[1])
    assert "2 of the 5 training tasks that helped this test task most hold Sneaker (other), against 0 of the 5" in text
    assert "3 of the 5 are pure-noise tasks" in text


def test_a_class_common_to_both_sides_is_never_named():
    helpful = [row(["Dress", "Bag"]), row(["Dress", "Sneaker"]), row(["Dress", "Bag"])]
    harmful = [row(["Dress", "Shirt"]), row(["Dress", "Shirt"]), row(["Dress", "Coat"])]
    text = ranking_summary(helpful, harmful)
    assert "Dress" not in text  # in every row on both sides: it explains nothing
    assert text.startswith("2 of the 3 training tasks that helped this test task most hold Bag (other), against 0 of the 3")
    assert "2 of the 3 training tasks that hurt this test task most hold Shirt (other)" in text


def test_noise_tasks_are_called_noise_not_by_their_labels():
    helpful = [row(["Sneaker", "Dress", "Trouser"], "noise"), row(["Bag", "Coat"]), row(["Bag", "Sandal"])]
    harmful = [row(["Sneaker", "Dress", "Trouser"], "noise"), row(["Sneaker", "Shirt"], "noise"), row(["Coat", "Shirt"])]
    text = ranking_summary(helpful, harmful)
    assert "1 of the 3 is a pure-noise task" in text and "2 of the 3 are pure-noise tasks" in text
    assert "Trouser" not in text and "Dress" not in text  # labels of noise tasks are not evidence


def test_shuffled_label_tasks_use_the_vocabulary_the_tasksets_record():
    """Tasksets record "label_flip" (tasks.CORRUPTIONS); the words must know exactly those kinds."""
    assert set(CORRUPTIONS) == set(RECORDED_CORRUPTIONS) - {"none"}
    text = ranking_summary([row(["A"], "label_flip")], [row(["B"]), row(["B"])])
    assert text.startswith("The training task that helped this test task most is a task with shuffled labels")
    assert "label_flip" not in text and "label-flip" not in text
    text = ranking_summary([row(["A"], "label_flip"), row(["B"], "noise"), row(["C"])], [row(["D"])])
    assert "2 of the 3 are corrupted: 1 task with shuffled labels and 1 pure-noise task" in text


def test_no_distinctive_class_still_says_what_the_tasks_hold():
    """Test task 0 of the ProtoNet demo read "share no class that the other side lacks"."""
    helpful = [row(["Dress", "Bag"]), row(["Dress", "Coat"]), row(["Bag", "Coat"])]
    harmful = [row(["Dress", "Bag"]), row(["Dress", "Coat"]), row(["Bag", "Coat"])]
    text = ranking_summary(helpful, harmful)
    assert "share no class" not in text
    assert text.startswith("No class is more common among the 3 training tasks that helped this test task most than among "
                           "the 3 that hurt it most: the commonest here, Bag (other), is in 2 of the 3 and in 2 of those.")


def test_numbers_have_one_format_and_a_sign_streamlit_reads():
    assert percent(0.79375) == "79.4 %" and percent(1.0) == "100.0 %"
    assert signed(-0.1514) == "-0.151" and signed(0.0961) == "+0.0961" and signed(-0.0001, 3) == "0.000"
    assert "−" not in signed(-3.0) + points(-0.002)
    assert points(-0.002) == "-0.2 points" and points(0.0062) == "+0.6 points"
    assert class_list(["Trouser", "Sandal", "Pullover"]) == "Trouser; Sandal; Pullover"
    assert score(2.02e-07) == "about 0" and score(-0.0361) == "-0.0361"  # no scientific notation on a card
    assert method_name("tlxml-gn") == "TLXML (Gauss-Newton)" and method_name("grad-sim") == "Gradient similarity"


def test_verdicts_follow_from_their_numbers():
    # one decision for every verdict: |z| ≥ 2 (SIGNIFICANT_SD), NaN none
    assert [z_verdict(z) for z in (2.5, 2.0, 1.99, -1.99, -2.0, -7.0, float("nan"))] == [1, 1, 0, 0, -1, -1, 0]
    assert chance_z(0.01, 0.004) == pytest.approx(2.5) and chance_z(-0.01, 0.0) == float("-inf") and chance_z(0.0, 0.0) == 0
    assert chance_words(z_verdict(2.5), 2.5) == "better than the random removals (by 2.5 times their spread)"
    assert chance_words(z_verdict(-3.04), -3.04) == "worse than the random removals (by 3.0 times their spread)"
    assert chance_words(z_verdict(1.25), 1.25) == "no clear difference from the random removals"
    assert order_words(z_verdict(12.2), 12.2).endswith("sooner than a random order would (+12.2 sd: not by chance)")
    assert order_words(z_verdict(1.63), 1.63).endswith("no faster than a random order would (+1.6 sd)")
    assert proper_test_verdict(2.0).startswith("significant:") and proper_test_verdict(-2.1).startswith("significant the wrong")
    assert proper_test_verdict(1.9).startswith("not significant") and proper_test_verdict(float("nan")) == "no test tasks to count"
    # +0.62 points ± 1.12: the interval includes zero, and the words say so
    assert "includes zero" in interval_words(0.0062, 0.0112) and "includes zero" not in interval_words(0.02, 0.0112)
    assert "clearly lower" in interval_words(-0.02, 0.0112)
    assert interval_words(0.0062, 0.0112).startswith("+0.62 points ± 1.12")
    assert "could still be zero" in two_comparisons(1, 0.0062, 0.0112) and two_comparisons(1, 0.02, 0.0112) is None
    assert two_comparisons(0, 0.0062, 0.0112) is None
    assert outcome(0.0, -0.0015) == -1 and outcome(0.067, 0.0) == 1 and outcome(0.067, -0.0015) == 0 and outcome(0, 0) == 0


def test_xi_curve_words_recompute_their_claims():
    """The ProtoNet demo, test task 58, its 16 most harmful tasks (measured 2026-12-07): at ξ = +4 and +8
    counting them more lifts the test task to 93.3 %, as blocking them does, against the scores' prediction."""
    xis = [-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0]
    task_acc = [0.9333, 0.9333, 0.9333, 0.9333, 0.8, 0.8, 0.8, 0.9333, 0.9333]
    task_loss = [0.2397, 0.2238, 0.1186, 0.1050, 0.3839, 1.0182, 1.1547, 0.1945, 0.1256]
    set_acc = [0.7729, 0.8000, 0.8031, 0.8016, 0.7938, 0.7891, 0.7833, 0.7563, 0.7469]
    predicted = [0.5783 * x for x in xis]
    text = xi_curve_words(58, xis, task_acc, task_loss, set_acc, predicted, 128)
    agree = [x for x, l, p in zip(xis, task_loss, predicted) if x and (l - task_loss[4]) * p > 0]
    assert agree == [-8, -4, -2, -1, 1, 2]
    assert "for ξ from -8 to +2, not beyond" in text
    assert "counting these tasks more (ξ = +4, +8) also lifts test task 58, to 93.3 %" in text
    assert "falls (from 79.38 % to 75.63 %, 74.69 %)" in text
    # without the lift (accuracy stays as trained beyond +2), no such sentence
    assert "lifts" not in xi_curve_words(58, xis, task_acc[:7] + [0.8, 0.8], task_loss, set_acc, predicted, 128)


def test_superclass_rows_that_seem_to_disagree_are_explained():
    """MAML demo, 2026-12-07: "2 or more superclasses" -1.34σ not significant beside "3 or more" +4.74σ."""
    text = superclass_reading([(1, 0.8), (2, -1.34), (3, 4.74)])
    assert text.startswith("Each superclass row draws its line at a different place. Training tasks that share 3 or more "
                           "superclasses with the test task score clearly higher than the rest (+4.74σ)")
    assert "with those that share exactly 2 added, the “2 or more” row is not significant (-1.34σ)" in text
    assert "wrong way" in superclass_reading([(2, -2.5), (3, 4.74)])
    assert superclass_reading([(1, 3.0), (2, 2.5)]) is None and superclass_reading([(1, 3.0), (2, -1.0)]) is None


def test_run_folders_record_where_data_came_from_without_the_machines_paths(monkeypatch, tmp_path):
    """meta.json's dataset "source" (data.base.FewShotDataset.describe) travels with a run folder."""
    from metainf_core.data.base import portable_source

    monkeypatch.setenv("METAINF_DATA", str(tmp_path / "data"))
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert portable_source(str(raw)) == "data/FashionMNIST/raw"
    assert portable_source(f"torchvision:{tmp_path / 'data'}") == "torchvision:data"
    assert portable_source("/somewhere/else/on/this/machine") == "…/this/machine"
    assert portable_source("synthetic") == "synthetic"


def test_edit_sentences_state_the_numbers_of_the_tiles():
    """Edit page (metainf_core.edit_words): the sentence names the shown values, the same-way caption
    counts the images that really flipped (128 × 15 query images on the taskset)."""
    from metainf_core.edit_words import disagreement, edit_sentence, figures

    before = ([0.50], [0.80], {"accuracy": 0.7938, "loss": 0.857})
    after = ([0.40], [0.8667], {"accuracy": 0.7891, "loss": 0.850})  # test task up; taskset: accuracy and loss both fell
    fig = figures(0, before, after)
    text = edit_sentence((1, 2), (), -1.0, 0.0, 0, fig, 15, 128)
    assert text == ("Blocking 2 training tasks at ξ = -1 (about the same as removing them) raised test task 0's accuracy "
                    "from 80.0 % to 86.7 % (12 → 13 of its 15 query images right) and lowered its loss from 0.500 to 0.400. "
                    "On all 128 test tasks: accuracy 79.38 % → 78.91 %, loss 0.857 → 0.850.")
    why = disagreement(0, fig, 15, 128)
    flips = round((0.7938 - 0.7891) * 128 * 15)  # 9 images
    assert f"On all 128 test tasks, {flips} query images fewer get the right top guess, while the model became more sure" in why
    assert "On test task 0" not in why  # there accuracy rose and loss fell: nothing to explain


def test_task_summary_says_what_each_task_holds():
    """One line per task (the pages' task captions and the Explain summary's class labels): classes with
    superclasses, and for a corrupted task first what its images are; on the demo's real tasks."""
    from metainf_core.service import open_run, task_view

    assert task_summary(["Trouser", "Bag"], ["other", "other"], "label_flip") == (
        "real images with shuffled labels: Trouser (other), Bag (other)")  # fmt: skip
    assert task_summary(["Sneaker"], ["footwear"], "noise") == "pure-noise images (no real class), labelled Sneaker (footwear)"
    assert task_summary(["Sneaker", "Bag"], ["footwear", "other"]) == "Sneaker (footwear), Bag (other)"
    run = open_run(Path(__file__).resolve().parents[1] / "assets" / "demo" / "protonet-fashion-mnist")
    for split, ids in (("train", run.train_tasks.ids_with("noise")[:2]), ("test", [0, 7])):
        for j in ids:
            view = task_view(run, split, int(j))
            text = task_summary(view.class_names, view.superclasses, view.corruption)
            assert text.startswith("pure-noise images (no real class), labelled ") == (view.corruption == "noise")
            labels = [f"{n} ({s})" for n, s in zip(view.class_names, view.superclasses, strict=True)]
            assert text.endswith(", ".join(labels)) and len(labels) == run.train_tasks.config.ways
    # the Explain summary names a class as the captions do
    text = ranking_summary([row(["Bag"]), row(["Bag"])], [row(["Coat"])])
    assert "hold Bag (other), against 0 of the 1" in text



def test_every_registered_method_has_plain_words():
    """A method added to compare's registry must get a plain name and one help sentence, else the
    Compare page shows its code-form key (the browser walk's reading caught 'direct-if-ekfac')."""
    from metainf_core.compare import METHODS
    from metainf_core.words import METHOD_HELP

    assert all(method_name(m) != m for m in METHODS), [m for m in METHODS if method_name(m) == m]
    assert set(METHODS) <= set(METHOD_HELP), sorted(set(METHODS) - set(METHOD_HELP))


def test_listed_reads_as_a_sentence():
    from metainf_core.words import listed

    assert [listed(x) for x in ([], ["A"], ["A", "B"], ["A", "B", "C"])] == ["", "A", "A and B", "A, B and C"]
