"""Importing meta-learners trained with learn2learn's own loops (issue 13).

A MAML (learn2learn's OmniglotCNN) and a ProtoNet (CNN4Backbone, learn2learn's example loop) are
trained on real Fashion-MNIST tasks from ``l2l.data.TaskDataset(num_tasks=M)``, saved with
``torch.save(state_dict)``, written to tasks.json by ``tasks_from_learn2learn`` and imported
through the CLI. The imported runs must give learn2learn's own adapted query losses, and fit,
rank and edit must work on them.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

l2l = pytest.importorskip("learn2learn")

from helpers import fit_from_page

from metainf_core.cli import main  # noqa: E402
from metainf_core.data import load_dataset  # noqa: E402
from metainf_core.exceptions import CheckpointError, ConfigError, UnsafeFileError  # noqa: E402
from metainf_core.importing import (  # noqa: E402
    alternate_support,
    first_shots_support,
    import_run,
    read_weights,
    tasks_from_learn2learn,
    write_tasks_file,
)
from metainf_core.service import open_run  # noqa: E402

WAYS, SHOTS = 3, 2
MAML_MODEL = f"l2l.vision.models.OmniglotCNN(output_size={WAYS}, hidden_size=8, layers=2)"
PROTO_MODEL = "l2l.vision.models.CNN4Backbone(hidden_size=8, layers=2, channels=1, max_pool=True)"
# Float32 losses of ~1 computed by two code paths (learn2learn's modules vs functional_call, with
# different summation orders): agreement to a few ulps (1e-7 each) is expected, 1e-5 is the bound.
LOSS_TOL = 1e-5


def _taskset(num_tasks: int, k: int):
    ds = load_dataset("fashion-mnist")
    view = ds.as_torch_dataset()
    meta = l2l.data.MetaDataset(view, indices_to_labels=view.indices_to_labels)
    transforms = [
        l2l.data.transforms.FusedNWaysKShots(meta, n=WAYS, k=k, filter_labels=list(ds.train_classes)),
        l2l.data.transforms.LoadData(meta),
        l2l.data.transforms.RemapLabels(meta),
        l2l.data.transforms.ConsecutiveLabels(meta),
    ]
    return l2l.data.TaskDataset(meta, task_transforms=transforms, num_tasks=num_tasks)


def _maml_split(x, y):
    """learn2learn's MAML example: even positions adapt, odd ones are evaluated."""
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.arange(SHOTS * WAYS) * 2] = True
    return x[mask], y[mask], x[~mask], y[~mask]


def _maml_query_loss(maml, x, y) -> float:
    sx, sy, qx, qy = _maml_split(x, y)
    learner = maml.clone()
    learner.adapt(F.cross_entropy(learner(sx), sy))
    return F.cross_entropy(learner(qx), qy).item()


def _proto_loss(model, x, y, shots: int) -> torch.Tensor:
    """learn2learn's ProtoNet example (fast_adapt): sort by label, embed all at once, first shots adapt."""
    order = torch.sort(y).indices
    x, y = x[order], y[order]
    emb = model(x).flatten(1)
    support = first_shots_support(shots)(y)
    protos = emb[support].reshape(WAYS, shots, -1).mean(1)
    logits = -((emb[~support].unsqueeze(1) - protos.unsqueeze(0)) ** 2).sum(-1)
    return F.cross_entropy(logits, y[~support])


@pytest.fixture(scope="module")
def maml_files(tmp_path_factory):
    """learn2learn's MAML loop (clone/adapt, Adam, meta-batch 4) for 25 steps on 24 fixed tasks."""
    d = tmp_path_factory.mktemp("l2l_maml")
    random.seed(0)
    torch.manual_seed(0)
    taskset = _taskset(24, 2 * SHOTS)
    maml = l2l.algorithms.MAML(l2l.vision.models.OmniglotCNN(output_size=WAYS, hidden_size=8, layers=2), lr=0.4)
    opt = torch.optim.Adam(maml.parameters(), 3e-3)
    for _ in range(25):
        opt.zero_grad()
        for _ in range(4):
            x, y = taskset.sample()
            sx, sy, qx, qy = _maml_split(x, y)
            learner = maml.clone()
            learner.adapt(F.cross_entropy(learner(sx), sy))
            (F.cross_entropy(learner(qx), qy) / 4).backward()
        opt.step()
    torch.save(maml.state_dict(), d / "maml.pt")  # keys carry MAML's "module." prefix
    write_tasks_file(d / "tasks.json", tasks_from_learn2learn(taskset, alternate_support))
    losses = [_maml_query_loss(maml, *taskset[j]) for j in range(len(taskset))]
    return d, maml, losses


def _cli(capsys, *argv: str) -> dict:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def imported_maml(maml_files, tmp_path_factory):
    d, _, _ = maml_files
    out = tmp_path_factory.mktemp("imported") / "run"
    code = main(["import", str(out), "--weights", str(d / "maml.pt"), "--model", MAML_MODEL, "--algo", "maml",
                 "--dataset", "fashion-mnist", "--tasks", str(d / "tasks.json"), "--inner-lr", "0.4", "--test-tasks", "32"])  # fmt: skip
    assert code == 0
    return out


def test_imported_maml_gives_learn2learn_losses(imported_maml, maml_files, capsys):
    _, maml, losses = maml_files
    result = _cli(capsys, "evaluate", imported_maml, "--split", "train", "--tasks", ",".join(map(str, range(24))), "--per-task")
    ours = [t["loss"] for t in result["train"]["tasks"]]
    assert np.allclose(ours, losses, rtol=0, atol=LOSS_TOL), np.abs(np.subtract(ours, losses)).max()
    assert np.std(losses) > 0.01  # 24 different tasks, not one number repeated
    # And the other way: learn2learn's clone/adapt on the test tasks metainf drew.
    run = open_run(imported_maml)
    b = run.test_tasks.batch(range(8), run.dataset)
    l2l_test = []
    for k in range(8):
        learner = maml.clone()
        learner.adapt(F.cross_entropy(learner(b.support_x[k]), b.support_y[k]))
        l2l_test.append(F.cross_entropy(learner(b.query_x[k]), b.query_y[k]).item())
    assert np.allclose(run.evaluate(task_ids=range(8)).loss, l2l_test, rtol=0, atol=LOSS_TOL)


def test_imported_run_records_provenance(imported_maml, maml_files, capsys):
    meta = _cli(capsys, "info", imported_maml)
    imp = meta["imported"]
    assert imp["library"] == "learn2learn" and imp["constructor"] == MAML_MODEL
    assert imp["weights_file"] == "maml.pt" and len(imp["weights_sha256"]) == 64
    assert imp["aliased_entries"] == 8  # OmniglotCNN holds base.* again as features.1.*: 2 blocks × 4 tensors
    assert imp["dropped_buffers"] == 12  # running mean, var and count of 2 batch norms, under both names
    # 2 conv blocks (8·1·9+8, 8·8·9+8) + 2 batch norms (2·8 each) + the head (8·3+3)
    assert meta["num_parameters"] == (80 + 16) + (584 + 16) + 27


def test_fit_rank_edit_on_imported_maml(imported_maml, capsys, tmp_path, monkeypatch):
    """The edit's actual test-loss change matches −ξ Σ helpfulness to first order (TLXML Eq. 9, 13)."""
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    fit = _cli(capsys, "fit", imported_maml, "--method", "gn", "--quiet")
    assert fit["num_tasks"] == 24 and fit["num_parameters"] == 723 and 0 < fit["truncation"] <= fit["columns"]
    ranked = _cli(capsys, "rank", imported_maml, "--test-task", "5", "--top", "3", "--quiet")
    helpful = [r["task"] for r in ranked["most_helpful"]]
    h = sum(r["helpfulness"] for r in ranked["most_helpful"])
    assert h > 0 and ranked["most_helpful"][0]["helpfulness"] >= ranked["most_helpful"][-1]["helpfulness"]
    xi = 0.5
    rep = _cli(capsys, "edit", imported_maml, "--enhance", ",".join(map(str, helpful)), "--xi-enhance", xi,
               "--test-task", "5", "--quiet")  # fmt: skip
    actual = rep["test_task"]["after"]["loss"] - rep["test_task"]["before"]["loss"]
    predicted = -xi * h
    # First order in ξ: the remainder is O(ξ²‖δω‖²); 20 % leaves room for it at this ξ while a wrong
    # parameter mapping (aliases, dropped buffers) would give an unrelated number or the wrong sign.
    assert actual < 0 and abs(actual - predicted) <= 0.2 * abs(predicted), (actual, predicted)


def test_crafted_pickle_is_refused_without_running(tmp_path, capsys, maml_files):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"conv.weight": torch.zeros(1), "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError, match="refused"):
        read_weights(tmp_path / "evil.pt")
    d, _, _ = maml_files
    code = main(["import", str(tmp_path / "run"), "--weights", str(tmp_path / "evil.pt"), "--model", MAML_MODEL,
                 "--algo", "maml", "--dataset", "fashion-mnist", "--tasks", str(d / "tasks.json")])  # fmt: skip
    assert code == 2 and "refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_state_dict_variants_and_mismatches(maml_files, tmp_path):
    d, maml, _ = maml_files
    tasks = json.loads((d / "tasks.json").read_text())["train_tasks"]
    state = maml.state_dict()
    plain = {k.removeprefix("module."): v for k, v in state.items()}
    kwargs = dict(algo="maml", dataset="fashion-mnist", train_tasks=tasks, num_test_tasks=4)
    # nested {"state_dict": ...} without the prefix, and safetensors: the same weights
    torch.save({"state_dict": plain}, tmp_path / "nested.pt")
    a = open_run(import_run(MAML_MODEL, tmp_path / "a", weights=tmp_path / "nested.pt", **kwargs))
    from safetensors.torch import save_file

    save_file({k: v.clone().contiguous() for k, v in plain.items()}, str(tmp_path / "w.safetensors"))  # aliases as copies
    b = open_run(import_run(MAML_MODEL, tmp_path / "b", weights=tmp_path / "w.safetensors", **kwargs))
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    # a module object plus its constructor (the notebook path)
    c = open_run(import_run(maml.module, tmp_path / "c", constructor=MAML_MODEL, **kwargs))
    assert all(torch.equal(a.params[k], c.params[k]) for k in a.params)
    bad = {
        "shape": ({**plain, "classifier.weight": torch.zeros(5, 8)}, r"'classifier.weight' has shape \[5, 8\]"),
        "unknown": ({**plain, "head.weight": torch.zeros(1)}, "'head.weight', which the model does not have"),
        "missing": ({k: v for k, v in plain.items() if k != "classifier.bias"}, "lack 'classifier.bias'"),
        "alias": ({**plain, "features.1.0.conv.bias": plain["base.0.conv.bias"] + 1}, "different values"),
    }
    for name, (sd, message) in bad.items():
        with pytest.raises(CheckpointError, match=message):
            import_run(MAML_MODEL, tmp_path / name, weights=sd, **kwargs)
        assert not (tmp_path / name).exists()


def _sample(i, y, t, s):
    return {"index": i, "label": y, "target": t, "support": s}


def test_tasks_json_is_validated(maml_files, tmp_path):
    d, maml, _ = maml_files
    tasks = json.loads((d / "tasks.json").read_text())["train_tasks"]
    ds = load_dataset("fashion-mnist")
    t0 = tasks[0]
    n = len(ds.samples)
    first_support = next(k for k, s in enumerate(t0) if s["support"])
    one_shot, shot_taken = [], set()  # t0 with one support sample per target
    for s in t0:
        if s["support"] and s["target"] in shot_taken:
            continue
        shot_taken.update([s["target"]] if s["support"] else [])
        one_shot.append(s)
    cases = {
        "unknown index": ([t0[:-1] + [{**t0[-1], "index": n}]], "index 70000 is not in fashion-mnist"),
        "label mismatch": ([[{**t0[0], "label": (t0[0]["label"] + 1) % 10}] + t0[1:]], "indices must follow the dataset's own order"),
        "targets": ([[{**s, "target": s["target"] + 1} for s in t0]], r"targets are \[1, 2, 3\], expected 0..2"),
        "mixed ways": ([t0, [s for s in t0 if s["target"] < 2]], "2-way 2-shot 2-query, but task 0 is 3-way"),
        "uneven shots": ([t0[:first_support] + t0[first_support + 1 :]], "targets have different"),
        "mixed shots": ([t0, one_shot], "3-way 1-shot 2-query, but task 0 is 3-way 2-shot"),
        "empty query": ([[s for s in t0 if s["support"] or s["target"] != 1]], "target 1 has no query samples"),
        "keys": ([[{**t0[0], "extra": 1}] + t0[1:]], "exactly the keys"),
    }
    for name, (bad, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            import_run(maml.module, tmp_path / name.replace(" ", "_"), constructor=MAML_MODEL, algo="maml",
                       dataset="fashion-mnist", train_tasks=bad)  # fmt: skip
        assert not (tmp_path / name.replace(" ", "_")).exists(), name


def test_a_tasks_file_may_name_its_dataset(maml_files, tmp_path, capsys):
    """issue 26 item 6: {"dataset": ...} in tasks.json is used when --dataset is absent, checked
    against it when given (a clash is refused before anything is written), and a file without it
    still needs --dataset."""
    from metainf_core.importing import read_tasks_file, tasks_dataset

    d, _, _ = maml_files
    doc = json.loads((d / "tasks.json").read_text())
    named = tmp_path / "named.json"
    named.write_text(json.dumps({**doc, "dataset": "fashion-mnist"}))
    base = ["import", str(tmp_path / "run"), "--weights", str(d / "maml.pt"), "--model", MAML_MODEL, "--algo", "maml",
            "--inner-lr", "0.4", "--test-tasks", "4"]  # fmt: skip
    clash = main([*base, "--tasks", str(named), "--dataset", "omniglot"])
    assert clash == 2 and "names dataset 'fashion-mnist' but --dataset is 'omniglot'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main([*base, "--tasks", str(d / "tasks.json")]) == 2 and "pass --dataset" in capsys.readouterr().err
    out = _cli(capsys, *base, "--tasks", named)
    assert out["train_tasks"] == len(doc["train_tasks"]) and json.loads((tmp_path / "run" / "meta.json").read_text())["dataset"]["name"] == "fashion-mnist"
    assert tasks_dataset(read_tasks_file(named), "fashion-mnist") == "fashion-mnist"
    named.write_text(json.dumps({**doc, "dataset": 3}))
    with pytest.raises(ConfigError, match="dataset must be a dataset name"):
        read_tasks_file(named)


def test_untrusted_constructor_is_refused(maml_files, tmp_path):
    d, maml, _ = maml_files
    tasks = json.loads((d / "tasks.json").read_text())["train_tasks"]
    for text, message in (
        ("os.system('true')", "literals|not trusted"),
        ("subprocess.Popen(['true'])", "not trusted"),
        ("l2l.vision.models.get_pretrained_backbone('x')", "not one of learn2learn's vision models"),
        ("l2l.vision.models.CNN4(output_size=__import__('os'))", "literals"),
    ):
        with pytest.raises(ConfigError, match=message):
            import_run(text, tmp_path / "x", weights={}, algo="maml", dataset="fashion-mnist", train_tasks=tasks)


def test_learn2learn_protonet_imports(tmp_path, capsys):
    """learn2learn's ProtoNet example: CNN4Backbone, joint embedding of support and query."""
    random.seed(1)
    torch.manual_seed(1)
    shots, queries = 2, 2
    taskset = _taskset(16, shots + queries)
    model = l2l.vision.models.CNN4Backbone(hidden_size=8, layers=2, channels=1, max_pool=True)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(15):
        opt.zero_grad()
        _proto_loss(model, *taskset.sample(), shots).backward()
        opt.step()
    torch.save(model.state_dict(), tmp_path / "proto.pt")
    tasks = tasks_from_learn2learn(taskset, first_shots_support(shots), sort_by_target=True)
    write_tasks_file(tmp_path / "tasks.json", tasks)
    with torch.no_grad():  # train mode: batch statistics, as metainf evaluates
        losses = [float(_proto_loss(model, *taskset[j], shots)) for j in range(len(taskset))]
    _cli(capsys, "import", tmp_path / "run", "--weights", tmp_path / "proto.pt", "--model", PROTO_MODEL, "--algo", "protonet",
         "--dataset", "fashion-mnist", "--tasks", tmp_path / "tasks.json", "--test-tasks", "8")  # fmt: skip
    result = _cli(capsys, "evaluate", tmp_path / "run", "--split", "train", "--per-task")
    ours = [t["loss"] for t in result["train"]["tasks"]]
    assert np.allclose(ours, losses, rtol=0, atol=LOSS_TOL), np.abs(np.subtract(ours, losses)).max()
    run = open_run(tmp_path / "run")
    assert run.spec.protonet_embedding == "joint" and run.meta["imported"]["dropped_buffers"] == 6


# ---- the dashboard on an imported run -------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def _page(name: str, run: Path):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / name), default_timeout=600)
    at.session_state["model_path"] = str(run)
    at.run()
    at = fit_from_page(at)  # not fitted yet: the page fits on request, as a background job
    assert not at.exception, at.exception
    return at


def test_home_card_names_where_an_upload_came_from(imported_maml, tmp_path, monkeypatch):
    from helpers import upload_to_home, zip_of
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    at = upload_to_home(AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run(), "l2l.zip", zip_of(imported_maml))
    assert not at.exception and not at.error, (at.exception, at.error)
    assert {m.label: m.value for m in at.metric}["Network"] == "OmniglotCNN, 723 weights"
    card = next(i.value for i in at.info if i.value.startswith("**Imported model.**"))
    sha = open_run(imported_maml).meta["imported"]["weights_sha256"]
    assert "learn2learn" in card and MAML_MODEL in card and "`maml.pt`" in card and sha[:12] in card


def test_explain_and_edit_pages_on_an_imported_run(imported_maml, tmp_path, monkeypatch):
    import re

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    at = _page("views/2_Explain.py", imported_maml)
    assert "helped this test task most" in at.success[0].value
    rows = [m.value for m in at.markdown if m.value.startswith("**#")]
    assert len(rows) == 10 and all("size" in r and "alignment" in r for r in rows)
    at = _page("views/3_Edit.py", imported_maml)
    at.number_input(key="edit_k").set_value(3).run()
    at.button(key="edit_pick_helpful").click().run()
    assert not at.exception, at.exception
    assert len(at.session_state["edit_enhance"]) == 3 and list(at.session_state["edit_block"]) == []
    # the box's colour follows the outcome (green only when accuracy rose and fell nowhere): read whichever holds it
    (sentence,) = [b.value for b in [*at.success, *at.warning, *at.info] if b.value.startswith("Enhancing 3 training tasks")]
    m = re.search(r"its loss (?:from (\d+\.\d+) to (\d+\.\d+)|at (\d+\.\d+))", sentence)
    assert m and m.group(1) and float(m.group(2)) < float(m.group(1)), sentence  # enhancing the most helpful lowers it


def test_the_readme_example_runs(tmp_path, python_exe):
    """examples/explain_learn2learn_model.py (docs/import-your-model.md's path) with 5 training steps."""
    out = tmp_path / "l2l-maml"
    proc = subprocess.run([python_exe, str(REPO / "examples" / "explain_learn2learn_model.py"), str(out), "5"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = open_run(out)
    assert len(run.train_tasks) == 256 and run.meta["imported"]["constructor"].startswith("l2l.vision.models.OmniglotCNN")
    assert run.evaluate(task_ids=range(4)).loss.shape == (4,)


def test_metainf_architecture_round_trip(tmp_path):
    """The demo's conv4 ProtoNet re-imported by architecture name with its own clean training tasks
    written as samples: the same per-task losses (same network, same tasks, other code path)."""
    from metainf_core.tasks import taskset_to_samples

    demo = open_run(REPO / "assets" / "demo" / "protonet-fashion-mnist")
    ids = demo.train_tasks.ids_with("none")[:12]
    tasks = taskset_to_samples(demo.train_tasks, ids)
    test = taskset_to_samples(demo.test_tasks, range(6))
    out = import_run("conv4", tmp_path / "run", weights=REPO / "assets" / "demo" / "protonet-fashion-mnist" / "model.safetensors",
                     algo="protonet", dataset="fashion-mnist", train_tasks=tasks, test_tasks=test, filters=16)  # fmt: skip
    run = open_run(out)
    assert run.spec.protonet_embedding == "separate" and run.meta["imported"]["library"] == "metainf"
    # identical arithmetic on identical inputs in a different sample order within each task:
    # float32 reduction order only (≈1e-7 relative)
    assert np.allclose(run.evaluate(split="train").loss, demo.evaluate(split="train", task_ids=ids).loss, atol=LOSS_TOL)
    assert np.allclose(run.evaluate().loss, demo.evaluate(task_ids=range(6)).loss, atol=LOSS_TOL)
    with pytest.raises(ConfigError, match="noise task"):
        taskset_to_samples(demo.train_tasks, demo.train_tasks.ids_with("noise")[:1])


def test_train_with_a_learn2learn_network(tmp_path, capsys):
    """`train --model CONSTRUCTOR` meta-trains a learn2learn network with metainf's loop; the
    Landscape page's retrain command for it names the constructor, shell-quoted."""
    import shlex

    from metainf_core.landscape_metrics import keep_history_command

    model = "l2l.vision.models.OmniglotCNN(output_size=3, hidden_size=4, layers=1)"
    _cli(capsys, "train", "--dataset", "fashion-mnist", "--algo", "maml", "--model", model, "--steps", 3, "--meta-batch", 2,
         "--train-tasks", 8, "--test-tasks", 4, "--out", tmp_path / "run", "--quiet")  # fmt: skip
    run = open_run(tmp_path / "run")
    assert run.meta["architecture"] == model and run.meta["train_config"]["arch"] == "external"
    assert run.meta["num_parameters"] == (1 * 4 * 9 + 4) + 2 * 4 + (4 * 3 + 3)  # conv, batch norm, head
    command = keep_history_command(run.meta, "runs/again")
    assert shlex.split(command)[shlex.split(command).index("--model") + 1] == model and "--arch" not in command
