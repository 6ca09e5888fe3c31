"""Dataset loaders on the real data (metainf_core.data): sizes, splits, superclasses, pixels."""

from __future__ import annotations

import gzip
import io
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metainf_core.data import DATASETS, clear_cache, list_datasets, load_dataset
from metainf_core.data import cifar, fashion_mnist, omniglot, synthetic
from metainf_core.data.base import data_root, shared_data_root
from metainf_core.exceptions import ConfigError, DatasetNotFoundError

SHARED = shared_data_root()
FMNIST_RAW = data_root() / "FashionMNIST" / "raw"


def _need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"real data absent: {', '.join(missing)}")


def _raw_idx(path: Path, header: int) -> np.ndarray:
    """Independent idx parse: skip the header, take the bytes."""
    data = path.read_bytes()
    return np.frombuffer(gzip.decompress(data) if path.suffix == ".gz" else data, np.uint8, offset=header)


def _shares_superclasses(ds, every: bool = True) -> bool:
    train = {ds.superclasses[c] for c in ds.train_classes}
    test = {ds.superclasses[c] for c in ds.test_classes}
    return train == test if every else test <= train


# ---- registry --------------------------------------------------------------------------------
def test_registry_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert list_datasets()[0] == "fashion-mnist"
    assert set(list_datasets()) == set(DATASETS) >= {"omniglot", "synthetic", "mini-imagenet", "tiny-imagenet"}
    with pytest.raises(ConfigError, match="known: fashion-mnist"):
        load_dataset("cifar-10")
    with pytest.raises(ConfigError, match="unknown option"):
        load_dataset("synthetic", colour=True)
    with pytest.raises(ConfigError):
        load_dataset("omniglot", source="ftp")
    # every file-backed dataset reports exactly which file is missing
    monkeypatch.setenv("METAINF_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("METAINF_SHARED_DATA", str(tmp_path / "shared"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "debian")
    for name, needle in [
        ("fashion-mnist", "train-images-idx3-ubyte"),
        ("omniglot", "images_background"),
        ("mini-imagenet", "images_100_per_class.zip"),
        ("tiny-imagenet", "train_100_per_class.zip"),
        ("cifar-fs", "cifarfs"),
        ("fc100", "FC100"),
    ]:
        with pytest.raises(DatasetNotFoundError, match=needle):
            load_dataset(name)
    with pytest.raises(DatasetNotFoundError, match="npz"):
        load_dataset("omniglot", source="npz")


def test_load_dataset_caches_per_process() -> None:
    a = load_dataset("synthetic", clusters=10)
    assert load_dataset("synthetic", clusters=10) is a
    assert load_dataset("synthetic", clusters=12) is not a
    clear_cache()
    assert load_dataset("synthetic", clusters=10) is not a


# ---- Fashion-MNIST ---------------------------------------------------------------------------
def test_fashion_mnist() -> None:
    _need(FMNIST_RAW / "t10k-labels-idx1-ubyte")
    ds = load_dataset("fashion-mnist")
    assert ds.samples.shape == (70_000, 1, 28, 28) and ds.samples.dtype == torch.uint8
    assert np.bincount(ds.labels).tolist() == [7_000] * 10
    assert ds.labels[0] == 9 and ds.labels[60_000] == 9  # both files open with an ankle boot
    assert dict(zip(ds.class_names, ds.superclasses)) == {
        "T-shirt/top": "tops", "Trouser": "other", "Pullover": "tops", "Dress": "other", "Coat": "tops",
        "Sandal": "footwear", "Shirt": "tops", "Sneaker": "footwear", "Bag": "other", "Ankle boot": "footwear",
    }  # fmt: skip
    assert sorted(ds.train_classes + ds.test_classes) == list(range(10))
    assert _shares_superclasses(ds) and len(set(ds.superclasses)) == 3
    raw = _raw_idx(FMNIST_RAW / "train-images-idx3-ubyte", 16).reshape(-1, 28, 28)
    assert int(ds.samples[0].sum()) == int(raw[0].sum()) == 76_247
    assert ds.samples[0, 0].double().mean().item() == pytest.approx(97.2538, abs=1e-3)
    x = ds.load([0, 1])
    assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0


def test_fashion_mnist_reads_gz(tmp_path: Path) -> None:
    _need(FMNIST_RAW / "t10k-labels-idx1-ubyte")
    for f in FMNIST_RAW.iterdir():  # the Debian layout: only .gz files
        (tmp_path / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes(), compresslevel=1))
    ds = fashion_mnist.load(tmp_path)
    ref = load_dataset("fashion-mnist")
    assert ds.source == str(tmp_path) and torch.equal(ds.samples, ref.samples)
    assert np.array_equal(ds.labels, ref.labels)


def test_fashion_mnist_torchvision_path() -> None:
    """download=True goes through torchvision.datasets.FashionMNIST (files present: no network)."""
    _need(FMNIST_RAW / "t10k-labels-idx1-ubyte")
    ds, ref = load_dataset("fashion-mnist", download=True), load_dataset("fashion-mnist")
    assert ds.source.startswith("torchvision:") and torch.equal(ds.samples, ref.samples)
    assert np.array_equal(ds.labels, ref.labels)


# ---- Omniglot --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def omniglot_npz():
    _need(*(SHARED / "omniglot" / f for f in omniglot.NPZ_FILES))
    return load_dataset("omniglot", source="npz")


@pytest.fixture(scope="module")
def omniglot_folder(tmp_path_factory: pytest.TempPathFactory):
    _need(*(SHARED / "omniglot" / z for z in omniglot.SMALL_ZIPS))
    root = tmp_path_factory.mktemp("omniglot-root")  # exercises the zip extraction each session
    return load_dataset("omniglot", root=root, source="folder")


def test_omniglot_npz(omniglot_npz) -> None:
    ds = omniglot_npz
    assert ds.samples.shape == (32_460, 1, 28, 28) and ds.samples.dtype == torch.uint8
    assert ds.num_classes == 1_623 and np.bincount(ds.labels).tolist() == [20] * 1_623
    assert len(set(ds.superclasses)) == 50 and _shares_superclasses(ds)
    assert len(ds.train_classes) + len(ds.test_classes) == 1_623
    per_alpha = Counter(ds.superclasses)
    train_alpha = Counter(ds.superclasses[c] for c in ds.train_classes)
    assert all(train_alpha[a] == -(-2 * n // 3) for a, n in per_alpha.items())  # ceil(2n/3)
    assert ds.class_names[0] == "Arcadian/character01" and ds.class_names[-1] == "ULOG/character26"
    # ink is bright: the background (most pixels) is 0
    assert ds.samples.float().mean() < 40 and np.median(ds.samples[:100].numpy()) == 0
    assert (data_root() / omniglot.CACHE_NAME).is_file()


def test_omniglot_cache_reload(omniglot_npz) -> None:
    clear_cache()
    again = load_dataset("omniglot", source="npz")
    assert again.source.endswith("(cached)") and torch.equal(again.samples, omniglot_npz.samples)


def test_omniglot_folder_matches_npz(omniglot_folder, omniglot_npz) -> None:
    ds = omniglot_folder
    assert len(set(ds.superclasses)) == 8 and _shares_superclasses(ds)
    assert ds.num_classes == 242 and len(ds.samples) == 242 * 20
    npz_index = {n: c for c, n in enumerate(omniglot_npz.class_names)}
    a_all, b_all = ds.samples.numpy(), omniglot_npz.samples.numpy()  # numpy: no thread wake-ups per index
    for c, name in enumerate(ds.class_names):  # pixel-identical after the same resize, drawer by drawer
        a = a_all[ds.indices_of_class(c)]
        b = b_all[omniglot_npz.indices_of_class(npz_index[name])]
        assert np.array_equal(a, b), name


# ---- synthetic -------------------------------------------------------------------------------
def test_synthetic() -> None:
    a, b, c = synthetic.load(seed=0), synthetic.load(seed=0), synthetic.load(seed=1)
    assert a.samples.shape == (60_000, 2) and a.samples.dtype == torch.float32
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    centers = torch.from_numpy(a.extra["centers"])
    offsets = a.samples - centers[torch.from_numpy(a.labels)]
    assert offsets.std().item() == pytest.approx(0.1, abs=0.002)  # member spread
    assert centers.std().item() == pytest.approx(1.0, abs=0.05)
    assert set(a.superclasses) == {"Q1", "Q2", "Q3", "Q4"} and _shares_superclasses(a)
    assert a.superclasses[0] == f"Q{synthetic.quadrant(a.extra['centers'][:1])[0]}"
    noise = a.noise_like(100_000, torch.Generator().manual_seed(0))
    assert noise.shape == (100_000, 2) and noise.std().item() == pytest.approx(1.0, abs=0.01)
    assert abs(noise.mean().item()) < 0.01


# ---- ImageNet-like ---------------------------------------------------------------------------
def _check_imagenet(ds, n_classes: int, size: int, zip_path: Path, strip: str) -> None:
    assert ds.samples.shape == (n_classes * 100, 3, size, size) and ds.samples.dtype == torch.uint8
    assert np.bincount(ds.labels).tolist() == [100] * n_classes
    groups = Counter(ds.superclasses)
    assert 8 <= len(groups) <= 20 and sum(n >= 5 for n in groups.values()) >= 8
    with zipfile.ZipFile(zip_path) as zf:  # first image of the first class decodes identically
        first = sorted(n for n in zf.namelist() if n.startswith(strip + ds.extra["wnids"][0] + "/"))[0]
        ref = np.asarray(Image.open(io.BytesIO(zf.read(first))).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(ds.samples[ds.indices_of_class(0)[0]].numpy(), ref)


def test_mini_imagenet() -> None:
    folder = SHARED / "mini_imagenet84"
    _need(folder / "images_100_per_class.zip", folder / "classes.csv")
    ds = load_dataset("mini-imagenet")
    _check_imagenet(ds, 100, 84, folder / "images_100_per_class.zip", "")
    assert (len(ds.train_classes), len(ds.test_classes)) == (64, 36)  # Ravi: train | val + test
    assert _shares_superclasses(ds, every=False)
    assert len({ds.superclasses[c] for c in ds.test_classes}) >= 8


def test_tiny_imagenet() -> None:
    folder = SHARED / "tiny_imagenet32"
    _need(folder / "train_100_per_class.zip", folder / "classes.csv")
    ds = load_dataset("tiny-imagenet")
    _check_imagenet(ds, 200, 32, folder / "train_100_per_class.zip", "train/")
    assert (len(ds.train_classes), len(ds.test_classes)) == (104, 96)
    assert _shares_superclasses(ds)


def test_wordnet_superclasses_lift_small_groups() -> None:
    from metainf_core.data.imagenet_like import wordnet_superclasses

    paths = [["e", "a", "x"], ["e", "a", "x"], ["e", "a", "y"], ["e", "a", "w"], ["e", "b", "z"]]
    # y and w are alone at depth 2 and pool into their parent a; z stays alone up to the root
    assert wordnet_superclasses(paths, 2, 2) == ["x", "x", "a", "a", "other"]
    assert wordnet_superclasses(paths, 1, 1) == ["a", "a", "a", "a", "b"]
    assert wordnet_superclasses(paths, 5, 1) == ["x", "x", "y", "w", "z"]  # depth beyond the leaf


def test_mini_imagenet_learn2learn_wiring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """download=True goes through learn2learn's MiniImagenet (stubbed here: no network offline)."""
    l2l_datasets = pytest.importorskip("learn2learn.vision.datasets")
    wnids = {"train": ["n01532829", "n01558993"], "validation": ["n01855672"], "test": ["n01930112"]}

    class FakeMiniImagenet:
        def __init__(self, root: str, mode: str, download: bool) -> None:
            assert download and Path(root) == tmp_path
            ws = wnids[mode]
            image_data = np.stack([np.full((84, 84, 3), 10 * k, np.uint8) for k in range(3 * len(ws))])
            self.data = {"image_data": image_data, "class_dict": {w: [k, k + len(ws), k + 2 * len(ws)] for k, w in enumerate(ws)}}

    monkeypatch.setattr(l2l_datasets, "MiniImagenet", FakeMiniImagenet)
    ds = load_dataset("mini-imagenet", root=tmp_path, download=True, min_superclass_size=1)
    assert ds.source.startswith("learn2learn:") and ds.samples.shape == (12, 3, 84, 84)
    assert ds.extra["wnids"] == ("n01532829", "n01558993", "n01855672", "n01930112")
    assert ds.train_classes == (0, 1) and ds.test_classes == (2, 3)
    assert np.bincount(ds.labels).tolist() == [3, 3, 3, 3]
    assert int(ds.samples[ds.indices_of_class(1)[1], 0, 0, 0]) == 30  # class_dict index k + len(ws)
    if (SHARED / "mini_imagenet84" / "classes.csv").is_file():
        assert ds.class_names[0] == "house finch" and ds.superclasses[0] == "animal"


def test_fc100_learn2learn_wiring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    l2l_datasets = pytest.importorskip("learn2learn.vision.datasets")
    fine = {"train": [0, 1], "validation": [2], "test": [99]}

    class FakeFC100:
        def __init__(self, root: str, mode: str, download: bool) -> None:
            self.images = np.zeros((2 * len(fine[mode]), 32, 32, 3), np.uint8)
            self.labels = fine[mode] * 2

    monkeypatch.setattr(l2l_datasets, "FC100", FakeFC100)
    ds = load_dataset("fc100", root=tmp_path, download=True)
    assert ds.class_names == ("apple", "aquarium_fish", "baby", "worm")
    assert ds.superclasses == ("fruit_and_vegetables", "fish", "people", "non-insect_invertebrates")
    assert ds.train_classes == (0, 1) and ds.test_classes == (2, 3) and ds.samples.shape == (8, 3, 32, 32)


# ---- CIFAR (learn2learn downloads; absent offline) ---------------------------------------------
def test_cifar_constants() -> None:
    assert len(cifar.CIFAR100_FINE) == 100 and len(cifar.CIFAR100_COARSE) == 20
    assert cifar.CIFAR100_FINE[:3] == ("apple", "aquarium_fish", "baby") and cifar.CIFAR100_FINE[-1] == "worm"


@pytest.mark.parametrize("name", ["cifar-fs", "fc100"])
def test_cifar_sets(name: str) -> None:
    try:
        ds = load_dataset(name)
    except DatasetNotFoundError as exc:
        pytest.skip(str(exc))
    assert ds.samples.shape[1:] == (3, 32, 32) and ds.num_classes == 100
    assert set(ds.superclasses) <= set(cifar.CIFAR100_COARSE)
