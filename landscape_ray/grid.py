"""The grid of (α, β) coordinates and its tiles.

A 1D scan has one axis `x` (α); a surface has `y` (β) and `x` (α) and is laid
out in arrays as (y, x), rows along β, like an image. The grid is cut into
rectangular tiles; a tile is both one unit of work for an actor and exactly one
chunk of every array in the store, so each chunk has a single writer.

    grid = Grid.from_spec(spec.grid)
    for tile in grid.tiles():
        coords = grid.coords(tile)     # (points, ndim) array of (α[, β])
        where = grid.slices(tile)      # where its values go in the arrays
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .spec import GridSpec


@dataclass(frozen=True)
class Grid:
    x: np.ndarray
    y: np.ndarray | None
    chunks: tuple[int, ...]  # in array order: (cx,) or (cy, cx)

    @classmethod
    def from_spec(cls, spec: GridSpec) -> "Grid":
        x = np.linspace(spec.x.min, spec.x.max, spec.x.num)
        y = None if spec.y is None else np.linspace(spec.y.min, spec.y.max, spec.y.num)
        if y is None:
            tile = spec.tile if isinstance(spec.tile, int) else spec.tile[0]
            chunks = (min(tile, len(x)),)
        elif isinstance(spec.tile, int):
            cx = min(spec.tile, len(x))
            chunks = (max(1, min(len(y), spec.tile // cx)), cx)
        else:
            chunks = (min(spec.tile[0], len(y)), min(spec.tile[1], len(x)))
        return cls(x, y, chunks)

    @property
    def dims(self) -> tuple[str, ...]:
        return ("x",) if self.y is None else ("y", "x")

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.x),) if self.y is None else (len(self.y), len(self.x))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def tiles(self) -> list[tuple[int, ...]]:
        """Chunk indices of every tile, row-major."""
        counts = [math.ceil(n / c) for n, c in zip(self.shape, self.chunks)]
        return list(itertools.product(*(range(c) for c in counts)))

    def slices(self, tile: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(tile, self.chunks, self.shape))

    def coords(self, tile: tuple[int, ...]) -> np.ndarray:
        """(α[, β]) of each point of a tile, in the row-major order of its block of the arrays."""
        where = self.slices(tile)
        if self.y is None:
            return self.x[where[0]][:, None]
        beta, alpha = np.meshgrid(self.y[where[0]], self.x[where[1]], indexing="ij")
        return np.stack([alpha.ravel(), beta.ravel()], axis=1)

    def tile_shape(self, tile: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.slices(tile))
