"""Networks by name, and checkpoints loaded into them.

    model = build("resnet56")                      # a zoo name (zoo.py: the paper's CIFAR-10 nets)
    model = build("mypkg.nets:make_net", width=64)  # any factory returning an nn.Module
    state = read_checkpoint("runs/demo/checkpoints/final.pt")
    fit_state(model, state)                         # names missing/unexpected keys, shape clashes

Checkpoints are read with `torch.load(weights_only=True)`; a file that needs full
unpickling is refused unless the user trusts it (`model.trust_checkpoint`).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .spec import SpecError
from .zoo import ZOO as CIFAR_ZOO


class DigitsCNN(nn.Module):
    """A small conv net for 8×8 digits: three conv-BN-ReLU blocks and a linear head."""

    def __init__(self, channels: int = 1, width: int = 16, classes: int = 10):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(channels, width), block(width, 2 * width), nn.MaxPool2d(2), block(2 * width, 2 * width)
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


ZOO: dict[str, Callable[..., nn.Module]] = {"digits_cnn": DigitsCNN, **CIFAR_ZOO}


def import_object(path: str, field: str):
    """Resolve 'package.module:name'; errors name the spec field."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise SpecError(f"{field}: cannot import module {module_name!r} ({err})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SpecError(f"{field}: module {module_name!r} has no {attr!r}") from None


def build(name: str, **kwargs) -> nn.Module:
    if ":" in name:
        factory = import_object(name, "model.arch")
    elif name in ZOO:
        factory = ZOO[name]
    else:
        raise SpecError(f"model.arch: unknown model {name!r}; known: {', '.join(sorted(ZOO))} or 'package.module:factory'")
    try:
        model = factory(**kwargs)
    except TypeError as err:
        raise SpecError(f"model.kwargs: {name} rejects them ({err})") from None
    if not isinstance(model, nn.Module):
        raise SpecError(f"model.arch: {name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_checkpoint(path: str | Path, trust: bool = False, field: str = "model.checkpoint", mmap: bool = False):
    """(state_dict, metadata) from a file: a plain state_dict, or one wrapped as {'state_dict': ..., 'epoch': ...}
    (the paper's .t7 files), with `module.` prefixes from DataParallel/DDP removed.

    `mmap` maps tensors lazily from disk (files in torch's zip format), so a PCA over hundreds of
    checkpoints never holds them all in memory.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{field}: file not found: {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=not trust, mmap=mmap)
        except RuntimeError as err:
            if not (mmap and "mmap" in str(err)):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=not trust)  # legacy format: no mmap
    except Exception as err:  # torch raises UnpicklingError or RuntimeError, depending on the file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not trust and "weights_only" in str(err):
            raise SpecError(
                f"{field}: {path} needs full unpickling, which can run arbitrary code; "
                "if you trust it, pass --trust-checkpoint (model.trust_checkpoint=true)"
            ) from None
        raise SpecError(f"{field}: cannot read {path}: {first}") from None
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
    return load_checkpoint(path, trust, field)[0]


def fit_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint", field: str = "model.checkpoint") -> None:
    """Load `state` into `model`, or raise one line naming every key and shape that does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes differ", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise SpecError(f"{field}: {source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state)


def load_model(spec) -> nn.Module:
    """Build `spec.model.arch` and load its checkpoint (when given), in eval mode, on the CPU.

    Without a checkpoint the factory's initialisation is seeded, so θ* is the same on every rerun.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build(spec.model.arch, **spec.model.kwargs)
    if spec.model.checkpoint:
        fit_state(model, read_checkpoint(spec.model.checkpoint, spec.model.trust_checkpoint), spec.model.checkpoint)
    return model.eval()
