"""Networks by name: the registry of built-in models, any user factory, and θ* as a spec describes it.

    model = build("resnet56")                       # a zoo name (zoo.py: the paper's CIFAR-10 nets)
    model = build("mypkg.nets:make_net", width=64)   # any factory returning an nn.Module (plugins.py)
    model = load_model(spec)                         # spec.model: built, its checkpoint loaded, in eval mode
    model = load_model(train_spec, seed=3)           # no checkpoint: the factory's initialisation under seed 3
    model = load_model(api_spec)                     # model.arch: object: the one a Python call handed (handed.py)
    model = build_model(spec.model)                  # the network alone (its weights come later), hf folders too

Checkpoint files are read by checkpoints.py.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from landscape_ray.core.errors import SpecError
from landscape_ray.core.plugins import import_object
from landscape_ray.inputs.checkpoints import fit_state, read_checkpoint
from landscape_ray.inputs.handed import handed
from landscape_ray.inputs.hf import build_hf, load_hf
from landscape_ray.inputs.zoo import ZOO as CIFAR_ZOO
from landscape_ray.inputs.zoo import ResNet


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


def digits_resnet(depth: int = 8, width: int = 1, shortcut: bool = True, num_classes: int = 10) -> nn.Module:
    """A CIFAR ResNet (zoo.ResNet) shrunk for 1×8×8 digits: 3 stages of 8/16/32 × `width` planes, depth 6n + 2."""
    net = ResNet(
        [8 * width, 16 * width, 32 * width], [(depth - 2) // 6] * 3, pool=2, shortcut=shortcut, num_classes=num_classes
    )
    net.conv1 = nn.Conv2d(1, 8 * width, 3, padding=1, bias=False)  # one input channel; same name and position
    return net


ZOO: dict[str, Callable[..., nn.Module]] = {"digits_cnn": DigitsCNN, "digits_resnet": digits_resnet, **CIFAR_ZOO}


def build(name: str, **kwargs) -> nn.Module:
    """A freshly initialised network: a zoo name or 'package.module:factory', called with `kwargs`; the caller's
    random state is left as it was (`load_model` seeds the initialisation)."""
    if ":" in name:
        factory = import_object(name, "model.arch")
    elif name in ZOO:
        factory = ZOO[name]
    else:
        known = ", ".join(sorted(ZOO))
        raise SpecError(f"model.arch: unknown model {name!r}; known: {known} or 'package.module:factory'")
    try:
        with torch.random.fork_rng(devices=[]):  # an initialisation draws from the global generator: not the caller's
            model = factory(**kwargs)
    except TypeError as err:
        raise SpecError(f"model.kwargs: {name} rejects them ({err})") from err
    if not isinstance(model, nn.Module):
        raise SpecError(f"model.arch: {name} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def build_model(model_spec, initialise: bool = True) -> nn.Module:
    """`spec.model`'s network, freshly initialised: `arch: hf` from its folder's config (hf.py), else `build`.
    `initialise=False`: a language model's weights are left as allocated (the caller loads its whole state next)."""
    if model_spec.arch == "hf":
        return build_hf(model_spec.path, model_spec.dtype, initialise=initialise)
    return build(model_spec.arch, **model_spec.kwargs)


def load_model(spec, seed: int = 0) -> nn.Module:
    """Build `spec.model.arch` and load its checkpoint (when given), in eval mode, on the CPU.

    Without a checkpoint the factory's initialisation is drawn under `seed` (training passes its own), so θ*
    is the same on every rerun; the caller's random state is left as it was.
    """
    if spec.model.arch == "hf":  # θ* is the folder's weights
        return load_hf(spec.model.path, spec.model.dtype, spec.model.trust_checkpoint)
    if spec.model.arch == "object":  # θ* is the weights of the model a Python call handed over, as it is
        return handed(spec.model.object, "model.arch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(spec.model.arch, **spec.model.kwargs)
    if spec.model.checkpoint:
        fit_state(model, read_checkpoint(spec.model.checkpoint, spec.model.trust_checkpoint), spec.model.checkpoint)
    return model.eval()
