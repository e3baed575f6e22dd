"""Values on their way into a store's chunks (tiles.py's writer): a chunk of the grid arrays holds one tile or a
block of whole tiles, and is written whole.
"""

from __future__ import annotations

import numpy as np

from landscape_ray.spec.grid import Grid


class ChunkWriter:
    """Values on their way into a store's chunks: each chunk is gathered in memory and written whole, its variables
    first and `done` last (a point counts as done only once all its values are on disk).

    A chunk is written once all its points are in, or as it stands on `flush`. One that has points on disk (`kept`:
    a resumed store, or one written earlier) starts from them, so a flush never writes NaN over a finished point.
    """

    def __init__(self, grid: Grid, arrays: dict, kept: set[tuple[int, ...]]):
        self.grid, self.arrays, self.kept = grid, arrays, kept  # arrays: {name: zarr array}, "done" last
        self.buffers: dict[tuple[int, ...], dict[str, np.ndarray]] = {}
        self.dirty: set[tuple[int, ...]] = set()

    def add(self, tile: tuple[int, ...], values: dict[str, np.ndarray], mask: np.ndarray | None = None) -> None:
        """A tile's values (flat, row-major), or with `mask` (a progressive grid's pass: spec/passes.py) those of the
        points of its block where `mask` is true."""
        chunk = self.grid.chunk_of(tile)
        buffer = self.buffers.get(chunk) or self.start(chunk)
        corner = [s.start for s in self.grid.chunk_slices(chunk)]
        where = tuple(slice(s.start - c, s.stop - c) for s, c in zip(self.grid.slices(tile), corner))
        shape = self.grid.tile_shape(tile)
        mask = np.ones(shape, dtype=bool) if mask is None else mask
        for name, flat in values.items():
            buffer[name][where][mask] = flat  # the block is a view of the buffer: its masked points are written
        buffer["done"][where][mask] = True
        self.dirty.add(chunk)
        if buffer["done"].all():
            self.write(chunk)
            del self.buffers[chunk]  # a later tile of it (none is expected) starts from the disk

    def start(self, chunk: tuple[int, ...]) -> dict[str, np.ndarray]:
        where = self.grid.chunk_slices(chunk)
        if chunk in self.kept:
            buffer = {name: array[where] for name, array in self.arrays.items()}
        else:
            shape = tuple(s.stop - s.start for s in where)
            buffer = {name: np.full(shape, array.fill_value, array.dtype) for name, array in self.arrays.items()}
        self.buffers[chunk] = buffer
        return buffer

    def write(self, chunk: tuple[int, ...]) -> None:
        where = self.grid.chunk_slices(chunk)
        for name, array in self.arrays.items():
            array[where] = self.buffers[chunk][name]
        self.kept.add(chunk)
        self.dirty.discard(chunk)

    def flush(self) -> None:
        for chunk in sorted(self.dirty):
            self.write(chunk)
