"""Data sets read from real files in their standard layouts, seeded subsets; checkpoints in every format, and θ*
without one."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from landscape_ray.core.errors import SpecError
from landscape_ray.inputs.checkpoints import fit_state, read_checkpoint
from landscape_ray.inputs.data import BatchSplit, ImageSplit, load_split, normalization
from landscape_ray.inputs.models import DigitsCNN, build, load_model
from landscape_ray.spec.schema import DataSpec, Spec
from landscape_ray.spec.specfile import load_spec
from landscape_ray.spec.training import TrainSpec

from .conftest import ROOT


def write_cifar(root: Path, per_batch: int = 4, test: int = 6) -> Path:
    """A miniature CIFAR-10 in its python-pickle layout: data_batch_1..5 and test_batch, rows of R|G|B planes."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[0, 1024 + 32 + 1] = 7  # green plane, row 1, column 1 of the first image
        batch = {
            b"batch_label": name.encode(),
            b"labels": [(i + j) % 10 for j in range(n)],
            b"data": data,
            b"filenames": [f"{name}_{j}.png".encode() for j in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


@pytest.mark.parametrize("split, n, first_labels", [("train", 20, [0, 1, 2, 3, 1]), ("test", 6, [5, 6, 7])])
def test_cifar10_folder_loads_with_shapes_labels_and_pixel_layout(tmp_path, split, n, first_labels):
    data = load_split(DataSpec(dataset="cifar10", root=str(write_cifar(tmp_path))), split)
    assert isinstance(data, ImageSplit) and data.images.shape == (n, 3, 32, 32) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64 and list(data.labels[: len(first_labels)]) == first_labels
    assert data.images[0, 1, 1, 1] == 7


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "test_batch").unlink(), "test_batch is missing"),
        (lambda f: (f / "test_batch").write_bytes(b"not a pickle"), "test_batch is not a CIFAR-10 python batch"),
    ],
)
def test_damaged_cifar10_folder_names_the_file(tmp_path, damage, message):
    damage(write_cifar(tmp_path) / "cifar-10-batches-py")
    with pytest.raises(SpecError, match=message):
        load_split(DataSpec(dataset="cifar10", root=str(tmp_path)), "test")


def test_imagefolder_reads_class_folders(tmp_path):
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (5, 6), colour).save(tmp_path / "train" / cls / f"{i}.png")
    data = load_split(DataSpec(dataset="imagefolder", root=str(tmp_path)), "train")
    assert data.images.shape == (6, 3, 6, 5) and list(data.labels) == [0, 0, 0, 1, 1, 1]
    assert data.images[0, 0].min() == 255 and data.images[-1, 2].min() == 255 and data.images[-1, 0].max() == 0
    Image.new("RGB", (7, 7)).save(tmp_path / "train" / "dog" / "odd.png")
    with pytest.raises(SpecError, match="differ in size"):
        load_split(DataSpec(dataset="imagefolder", root=str(tmp_path)), "train")


def test_subsets_are_seeded_and_stable():
    def labels(**kw):
        return load_split(DataSpec(**kw), "train")

    a, b, c = labels(subset=100), labels(subset=100), labels(subset=100, subset_seed=1)
    assert len(a) == 100 and np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert len(labels(subset=10_000)) == 1437  # a subset larger than the split is the split


def test_factory_dataset_becomes_collated_batches():
    spec = DataSpec(dataset="jobs.tiny_lm:make_dataset", kwargs={"size": 70, "length": 5}, batch_size=32, subset=50)
    data = load_split(spec, "test")
    assert isinstance(data, BatchSplit) and len(data) == 50
    assert [b["tokens"].shape for b in data.batches] == [(32, 5), (18, 5)]
    assert normalization(spec) == ([0.0], [1.0]) and normalization(DataSpec(dataset="cifar10"))[0][0] == 0.4914


@pytest.mark.parametrize("fmt", ["plain", "paper_t7", "legacy_t7", "dataparallel", "wrapped_dataparallel"])
def test_every_checkpoint_format_loads(tmp_path, fmt):
    torch.manual_seed(3)
    source = build("resnet20")
    sd = source.state_dict()
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    obj, kw = {
        "plain": (sd, {}),
        "paper_t7": ({"state_dict": sd, "acc": 91.3, "epoch": 300}, {}),
        "legacy_t7": ({"state_dict": sd, "acc": 91.3, "epoch": 300}, {"_use_new_zipfile_serialization": False}),
        "dataparallel": (prefixed, {}),
        "wrapped_dataparallel": ({"state_dict": prefixed, "epoch": 3}, {}),
    }[fmt]
    path = tmp_path / "model.t7"
    torch.save(obj, path, **kw)
    target = build("resnet20")
    fit_state(target, read_checkpoint(path))
    for k, v in sd.items():
        assert torch.equal(target.state_dict()[k], v), k


def test_without_a_checkpoint_the_seed_draws_the_initial_weights():
    """θ* is the factory's initialisation under the given seed (training passes its `seed`), and the caller's
    random state is untouched."""
    spec = Spec()  # digits_cnn, no checkpoint
    for seed in (0, 1):
        torch.manual_seed(seed)
        want = DigitsCNN().state_dict()
        torch.manual_seed(99)
        after = torch.rand(())
        torch.manual_seed(99)
        got = load_model(spec, seed=seed).state_dict()
        assert torch.rand(()) == after  # the caller's random stream goes on as if nothing had been drawn
        for k, v in want.items():
            assert torch.equal(got[k], v), (seed, k)


def test_every_shipped_job_spec_validates():
    files = sorted((ROOT / "jobs").rglob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        load_spec(path, model=TrainSpec if "train" in path.stem else Spec)
