"""e5: removal fidelity (seed 001 Table 1) and harmful tasks (§6.3)."""

from __future__ import annotations

from typing import Any

import numpy as np

from metainf_core.reproduce.experiments.common import Context, Section, _configs, _grade, _influence, _table

# ---- 5. removal fidelity (seed 001 Table 1) and harmful tasks (§6.3) --------------------------
FIDELITY_ORDER = ("retrain", "task-if", "direct-if", "tlxml-exact", "tlxml-gn", "unedited")


def _fidelity_table(fid: dict[str, Any]) -> tuple[list[list[Any]], dict[str, Any]]:
    rows, retrain = [], fid["rows"]["retrain"]
    for name in FIDELITY_ORDER:
        if name not in fid["rows"]:
            continue
        r = fid["rows"][name]
        if name == "retrain":
            rows.append([name, f"{r['accuracy_mean']:.4f} ± {r['accuracy_sd']:.4f}", f"[{r['interval'][0]:.4f}, {r['interval'][1]:.4f}]",
                         f"{r['seconds']:.1f} s per training", "", "", ""])
            continue
        sp = r.get("speedup", {})
        rows.append([name, f"{r['accuracy_mean']:.4f} ± {r['accuracy_sd']:.4f}", "yes" if r["inside_retrain_interval"] else "no",
                     f"{r['fit_seconds']:.1f} s fit + {1e3 * r['update_seconds']:.2f} ms", f"{sp['one_removal']:.2f}×" if sp else "",
                     f"{sp['amortised']:.2f}×" if sp else "", f"{r['relative_distance']:.2f}"])
    return rows, retrain


def _detection_rows(kind: str, rep: dict[str, Any]) -> tuple[list[list[Any]], list[list[Any]], list[dict[str, Any]]]:
    curves, removal = [], []
    series = []
    for score, cur in rep["curves"].items():
        cc = cur["corrupted"]
        at = {p["inspected"]: p["found"] for p in cc["points"]}
        curves.append([kind, score, cc["num_corrupted"], f"{cc['auc']:.3f} ({cc['auc_sigma']:+.1f}σ)", f"{at[0.25]:.2f}", f"{at[0.5]:.2f}",
                       f"{cc['inspected_to_find']['0.9']:.2f}"])
        series.append({"name": f"{kind}: {score}", "x": [p["inspected"] for p in cc["points"]], "y": [p["found"] for p in cc["points"]]})
    rem = rep["removal"]
    before = rem["before"]["accuracy"]
    retrain = {r["k"]: r for r in rem.get("retrain", [])}
    for row in rem["rows"]:
        e, rnd = row["edit"]["-1"], row["random_edit"]["-1"]
        rt = retrain.get(row["k"])
        removal.append([kind, row["k"], row["corrupted_in_lowest"], f"{before:.4f}", f"{e['accuracy']:.4f} ({e['gain']:+.4f} ± {e['gain_ci95']:.4f})",
                        f"{rnd['accuracy_mean']:.4f} ± {rnd['accuracy_sd']:.4f}",
                        f"{rt['lowest']['accuracy']:.4f}" if rt else "", f"{rt['random']['accuracy']:.4f}" if rt else ""])
    return curves, removal, series


def removal_and_harmful_tasks(c: dict[str, Any], ctx: Context) -> Section:
    """(a) Random removal of k tasks: retraining vs task-IF vs direct IF vs TLXML ξ = −1 edits
    (``fidelity.removal_fidelity``); (b) label-flip and noise tasks found in score order, and
    test accuracy after removing the lowest-scored tasks by the edit and by retraining vs random
    (``detect.detect_report``)."""
    from metainf_core.detect import detect_report, random_removal_sets
    from metainf_core.fidelity import removal_fidelity

    task_cfg, train_cfg = _configs(c, dataset=c["dataset"], ways=c["ways"], algo=c["algo"], seed=c["seed"], train_tasks=c["fidelity_tasks"])
    run = ctx.run(task_cfg, train_cfg)
    sets = random_removal_sets(c["fidelity_tasks"], c["k"], c["draws"], c["seed"])
    ctx.log(f"removal fidelity: {c['draws']} sets × {len(c['retrain_seeds'])} retrainings")
    fid = removal_fidelity(run, sets, retrain_seeds=c["retrain_seeds"], damping=c["damping"])
    fid_rows, retrain = _fidelity_table(fid)
    curves, removal, series, reps = [], [], [], {}
    for kind, flips, noise in (("label flips", c["detect_tasks"] // 4, 0), ("noise images", 0, c["detect_tasks"] // 8)):
        t_cfg, tr_cfg = _configs(c, dataset=c["dataset"], ways=c["ways"], algo=c["algo"], seed=c["seed"], train_tasks=c["detect_tasks"], noise=noise, flips=flips)
        drun = ctx.run(t_cfg, tr_cfg)
        ctx.log(f"harmful tasks: {kind}")
        rep = detect_report(drun, _influence(c), score="mean", k_values=[flips + noise], random_draws=c["random_draws"], seed=c["seed"],
                            retrain=True, fractions=[round(f, 2) for f in np.linspace(0, 1, 21)])  # fmt: skip
        reps[kind] = rep
        cu, rm, se = _detection_rows(kind, rep)
        curves += cu
        removal += rm
        series += se
    ests = [n for n in ("task-if", "tlxml-exact", "tlxml-gn") if n in fid["rows"]]
    inside = [n for n in ests if fid["rows"][n]["inside_retrain_interval"]]
    fast = [n for n in inside if fid["rows"][n]["speedup"]["one_removal"] >= 10]
    direct = fid["rows"].get("direct-if")
    task_if = fid["rows"].get("task-if")
    closer = bool(direct and task_if and abs(task_if["accuracy_mean"] - retrain["accuracy_mean"]) < abs(direct["accuracy_mean"] - retrain["accuracy_mean"]))
    best_auc = max(float(r[3].split()[0]) for r in curves if r[0] == "label flips")
    lf = reps["label flips"]["removal"]
    edit, rand, rt = lf["rows"][0]["edit"]["-1"], lf["rows"][0]["random_edit"]["-1"], lf["retrain"][0]
    beats = edit["accuracy"] > rand["accuracy_mean"] and rt["lowest"]["accuracy"] > rt["random"]["accuracy"]
    removal_text = (f"removing the {lf['rows'][0]['k']} lowest-scored tasks of the label-flip run gives {edit['accuracy']:.3f} by the edit vs "
                    f"{rand['accuracy_mean']:.3f} for random sets, {rt['lowest']['accuracy']:.3f} vs {rt['random']['accuracy']:.3f} by retraining")
    fidelity_text = (f"inside the retraining interval: {', '.join(inside) or 'none'}; task-IF closer to retraining than direct IF: "
                     f"{'yes' if closer else 'no'}; ≥10× faster than retraining for one removal: {', '.join(fast) or 'none'}")
    verdict = _grade(
        ("task-if" in inside and closer and best_auc > 0.7 and beats,
         f"{fidelity_text}; label-flip tasks found well ahead of random (best AUC {best_auc:.2f}); {removal_text}"),
        (bool(inside) or best_auc > 0.7 or beats,
         f"{fidelity_text} (at this size the exact fits cost more than one short retraining, and removing {c['k']} of "
         f"{c['fidelity_tasks']} random tasks moves accuracy less than the seed-to-seed spread); best label-flip AUC {best_auc:.2f}; {removal_text}"),
        f"no estimate inside the retraining interval, label-flip AUC {best_auc:.2f}; {removal_text}",
    )
    return {
        "title": "Removal fidelity and harmful tasks",
        "paper": "seed 001 Table 1 (MAML, random task removal, accuracy / runtime in s): Omniglot retrain 0.7908 / 316.7, direct IF 0.5422 / 7.5, "
                 "task-IF 0.7804 / 65.7; MNIST 0.6373 / 244.2, 0.3247 / 7.4, 0.6118 / 45.7; MiniImageNet 0.3071 / 682.6, 0.2214 / 10.2, 0.2668 / 74.6. "
                 "§6.3: with labels flipped in 80% of the tasks, inspecting 25% of the data by score gives ≈ 62.5% test accuracy vs 55% for random "
                 "removal, and finds nearly all mislabeled tasks after 40% inspected.",
        "reductions": [f"MAML {c['arch']} on {c['dataset']} ({c['ways']}-way): {c['fidelity_tasks']} training tasks, {c['draws']} random removals of "
                       f"k = {c['k']}, retraining seeds {c['retrain_seeds']}, {c['steps']} meta-batches (paper: 5,000 iterations, 10,000 tasks)",
                       f"harmful tasks on {c['detect_tasks']} training tasks with 1/4 label-flip tasks (paper: 80%) and separately 1/8 noise-image tasks; "
                       "one training seed; GN fit",
                       f"task-IF for MAML = the exact meta-Hessian with damping λ_d = {c['damping']} and all positive directions (compare.py); "
                       "proximal MAML is left out here (its inner solve makes training ~100× slower on this CPU)"],
        "tables": [
            _table(f"Removal fidelity: test accuracy after removing k = {c['k']} random training tasks (mean ± sd over {c['draws']} draws); retraining "
                   "interval = mean ± 1.96 seed-sd; runtime = one-off fit + per-removal update (evaluation not counted); speed-up = retraining time / "
                   "method time for one removal and amortised over the draws; distance = ‖ω̂_method − ω̂_retrain‖ / ‖ω̂ − ω̂_retrain‖",
                   ["method", "accuracy", "inside retraining interval", "runtime", "speed-up (one)", "speed-up (amortised)", "distance"], fid_rows),
            _table("Harmful-task detection: corrupted tasks found when inspecting training tasks in score order (AUC 0.5 = random; σ of a random order)",
                   ["corruption", "score", "corrupted tasks", "AUC", "found at 25%", "found at 50%", "inspected to find 90%"], curves),
            _table("Removing the k lowest-scored tasks (score = mean helpfulness over the test taskset): by the ξ = −1 edit (paired gain ± 95%), "
                   f"vs {c['random_draws']} random k-sets by the edit, and by leave-out retraining (lowest-scored vs one random set)",
                   ["corruption", "k", "corrupted among removed", "unedited", "edit: lowest", "edit: random", "retrain: lowest", "retrain: random"], removal),
        ],
        "figures": [{"name": "detection", "title": "Corrupted tasks found vs fraction inspected", "x_title": "fraction of training tasks inspected",
                     "y_title": "fraction of corrupted tasks found", "series": [*series, {"name": "random", "x": [0.0, 1.0], "y": [0.0, 1.0]}]}],
        "verdict": verdict,
    }
