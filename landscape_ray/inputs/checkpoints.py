"""Checkpoint files: state_dicts read safely, in the formats people have, and fitted to a model with a clear error.

    state, meta = load_checkpoint("model_300.t7")   # meta: {'epoch': 300, 'acc': 91.3} from a wrapped checkpoint
    state = read_checkpoint("runs/demo/checkpoints/final.pt")
    fit_state(model, state)                          # names missing/unexpected keys, shape clashes

Formats: a plain state_dict, one wrapped as {'state_dict': ..., 'epoch': ...} (the paper's .t7 files and
train.py's checkpoints), a pickled nn.Module, each with or without DataParallel/DDP `module.` prefixes.
Files are read with `torch.load(weights_only=True)`; a file that needs full unpickling is refused unless the
user trusts it (`model.trust_checkpoint`).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from landscape_ray.core.errors import SpecError

# What torch.load raises for a file it cannot read: not a pickle or a refused global (UnpicklingError), a
# damaged zip archive (RuntimeError), a truncated file (EOFError), an unreadable one (OSError); with full
# unpickling of a trusted file, a class that no longer exists (ImportError, AttributeError).
UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, ImportError, AttributeError)


RECORD_NUMBERS = ("train_loss", "train_acc", "test_loss", "test_acc", "weight_norm")


def _torch_load(path: Path, trust: bool, mmap: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust, mmap=mmap)
    except RuntimeError as err:
        if not (mmap and "mmap" in str(err)):
            raise
        return torch.load(path, map_location="cpu", weights_only=not trust)  # legacy format: no mmap


def _read(path: Path, trust: bool, field: str, mmap: bool):
    """What the file holds, or one line naming `field` and the file."""
    if not path.is_file():
        raise SpecError(f"{field}: file not found: {path}")
    try:
        return _torch_load(path, trust, mmap)
    except UNREADABLE as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not trust and "weights_only" in str(err):
            raise SpecError(
                f"{field}: {path} needs full unpickling, which can run arbitrary code; "
                "if you trust it, pass --trust-checkpoint (model.trust_checkpoint=true)"
            ) from err
        raise SpecError(f"{field}: cannot read {path}: {first}") from err  # chained: `--debug` shows torch's error


def read_record(path: str | Path, field: str, mmap: bool = False, weights: bool = True) -> dict:
    """A checkpoint as `landscape-ray train` writes it (a dict with its `state_dict`, `epoch`, metrics, optimizer
    state and weight norms; `weights=False`: the same without the state_dict, the `training.pt` of a model folder),
    read as weights only; anything else is one line naming the file."""
    record = _read(Path(path), False, field, mmap)
    if not (isinstance(record, dict) and (isinstance(record.get("state_dict"), dict) or not weights)):
        raise SpecError(f"{field}: {path} is not a checkpoint of landscape-ray train (no state_dict)")
    kinds = {"epoch": int, "steps": int, "step_weight_norms": torch.Tensor}
    for key, value in record.items():
        number = isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1)
        wrong = (key in kinds and not isinstance(value, kinds[key])) or (key in RECORD_NUMBERS and not number)
        if wrong or isinstance(value, bool):
            raise SpecError(f"{field}: {path} has a {key} that is not what training writes: {str(value)[:80]!r}")
    return record


def load_checkpoint(path: str | Path, trust: bool = False, field: str = "model.checkpoint", mmap: bool = False):
    """(state_dict, metadata) from a file, with `module.` prefixes from DataParallel/DDP removed.

    `mmap` maps tensors lazily from disk (files in torch's zip format), so a PCA over hundreds of
    checkpoints never holds them all in memory.
    """
    path = Path(path)
    obj = _read(path, trust, field, mmap)
    meta = {}
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        meta = {k: v for k, v in obj.items() if k != "state_dict" and isinstance(v, (int, float, str))}
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SpecError(f"{field}: {path} holds no state_dict (a dict of tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj, meta


def read_checkpoint(path: str | Path, trust: bool = False, field: str = "model.checkpoint") -> dict[str, torch.Tensor]:
    """The state_dict of a checkpoint file (its metadata dropped)."""
    return load_checkpoint(path, trust, field)[0]


def fit_state(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint", field: str = "model.checkpoint"
) -> None:
    """Load `state` into `model`, or raise one line naming every key and shape that does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes differ", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise SpecError(f"{field}: {source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state)
