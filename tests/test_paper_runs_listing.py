"""The committed paper runs as models to open (issue 23 item 9): listed from their folders by the core
(``rows.committed_runs``), picked on Home, opened by ``?model=paper/<row>/seed<k>``, and never fitted
on a click (the pages give the predicted time and the command instead); demo run folders record a
data source without this machine's paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from metainf_core.checkpoint import META_FILE, TRAIN_STATE_FILE, read_meta, read_tensor_metadata
from metainf_core.exceptions import CheckpointError, ConfigError
from metainf_core.reproduce import estimate
from metainf_core.reproduce.rows import ROOT, ROWS, committed_runs, fit_command, row_fit_seconds, run_dir

REPO = Path(__file__).resolve().parents[1]
ROW = ROWS["om-protonet-512"]
FILES = (META_FILE, "model.safetensors", TRAIN_STATE_FILE, "train_tasks.json", "test_tasks.json")
# A fixed cost model in place of the timing probe: figures a test can compute by hand.
COSTS = estimate.Costs(train_step_s=1.0, gn_task_s=2.0, rows_per_task=100, num_parameters=28_320)
LINALG = estimate.Linalg(gflops=10.0, eigh_512_s=0.1)


def copy_of_committed_run(root: Path) -> Path:
    """A consistent copy of om-protonet-512 seed 0 (training may be rewriting the original every
    ~100 meta-batches: its files are each replaced atomically, so a copy is retried until the
    weights match meta.json and the train state's step matches meta.json's)."""
    source = run_dir(ROW, 0)
    if not (source / META_FILE).is_file():
        pytest.skip(f"{source} is not in this checkout")
    dest = run_dir(ROW, 0, root)
    for _ in range(10):
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for name in FILES:
            shutil.copy2(source / name, dest / name)
        try:
            meta = read_meta(dest)
        except CheckpointError:  # copied between the weights and meta.json of one save
            continue
        if read_tensor_metadata(dest / TRAIN_STATE_FILE)["step"] == meta["step"]:
            return dest
    pytest.fail(f"no consistent copy of {source} in 10 tries")


def test_committed_runs_describe_each_folder_from_the_folder(tmp_path):
    dest = copy_of_committed_run(tmp_path)
    (tmp_path / ROW.key / "seed7").mkdir()  # a folder without a checkpoint is not a run
    (tmp_path / "not-a-row" / "seed0").mkdir(parents=True)
    [run] = committed_runs(tmp_path)
    step = read_tensor_metadata(dest / TRAIN_STATE_FILE)["step"]  # the folder's own train state
    assert (run.path, run.row, run.seed) == (dest, "om-protonet-512", 0)
    assert run.steps_done == step and run.steps == 10_000 and run.partial == (step < 10_000)
    assert not run.fitted and not run.result
    progress = (
        f"trained {step:,} of 10,000 meta-batches so far (partial)"
        if step < 10_000
        else "fully trained (10,000 meta-batches)"
    )
    assert run.description == (
        "The paper's own setting (TLXML Table 11): ProtoNet on Omniglot, 512 training tasks (64 of them pure-noise tasks), "
        f"seed 0 — {progress}; no influence fit ships with it."
    )
    (dest / "influence").mkdir()
    (dest / "influence" / "key.safetensors").write_bytes(b"")  # a shipped fit (fits.shipped_fit_path) makes it fitted
    [fitted] = committed_runs(tmp_path)
    assert fitted.fitted and fitted.description.endswith("its influence fit ships with it.")
    (dest / "row.json").write_text(json.dumps({"noise": {"proper": 81, "total": 128, "z": 3.0}}))  # an evaluated run
    [evaluated] = committed_runs(tmp_path)
    assert evaluated.result and "; in 81 of its 128 test tasks the pure-noise training tasks scored below the normal ones " \
        "on average (the paper: 112.6); its influence fit ships with it." in evaluated.description  # fmt: skip


def test_the_repository_lists_its_committed_runs():
    """Both ProtoNet Table 11 runs issue 23 committed (partial: their folders are read, not copied)."""
    listed = {(r.row, r.seed) for r in committed_runs()}
    assert {("om-protonet-512", 0), ("om-protonet-1024", 0)} <= listed
    assert all(r.path.parent.parent == ROOT for r in committed_runs())


def test_fit_estimate_follows_algorithm_1s_reductions():
    """512 tasks of 100 Gauss-Newton rows, N_orth = 512 (N_max = 1,024): the buffer first exceeds
    1,024 rows at task 11 (1,100 rows), then every 6 tasks (512 + 600 = 1,112): 1 + ⌊(512 − 11)/6⌋ = 84
    reductions, one more at the end, each of a 1,112-row buffer."""
    seen = []
    seconds = row_fit_seconds(ROW, (512, 8192), probe=lambda net: seen.append(net) or COSTS, linalg=LINALG)
    one = estimate.reduction_seconds(1112, 28_320, 512, LINALG)
    assert seconds[512] == pytest.approx(512 * 2.0 + 85 * one, rel=1e-12)  # the same sum in another order
    assert seconds[8192] > seconds[512]  # larger buffers: 16,384 rows and up
    [net] = seen
    assert (net.algo, net.arch, net.filters, net.input_shape, net.ways, net.meta_batch) == (
        "protonet",
        "conv4",
        32,
        (1, 28, 28),
        5,
        32,
    )


@pytest.mark.parametrize(
    "extra",
    [{}, {"projection_dim": 4096, "rows_per_task": 8, "truncation": 64, "param_groups": ("features.3", "head")}],
)
def test_fit_command_fits_exactly_the_pages_settings(extra):
    """The printed command, parsed by the CLI, gives the same InfluenceConfig (hence the same cache key)."""
    import shlex
    from dataclasses import replace

    from metainf_core.cli import _influence_config, build_parser
    from ui import DEFAULT_INFLUENCE

    cfg = replace(DEFAULT_INFLUENCE, **extra)
    words = shlex.split(fit_command(run_dir(ROW, 0), cfg))
    assert words[:5] == ["python", "-m", "metainf_core", "fit", "docs/results/paper/om-protonet-512/seed0"]
    assert len(words) == 5 + 2 * len(extra)  # the app's settings are the CLI's defaults: no option needed
    args = build_parser().parse_args(words[3:])
    assert _influence_config(args) == cfg and args.path == "docs/results/paper/om-protonet-512/seed0"
    with pytest.raises(ConfigError, match="self_rank_sample"):  # no option for it: the command could not fit cfg
        fit_command(run_dir(ROW, 0), replace(cfg, self_rank_sample=512))


def test_demo_meta_records_the_data_source_as_new_runs_do():
    """assets/demo/*/meta.json: the source a run trained now writes (FewShotDataset.describe), no machine path."""
    from metainf_core.data import load_dataset

    written = load_dataset("fashion-mnist").describe()["source"]
    assert not Path(written).is_absolute()
    for meta in sorted((REPO / "assets" / "demo").glob(f"*/{META_FILE}")):
        assert json.loads(meta.read_text(encoding="utf-8"))["dataset"]["source"] == written, meta


@pytest.fixture
def paper_copy(tmp_path, monkeypatch):
    """The dashboard's paper runs from a copy of one committed run, its cache empty, the timing probe fixed."""
    import ui

    dest = copy_of_committed_run(tmp_path / "paper")
    monkeypatch.setattr(ui, "PAPER_DIR", tmp_path / "paper")
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(estimate, "probe_network", lambda net: COSTS)
    monkeypatch.setattr(estimate, "probe_linalg", lambda: LINALG)
    ui.paper_fit_seconds.clear()
    return dest


def test_home_lists_the_paper_runs_and_opens_one(paper_copy):
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180).run()
    at.sidebar.radio(key="home_source").set_value("Paper run").run()
    assert not at.exception
    [run] = committed_runs(paper_copy.parent.parent)
    picker = at.sidebar.radio(key="home_paper")
    assert list(picker.proto.captions) == [run.description]
    assert any("The paper's own setting" in m.value for m in at.sidebar.markdown)
    assert at.session_state["model_path"] == str(paper_copy)
    assert at.query_params["model"] in (["paper/om-protonet-512/seed0"], "paper/om-protonet-512/seed0")
    assert any(i.value == f"**Paper run.** {run.description}" for i in at.info)
    assert at.sidebar.caption[-1].value == "In use: paper/om-protonet-512/seed0"
    assert any(
        m.value.startswith("**Influence fit:** none ships with this paper run (512 training tasks)")
        for m in at.markdown
    )


def test_a_paper_run_link_names_the_model_and_does_not_start_a_fit(paper_copy, tmp_path):
    from metainf_core.fits import fit_status
    from metainf_core.service import open_run
    from ui import DEFAULT_INFLUENCE, _about

    at = AppTest.from_file(str(REPO / "views" / "2_Explain.py"), default_timeout=180)
    at.query_params["model"] = "paper/om-protonet-512/seed0"
    at.run()
    assert not at.exception
    step = read_meta(paper_copy)["step"]
    partial = ", partial" if step < 10_000 else ""
    assert any(
        f"**Model:** ProtoNet on omniglot (paper run om-protonet-512, seed 0{partial})" in m.value
        for m in at.sidebar.markdown
    )
    [notice] = [i.value for i in at.info if "no influence fit yet" in i.value]
    app_s = estimate.fit_seconds(COSTS, 512, 512, LINALG)  # the fixed probe's figures (see the test above)
    paper_s = estimate.fit_seconds(COSTS, 512, 8192, LINALG)
    assert f"takes {_about(app_s)} at this dashboard's settings (Gauss-Newton, N_orth = 512)" in notice
    assert f"{_about(paper_s)} at the paper's (N_orth = 8,192)" in notice
    assert f"```\n{fit_command(paper_copy, DEFAULT_INFLUENCE)}\n```" in notice
    assert (f"Training has not finished (meta-batch {step:,} of 10,000)" in notice) == (step < 10_000)
    assert not [b for b in at.button if b.key == "fit_button"]  # no "Fit influence now"
    assert fit_status(open_run(paper_copy), DEFAULT_INFLUENCE)["state"] == "none"  # nothing was fitted or started
    assert not (tmp_path / "cache" / "influence").exists()


def test_a_paper_runs_fit_left_half_way_is_told_with_the_command_that_resumes_it(paper_copy, monkeypatch):
    import ui

    saved = {"state": "partial", "tasks_done": 37, "total": 512}  # as fits.fit_status reports a fit's saved buffers
    monkeypatch.setattr(ui, "fit_status", lambda run, cfg: saved)
    at = AppTest.from_file(str(REPO / "views" / "2_Explain.py"), default_timeout=180)
    at.query_params["model"] = "paper/om-protonet-512/seed0"
    at.run()
    assert not at.exception
    [notice] = [i.value for i in at.info if "no influence fit yet" in i.value]
    assert "saved 37 of 512 training tasks so far (it may still be running): the same command resumes it." in notice
