"""Fixed tasksets: deterministic from a seed, stable ids, manifest round trip, corruptions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metainf_core.config import TaskConfig
from metainf_core.data import load_dataset
from metainf_core.exceptions import ConfigError, TaskNotFoundError
from metainf_core.tasks import TaskSet, make_taskset


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion-mnist")


def test_taskset_is_deterministic_and_seed_dependent(fmnist):
    cfg = TaskConfig(train_tasks=64, test_tasks=16, seed=3)
    a, b = make_taskset(fmnist, cfg, "train"), make_taskset(fmnist, cfg, "train")
    assert a.fingerprint() == b.fingerprint()
    np.testing.assert_array_equal(a.support, b.support)
    other = make_taskset(fmnist, TaskConfig(train_tasks=64, test_tasks=16, seed=4), "train")
    assert other.fingerprint() != a.fingerprint()


def test_tasks_respect_the_class_split_and_record_superclasses(fmnist):
    cfg = TaskConfig(ways=3, shots=5, queries=5, train_tasks=50, test_tasks=20)
    for split in ("train", "test"):
        ts = make_taskset(fmnist, cfg, split)
        allowed = set(fmnist.split_classes(split))
        for j in range(len(ts)):
            t = ts.task(j, fmnist)
            assert set(t.classes) <= allowed and len(set(t.classes)) == 3
            assert len(t.support) == 15 and len(t.query) == 15
            assert not set(t.support) & set(t.query)
            # every sample really belongs to the class at its label position (class-major order)
            assert (fmnist.labels[np.asarray(t.support)].reshape(3, 5) == np.asarray(t.classes)[:, None]).all()
            assert t.superclasses == tuple(fmnist.superclasses[c] for c in t.classes)


def test_manifest_round_trip_and_tamper_detection(fmnist, tmp_path):
    cfg = TaskConfig(train_tasks=40, test_tasks=8, noise_tasks=5, label_flip_tasks=3, seed=1)
    ts = make_taskset(fmnist, cfg, "train")
    ts.save(tmp_path / "train.json")
    back = TaskSet.load(tmp_path / "train.json")
    assert back.fingerprint() == ts.fingerprint()
    for a, b in ((ts.classes, back.classes), (ts.support, back.support), (ts.query, back.query)):
        np.testing.assert_array_equal(a, b)
    assert len(back.ids_with("noise")) == 5 and len(back.ids_with("label_flip")) == 3
    torch.testing.assert_close(ts.batch([0, 7], fmnist).support_x, back.batch([0, 7], fmnist).support_x)
    m = json.loads((tmp_path / "train.json").read_text())
    m["support"][0][0] += 1
    (tmp_path / "bad.json").write_text(json.dumps(m))
    with pytest.raises(ConfigError, match="fingerprint"):
        TaskSet.load(tmp_path / "bad.json")


def test_corruptions_noise_and_label_flip(fmnist):
    cfg = TaskConfig(train_tasks=30, test_tasks=4, noise_tasks=4, label_flip_tasks=4, seed=2)
    ts = make_taskset(fmnist, cfg, "train")
    noise, flip = ts.ids_with("noise"), ts.ids_with("label_flip")
    clean = ts.ids_with("none")[:4]
    nb, fb, cb = ts.batch(noise, fmnist), ts.batch(flip, fmnist), ts.batch(clean, fmnist)
    # uniform noise images: mean ≈ 0.5, std ≈ 1/sqrt(12); Fashion-MNIST images are far darker on average
    assert abs(nb.support_x.mean().item() - 0.5) < 0.01
    assert abs(nb.support_x.std().item() - 12**-0.5) < 0.01
    assert cb.support_x.mean().item() < 0.45
    # label flip permutes labels within a task: same multiset, different order for most tasks
    assert (fb.support_y.sort(1).values == cb.support_y.sort(1).values).all()
    assert (fb.support_y != cb.support_y).any(1).all()
    # corruption is deterministic per task id
    torch.testing.assert_close(ts.batch(noise, fmnist).query_x, nb.query_x)


def test_unknown_task_id_and_bad_config(fmnist):
    ts = make_taskset(fmnist, TaskConfig(train_tasks=10, test_tasks=4), "train")
    with pytest.raises(TaskNotFoundError):
        ts.task(10, fmnist)
    with pytest.raises(ConfigError):
        TaskConfig(ways=1)
    with pytest.raises(ConfigError):
        make_taskset(fmnist, TaskConfig(ways=5, train_tasks=4, test_tasks=4), "test")  # only 4 test classes
