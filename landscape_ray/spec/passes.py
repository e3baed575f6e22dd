"""The passes of a grid: the order in which its points are computed (`grid.mode`).

A uniform grid is one pass over every point. A progressive grid holds the same points, computed coarse to fine:
the first pass takes every `stride`-th point along each axis (and each axis's last point, so that it spans the whole
grid), each later pass halves the spacing, and the last takes every point left. The points of the passes up to p form
a lattice (every point whose row and column are on the pass's axis lattices), so after the first pass a coarse
picture of the whole grid exists, and it sharpens with every pass (`store/filled.py` draws it).

The unit of work is a `Piece`: the points of one tile that one pass computes. Tiles and chunks are the uniform
grid's, so a finished progressive store is laid out, and holds values, exactly as a uniform one: each point is
evaluated on its own from θ*, whichever pass computes it.

    passes = Passes(grid, spec.grid.mode)
    for level in range(passes.count):
        for piece in passes.pieces(level):          # adaptive: of the points chosen so far
            coords = passes.coords(piece)   # its points' (α[, β]), row-major within its tile
            mask = passes.mask(piece)       # which points of the tile's block they are (None: all of them)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from landscape_ray.spec.grid import Grid

FIRST_PASS_AXIS = 9  # points of the first pass along the longer axis, at most: a 9 × 9 picture of a plane


class Piece(NamedTuple):
    level: int  # the pass, from 0
    tile: tuple[int, ...]

    def __str__(self) -> str:  # as errors name it: the tile, and the pass where there are several
        return f"{self.tile}" + (f" of pass {self.level + 1}" if self.level else "")


def first_stride(shape: tuple[int, ...]) -> int:
    """The first pass's spacing: the smallest power of two that leaves at most `FIRST_PASS_AXIS` points along the
    longer axis (its last point included)."""
    longest, stride = max(shape), 1
    while -(-(longest - 1) // stride) + 1 > FIRST_PASS_AXIS:
        stride *= 2
    return stride


def axis_levels(n: int, stride: int) -> np.ndarray:
    """The pass that first reaches each of an axis's `n` points: 0 for every `stride`-th one and the last, then one
    pass more for each halving of the spacing."""
    levels = np.full(n, -1)
    level, step = 0, stride
    while step >= 1:
        levels[(np.arange(n) % step == 0) & (levels < 0)] = level
        level, step = level + 1, step // 2
    levels[-1] = 0
    return levels


class Passes:
    """The passes of `grid` in `mode` (`grid.mode`): `levels` holds the pass (from 0) of every point, `count` how
    many there are (1 for a uniform grid), `chosen` which points are to be computed (adaptive: the first pass's, and
    those `choose` adds pass by pass; otherwise every one)."""

    def __init__(self, grid: Grid, mode: str = "uniform"):
        self.grid = grid
        self.adaptive = mode == "adaptive"
        self.stride = 1 if mode == "uniform" else first_stride(grid.shape)
        self.axes = [axis_levels(n, self.stride) for n in grid.shape]
        # A point comes with the pass that reaches both its row and its column.
        self.levels = self.axes[0] if len(self.axes) == 1 else np.maximum.outer(*self.axes)
        self.count = int(self.levels.max()) + 1
        self.chosen = self.levels == 0 if self.adaptive else np.ones(grid.shape, bool)
        self.refined = np.ones(grid.shape, bool)  # adaptive: the cells (their points) the last decision refined

    def choose(self, level: int, points: np.ndarray) -> None:
        """Add the points of pass `level` that `points` (a mask of the grid) marks to those to compute."""
        self.chosen |= points & (self.levels == level)

    def spacing(self, level: int) -> int:
        """Grid steps between neighbouring points of the lattice done after pass `level`."""
        return max(1, self.stride >> level)

    def lattice(self, level: int) -> tuple[np.ndarray, ...]:
        """The indices, per axis, of the points done once pass `level` is: every point in their product."""
        return tuple(np.flatnonzero(levels <= level) for levels in self.axes)

    def _own(self, piece: Piece) -> np.ndarray:
        """The piece's points among those of its tile's block."""
        block = self.grid.slices(piece.tile)
        return (self.levels[block] == piece.level) & self.chosen[block]

    def mask(self, piece: Piece) -> np.ndarray | None:
        """Which points of the piece's tile (its block of the arrays) the piece holds; None: every one."""
        own = self._own(piece)
        return None if own.all() else own

    def points(self, piece: Piece) -> int:
        mask = self.mask(piece)
        return self.grid.points(piece.tile) if mask is None else int(mask.sum())

    def coords(self, piece: Piece) -> np.ndarray:
        """(α[, β]) of the piece's points, in the row-major order of its tile's block."""
        coords = self.grid.coords(piece.tile)
        mask = self.mask(piece)
        return coords if mask is None else coords[mask.ravel()]

    def pieces(self, level: int) -> list[Piece]:
        """The pieces of pass `level`: the tiles (row-major) that hold points of it."""
        return [piece for t in self.grid.tiles() if self._own(piece := Piece(level, t)).any()]

    def pending(self, level: int, done: np.ndarray, damaged) -> list[Piece]:
        """The pieces of pass `level` still to compute: a point not done, or a tile in `damaged` (its chunk is
        recomputed whole, every pass of it)."""
        return [
            p for p in self.pieces(level) if p.tile in damaged or not done[self.grid.slices(p.tile)][self._own(p)].all()
        ]

    def progress(self, done: np.ndarray) -> list[tuple[int, int]]:
        """(points done, points) of each pass (adaptive: of the points it has, chosen or not)."""
        return [(int(done[self.levels == lv].sum()), int((self.levels == lv).sum())) for lv in range(self.count)]
