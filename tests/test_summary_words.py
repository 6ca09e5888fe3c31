"""The Explain page's summary sentence: never the same class on both sides, corrupted tasks named
for what they are, grammar that holds for one or many."""

from __future__ import annotations

from metainf_core.explain import plain_summary


def row(classes: list[str], corruption: str = "none") -> dict:
    return {"classes": classes, "superclasses": ["other"] * len(classes), "corruption": corruption}


def test_a_class_common_to_both_sides_is_never_named():
    helpful = [row(["Dress", "Bag"]), row(["Dress", "Sneaker"]), row(["Dress", "Bag"])]
    harmful = [row(["Dress", "Shirt"]), row(["Dress", "Shirt"]), row(["Dress", "Coat"])]
    text = plain_summary(helpful, harmful)
    assert "Dress" not in text  # in every row on both sides: it explains nothing
    assert "helped this test task most mostly contain Bag (other)" in text
    assert "hurt this test task most mostly contain Shirt (other)" in text


def test_noise_tasks_are_called_noise_not_by_their_labels():
    helpful = [row(["Sneaker", "Dress", "Trouser"], "noise"), row(["Bag", "Coat"]), row(["Bag", "Sandal"])]
    harmful = [row(["Sneaker", "Dress", "Trouser"], "noise"), row(["Sneaker", "Shirt"], "noise"), row(["Coat", "Shirt"])]
    text = plain_summary(helpful, harmful)
    assert "1 of them is a pure-noise task" in text and "2 of them are pure-noise tasks" in text
    assert "Trouser" not in text and "Dress" not in text  # labels of noise tasks are not evidence


def test_all_corrupted_and_no_distinctive_class():
    text = plain_summary([row(["A"], "label-flip")], [row(["B"]), row(["B"])])
    assert "are all corrupted" in text and "1 of them is a task with shuffled labels" in text
    text = plain_summary([row(["A", "B"])], [row(["A", "B"])])
    assert "share no class that the other side lacks" in text
