"""What every evaluator of a job receives: θ*, the data and the directions, as NumPy arrays.

The payload is plain NumPy, so Ray's object store hands it to the actors of a node without copying. It is made
once on the CPU by `compute.prepare.prepare` (inputs loaded by `kinds.load_inputs`, then probed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: this module stays free of torch, for the driver's scheduler to import
    from typing import Callable

    from torch import nn

    from landscape_ray.inputs.data import BatchSplit, BFloat16, ImageSplit
    from landscape_ray.inputs.directions import Directions


@dataclass
class Payload:
    """Everything an evaluator needs besides the spec, as NumPy arrays (zero-copy through Ray's object store)."""

    state: dict[str, np.ndarray | BFloat16]
    directions: Directions
    splits: dict[str, ImageSplit | BatchSplit]
    bn_split: ImageSplit | BatchSplit | None = None  # the train split, for eval.bn: recompute
    variables: list[str] = field(default_factory=list)
    point_seconds: float | None = None  # a rough cost of one point on the driver's CPU, for tile: auto
    # `model.arch: object` (inputs/handed.py): the network a Python call handed over, which no spec can build (its
    # class may live only in the caller's __main__: Ray pickles it by value), and the metric function it handed.
    model: nn.Module | None = None
    metric: Callable | None = None

    def adopt(self, stored: Payload) -> None:
        """Hold the arrays of `stored`, this payload as the object store returned it (zero-copy, read-only), in place
        of this one's: once it is in the store, a driver that kept its own copies would hold θ* and the directions
        twice (a 1.1 B model's kept directions: 13 GB instead of 7)."""
        self.state, self.directions, self.splits, self.bn_split = (
            stored.state,
            stored.directions,
            stored.splits,
            stored.bn_split,
        )
