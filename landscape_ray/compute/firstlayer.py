"""The first layer's responses, computed once per batch: less work per point, the same values within rounding.

A Linear or a convolution is linear in its weights. Where a model's first layer with weights is one of them and
reads the data itself (its input depends on no parameter), its output at θ* + Σ c_k d_k is

    layer(x; W* + Σ c_k D_k, b* + Σ c_k e_k) = layer(x; W*, b*) + Σ c_k · layer(x; D_k, e_k)

so the evaluator keeps, for every batch, the layer's output at θ* and along each direction (computed the first time
the batch is seen), and a point costs k multiply-adds over the layer's output instead of the layer. An MLP on raw
inputs does much of its work in its first layer (256 → 512 → 512 → 10: a third; MNIST's 784 → 100 → 10: 99 %).

    first = FirstLayer.find(evaluator, runner, batch, samples)   # None where it does not apply or pay
    first.at = ("train", 3, 1024); first.point = (0.5, -0.25)    # batch 3 of the split at batch size 1024

Where it applies (`eval.first_layer: true`, the default; `false` turns it off): materialized directions, fp32, no
compile, BN not recomputed, the built-in metrics (a user's metric may call the model on something else than the
batch), a layer of exactly one of LAYERS called once per forward, without hooks, whose input moves neither with
the parameters (autograd) nor between θ* and a point off it (a buffer a direction moves), whose fan-in is at least
MIN_FAN_IN, and whose 1 + k outputs over the data fit MAX_BYTES. A call the evaluator did not announce (`at` None)
computes the layer as usual from the live weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Below this fan-in, reading 1 + k stored outputs costs about what the layer's own multiply-adds do (a CNN's first
# 3×3 conv on RGB has 27, and its outputs are as large as the feature maps it makes).
MIN_FAN_IN = 32
# Per evaluator: each actor holds its own, and so does each of the driver's evaluator threads (16 actors: 4 GiB at
# most). MNIST's 60,000 images through a 512-wide first layer, 1 + 2 outputs: 351 MiB, over; 8,000: 47 MiB.
MAX_BYTES = 256 << 20


def fan_in(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    return layer.in_channels // layer.groups * math.prod(layer.kernel_size)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same tensor: same storage, offset, shape and strides."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def with_weights(model: nn.Module) -> list[nn.Module]:
    """The modules that hold parameters of their own, in the order the model registers them."""
    return [m for m in model.modules() if any(p is not None for p in m._parameters.values())]


def first_call(model: nn.Module, metric, batch) -> tuple[nn.Module, torch.Tensor, int] | None:
    """(module, its input, times called) for the first module with weights of its own that one `metric(model,
    batch)` calls; None where its input depends on a parameter (found by autograd: every parameter requires grad
    for this one forward) or nothing with weights is called."""
    calls: list[tuple[nn.Module, tuple]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: calls.append((m, args))) for m in with_weights(model)]
    asked = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in asked:
            p.requires_grad_(True)
        with torch.enable_grad():
            metric(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
        for p, requires in asked:
            p.requires_grad_(requires)
    if not calls or len(calls[0][1]) != 1 or not torch.is_tensor(calls[0][1][0]):
        return None
    module, (x,) = calls[0]
    if x.requires_grad:  # something with weights ran before it (a parameter used directly in a forward)
        return None
    return module, x.detach(), sum(m is module for m, _ in calls)


class FirstLayer:
    def __init__(self, layer: nn.Module, theta: tuple, moves: list):
        """`theta`: (W*, b*); `moves`: per direction, (D_k, e_k) or None where it leaves the layer alone."""
        self.layer, self.theta, self.moves = layer, theta, moves
        self.cache: dict[tuple, torch.Tensor] = {}
        self.at: tuple | None = None  # the batch the next forward reads: (split, index, batch size)
        self.point: tuple[float, ...] = ()  # the coordinate the live weights are at; () = θ*
        layer.forward = self.forward  # this instance only; every runner of the model (folded, eager) shares it

    @classmethod
    def find(cls, ev, model: nn.Module, batch, samples: int) -> FirstLayer | None:
        """The FirstLayer of `model` (the runner of the evaluator `ev`: its metric, moved tensors `targets`, their
        θ* `base`, `directions`, `set_point` and `reset`), or None. `batch`: a look at the data (two samples);
        `samples`: how many the splits hold together (for MAX_BYTES)."""
        # Without a forward first: the first layer with weights a model registers is nearly always the first it runs,
        # so most CNNs (a 3×3 conv on RGB first) are passed over before anything runs.
        owners = with_weights(model)
        if not owners or type(owners[0]) not in LAYERS or fan_in(owners[0]) < MIN_FAN_IN:
            return None
        try:
            found = first_call(model, ev.metric, batch)
            if found is None:
                return None
            layer, x, times = found
            if type(layer) not in LAYERS or times != 1 or fan_in(layer) < MIN_FAN_IN:
                return None
            if layer._forward_hooks or layer._forward_pre_hooks or "forward" in vars(layer):
                return None
            # Its input must stay put at a point off θ* too: autograd sees parameters only, not a buffer a direction
            # moves (`dir_type: states`) nor a parameter read through .item() or .data.
            ev.set_point([1.0] * len(ev.directions))
            moved = first_call(model, ev.metric, batch)
        except Exception:  # noqa: BLE001 - a model that fails on its data: the probe (prepare.py) says how, in one line
            return None
        finally:
            ev.reset()
        if moved is None or moved[0] is not layer or not torch.equal(moved[1], x):
            return None
        # The layer's tensors among those the evaluator moves, by identity: a weight tied to a later layer's is moved
        # under that layer's name (direction_space keeps a tied entry once).
        params = (layer.weight, layer.bias)
        where = [None if p is None else next((j for j, t in enumerate(ev.targets) if same(t, p)), None) for p in params]
        theta = tuple(None if p is None else (p if j is None else ev.base[j]).detach() for p, j in zip(params, where))
        moves = [None if where == [None, None] else [None if j is None else d[j] for j in where] for d in ev.directions]
        with torch.no_grad():
            out = layer(x[:1])
        if (1 + sum(m is not None for m in moves)) * out.numel() * out.element_size() * samples > MAX_BYTES:
            return None
        return cls(layer, theta, moves)

    def response(self, x: torch.Tensor, weight, bias) -> torch.Tensor:
        """The layer's own arithmetic with the given weights (zero where None)."""
        weight = torch.zeros_like(self.layer.weight) if weight is None else weight
        if isinstance(self.layer, nn.Linear):
            return nn.functional.linear(x, weight, bias)
        return self.layer._conv_forward(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.at is None:  # not a batch the evaluator announced: the layer as usual
            return type(self.layer).forward(self.layer, x)
        stored = self.cache.get(self.at)
        if stored is None:  # (1 + k, *output): at θ*, then along each direction that moves the layer
            parts = [self.theta] + [m for m in self.moves if m is not None]
            first = self.response(x, *parts[0])
            stored = first.new_empty((len(parts), *first.shape))  # filled in place: no second copy at once
            stored[0] = first
            for i, part in enumerate(parts[1:], 1):
                stored[i] = self.response(x, *part)
            self.cache[self.at] = stored
        c = [c for c, m in zip(self.point, self.moves) if m is not None]
        if not any(c):
            return stored[0].clone()  # the next layer may work in place (ReLU(inplace=True))
        out = torch.add(stored[0], stored[1], alpha=c[0])
        for k in range(1, len(c)):
            out.add_(stored[1 + k], alpha=c[k])
        return out
