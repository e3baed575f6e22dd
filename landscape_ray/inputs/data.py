"""Evaluation data: each split read once into compact NumPy arrays.

Image data sets become an `ImageSplit`: uint8 images (N, C, H, W) and int64
labels (N,), kept that way all the way into device memory; the evaluator
normalizes batch by batch there, so nothing is re-decoded per grid point and
one host copy is shared by the actors of a node.

Any other data (`data.dataset: package.module:factory` returning a torch
Dataset, e.g. token sequences for a language model) becomes a `BatchSplit`:
collated once with a DataLoader into `data.batch_size` batches of NumPy arrays
(tuples, lists and dicts kept as they are), which the metric receives as-is.

    splits = load_splits(spec.data)        # {"train": ImageSplit, "test": ImageSplit}
    mean, std = normalization(spec.data)
    normalize = normalizer(mean, std, device)   # uint8 batch → float32 network input, on the device
    images, labels = on_device(splits["train"], device)   # tensors; on the CPU sharing the arrays' memory

A language model's text (`text`: .txt, .jsonl or .parquet files per split, or
Python's bundled documentation text) becomes a `BatchSplit` of {"input_ids":
(batch, seq_len)} token windows (text.py), tokenized by `data.tokenizer`.

Data sets: `digits` (scikit-learn's bundled 8×8 digits, 1,437 train / 360 test),
`cifar10` (a folder holding the standard python-pickle `cifar-10-batches-py`;
`download: true` fetches it with torchvision), `imagefolder` (`root/{train,test}/
<class>/<image>`, every image the same size), `synthetic` (seeded random
images, for benchmarks and tests), or `package.module:factory`, called as
`factory(split=..., root=..., **data.kwargs)`.
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from landscape_ray.core.errors import SpecError
from landscape_ray.core.plugins import import_object
from landscape_ray.inputs.hf import load_tokenizer
from landscape_ray.inputs.text import load_text_split
from landscape_ray.spec.schema import DataSpec


@dataclass(frozen=True)
class ImageSplit:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "ImageSplit":
        return ImageSplit(self.images[index], self.labels[index])


@dataclass(frozen=True)
class BatchSplit:
    batches: list  # collated batches: NumPy arrays in the structure the Dataset's items have
    size: int

    def __len__(self) -> int:
        return self.size


DEFAULT_NORMALIZE = {
    "digits": ([0.305], [0.376]),
    # The paper's public code normalizes CIFAR-10 with these values; its checkpoints expect them.
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
    "imagefolder": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "synthetic": ([0.5], [0.25]),
}


def _digits(split: str, spec: DataSpec) -> ImageSplit:
    # scikit-learn's bundled file, read directly: importing sklearn costs ~3 s of every job's start-up.
    where = Path(importlib.util.find_spec("sklearn").submodule_search_locations[0]) / "datasets/data/digits.csv.gz"
    raw = np.loadtxt(where, delimiter=",")  # 1,797 rows: 64 pixel values (0-16), then the label
    images = np.rint(raw[:, :64].reshape(-1, 1, 8, 8) * (255 / 16)).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(images))  # a fixed split, the same everywhere
    index = np.sort(order[:1437] if split == "train" else order[1437:])
    return ImageSplit(images[index], raw[index, 64].astype(np.int64))


def _root(spec: DataSpec) -> Path:
    if spec.root is None:
        raise SpecError(f"data.root: {spec.dataset} needs the folder of the data set")
    return Path(spec.root)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays, nothing else: a crafted batch file cannot run code."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        *((m, f) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for f in ("_reconstruct", "scalar")),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only NumPy arrays are allowed)")
        return super().find_class(module, name)


def _cifar10(split: str, spec: DataSpec) -> ImageSplit:
    root = _root(spec)
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
                batch = NumpyOnlyUnpickler(f, encoding="latin1").load()  # latin1 reads Python 2 str, as torchvision
            # Python 2 wrote str keys; Python 3 converters write str or bytes keys.
            batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError, AttributeError) as err:
            raise SpecError(f"data.root: {path} is not a CIFAR-10 python batch ({type(err).__name__}: {err})") from None
    return ImageSplit(np.concatenate(images), np.concatenate(labels))


def _imagefolder(split: str, spec: DataSpec) -> ImageSplit:
    from torchvision.datasets import ImageFolder

    folder = _root(spec) / split
    if not folder.is_dir():
        raise SpecError(f"data.root: {folder} not found (imagefolder expects root/{split}/<class>/<image>)")
    try:
        ds = ImageFolder(str(folder), loader=lambda p: np.asarray(_open_rgb(p)))
    except (FileNotFoundError, OSError) as err:
        raise SpecError(f"data.root: {folder}: {err}") from None
    images = [ds[i][0] for i in range(len(ds))]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        sizes = ", ".join(map(str, sorted(shapes)[:3]))
        raise SpecError(f"data.root: images in {folder} differ in size ({sizes}); resize them first")
    return ImageSplit(np.stack(images).transpose(0, 3, 1, 2).copy(), np.asarray(ds.targets, dtype=np.int64))


def _open_rgb(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def _synthetic(split: str, spec: DataSpec) -> ImageSplit:
    opts = {"size": 1000, "shape": [3, 32, 32], "classes": 10} | spec.kwargs
    unknown = set(opts) - {"size", "shape", "classes"}
    if unknown:
        raise SpecError(f"data.kwargs: synthetic takes size, shape, classes; unknown: {', '.join(sorted(unknown))}")
    rng = np.random.default_rng(0 if split == "train" else 1)
    images = rng.integers(0, 256, size=(opts["size"], *opts["shape"]), dtype=np.uint8)
    return ImageSplit(images, rng.integers(0, opts["classes"], size=opts["size"]).astype(np.int64))


@dataclass
class BFloat16:
    """A bfloat16 entry of θ* as its bits (NumPy has no bfloat16), so a model held in bf16 travels and is shared in
    its own two bytes a parameter; `inputs.data.as_tensor` views it back."""

    bits: np.ndarray  # int16

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bits.shape

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """As float32, exactly (every bfloat16 is one): what NumPy, a store and a direction file see."""
        floats = (self.bits.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        return floats if dtype is None else floats.astype(dtype, copy=False)


def as_tensor(array: np.ndarray | BFloat16) -> torch.Tensor:
    """Share a (possibly read-only, object-store-backed) array without copying; we never write to it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        if isinstance(array, BFloat16):
            return torch.from_numpy(array.bits).view(torch.bfloat16)
        return torch.from_numpy(array)


def as_array(tensor: torch.Tensor) -> np.ndarray | BFloat16:
    """A CPU tensor in a form that travels without copies and comes back bit for bit with `as_tensor`."""
    tensor = tensor.detach().cpu()
    return BFloat16(tensor.view(torch.int16).numpy()) if tensor.dtype == torch.bfloat16 else tensor.numpy()


def tree_map(fn, tree, leaf_type):
    """`fn` applied to every `leaf_type` leaf of nested dicts, lists and tuples (a batch's structure is kept)."""
    if isinstance(tree, leaf_type):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v, leaf_type) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v, leaf_type) for v in tree)
    return tree


# A custom Dataset is collated once, at load, before the evaluating device is known: `batch_size: auto` means this.
COLLATE_BATCH = 1024


def _factory(split: str, spec: DataSpec, index_of) -> BatchSplit:
    try:
        dataset = import_object(spec.dataset, "data.dataset")(split=split, root=spec.root, **spec.kwargs)
    except TypeError as err:
        raise SpecError(f"data.dataset: {spec.dataset} rejects split/root/data.kwargs ({err})") from err
    if not isinstance(dataset, Dataset):
        raise SpecError(f"data.dataset: {spec.dataset} returned {type(dataset).__name__}, not a torch Dataset")
    index = index_of(len(dataset))
    if index is not None:
        dataset = Subset(dataset, index.tolist())
    with torch.no_grad():
        batches = [
            tree_map(torch.Tensor.numpy, b, torch.Tensor)
            for b in DataLoader(dataset, batch_size=COLLATE_BATCH if spec.batch_size == "auto" else spec.batch_size)
        ]
    return BatchSplit(batches, len(dataset))


TEXT_BATCH_TOKENS = 4096  # `batch_size: auto` for text: sequences per batch = this / seq_len (logits: × vocab)


def _text(split: str, spec: DataSpec, index_of) -> BatchSplit:
    """Token windows of the split's files (or the bundled text) as batches of {"input_ids": (b, seq_len)}."""
    if spec.files is not None and split not in spec.files:
        raise SpecError(f"data.files: no files for split {split!r} (data.splits has it)")
    tokenizer = load_tokenizer(spec.tokenizer, "data.tokenizer")
    files = None if spec.files is None else spec.files[split]
    windows = load_text_split(files, split, tokenizer, spec.seq_len, spec.sequences, spec.text_field)
    index = index_of(len(windows))
    if index is not None:
        windows = windows[index]
    size = max(1, TEXT_BATCH_TOKENS // spec.seq_len) if spec.batch_size == "auto" else spec.batch_size
    return BatchSplit([{"input_ids": windows[i : i + size]} for i in range(0, len(windows), size)], len(windows))


DATASETS = {"digits": _digits, "cifar10": _cifar10, "imagefolder": _imagefolder, "synthetic": _synthetic}


def subset_index(spec: DataSpec, split: str, size: int) -> np.ndarray | None:
    """The seeded sample of `data.subset` items of a split (None: the whole split)."""
    if spec.subset is None or spec.subset >= size:
        return None
    rng = np.random.default_rng([spec.subset_seed, ["train", "test"].index(split)])
    return np.sort(rng.choice(size, spec.subset, replace=False))


def load_split(spec: DataSpec, split: str) -> ImageSplit | BatchSplit:
    if ":" in spec.dataset or spec.dataset == "text":
        return (_text if spec.dataset == "text" else _factory)(split, spec, lambda n: subset_index(spec, split, n))
    if spec.dataset not in DATASETS:
        raise SpecError(
            f"data.dataset: unknown data set {spec.dataset!r}; known: {', '.join(DATASETS)} or 'package.module:factory'"
        )
    data = DATASETS[spec.dataset](split, spec)
    index = subset_index(spec, split, len(data))
    return data if index is None else data.take(index)


def load_splits(spec: DataSpec) -> dict[str, ImageSplit | BatchSplit]:
    return {split: load_split(spec, split) for split in spec.splits}


def normalization(spec: DataSpec) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) of the images in [0, 1]: `data.normalize`, or the data set's default."""
    if spec.normalize is not None:
        return spec.normalize.mean, spec.normalize.std
    return DEFAULT_NORMALIZE.get(spec.dataset, ([0.0], [1.0]))


def on_device(split: ImageSplit | BatchSplit, device: torch.device | str):
    """A split as tensors on `device`: (images, labels) of an ImageSplit, the batches of a BatchSplit.

    On the CPU they share memory with the NumPy arrays (one host copy for every actor of a node).
    """
    if isinstance(split, ImageSplit):
        return as_tensor(split.images).to(device), as_tensor(split.labels).to(device)
    return [tree_map(lambda a: as_tensor(a).to(device), b, np.ndarray) for b in split.batches]


def normalizer(mean: list[float], std: list[float], device: torch.device | str = "cpu"):
    """uint8 image batches (N, C, H, W) → what the network sees: float32 in [0, 1], normalized per channel.

    The evaluator and training both use it, so a network is evaluated on exactly the inputs it was trained on.
    """
    m, s = (torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1) for v in (mean, std))
    return lambda images: images.float().div_(255).sub_(m).div_(s)
