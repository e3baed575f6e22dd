"""Direction vectors δ, η in weight space (paper section 4 and appendix 9.2).

A direction is a dict {state_dict name: tensor} over the *direction space*:
the model's parameters (`dir_type: weights`) or every floating-point entry of
its state_dict, BN running statistics included (`dir_type: states`).

Random directions are Gaussian, drawn on the CPU from a generator seeded with
`directions.seed`, entry by entry in state_dict order, x first then y — so a
direction depends only on the seed and the model, never on devices, actors or
tiles, and the x direction of a 2D surface is the direction of the 1D scan.

Normalization, for each entry d of the direction and θ of θ*:
  filter: every filter (slice along dim 0: one conv output channel or one linear
          output unit) is rescaled to the Frobenius norm of the same filter of θ*;
  layer:  the whole tensor is rescaled to ‖θ‖;
  none:   d is left as drawn.
Entries with ≤ 1 dimension (biases, BN weight/bias, running stats) get a zero
direction with `ignore: biasbn`; otherwise they are set to θ itself, as in the
paper's public code.

    dirs = make_directions(model, spec.directions, ndim=2)   # [δ, η]
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .spec import DirectionsSpec

EPS = 1e-10  # as the paper's code: keeps an all-zero filter of θ* from dividing by zero


def direction_space(model: nn.Module, dir_type: str) -> dict[str, torch.Tensor]:
    """θ* restricted to the entries a direction spans, in state_dict order."""
    state = model.state_dict(keep_vars=False)
    if dir_type == "weights":
        names = {name for name, _ in model.named_parameters()}
        return {k: v for k, v in state.items() if k in names}
    return {k: v for k, v in state.items() if v.is_floating_point()}


def normalize(d: torch.Tensor, theta: torch.Tensor, norm: str, ignore: str) -> torch.Tensor:
    if d.dim() <= 1:
        return torch.zeros_like(theta) if ignore == "biasbn" else theta.clone()
    if norm == "filter":
        scale = theta.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + EPS)
        return d * scale.view(-1, *([1] * (d.dim() - 1)))
    if norm == "layer":
        return d * (theta.norm() / (d.norm() + EPS))
    return d


def random_direction(space: dict[str, torch.Tensor], generator: torch.Generator, norm: str, ignore: str):
    out = {}
    for name, theta in space.items():
        d = torch.randn(theta.shape, generator=generator, dtype=torch.float32).to(theta.dtype)
        out[name] = normalize(d, theta.detach().cpu(), norm, ignore)
    return out


def make_directions(model: nn.Module, spec: DirectionsSpec, ndim: int) -> list[dict[str, np.ndarray]]:
    """One direction per grid axis, as NumPy arrays (the form they travel and are stored in)."""
    space = direction_space(model, spec.dir_type)
    generator = torch.Generator().manual_seed(spec.seed)
    dirs = [random_direction(space, generator, spec.norm, spec.ignore) for _ in range(ndim)]
    return [{k: v.numpy() for k, v in d.items()} for d in dirs]
