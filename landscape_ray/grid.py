"""The grid of (α, β) coordinates and its tiles.

A 1D scan has one axis `x` (α); a surface has `y` (β) and `x` (α) and is laid
out in arrays as (y, x), rows along β, like an image. The grid is cut into
rectangular tiles; a tile is both one unit of work for an actor and exactly one
chunk of every array in the store, so each chunk has a single writer.

    grid = Grid.from_spec(spec.grid, workers=2)   # tile: auto sizes tiles for 2 actors
    for tile in grid.tiles():
        coords = grid.coords(tile)     # (points, ndim) array of (α[, β])
        where = grid.slices(tile)      # where its values go in the arrays

Tile shape never changes a value (each point is evaluated on its own), only how
work is spread: `tile: auto` gives every worker at least `MIN_TILES_PER_WORKER`
tiles (or one point per tile on a grid too small for that), so no actor idles
while another finishes a big tile, and caps a tile at `MAX_TILE_POINTS` so the
store's chunks stay small. Within those bounds it aims at the smallest tiles
whose per-tile cost (driver and store) stays under `OVERHEAD_SHARE` of the
compute, given an estimate of the seconds one point costs: expensive points get
small tiles, which balance best at the end of a run. Without an estimate it aims
at `TILES_PER_WORKER` tiles each.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .spec import GridSpec

MIN_TILES_PER_WORKER = 4
TILES_PER_WORKER = 16  # the aim without a cost estimate: the last tiles then idle an actor for ~3 % of the run
MAX_TILE_POINTS = 256
TILE_OVERHEAD_S = 0.005  # the driver's cost per tile, scheduling and store writes: ~4-5 ms (benchmarks/scale.py)
OVERHEAD_SHARE = 0.02


def auto_points(size: int, workers: int, point_seconds: float | None = None) -> int:
    """Points per tile for `tile: auto`: the cheapest size that balances, within the bounds above."""
    workers = max(1, workers)
    most = max(1, min(MAX_TILE_POINTS, size // (MIN_TILES_PER_WORKER * workers)))
    if point_seconds is None or point_seconds <= 0:
        aim = size // (TILES_PER_WORKER * workers)
    else:
        aim = math.ceil(TILE_OVERHEAD_S / (OVERHEAD_SHARE * point_seconds))
    return max(1, min(most, aim))


def auto_chunks(shape: tuple[int, ...], points: int) -> tuple[int, ...]:
    """A chunk of at most `points` points: whole rows of a surface when a row fits, else equal pieces of one row.

    Either way the chunk count is at least size / points, so `auto_points`' guarantee carries over.
    """
    cols = shape[-1]
    pieces = math.ceil(cols / points)  # pieces per row (1 when whole rows fit)
    if len(shape) == 1 or pieces > 1:
        return (*(1 for _ in shape[:-1]), math.ceil(cols / pieces))
    rows = points // cols
    return (math.ceil(shape[0] / math.ceil(shape[0] / rows)), cols)  # equal row blocks, no runt at the end


@dataclass(frozen=True)
class Grid:
    x: np.ndarray
    y: np.ndarray | None
    chunks: tuple[int, ...]  # in array order: (cx,) or (cy, cx)

    @classmethod
    def from_spec(cls, spec: GridSpec, workers: int = 1, point_seconds: float | None = None) -> Grid:
        """The grid of `spec`; `tile: auto` is sized for `workers` actors (and `point_seconds` per point, if known)."""
        x = np.linspace(spec.x.min, spec.x.max, spec.x.num)
        y = None if spec.y is None else np.linspace(spec.y.min, spec.y.max, spec.y.num)
        shape = (len(x),) if y is None else (len(y), len(x))
        if spec.tile == "auto":
            chunks = auto_chunks(shape, auto_points(math.prod(shape), workers, point_seconds))
        elif isinstance(spec.tile, list):
            chunks = tuple(min(t, n) for t, n in zip(spec.tile, shape))
        elif y is None:
            chunks = (min(spec.tile, len(x)),)
        else:  # an int on a surface: that many points, as whole rows when a row fits
            cx = min(spec.tile, len(x))
            chunks = (max(1, min(len(y), spec.tile // cx)), cx)
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
