"""The CLI's settings come from the config dataclasses (issue 26): every option of the influence
subcommands, ``train``, ``compare``, ``lds``, ``diagnose`` and ``fidelity`` that names a config field has
that field's default, every setting is an option, the parsed options build the config, and the dtype rule
is the one of ``api.ExplainerConfig``. Parsing only: no run is opened, nothing is fitted."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from metainf_core import cli
from metainf_core.api import ExplainerConfig
from metainf_core.config import (
    CompareConfig,
    DiagnosticsConfig,
    FidelityConfig,
    InfluenceConfig,
    LDSConfig,
    TaskConfig,
    TrainConfig,
    default_arch,
    default_dtype,
)
from metainf_core.exceptions import ConfigError

INFLUENCE_COMMANDS = ("fit", "rank", "edit", "validate", "detect")
# options chosen by a rule when left out: the rule's value is checked below, not the field default
BY_RULE = {"dtype", "arch"}


def subparser(name: str) -> argparse.ArgumentParser:
    return next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def options(name: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in subparser(name)._actions}


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


@pytest.mark.parametrize(("command", "classes"), [*((c, (InfluenceConfig,)) for c in INFLUENCE_COMMANDS),
                                                  ("train", (TaskConfig, TrainConfig)), ("compare", (CompareConfig,)), ("lds", (LDSConfig,)),
                                                  ("diagnose", (DiagnosticsConfig,)), ("fidelity", (FidelityConfig,))])  # fmt: skip
def test_every_setting_is_an_option_with_the_field_default(command, classes):
    opts = options(command)
    for cls in classes:
        settings = cli.config_options(cls)
        assert settings, cls  # config.setting fields exist: the loop below checks something
        for f in settings:
            action = opts[cli.option_name(f)[2:].replace("-", "_")]
            assert cli.option_name(f) in action.option_strings
            assert action.help == f.metadata["help"] or f.name in BY_RULE or (command, f.name) == ("rank", "method")
            if f.name not in BY_RULE:
                assert action.default == f.default, (command, f.name, action.default, f.default)
    # the options of a config that are not settings are the ones InfluenceConfig keeps internal
    internal = {f.name for f in fields(InfluenceConfig)} - {f.name for f in cli.config_options(InfluenceConfig)}
    assert internal == {"self_rank_sample", "task_batch"} and not internal & set(opts)


@pytest.mark.parametrize("command", INFLUENCE_COMMANDS)
def test_defaults_build_the_api_config(command):
    extra = {"rank": ["--test-task", "3"]}.get(command, [])
    for method in ("gn", "exact"):
        a = parse(command, "RUN", "--method", method, *extra)
        cfg = cli._influence_config(a)
        api = ExplainerConfig(method=method)
        assert cfg == api.influence, (command, method)  # CLI and Python API fit (and cache) the same settings
        assert cfg.dtype == default_dtype(method) == {"gn": "float32", "exact": "float64"}[method]
        assert a.device == api.device


def test_given_options_reach_the_config():
    a = parse("fit", "RUN", "--n-orth", "64", "--damping", "0.25", "--truncation", "7", "--dtype", "float64",
              "--projection-dim", "32", "--projection-seed", "3", "--rows-per-task", "2", "--param-groups", "features.3, head")  # fmt: skip
    assert cli._influence_config(a) == InfluenceConfig(
        method="gn", n_orth=64, damping=0.25, truncation=7, dtype="float64", projection_dim=32, projection_seed=3,
        rows_per_task=2, param_groups=("features.3", "head"),
    )  # fmt: skip
    a = parse("train", "--dataset", "synthetic", "--algo", "maml", "--ways", "4", "--task-seed", "9", "--seed", "5",
              "--exclude-tasks", "4,2", "--first-order", "--keep-history", "--lr", "0.01", "--out", "OUT")  # fmt: skip
    task, train = cli._config_from(a, TaskConfig), cli._config_from(a, TrainConfig, arch=a.arch or default_arch(a.dataset))
    assert task == TaskConfig(dataset="synthetic", ways=4, seed=9)
    assert train == TrainConfig(algo="maml", arch="mlp-synthetic", seed=5, exclude_tasks=(2, 4), first_order=True,
                                keep_history=True, lr=0.01)  # fmt: skip
    a = parse("train", "--out", "OUT")
    assert (cli._config_from(a, TaskConfig), cli._config_from(a, TrainConfig, arch=default_arch(a.dataset))) == (TaskConfig(), TrainConfig())


@pytest.mark.parametrize("line", [  # the README's invocations and the docs' inline ones, with placeholders filled in
    "fit DIR --method exact --n-orth 512 --truncation 8",
    "fit DIR --ship",
    "rank DIR --test-task 7,3 --group superclass --top 5",
    "rank DIR --test-task 3 --method grad-sim",
    "rank DIR --test-task train:4 --method tlxml-exact",
    "edit DIR --block 1,2 --xi-block -1 --enhance 3 --xi-enhance 0.5 --test-task 4 --out NEW",
    "edit DIR --block 1,2 --xi-block -1 --leave-out runs/loo",
    "validate DIR --self-rank --noise --superclass",
    "detect DIR --score self --k 32,64 --retrain",
    "train --dataset fashion-mnist --algo protonet --noise-tasks 64 --steps 2000 --keep-history --out runs/my-run --resume",
    "diagnose DIR --tasks 16 --ship",
    "diagnose DIR --coherence-tasks 500 --steps 5",
    "fidelity DIR --k 8 --draws 5 --retrain-seeds 0,1,2 --methods task-if,direct-if",
])  # fmt: skip
def test_readme_invocations_parse(line):
    a = parse(*line.split())
    assert a.func.__name__ == "_" + line.split()[0]


def test_compare_options_build_the_compare_config():
    """`compare`'s options are CompareConfig's fields: left out, the config is CompareConfig(); given, they reach it."""
    a = parse("compare", "DIR", "--test-task", "3")
    assert cli._config_from(a, CompareConfig) == CompareConfig()
    a = parse("compare", "DIR", "--test-task", "3", "--solver", "cg", "--tol", "1e-4", "--max-iter", "7", "--damping", "0.01")
    assert cli._config_from(a, CompareConfig) == CompareConfig(damping=0.01, solver="cg", tol=1e-4, max_iter=7)


def test_diagnose_options_build_the_diagnostics_config():
    """`diagnose`'s --steps/--step-size/--tasks are DiagnosticsConfig's settings: left out, steps and step
    size are None (the learner's) and the config is DiagnosticsConfig(); given, they reach it."""
    a = parse("diagnose", "DIR")
    assert (a.steps, a.step_size, a.tasks) == (None, None, 60)
    assert cli._config_from(a, DiagnosticsConfig) == DiagnosticsConfig()
    a = parse("diagnose", "DIR", "--tasks", "16", "--steps", "5", "--step-size", "0.1", "--coherence-tasks", "500", "--ship")
    assert cli._config_from(a, DiagnosticsConfig) == DiagnosticsConfig(num_tasks=16, steps=5, step_size=0.1)
    assert (a.coherence_tasks, a.ship) == (500, True)
    with pytest.raises(ConfigError, match="num_tasks"):
        cli._config_from(parse("diagnose", "DIR", "--tasks", "1"), DiagnosticsConfig)


def test_diagnostics_cache_key_settings_unchanged():
    """DiagnosticsConfig.to_dict() keys the diagnostics cache and the demos' shipped entries: its keys,
    order and default values stay those the demos were shipped with, however its fields are declared."""
    assert DiagnosticsConfig().to_dict() == {"steps": None, "step_size": None, "num_tasks": 60, "power_iters": 100,
                                             "power_tol": 1e-5, "lanczos_iters": 20, "lanczos_tol": 1e-8, "seed": 0}  # fmt: skip
    assert list(DiagnosticsConfig(num_tasks=16).to_dict()) == [f.name for f in fields(DiagnosticsConfig)]


def test_fidelity_options_build_the_fidelity_config():
    """`fidelity`'s options are FidelityConfig's fields (--retrain-dir, --quiet and --device are not settings)."""
    a = parse("fidelity", "DIR")
    assert cli._config_from(a, FidelityConfig) == FidelityConfig()
    assert FidelityConfig().methods == ("task-if", "direct-if", "tlxml-exact", "tlxml-gn") and a.retrain_steps is None
    a = parse("fidelity", "DIR", "--k", "4", "--draws", "2", "--seed", "3", "--methods", "task-if, tlxml-gn",
              "--retrain-seeds", "0,5", "--retrain-steps", "200", "--damping", "0.1", "--retrain-dir", "runs/fid")  # fmt: skip
    assert cli._config_from(a, FidelityConfig) == FidelityConfig(
        k=4, draws=2, seed=3, methods=("task-if", "tlxml-gn"), retrain_seeds=(0, 5), retrain_steps=200, damping=0.1,
    )  # fmt: skip
    assert a.retrain_dir == "runs/fid"
    for argv, match in ((("--methods", "grad-sim"), "unknown removal estimator"), (("--retrain-seeds", "1,1"), "distinct"),
                        (("--k", "0"), "k must be"), (("--retrain-steps", "0"), "retrain_steps")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            cli._config_from(parse("fidelity", "DIR", *argv), FidelityConfig)
