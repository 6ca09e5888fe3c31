"""Harmful-task detection (seed 001 §6.3): detection curve vs brute force, corrupted tasks found
faster than random on a small synthetic MAML with noise tasks, removal effect vs direct edits, CLI."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from helpers import run_cli  # tests/helpers.py

from metainf_core import detect
from metainf_core.config import InfluenceConfig, TaskConfig, TrainConfig
from metainf_core.edit import EditSpec, edited_params
from metainf_core.exceptions import ConfigError
from metainf_core.fits import fit_influence
from metainf_core.service import open_run
from metainf_core.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
EXACT = InfluenceConfig(method="exact", dtype="float64", self_rank_sample=64)


# ---- detection curve against brute force -------------------------------------------------------
def _found_counts(order, bad: set[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([j in bad for j in order])]).astype(float)


def _trapezoid(y: np.ndarray) -> float:
    m = len(y) - 1
    return float(sum((y[k] + y[k + 1]) / 2 for k in range(m)) / m)


def test_detection_curve_matches_brute_force_with_ties():
    scores = np.array([0.3, -1.0, 0.3, 2.0, -1.0, 0.5, 0.3, -0.2])
    bad = {1, 2, 7}
    curve = detect.detection_curve(scores, sorted(bad), 8)
    # ties: the mean over every inspection order consistent with increasing scores
    groups = [sorted(np.flatnonzero(scores == v)) for v in sorted(set(scores))]
    orders = [sum(map(list, p), []) for p in itertools.product(*(itertools.permutations(g) for g in groups))]
    assert len(orders) == 2 * 6  # {1,4} and {0,2,6} tied
    expected = np.mean([_found_counts(o, bad) for o in orders], axis=0) / 3
    np.testing.assert_allclose(curve.found, expected, atol=1e-12)
    # by hand: -1.0 group {1,4} holds 1 corrupted, then 7, then {0,2,6} holds 1, then 5, 3
    np.testing.assert_allclose(curve.found * 3, [0, 0.5, 1, 2, 2 + 1 / 3, 2 + 2 / 3, 3, 3, 3], atol=1e-12)
    np.testing.assert_allclose(curve.inspected, np.arange(9) / 8)
    assert curve.auc == pytest.approx(np.mean([_trapezoid(_found_counts(o, bad) / 3) for o in orders]), abs=1e-12)
    assert curve.auc == pytest.approx(_trapezoid(expected))
    assert curve.found_at(0.25) == pytest.approx(1 / 3) and curve.found_at(0.125 / 2) == pytest.approx(0.5 / 3 / 2)
    assert curve.inspected_to_find(1.0) == pytest.approx(6 / 8) and curve.inspected_to_find(0.5) == pytest.approx(3 / 8)
    # ids do not matter under ties: relabelling the tied tasks gives the same curve
    assert np.allclose(detect.detection_curve(scores, [4, 6, 7]).found, curve.found)


def test_random_baseline_and_auc_sigma_by_enumeration():
    m, bad = 7, {0, 3, 5}
    counts = np.array([_found_counts(p, bad) for p in itertools.permutations(range(m))]) / 3  # all 5,040 orders
    curve = detect.detection_curve(np.arange(m, dtype=float), sorted(bad))
    np.testing.assert_allclose(counts.mean(0), curve.random, atol=1e-12)  # the diagonal k/M
    np.testing.assert_allclose(counts.std(0), curve.random_sd, atol=1e-12)  # hypergeometric sd
    aucs = np.array([_trapezoid(c) for c in counts])
    assert aucs.mean() == pytest.approx(curve.auc_random) == pytest.approx(0.5)
    assert curve.auc == pytest.approx(_trapezoid(_found_counts(range(m), bad) / 3))
    assert curve.auc_sigma == pytest.approx((curve.auc - 0.5) / aucs.std(), rel=1e-9)
    # perfect and worst orders
    perfect = detect.detection_curve([0, 5, 6, 1, 7, 2, 8], sorted(bad))
    assert perfect.auc == pytest.approx(perfect.auc_max) == pytest.approx(1 - 3 / 14) == pytest.approx(aucs.max())
    worst = detect.detection_curve([9, 0, 1, 9, 2, 9, 3], sorted(bad))
    assert worst.auc == pytest.approx(3 / 14) == pytest.approx(aucs.min())


def test_detection_curve_rejects_bad_input():
    with pytest.raises(ConfigError, match="no corrupted"):
        detect.detection_curve([1.0, 2.0], [])
    with pytest.raises(ConfigError, match="0..1"):
        detect.detection_curve([1.0, 2.0], [2])
    with pytest.raises(ConfigError, match="expected 3 scores"):
        detect.detection_curve([1.0, 2.0], [0], 3)
    with pytest.raises(ConfigError, match="finite"):
        detect.detection_curve([1.0, np.nan], [0])
    np.testing.assert_allclose(detect.average_ranks(np.array([[3.0, 1.0, 3.0, 0.0]])), [[2.5, 1, 2.5, 0]])


# ---- a small synthetic MAML with noise tasks ----------------------------------------------------
@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """63-parameter MAML, 64 synthetic training tasks of which 8 are noise, 300 steps (~6 s)."""
    task_cfg = TaskConfig(dataset="synthetic", ways=3, shots=5, queries=5, train_tasks=64, test_tasks=32, noise_tasks=8)
    train_cfg = TrainConfig(algo="maml", arch="mlp-synthetic", steps=300, meta_batch=16, lr=0.01, checkpoint_every=300)
    run = open_run(train(task_cfg, train_cfg, tmp_path_factory.mktemp("noisy"), progress=False, device="cpu"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAINF_CACHE", str(tmp_path_factory.mktemp("cache")))
        inf = fit_influence(run, EXACT)
    return run, inf


def test_influence_order_finds_noise_tasks_faster_than_random(noisy):
    run, inf = noisy
    bad = detect.corrupted_ids(run)
    assert len(bad) == 8 and set(bad) == set(run.train_tasks.ids_with("noise"))
    aucs = {}
    for kind in detect.SCORE_KINDS:
        curve = detect.detection_curve(detect.detection_scores(run, inf, "float64", kind), bad, 64)
        aucs[kind] = (round(curve.auc, 3), round(curve.auc_sigma, 2), round(curve.found_at(0.25), 3))
    print("synthetic 64 tasks / 8 noise, exact: (AUC, sd above random, found at 25%)", aucs)
    # measured: self 0.801 (+3.1 sd; 62% found at 25%), mean 0.254, rank 0.65–0.92 over task seeds
    assert aucs["self"][0] > 0.70 and aucs["self"][1] > 2.0
    assert aucs["self"][2] > 0.45  # random expectation 0.25
    # self-influence is what the fit's own projections say: (1/M) p_j · (s ⊙ p_j)
    j = int(bad[0])
    p = inf.projections[j, : inf.truncation]
    assert detect.self_influence(inf)[j] == pytest.approx(float((p * inf.signs[: inf.truncation] * p).sum()) / 64)


def test_removal_effect_equals_direct_edits_and_seeded_random_draws(noisy):
    run, inf = noisy
    scores = detect.detection_scores(run, inf, "float64", "self")
    bad = detect.corrupted_ids(run)
    rep = detect.removal_effect(run, inf, scores, [4, 8], xis=(-1.0, -3.0), random_draws=3, seed=7, corrupted=bad)
    assert rep["before"]["accuracy"] == pytest.approx(run.evaluate().summary()["accuracy"])
    for row in rep["rows"]:
        k = row["k"]
        low = np.sort(np.argsort(scores)[:k])
        assert row["corrupted_in_lowest"] == len(set(low) & set(bad))
        for xi in (-1.0, -3.0):
            direct = run.evaluate(edited_params(run, inf, EditSpec(block=tuple(low), xi_block=xi))).summary()
            got = row["edit"][f"{xi:g}"]
            assert got["accuracy"] == pytest.approx(direct["accuracy"], abs=1e-12)
            assert got["accuracy_ci95"] == pytest.approx(direct["accuracy_ci95"], abs=1e-12)
            assert got["gain"] == pytest.approx(direct["accuracy"] - rep["before"]["accuracy"], abs=1e-6)  # float32 accuracies
            rng = np.random.default_rng([7, k])
            accs = [
                run.evaluate(edited_params(run, inf, EditSpec(block=tuple(rng.choice(64, k, replace=False)), xi_block=xi))).summary()["accuracy"]
                for _ in range(3)
            ]  # fmt: skip
            r = row["random_edit"][f"{xi:g}"]
            np.testing.assert_allclose(r["accuracies"], accs, atol=1e-12)
            assert r["accuracy_mean"] == pytest.approx(np.mean(accs)) and r["accuracy_sd"] == pytest.approx(np.std(accs, ddof=1))
    again = detect.removal_effect(run, inf, scores, [8], random_draws=3, seed=7)
    other = detect.removal_effect(run, inf, scores, [8], random_draws=3, seed=8)
    assert again["rows"][0]["random_edit"]["-1"] == rep["rows"][1]["random_edit"]["-1"]
    sets7, sets8 = detect.random_removal_sets(64, 8, 3, 7), detect.random_removal_sets(64, 8, 3, 8)
    assert any(not np.array_equal(a, b) for a, b in zip(sets7, sets8, strict=True))
    assert other["rows"][0]["edit"] == again["rows"][0]["edit"]  # the influence-ordered sets ignore the seed
    print("removal (self order), k=8, ξ=-1:", rep["rows"][1]["edit"]["-1"], rep["rows"][1]["random_edit"]["-1"])
    with pytest.raises(ConfigError, match="removal sizes"):
        detect.removal_effect(run, inf, scores, [64])


def test_removal_effect_leave_out_retraining(noisy, tmp_path):
    run, inf = noisy
    scores = detect.detection_scores(run, inf, "float64", "self")
    seen = []
    rep = detect.removal_effect(
        run, inf, scores, [4], random_draws=2, seed=1, retrain=True, retrain_dir=tmp_path, retrain_steps=20,
        progress=lambda stage, d, t: seen.append((stage, d, t)),
    )  # fmt: skip
    row = rep["retrain"][0]
    for name, ids in (("lowest", detect.lowest_ids(scores, 4)), ("random", detect.random_removal_sets(64, 4, 2, 1)[0])):
        retrained = open_run(row[name]["out"])
        assert list(retrained.meta["train_config"]["exclude_tasks"]) == sorted(int(j) for j in ids)
        assert retrained.meta["step"] == 20
        assert row[name]["accuracy"] == pytest.approx(retrained.evaluate().summary()["accuracy"])
    assert ("retrain", 2, 2) in seen and ("edits", 3, 3) in seen


def test_detect_report(noisy, tmp_path, monkeypatch):
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path))
    run, _ = noisy
    rep = detect.detect_report(run, EXACT, k_values=[4, 8], random_draws=2)
    assert rep["score"] == "mean" and rep["corrupted"] == {"noise": 8, "label_flip": 0}
    assert set(rep["curves"]) == set(detect.SCORE_KINDS)
    c = rep["curves"]["self"]["corrupted"]
    assert c["num_corrupted"] == 8 and c["auc"] > 0.7 and c["auc_random"] == 0.5
    assert [p["inspected"] for p in c["points"]] == list(detect.DEFAULT_FRACTIONS)
    assert [r["k"] for r in rep["removal"]["rows"]] == [4, 8]
    assert set(rep["removal"]["all_corrupted_edit"]) == {"-1"}
    assert detect.default_k_values(8, 64) == [4, 8, 16] and detect.default_k_values(40, 64) == [20, 40, 63]


def test_label_flip_detection_on_fashion_mnist_with_retraining(tmp_path, monkeypatch):
    """Real data: MAML mlp (1,347 parameters) on fashion-mnist, 32 training tasks of which 8 have
    shuffled labels, Gauss-Newton fit; curves vs a direct count, retrain rows vs their checkpoints."""
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    task_cfg = TaskConfig(dataset="fashion-mnist", ways=3, shots=5, queries=5, train_tasks=32, test_tasks=32, label_flip_tasks=8)
    train_cfg = TrainConfig(algo="maml", arch="mlp", steps=150, meta_batch=8, checkpoint_every=150)
    run = open_run(train(task_cfg, train_cfg, tmp_path / "run", progress=False, device="cpu"))
    cfg = InfluenceConfig(method="gn", dtype="float64", self_rank_sample=32)
    rep = detect.detect_report(run, cfg, k_values=[8], random_draws=2, retrain=True, retrain_dir=tmp_path / "rt",
                               retrain_steps=20, compare_scores=("mean", "self"))  # fmt: skip
    bad = run.train_tasks.ids_with("label_flip")
    assert rep["corrupted"] == {"noise": 0, "label_flip": 8} and sorted(detect.corrupted_ids(run)) == sorted(bad)
    inf = fit_influence(run, cfg)
    for kind in ("mean", "self"):
        scores = detect.detection_scores(run, inf, "float64", kind)
        first = np.argsort(scores, kind="stable")[:8]  # 25% of 32 inspected (no ties in these scores)
        pts = {p["inspected"]: p["found"] for p in rep["curves"][kind]["corrupted"]["points"]}
        assert pts[0.25] == pytest.approx(len(set(first) & set(bad)) / 8)
        print(f"fashion-mnist label flip, {kind}: AUC {rep['curves'][kind]['corrupted']['auc']:.3f} "
              f"(+{rep['curves'][kind]['corrupted']['auc_sigma']:.1f} sd), found at 25%: {pts[0.25]:.3f}")
    row = rep["removal"]["retrain"][0]
    for name in ("lowest", "random"):
        retrained = open_run(row[name]["out"])
        assert retrained.meta["step"] == 20 and len(retrained.meta["train_config"]["exclude_tasks"]) == 8
        assert row[name]["accuracy"] == pytest.approx(retrained.evaluate().summary()["accuracy"], abs=1e-7)
    print("removal k=8:", {n: round(row[n]["accuracy"], 4) for n in ("lowest", "random")}, rep["removal"]["rows"][0]["edit"]["-1"])


def test_detect_report_needs_corrupted_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path))
    clean = tmp_path / "clean"
    task_cfg = TaskConfig(dataset="synthetic", ways=3, shots=5, queries=5, train_tasks=16, test_tasks=4)
    train(task_cfg, TrainConfig(algo="maml", arch="mlp-synthetic", steps=5, meta_batch=4, checkpoint_every=5), clean, progress=False)
    with pytest.raises(ConfigError, match="no noise or label-flip tasks"):
        detect.detect_report(open_run(clean), EXACT)
    assert not list(tmp_path.glob("influence/*"))  # failed before any fit


# ---- CLI ----------------------------------------------------------------------------------------
def _cli(args, env_cache):
    """The CLI in this process (tests/helpers.run_cli) with its own cache directory."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("METAINF_CACHE", str(env_cache))
        return run_cli(*args)


def test_cli_detect(synthetic_run, tmp_path):
    r = _cli(["detect", str(synthetic_run), "--method", "exact", "--k", "3,6", "--draws", "2", "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"score", "method", "truncation", "num_tasks", "corrupted", "curves", "removal", "seconds"} <= set(out)
    assert out["method"] == "exact" and out["num_tasks"] == 48 and out["corrupted"]["noise"] == 6
    assert set(out["curves"]) == {"mean", "self", "rank"}
    assert {"auc", "auc_random", "auc_max", "auc_sigma", "points", "inspected_to_find"} <= set(out["curves"]["mean"]["corrupted"])
    assert [row["k"] for row in out["removal"]["rows"]] == [3, 6]
    assert math.isfinite(out["removal"]["rows"][0]["edit"]["-1"]["accuracy"])


def test_cli_detect_without_corrupted_tasks_exits_2(tmp_path):
    clean = tmp_path / "clean"
    r = _cli(
        ["train", "--dataset", "synthetic", "--algo", "maml", "--arch", "mlp-synthetic", "--train-tasks", "16",
         "--test-tasks", "4", "--steps", "5", "--meta-batch", "4", "--checkpoint-every", "5", "--out", str(clean), "--quiet"],
        tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = _cli(["detect", str(clean), "--method", "exact", "--quiet"], tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no noise or label-flip tasks" in lines[0], r.stderr


# ---- verdicts (the Audit page's numbers and words) -------------------------------------------------
def test_curve_verdict_on_the_shipped_demo_fit(demo_fitted):
    """The ProtoNet demo (512 training tasks, 64 pure-noise) ordered by self-influence: the first 64
    inspected counted directly, a random order's count from the hypergeometric distribution."""
    from ui import DEFAULT_INFLUENCE

    run = open_run(demo_fitted)
    inf = fit_influence(run, DEFAULT_INFLUENCE)
    bad = detect.corrupted_ids(run)
    scores = detect.detection_scores(run, inf, DEFAULT_INFLUENCE.dtype, "self")
    m, c = len(scores), len(bad)
    assert (m, c) == (512, 64)
    v = detect.curve_verdict(detect.detection_curve(scores, bad))
    # ties (self-influence 0 to float32 precision): a tied task is among the first c with the share of
    # its group's places left, as a random order within the tie would have it
    below = np.array([(scores < s).sum() for s in scores])
    tied = np.array([(scores == s).sum() for s in scores])
    assert v.found_first == pytest.approx(np.clip((c - below[bad]) / tied[bad], 0, 1).sum(), abs=1e-9)
    p = c / m  # draws of c tasks without replacement from m holding c corrupted: mean c·p, variance c·p(1−p)(m−c)/(m−1)
    assert v.random_first == pytest.approx(c * p) and v.random_first == pytest.approx(8.0)
    assert v.random_first_sd == pytest.approx(math.sqrt(c * p * (1 - p) * (m - c) / (m - 1)))
    # the AUC from the corrupted tasks' rank sum (mid-ranks within ties), its distance from 0.5 in the
    # Wilcoxon rank-sum null sd
    ranks = below + (tied + 1) / 2
    auc = (c * m + c / 2 - ranks[bad].sum()) / (c * m)
    assert v.auc == pytest.approx(auc, abs=1e-12)
    assert v.auc_sigma == pytest.approx((auc - 0.5) / (math.sqrt(c * (m - c) * (m + 1) / 12) / (c * m)))
    print("demo, self order:", v)
    assert v.auc_sigma > 5 and v.verdict == 1 and "sooner than a random order" in v.words  # measured +11.0 sd (AUC 0.871)
    # the mean order on the same demo: AUC 0.567 measured, within 2 sd of random
    mean = detect.curve_verdict(detect.detection_curve(detect.detection_scores(run, inf, DEFAULT_INFLUENCE.dtype, "mean"), bad))
    assert mean.verdict == (1 if mean.auc_sigma >= 2 else -1 if mean.auc_sigma <= -2 else 0)
    assert mean.words.endswith(f"({mean.auc_sigma:+.1f} sd)" if mean.verdict == 0 else f"({mean.auc_sigma:+.1f} sd: not by chance)")


def test_removal_verdict_states_the_removal_effect(noisy):
    """One removal (the 8 highest self-influence tasks, ξ = −1) against 3 random ones, each number
    recomputed by direct edits and evaluations."""
    run, inf = noisy
    scores = detect.detection_scores(run, inf, "float64", "self")
    mean = detect.detection_scores(run, inf, "float64", "mean")
    bad = detect.corrupted_ids(run)
    effect = detect.removal_effect(run, inf, scores, [8], xis=(-1.0,), random_draws=3, seed=7, corrupted=bad)
    v = detect.removal_verdict(run, effect, scores, mean)
    removed = np.sort(np.argsort(scores, kind="stable")[:8])
    assert v.removed.tolist() == removed.tolist() and v.k == 8 and v.xi == -1.0 and v.draws == 3
    before = run.evaluate()
    after = run.evaluate(edited_params(run, inf, EditSpec(block=tuple(removed), xi_block=-1.0)))
    rand = [run.evaluate(edited_params(run, inf, EditSpec(block=tuple(r), xi_block=-1.0))).summary()["accuracy"]
            for r in detect.random_removal_sets(64, 8, 3, 7)]  # fmt: skip
    a0, a1 = before.summary()["accuracy"], after.summary()["accuracy"]
    assert (v.accuracy_before, v.accuracy_after, v.random_mean) == pytest.approx((a0, a1, np.mean(rand)), abs=1e-12)
    z = (a1 - np.mean(rand)) / np.std(rand, ddof=1) if np.std(rand) > 0 else v.z
    assert v.z == pytest.approx(z) and v.verdict == (1 if z >= 2 else -1 if z <= -2 else 0)
    assert v.gain == pytest.approx(a1 - a0, abs=1e-6)  # mean of float32 per-task accuracy differences
    # first order: Δ mean test loss ≈ −ξ Σ_B helpfulness(all test tasks), beside the re-tested change
    assert v.loss_predicted == pytest.approx(mean[removed].sum(), rel=1e-12)
    loss_change = after.summary()["loss"] - before.summary()["loss"]
    assert v.loss_change == pytest.approx(loss_change, abs=1e-12)
    same_way = np.sign(a1 - a0) == np.sign(loss_change) != 0
    assert (v.flipped_images is not None) == same_way == (v.same_way is not None)
    if same_way:  # net images over 32 test tasks × 3 ways × 5 queries
        assert v.flipped_images == round((a1 - a0) * 32 * 3 * 5) and f"{abs(v.flipped_images)} query image" in v.same_way
    assert v.corrupted_removed == len(set(removed.tolist()) & set(bad.tolist()))
    print("synthetic, self order, k = 8:", v)
    with pytest.raises(ConfigError, match="one k and one ξ"):
        detect.removal_verdict(run, detect.removal_effect(run, inf, scores, [4, 8], random_draws=2), scores, mean)

