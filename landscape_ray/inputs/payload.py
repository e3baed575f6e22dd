"""What every evaluator of a job receives: θ*, the data and the directions, as NumPy arrays.

The payload is plain NumPy, so Ray's object store hands it to the actors of a node without copying. It is made
once on the CPU by `compute.prepare.prepare` (inputs loaded by `kinds.load_inputs`, then probed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: this module stays free of torch, for the driver's scheduler to import
    from landscape_ray.inputs.data import BatchSplit, ImageSplit
    from landscape_ray.inputs.directions import Directions


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


@dataclass
class Payload:
    """Everything an evaluator needs besides the spec, as NumPy arrays (zero-copy through Ray's object store)."""

    state: dict[str, np.ndarray | BFloat16]
    directions: Directions
    splits: dict[str, ImageSplit | BatchSplit]
    bn_split: ImageSplit | BatchSplit | None = None  # the train split, for eval.bn: recompute
    variables: list[str] = field(default_factory=list)
    point_seconds: float | None = None  # a rough cost of one point on the driver's CPU, for tile: auto
