"""The grid of (α, β) coordinates, its tiles (units of work) and its chunks (units of storage).

A 1D scan has one axis `x` (α); a surface has `y` (β) and `x` (α) and is laid
out in arrays as (y, x), rows along β, like an image. The grid is cut into
rectangular tiles, each one unit of work for an actor, and the store's arrays
into chunks, each a block of whole tiles: the tile itself when it has at least
`MIN_CHUNK_POINTS` points, else neighbouring tiles grouped up to
`MAX_TILE_POINTS` points (whole rows when a row fits), since a chunk file costs
about a millisecond to write whatever its size.

    grid = Grid.from_spec(spec.grid, workers=2)   # tile: auto sizes tiles for 2 actors
    for tile in grid.tiles():
        coords = grid.coords(tile)     # (points, ndim) array of (α[, β])
        where = grid.slices(tile)      # where its values go in the arrays
        chunk = grid.chunk_of(tile)    # the chunk holding it (grid.chunk_slices(chunk): where that is)

Tile shape never changes a value (each point is evaluated on its own), only how
work is spread: `tile: auto` gives every worker at least `MIN_TILES_PER_WORKER`
tiles (or one point per tile on a grid too small for that), so no actor idles
while another finishes a big tile, and caps a tile at `MAX_TILE_POINTS`. Within
those bounds it aims at the smallest tiles whose per-tile cost (driver and
store) stays under `OVERHEAD_SHARE` of the compute, given an estimate of the
seconds one point costs: expensive points get small tiles, which balance best
at the end of a run. Without an estimate it aims at `TILES_PER_WORKER` tiles each.
For GPU actors (`fine`), whose speed the driver's CPU cannot estimate, tiles have
at most `FINE_TILE_POINTS` points and the scheduler gives an actor as many
consecutive ones at a time as its measured rate calls for.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from landscape_ray.spec.schema import GridSpec

MIN_TILES_PER_WORKER = 4
TILES_PER_WORKER = 16  # the aim without a cost estimate: the last tiles then idle an actor for ~3 % of the run
MAX_TILE_POINTS = 256
# A smaller tile shares its chunk with its neighbours: a chunk costs about 1 ms per array to write however small, as
# much as a cheap point (a small MLP's: 0.9 ms), so a chunk of at least this many points keeps the writes to a few %
# (a 21 × 21 plane of 2-row tiles: 11 chunks per array at 32, two at 128, 20 ms less of a 0.4 s call).
MIN_CHUNK_POINTS = 128
TILE_OVERHEAD_S = 0.005  # per tile: ~1 ms of Ray call and store (benchmarks/scale.py), more on a driver sharing cores
OVERHEAD_SHARE = 0.02
FINE_TILE_POINTS = 8  # a GPU point of a real model takes 0.1-0.5 s (issue 22): a tile is then a second at most


def auto_points(size: int, workers: int, point_seconds: float | None = None, fine: bool = False) -> int:
    """Points per tile for `tile: auto`: the cheapest size that balances, within the bounds above."""
    workers = max(1, workers)
    most = max(1, min(FINE_TILE_POINTS if fine else MAX_TILE_POINTS, size // (MIN_TILES_PER_WORKER * workers)))
    if fine:
        return most
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


def store_chunks(shape: tuple[int, ...], tile: tuple[int, ...]) -> tuple[int, ...]:
    """The store's chunk for tiles of shape `tile`: the tile itself, or a block of tiles if it is small.

    A small tile's chunk is `auto_chunks` on the grid of tiles, so at most `MAX_TILE_POINTS` points.
    """
    if math.prod(tile) >= MIN_CHUNK_POINTS:
        return tile
    counts = tuple(math.ceil(n / t) for n, t in zip(shape, tile))
    group = auto_chunks(counts, MAX_TILE_POINTS // math.prod(tile))
    return tuple(min(k * t, n) for k, t, n in zip(group, tile, shape))


@dataclass(frozen=True)
class Grid:
    x: np.ndarray
    y: np.ndarray | None
    tile: tuple[int, ...]  # the work tile, in array order: (tx,) or (ty, tx)
    chunks: tuple[int, ...]  # the store's chunk, whole tiles along each axis

    def __post_init__(self):
        # A chunk boundary on a tile boundary: a tile lies in one chunk, which is written once all its tiles are done.
        if not all(c >= n or (c % t == 0) for n, t, c in zip(self.shape, self.tile, self.chunks)):
            raise ValueError(f"chunks {self.chunks} are not whole tiles {self.tile} of a {self.shape} grid")

    @classmethod
    def from_spec(
        cls, spec: GridSpec, workers: int = 1, point_seconds: float | None = None, fine: bool = False
    ) -> Grid:
        """The grid of `spec`; `tile: auto` is sized for `workers` actors (and `point_seconds` per point, if known;
        `fine`: for GPU actors)."""
        x = np.linspace(spec.x.min, spec.x.max, spec.x.num)
        y = None if spec.y is None else np.linspace(spec.y.min, spec.y.max, spec.y.num)
        shape = (len(x),) if y is None else (len(y), len(x))
        if spec.tile == "auto":
            tile = auto_chunks(shape, auto_points(math.prod(shape), workers, point_seconds, fine))
        elif isinstance(spec.tile, list):
            tile = tuple(min(t, n) for t, n in zip(spec.tile, shape))
        elif y is None:
            tile = (min(spec.tile, len(x)),)
        else:  # an int on a surface: that many points, as whole rows when a row fits
            cx = min(spec.tile, len(x))
            tile = (max(1, min(len(y), spec.tile // cx)), cx)
        return cls(x, y, tile, store_chunks(shape, tile))

    @property
    def dims(self) -> tuple[str, ...]:
        return ("x",) if self.y is None else ("y", "x")

    @property
    def axes(self) -> list[np.ndarray]:
        """The coordinates along each dimension, in the order of `dims`."""
        return [self.x] if self.y is None else [self.y, self.x]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.x),) if self.y is None else (len(self.y), len(self.x))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def tiles(self) -> list[tuple[int, ...]]:
        """Indices of every tile, row-major."""
        counts = [math.ceil(n / t) for n, t in zip(self.shape, self.tile)]
        return list(itertools.product(*(range(c) for c in counts)))

    def slices(self, tile: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(i * t, min((i + 1) * t, n)) for i, t, n in zip(tile, self.tile, self.shape))

    def coords(self, tile: tuple[int, ...]) -> np.ndarray:
        """(α[, β]) of each point of a tile, in the row-major order of its block of the arrays."""
        where = self.slices(tile)
        if self.y is None:
            return self.x[where[0]][:, None]
        beta, alpha = np.meshgrid(self.y[where[0]], self.x[where[1]], indexing="ij")
        return np.stack([alpha.ravel(), beta.ravel()], axis=1)

    def tile_shape(self, tile: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.slices(tile))

    def points(self, tile: tuple[int, ...]) -> int:
        return math.prod(self.tile_shape(tile))

    def chunk_indices(self) -> list[tuple[int, ...]]:
        """Indices of every chunk of the store's arrays, row-major."""
        counts = [math.ceil(n / c) for n, c in zip(self.shape, self.chunks)]
        return list(itertools.product(*(range(c) for c in counts)))

    def chunk_of(self, tile: tuple[int, ...]) -> tuple[int, ...]:
        """Index of the chunk that holds `tile`."""
        return tuple(i * t // c for i, t, c in zip(tile, self.tile, self.chunks))

    def chunk_slices(self, chunk: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(chunk, self.chunks, self.shape))

    def tiles_of(self, chunk: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The tiles inside a chunk, row-major."""
        ranges = (range(s.start // t, math.ceil(s.stop / t)) for s, t in zip(self.chunk_slices(chunk), self.tile))
        return list(itertools.product(*ranges))
