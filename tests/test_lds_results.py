"""The committed task-level LDS results where people decide (issue 27 items 2 and 5): the report's
e8 section is the JSON's numbers, ``best_lds_method`` finds the measurement of a run trained like
the measured one (the ProtoNet demo's own setting is measured, the MAML demo's not yet), and the Validate and
Compare pages and the CLI's ``compare`` state those numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from scipy import stats
from streamlit.testing.v1 import AppTest

from metainf_core.config import TaskConfig, TrainConfig
from metainf_core.lds import noise_ceiling
from metainf_core.lds_results import (
    RESULTS,
    best_lds_method,
    compare_sentence,
    load_results,
    measured_settings,
    measurement_key,
    method_lds,
    result_files,
    validate_sentence,
)
from metainf_core.reproduce import load_sections
from metainf_core.reproduce.experiments import Context, run_experiment
from metainf_core.reproduce.lds_report import lds_verdict, measurements
from metainf_core.service import open_run
from metainf_core.train import train

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "docs" / "results"
DEMOS = [REPO / "assets" / "demo" / d for d in ("protonet-fashion-mnist", "maml-fashion-mnist")]
BEST = "protonet-noise12-a0.5-k20-r32.json"  # the highest committed noise ceiling (0.56)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def like_best(tmp_path_factory) -> Path:
    """A ProtoNet trained with the recipe of BEST's base run, but another training seed and fewer
    test tasks (neither part of the recipe): "trained like" the measured one."""
    entry = load_results()[BEST]["run"]
    task = TaskConfig.from_dict({**entry["task_config"], "test_tasks": 24})
    trainer = TrainConfig.from_dict({**entry["train_config"], "seed": 5})
    root = tmp_path_factory.mktemp("like_best")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAINF_CACHE", str(root / "cache"))
        return train(task, trainer, root / "run", progress=False, device="cpu")


def _committed_section() -> dict:
    return next(s for s in load_sections(REPORT) if s["key"] == "e8-lds")


def test_report_section_is_the_committed_json(tmp_path):
    """e8's committed tables equal the section rebuilt from docs/results/lds now, and their cells
    are the files' numbers, read here straight from the JSON."""
    committed = _committed_section()
    fresh = run_experiment("e8-lds", committed["config"], Context(tmp_path))
    assert fresh["tables"] == committed["tables"] and fresh["figures"] == committed["figures"], (
        "docs/results/lds changed: python -m metainf_core reproduce --out docs/results --only e8-lds --force")
    assert fresh["verdict"] == committed["verdict"]
    results = {p.relative_to(RESULTS).as_posix(): json.loads(p.read_text(encoding="utf-8")) for p in result_files()}
    assert any(name.startswith("methods/") for name in results), "the supplements (EK-FAC, dattri, CG) are read too"
    settings, per_method = committed["tables"][0], committed["tables"][1]
    methods = per_method["columns"][2:]
    assert {"direct-if-ekfac", "dattri-if-explicit", "task-if/cg"} <= set(methods)
    listed = [f for row in settings["rows"] for f in row[1].split(", ")]
    assert sorted(listed) == sorted(results), "every committed result appears once"
    for srow, mrow in zip(settings["rows"], per_method["rows"], strict=True):
        r = results[srow[1].split(", ")[0]]
        assert all(measurement_key(results[f]) == measurement_key(r) for f in srow[1].split(", ")), "one set of retrainings a row"
        assert srow[6:10] == [r["config"]["subsets"], f"{r['config']['alpha']:g}", r["config"]["seeds"], r["config"]["subsets"] * r["config"]["seeds"]]
        assert srow[10] == f"{r['ceiling']['mean']:.3f} ± {r['ceiling']['sd']:.3f}" and mrow[1] == f"{r['ceiling']['mean']:.3f}"
        assert srow[12] == f"{r['null']['q95']:+.3f}"
        for name, cell in zip(methods, mrow[2:], strict=True):
            m = next((x["methods"][name] for f in srow[1].split(", ") for x in [results[f]] if name in x["methods"]), None)
            if m is None:
                files = [results[f] for f in srow[1].split(", ")]
                skipped, costly = (any(name in x.get(kind, {}) for x in files) for kind in ("skipped", "not_scored"))
                assert cell == ("skipped" if skipped else "not run" if costly else "—"), (srow[0], name)
                continue
            frac, unsolved = m["fraction_of_ceiling"], m["details"].get("converged") is False
            assert cell == f"{m['mean']:+.3f} ± {m['sd']:.3f}" + ("" if frac is None else f" ({frac:.2f})") + (" †" if unsolved else "")
            if frac is not None:  # the fraction is mean / ceiling (up to float rounding of one division)
                assert frac == pytest.approx(m["mean"] / r["ceiling"]["mean"], rel=1e-12)


def test_ceilings_recomputed_from_the_retrainings():
    """Where a file keeps its per-seed losses, its noise ceiling is recomputed by hand: Spearman of
    the two halves' mean losses per test task (scipy), Spearman–Brown 2r/(1 + r), mean over tasks."""
    checked = 0
    for name, r in load_results().items():
        if "data" not in r:
            continue
        losses = np.asarray(r["data"]["losses"])  # (K, R, T)
        half = losses.shape[1] // 2
        a, b = losses[:, :half].mean(1), losses[:, half : 2 * half].mean(1)
        rho = np.array([stats.spearmanr(a[:, t], b[:, t]).statistic for t in range(losses.shape[2])])
        by_hand = float(np.nanmean(2 * rho / (1 + rho)))
        # float64 means of the same numbers in another order: ~1e-15; the ceiling is printed to 3 decimals
        assert by_hand == pytest.approx(r["ceiling"]["mean"], abs=1e-9), name
        assert noise_ceiling(losses)["mean"] == pytest.approx(by_hand, abs=1e-9)
        checked += 1
    assert checked >= 5  # the R = 4 and R = 8 files and the MAML ones keep their losses


def test_verdict_counts_by_hand():
    ms = measurements(load_results())
    room = [m for m in ms if m["ceiling"]["mean"] > m["null"]["q95"]]
    hits = [m for m in room if max(m["methods"][t]["mean"] for t in ("tlxml-gn", "tlxml-exact") if t in m["methods"]) > m["null"]["q95"]]
    v = lds_verdict(ms)
    assert f"on {len(hits)} of the {len(room)} measurements" in v["reason"]
    assert v["label"] == ("reproduced" if len(hits) == len(room) else "partly" if hits else "not reproduced")
    assert "0.562" in v["reason"] and "tlxml-gn best at +0.268" in v["reason"]


def test_best_lds_method_finds_the_matching_measurement(like_best):
    run = open_run(like_best)
    best = best_lds_method(run)
    raw = load_results()[BEST]
    top = max((n for n in raw["methods"] if n != "random"), key=lambda n: raw["methods"][n]["mean"])
    assert best is not None and best.source == BEST and best.method == top == "tlxml-gn"
    assert best.lds == raw["methods"][top]["mean"] and best.ceiling == raw["ceiling"]["mean"]
    assert (best.subsets, best.seeds, best.retrainings) == (20, 32, 640) and best.above_chance
    others = [n for n, m in raw["methods"].items() if n not in ("random", top) and "@" not in n and m["details"].get("converged") is not False]
    assert {"dattri-if-explicit", "grad-sim"} <= set(others) and "task-if/cg" not in others  # a supplement joins; an unconverged CG does not count
    assert [n for n, _ in best.others] == sorted(others, key=lambda n: -raw["methods"][n]["mean"])
    exact = method_lds(run, "tlxml-exact")
    assert exact.source == BEST and exact.lds == raw["methods"]["tlxml-exact"]["mean"]
    assert method_lds(run, "direct-if") is None  # skipped for ProtoNet in every measurement
    # change one recipe field and nothing matches
    for part, field, value in (("task_config", "noise_tasks", 6), ("train_config", "steps", 400), ("train_config", "algo", "maml")):
        meta = {**run.meta, part: {**run.meta[part], field: value}}
        found = best_lds_method(meta)
        assert found is None or found.source != BEST, (field, found)
    assert best_lds_method({**run.meta, "train_config": {**run.meta["train_config"], "exclude_tasks": [1]}}) is None


DEMO_RESULTS = {"protonet-fashion-mnist": "protonet-demo-a0.5-k20-r2.json", "maml-fashion-mnist": "maml-demo-a0.5-k20-r2.json"}  # each demo retrained K = 20 × R = 2


@pytest.mark.parametrize("demo", DEMOS, ids=lambda p: p.name)
def test_every_method_is_scored_on_the_demos_or_says_why(demo):
    """Issue 27's table on both demos' settings: each registered method has an LDS there (the peer
    library's TRAK and, for MAML, EK-FAC among them) or a recorded reason — does not apply or fit
    (``skipped``, the method's own skip reason) or costs too much (``not_scored``) — and the report
    lists every reason."""
    from metainf_core.compare import METHODS
    from metainf_core.reproduce.lds_report import solver_text, why_not_scored

    r = load_results()[DEMO_RESULTS[demo.name]]
    for method in METHODS:
        assert method in r["methods"] or r["skipped"].get(method) or r.get("not_scored", {}).get(method), method
    assert {"tlxml-gn", "grad-sim", "dattri-trak", "random"} <= set(r["methods"])
    assert ("direct-if-ekfac" in r["methods"]) == (demo.name.startswith("maml"))
    trak = r["methods"]["dattri-trak"]
    assert "projected to 256 dimensions" in solver_text(trak["details"]) and trak["num_tests"] == 128  # d = min(512, M/2)
    listed = {(row[0], row[2]) for row in why_not_scored([r])}
    assert listed == {*r["skipped"].items(), *r.get("not_scored", {}).items()}


@pytest.mark.parametrize("demo", DEMOS, ids=lambda p: p.name)
def test_each_demo_is_measured_and_its_sentence_is_the_files_numbers(demo):
    """Both demos' own settings are measured (K = 20 halves × R = 2 seeds, all 128 test tasks): the
    Validate page's sentence is the committed file's numbers."""
    meta = json.loads((demo / "meta.json").read_text(encoding="utf-8"))
    name = DEMO_RESULTS[demo.name]
    found, result = method_lds(meta, "tlxml-gn"), load_results()[name]
    assert found is not None and found.source == name and (found.subsets, found.seeds, found.test_tasks) == (20, 2, 128)
    assert found.lds == pytest.approx(result["methods"]["tlxml-gn"]["mean"]) and found.ceiling == pytest.approx(result["ceiling"]["mean"])
    words = validate_sentence(found)
    assert f"{found.lds:.2f}" in words and f"{found.ceiling:.2f}" in words and "(40 retrainings)" in words
    # a noise ceiling inside the chance band is said plainly: the check cannot tell yet (both demos at R = 2)
    noisy = result["ceiling"]["mean"] <= result["null"]["q95"]
    assert ("cannot yet tell" in words) == noisy and ("cannot yet tell" in compare_sentence(best_lds_method(meta))) == noisy


def test_an_unmeasured_setting_says_so():
    """A run trained unlike every measurement (the MAML demo's recipe with 256 training tasks) matches
    none, and the sentence says what the check is and which kinds of model it has covered."""
    meta = json.loads((DEMOS[1] / "meta.json").read_text(encoding="utf-8"))
    meta["task_config"] = {**meta["task_config"], "train_tasks": 256}
    assert best_lds_method(meta) is None and method_lds(meta, "tlxml-gn") is None
    words = validate_sentence(None)
    assert words.startswith("Not yet checked against retraining") and all(s.split(" (")[0] in words for s in measured_settings())
    assert "ProtoNet on synthetic data, 64 training tasks" in words and "(with and without corrupted tasks)" in words


def test_sentences_state_the_numbers(like_best):
    run = open_run(like_best)
    raw = load_results()[BEST]
    v = validate_sentence(method_lds(run, "tlxml-gn"))
    gn = raw["methods"]["tlxml-gn"]
    for text in (f"at {gn['mean']:.2f}", f"about {raw['ceiling']['mean']:.2f} (the noise ceiling)", "640 retrainings",
                 f"reaches {gn['fraction_of_ceiling']:.2f} of that", f"exceed {raw['null']['q95']:.2f} only one time in 20"):
        assert text in v, (text, v)
    assert (f"{0.27:.2f}", f"{0.56:.2f}", f"{0.48:.2f}") == (f"{gn['mean']:.2f}", f"{raw['ceiling']['mean']:.2f}", f"{gn['fraction_of_ceiling']:.2f}")
    c = compare_sentence(best_lds_method(run))
    assert "**TLXML (Gauss-Newton)** has the highest LDS: +0.27" in c and "TLXML (exact) +0.14" in c
    assert "cannot yet tell" not in v + c  # a ceiling of 0.56 lies far above the chance band
    # a setting where no method beats chance says so (ProtoNet without noise tasks: best −0.015 < 0.063)
    homog = load_results()["protonet-homog-a0.5-k20-r4.json"]["run"]
    assert "no method predicts it better than chance" in compare_sentence(best_lds_method(homog))
    assert "no better than chance" in validate_sentence(method_lds(homog, "tlxml-gn"))


def _page(name: str, path: Path) -> AppTest:
    at = AppTest.from_file(str(REPO / "views" / name), default_timeout=600)
    at.session_state["model_path"] = str(path)
    at.run()
    assert not at.exception, at.exception
    return at


def test_validate_and_compare_pages_state_the_lds(like_best, synthetic_run, monkeypatch, tmp_path):
    from metainf_core import Explainer, ExplainerConfig
    from ui import DEFAULT_INFLUENCE

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    app_fit = ExplainerConfig(method="gn", n_orth=512, dtype="float32", device="cpu")
    assert app_fit.influence == DEFAULT_INFLUENCE  # the pages' fit (63 parameters: no sketching), made here so they need no click
    for path in (like_best, synthetic_run):
        Explainer(open_run(path), app_fit).fit(progress=False)
    run = open_run(like_best)
    at = _page("4_Validate.py", like_best)
    shown = [m.value for m in at.markdown if m.value.startswith("Checked against retraining")]
    assert shown == [validate_sentence(method_lds(run, "tlxml-gn"))] and "at 0.27" in shown[0] and "about 0.56" in shown[0]
    at = _page("5_Compare.py", like_best)
    shown = [m.value for m in at.markdown if m.value.startswith("Checked against retraining")]
    assert shown == [compare_sentence(best_lds_method(run))] and "**TLXML (Gauss-Newton)** has the highest LDS: +0.27" in shown[0]
    # a run trained otherwise (the conftest's MAML on 48 tasks): not measured, said on both pages
    for page in ("4_Validate.py", "5_Compare.py"):
        at = _page(page, synthetic_run)
        assert any(m.value == validate_sentence(None) for m in at.markdown), page


def test_cli_compare_prints_the_best_lds(like_best, monkeypatch, tmp_path):
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    done = run_cli("compare", like_best, "--test-task", "0", "--methods", "grad-sim,task-if", "--top", "3")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)["lds"]
    assert out["best"]["method"] == "tlxml-gn" and out["best"]["source"] == BEST and out["best"]["retrainings"] == 640
    assert "TLXML (Gauss-Newton) has the highest LDS: +0.27" in out["text"] and RESULTS.is_dir()


def test_demo_rows_count_the_committed_retrainings(tmp_path):
    """The report says how far a demo's LDS retrainings have come: the complete runs in its committed
    work folder (an unfinished one does not count), or the cost when none has started."""
    from metainf_core.reproduce.lds_report import demo_rows, retraining_folder

    work = retraining_folder(tmp_path, "protonet-fashion-mnist") / "runs"
    for name, complete in (("a", True), ("b", True), ("c", False)):
        (work / name).mkdir(parents=True)
        (work / name / "meta.json").write_text(json.dumps({"complete": complete}), encoding="utf-8")
    rows = {r.split(" demo's")[0]: r for r in demo_rows(tmp_path, 20, 4)}
    assert "2 retrainings finished so far" in rows["the protonet-fashion-mnist"]
    assert "not measured" in rows["the maml-fashion-mnist"] and "finished so far" not in rows["the maml-fashion-mnist"]
    assert "9.7 h" in rows["the maml-fashion-mnist"]  # K·R at its recorded training time


def test_a_result_added_to_the_folder_makes_the_saved_e8_section_stale(tmp_path):
    """``reproduce`` reruns a section whose committed inputs changed, not only its configuration: a new
    LDS result in e8's folder makes the saved section out of date, the same files keep it current."""
    from metainf_core.reproduce import _saved_for, committed_inputs

    (tmp_path / "a.json").write_text("{}", encoding="utf-8")
    config = {"folder": str(tmp_path)}  # absolute: REPO_ROOT / it is itself
    section = {"config": config, "inputs": committed_inputs(config)}
    assert _saved_for(section, config) and set(section["inputs"]) == {"a.json"}
    (tmp_path / "b.json").write_text("{}", encoding="utf-8")
    assert not _saved_for(section, config)
    assert not _saved_for({"config": config}, config)  # saved before inputs were recorded: stale
    assert _saved_for({"config": {"x": 1}}, {"x": 1})  # an experiment that reads no committed folder


def test_supplements_join_their_measurement_and_unconverged_solves_never_win(tmp_path):
    """Methods scored later on a measurement's own retrainings (``methods/*.json``) join that
    measurement; one whose retrainings differ stands alone; a CG solve that stopped without
    converging is shown with † and is never the best method, however high its LDS."""
    from metainf_core.reproduce import committed_inputs
    from metainf_core.reproduce.lds_report import best_of

    base, extra = "maml-noise12-a0.5-k20-r4.json", "maml-noise12-a0.5-k20-r4-matrix-free.json"
    (tmp_path / "methods").mkdir()
    (tmp_path / base).write_bytes((RESULTS / base).read_bytes())
    supplement = json.loads((RESULTS / "methods" / extra).read_text(encoding="utf-8"))
    assert supplement["methods"]["direct-if/cg"]["details"]["converged"] is False
    supplement["methods"]["direct-if/cg"]["mean"] = 0.99  # far above every solved method
    (tmp_path / "methods" / extra).write_text(json.dumps(supplement), encoding="utf-8")
    other = {**supplement, "config": {**supplement["config"], "alpha": 0.25}}  # other retrainings
    (tmp_path / "methods" / "other.json").write_text(json.dumps(other), encoding="utf-8")

    results = load_results(tmp_path)
    assert set(results) == {base, "methods/other.json"}
    joined = results[base]
    assert joined["files"] == [base, f"methods/{extra}"] and {"task-if/cg", "direct-if/cg", "tlxml-gn"} <= set(joined["methods"])
    assert joined["methods"]["task-if"] == json.loads((RESULTS / base).read_text(encoding="utf-8"))["methods"]["task-if"]
    (m,) = [x for x in measurements(results) if x["config"]["alpha"] == 0.5]
    assert best_of(m)[0] != "direct-if/cg" and best_of(m)[1] < 0.99
    section = run_experiment("e8-lds", {"folder": str(tmp_path)}, Context(tmp_path / "work"))
    per_method = section["tables"][1]
    row = next(r for r in per_method["rows"] if r[0] == "MAML, 12 noise, α 0.5, R 4")
    assert row[per_method["columns"].index("direct-if/cg")].startswith("+0.990") and row[per_method["columns"].index("direct-if/cg")].endswith("†")
    assert set(committed_inputs({"folder": str(tmp_path)})) == {base, f"methods/{extra}", "methods/other.json"}


def test_readme_method_table_is_the_committed_lds():
    """The README's "Which method to believe" table: each cell is the committed measurement's mean
    LDS and fraction of the ceiling (with † for an unconverged solve), its header the ceiling and
    chance band, and the two measurements are each learner's highest ceiling."""
    from metainf_core.lds_results import solved

    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = text.split("## Which method to believe", 1)[1].split("\n\n")
    table = next(b for b in lines if b.startswith("| method |")).splitlines()
    results = load_results()
    files = {"ProtoNet": "protonet-noise12-a0.5-k20-r32.json", "MAML": "maml-noise12-a0.5-k20-r4.json"}
    for learner, name in files.items():
        r = results[name]
        best = max((x for x in results.values() if x["run"]["train_config"]["algo"] == learner.lower()), key=lambda x: x["ceiling"]["mean"])
        assert best is r, f"{learner}: the highest ceiling is another measurement"
        assert f"{learner}, R = {r['config']['seeds']} (ceiling {r['ceiling']['mean']:.3f}, chance < {r['null']['q95']:+.3f})" in table[0]

    def cell(r: dict, method: str) -> str:
        if method in r["methods"]:
            m = r["methods"][method]
            return (f"{m['mean']:+.3f} ({m['fraction_of_ceiling']:.2f})" + ("" if solved(m) else " †")).replace("-", "−")
        return "does not apply" if method in r["skipped"] else "not scored"

    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert len(rows) >= 9
    for row in rows:
        method = row[0].strip("`")
        assert [row[2], row[3]] == [cell(results[files["ProtoNet"]], method), cell(results[files["MAML"]], method)], method


def test_the_highest_ceiling_measurement_replicates_on_new_retrainings():
    """The R = 32 ProtoNet measurement (ceiling 0.56, TLXML-GN best) repeated from scratch on another
    machine (``lds/replications/``, not merged by ``load_results``: other retrainings): its numbers
    recompute from its own per-seed losses, its ceiling is within 0.1 of the first (each mean over 32
    test tasks with sd ≈ 0.24, so their difference has a standard error of about 0.06), and TLXML-GN
    again has the highest LDS, above the chance band and within 0.05 of the first measurement's."""
    first = load_results()["protonet-noise12-a0.5-k20-r32.json"]
    path = REPO / "docs/results/lds/replications/protonet-noise12-a0.5-k20-r32-repeat.json"
    again = json.loads(path.read_text(encoding="utf-8"))
    assert all("replications" not in f for r in load_results().values() for f in r["files"])
    losses = np.asarray(again["data"]["losses"])
    assert losses.shape == (20, 32, 32) and again["retraining"]["trained_now"] == 640
    assert noise_ceiling(losses)["mean"] == pytest.approx(again["ceiling"]["mean"], abs=1e-12)
    assert abs(again["ceiling"]["mean"] - first["ceiling"]["mean"]) < 0.1
    assert max(again["methods"], key=lambda n: again["methods"][n]["mean"]) == "tlxml-gn"
    assert again["methods"]["tlxml-gn"]["mean"] > again["null"]["q95"]
    assert again["methods"]["tlxml-gn"]["mean"] == pytest.approx(first["methods"]["tlxml-gn"]["mean"], abs=0.05)
