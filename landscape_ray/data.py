"""Evaluation data: each split read once into compact NumPy arrays.

Images stay uint8 (N, C, H, W) and labels int64 (N,) all the way into device
memory; the evaluator normalizes batch by batch there, so the data is never
re-decoded per grid point and a host copy is cheap to share between actors.

    splits = load_splits(spec.data)        # {"train": Split, "test": Split}
    mean, std = normalization(spec.data)

Data sets: `digits` (scikit-learn's bundled 8×8 digits, 1,437 train / 360 test),
`cifar10` (a folder with the standard python-pickle `cifar-10-batches-py`;
`download: true` fetches it with torchvision), `synthetic` (seeded random
images, for benchmarks and tests).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .spec import DataSpec, SpecError


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


DEFAULT_NORMALIZE = {
    "digits": ([0.305], [0.376]),
    # The paper's public code normalizes CIFAR-10 with these values; its checkpoints expect them.
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "synthetic": ([0.5], [0.25]),
}


def _digits(split: str, spec: DataSpec) -> Split:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(len(images))  # a fixed split, the same everywhere
    index = np.sort(order[:1437] if split == "train" else order[1437:])
    return Split(images[index], bunch.target[index].astype(np.int64))


def _cifar10(split: str, spec: DataSpec) -> Split:
    if spec.root is None:
        raise SpecError("data.root: cifar10 needs the folder that holds cifar-10-batches-py")
    root = Path(spec.root)
    folder = root / "cifar-10-batches-py"
    if not folder.is_dir() and spec.download:
        import torchvision

        torchvision.datasets.CIFAR10(str(root), train=split == "train", download=True)
    if not folder.is_dir():
        raise SpecError(f"data.root: {folder} not found (set data.download: true to fetch CIFAR-10)")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise SpecError(f"data.root: {path} is missing from the CIFAR-10 folder")
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
            raise SpecError(f"data.root: {path} is not a CIFAR-10 python batch ({err!r})") from None
    return Split(np.concatenate(images), np.concatenate(labels))


def _synthetic(split: str, spec: DataSpec) -> Split:
    opts = {"size": 1000, "shape": [3, 32, 32], "classes": 10} | spec.kwargs
    unknown = set(opts) - {"size", "shape", "classes"}
    if unknown:
        raise SpecError(f"data.kwargs: synthetic takes size, shape, classes; unknown: {', '.join(sorted(unknown))}")
    rng = np.random.default_rng(0 if split == "train" else 1)
    images = rng.integers(0, 256, size=(opts["size"], *opts["shape"]), dtype=np.uint8)
    return Split(images, rng.integers(0, opts["classes"], size=opts["size"]).astype(np.int64))


DATASETS = {"digits": _digits, "cifar10": _cifar10, "synthetic": _synthetic}


def load_split(spec: DataSpec, split: str) -> Split:
    if spec.dataset not in DATASETS:
        raise SpecError(f"data.dataset: unknown data set {spec.dataset!r}; known: {', '.join(DATASETS)}")
    data = DATASETS[spec.dataset](split, spec)
    if spec.subset is not None and spec.subset < len(data):
        # Seeded per split, so the same spec always evaluates the same samples.
        rng = np.random.default_rng([spec.subset_seed, ["train", "test"].index(split)])
        index = np.sort(rng.choice(len(data), spec.subset, replace=False))
        data = Split(data.images[index], data.labels[index])
    return data


def load_splits(spec: DataSpec) -> dict[str, Split]:
    return {split: load_split(spec, split) for split in spec.splits}


def normalization(spec: DataSpec) -> tuple[list[float], list[float]]:
    if spec.normalize is not None:
        return spec.normalize.mean, spec.normalize.std
    return DEFAULT_NORMALIZE.get(spec.dataset, ([0.0], [1.0]))
