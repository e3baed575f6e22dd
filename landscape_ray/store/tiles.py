"""An open landscape store (its layout and how it is made: layout.py), the driver its only writer.

Chunks: a chunk of the grid arrays holds one tile or, for small tiles, a block of
whole tiles (grid.py), since a chunk file costs about a millisecond to write
however small. `write_tile` gathers tiles in memory per chunk (`ChunkWriter`)
and writes a chunk as soon as all its points are in; `flush()` (every `FLUSH_S`
during a run, and at its end or on Ctrl-C) writes the chunks still filling, so a
crash loses at most the points of its last `FLUSH_S`, which `--resume` recomputes.

Trust: every chunk carries a CRC-32C checksum, so a truncated, deleted or
flipped chunk is found (`damaged()`, `landscape-ray verify`) instead of read as a
value, and `--resume` recomputes it. Reading a store never runs code: its spec is
validated (pydantic) after the format's migrations, its arrays are plain numbers.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pydantic
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import exists, is_remote, naming, zarr_store
from landscape_ray.spec.grid import Grid
from landscape_ray.spec.schema import Spec
from landscape_ray.store import ownership
from landscape_ray.store.chunks import ChunkWriter

FORMAT = 2  # 1: no checksums, no input fingerprints, marker written last; 2: today's
# Stored specs of older formats are brought up to date before validation, one step per format.
# 1 → 2 changed the store, not the spec; a future spec change adds its step here.
SPEC_MIGRATIONS = {1: lambda raw: raw}
RECORD = ("finished_unix_s", "seconds", "retries", "actor")  # fields of log/tiles; actor = N of "actor-N"
FLUSH_S = 0.5  # chunks still filling and tile records are written this often: what a crash loses, at most
CODECS = {
    "compressors": (ZstdCodec(level=0), Crc32cCodec()),
    "config": {"write_empty_chunks": True},
}  # an all-NaN tile is a chunk too, so a missing one means damage


def kind(name: str) -> tuple[np.dtype, object]:
    """(dtype, fill value) of a grid variable: counts (`<split>_samples`, eval.samples) are integers, 0 where not
    evaluated; every other value float64, NaN where not evaluated."""
    return (np.dtype("int64"), 0) if name.endswith("_samples") else (np.dtype("float64"), np.nan)


def split_sizes(inputs: dict) -> dict[str, int]:
    """{split: samples} as a store with `eval.samples: adaptive` records them among its inputs (`data.<split> size`:
    fingerprint.py); empty for any other store."""
    return {k[len("data.") : -len(" size")]: int(v) for k, v in inputs.items() if k.endswith(" size")}


def differences(a, b, prefix: str = "") -> list[str]:
    """Dotted paths where two nested dicts differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')} (store: {a!r}, now: {b!r})"]


class Store:
    def __init__(self, path: str | Path, mode: str = "r+"):
        self.path = path if is_remote(path) else Path(path)
        try:
            if not exists(path):
                raise SpecError(f"store: {self.path} not found")
            marked = ownership.is_marked(path)
        except (OSError, PermissionError) as err:  # credentials, network: say so, not "not a store"
            raise SpecError(f"store: cannot read {self.path} ({type(err).__name__}: {err})") from None
        if not marked:
            raise SpecError(f"store: {self.path} is not a landscape_ray store (no {ownership.MARKER} in its zarr.json)")
        try:
            self.root = zarr.open_group(zarr_store(path, mode), mode=mode, zarr_format=3)
            attrs = self.root.attrs.asdict()
        except Exception as err:  # noqa: BLE001 - someone else's metadata: zarr refuses it with many types
            raise SpecError(f"store: {self.path}: its Zarr metadata cannot be read ({type(err).__name__})") from err
        self.format = attrs.get(ownership.MARKER)
        if type(self.format) is not int or not 1 <= self.format <= FORMAT:  # `true` is an int to isinstance
            raise SpecError(f"store: {self.path} has format {self.format!r}; this version reads 1 to {FORMAT}")
        if "spec" not in attrs:
            raise SpecError(
                f"store: {self.path} is incomplete (its creation was interrupted); run again with --overwrite"
            )
        raw = attrs["spec"]
        for step in range(self.format, FORMAT):
            raw = SPEC_MIGRATIONS[step](raw)
        try:
            self.spec = Spec.model_validate(raw)
        except pydantic.ValidationError as err:
            raise SpecError(
                f"store: {self.path} has a spec this version cannot read "
                f"({err.errors()[0]['loc']}: {err.errors()[0]['msg']})"
            ) from None
        self.inputs = attrs.get("inputs", {})
        runs = attrs.get("runs", [])
        if not (isinstance(runs, list) and all(isinstance(r, dict) for r in runs)):
            raise SpecError(f"store: {self.path}: runs is not a list of run summaries")
        if not (isinstance(self.inputs, dict) and all(isinstance(v, str) for v in self.inputs.values())):
            raise SpecError(f"store: {self.path}: inputs is not a table of input fingerprints")
        # The chunks are the arrays'; the work tile is the one `create` recorded in the spec (a list), or the chunk
        # itself in a store whose recorded tile does not cut its chunks into whole tiles (none that we wrote).
        done = self._array("done")
        grid, chunks = Grid.from_spec(self.spec.grid), tuple(done.chunks)
        tile = grid.tile if isinstance(self.spec.grid.tile, list) else chunks
        try:
            self.grid = dataclasses.replace(grid, tile=tile, chunks=chunks)
        except ValueError:
            self.grid = dataclasses.replace(grid, tile=chunks, chunks=chunks)
        self._check_arrays()
        self._read: dict[str, np.ndarray] = {}
        self._damaged: dict[tuple[int, ...], str] = {}
        self._arrays: dict = {}
        self._writer: ChunkWriter | None = None
        self._records: list = []
        self._flushed = time.monotonic()

    def _array(self, name: str):
        """The grid array `name`, its metadata read (a store's metadata is someone else's file: one line if off)."""
        try:
            array = self.root[name]
            array.shape, array.chunks, array.dtype  # noqa: B018 - parsed here, where a failure can be named
        except Exception as err:  # noqa: BLE001 - zarr refuses damaged or foreign metadata with many types
            raise SpecError(
                f"store: {self.path}: {name}: its Zarr metadata cannot be read ({type(err).__name__})"
            ) from err
        if not isinstance(array, zarr.Array):
            raise SpecError(f"store: {self.path}: {name} is a group, not an array")
        return array

    def _check_arrays(self) -> None:
        """Each grid array as this store's grid makes it: its shape, chunks and type (values are read as such)."""
        expected = {"done": np.dtype(bool), **{name: kind(name)[0] for name in self.variables}}
        for name, dtype in expected.items():
            array = self._array(name)
            if array.shape != self.grid.shape or tuple(array.chunks) != self.grid.chunks:
                raise SpecError(
                    f"store: {self.path}: {name} has shape {array.shape} in chunks {tuple(array.chunks)}; the "
                    f"store's grid is {self.grid.shape} in chunks {self.grid.chunks}"
                )
            if array.dtype != dtype:
                raise SpecError(f"store: {self.path}: {name} holds {array.dtype}, not {dtype}")
        for axis, n in zip(self.grid.dims, self.grid.shape):
            array = self._array(axis)
            if array.shape != (n,) or array.dtype.kind != "f":
                raise SpecError(f"store: {self.path}: the axis {axis} has shape {array.shape} of {array.dtype}")

    @property
    def variables(self) -> list[str]:
        """The evaluated quantities (dims of the grid), not coordinates, `done` or trajectories."""
        return [
            name
            for name, a in self.root.arrays()
            if tuple(a.metadata.dimension_names or ()) == self.grid.dims and name not in ("done", *self.grid.dims)
        ]

    def check_resumable(self, spec: Spec) -> None:
        diff = differences(self.spec.result_fields(), spec.result_fields())
        if diff:
            raise SpecError("--resume: the spec differs from the store's in " + "; ".join(diff))

    def read(self, name: str) -> np.ndarray:
        """A whole grid array as on disk (a writer's values get there on `flush`); the chunks that fail to decode
        read as the fill value and their tiles count as damaged."""
        if name not in self._read:
            array = self.root[name]
            try:
                self._read[name] = array[...]
            except Exception:  # noqa: BLE001 - codecs fail with several types (zstd, checksum); find the chunks
                out = np.full(array.shape, array.fill_value, dtype=array.dtype)
                for chunk in self.grid.chunk_indices():
                    try:
                        out[self.grid.chunk_slices(chunk)] = array.blocks[chunk]
                    except Exception as err:  # noqa: BLE001 - as above
                        self._mark(chunk, f"{name}: {type(err).__name__}: {str(err)[:80]}")
                self._read[name] = out
        return self._read[name]

    def _mark(self, chunk: tuple[int, ...], why: str) -> None:
        for tile in self.grid.tiles_of(chunk):
            self._damaged.setdefault(tile, why)

    def done(self) -> np.ndarray:
        return self.read("done")

    def damaged(self) -> dict[tuple[int, ...], str]:
        """Tiles in chunks that fail their checksum, or are missing though points of theirs are marked done:
        {tile: what is wrong}. Damage is found per chunk; every tile of a damaged chunk is listed."""
        for name in [*self.variables, "done"]:
            self.read(name)
        done, keys = self.done(), set(ownership.listing(self.path))
        bad = {self.grid.chunk_of(tile) for tile in self._damaged}
        for chunk in self.grid.chunk_indices():
            if chunk in bad or not done[self.grid.chunk_slices(chunk)].any():
                continue
            key = "/".join(map(str, chunk))
            missing = [name for name in self.variables if f"{name}/c/{key}" not in keys]
            if missing:
                self._mark(chunk, f"{missing[0]}: chunk missing")
        return dict(sorted(self._damaged.items()))

    def pending_tiles(self) -> list[tuple[int, ...]]:
        """Tiles to compute: not all done, or damaged (recomputed whole)."""
        done, bad = self.done(), self.damaged()
        return [t for t in self.grid.tiles() if t in bad or not done[self.grid.slices(t)].all()]

    def write_tile(
        self, tile: tuple[int, ...], values: dict[str, np.ndarray], record: dict | None = None, mask=None
    ) -> None:
        """Take a finished tile's values (flat, in `grid.coords` order; with `mask`, a pass of a progressive grid,
        those of its points where `mask` is true). Its chunk is written once all its points are in; what is left is
        written by `flush()`, which the writer calls before it lets go of the store."""
        with naming(self.path):
            if self._writer is None:
                self._writer = self._open_writer()
            self._read.clear()
            self._damaged.clear()
            self._writer.add(tile, values, mask)
            if record is not None:
                name = record["actor"]  # actor-N, or the driver (warmup.py): -1
                actor = int(name.rpartition("-")[2]) if name.startswith("actor-") else -1
                self._records.append((tile, [time.time(), record["seconds"], record["retries"], actor]))
                if time.monotonic() - self._flushed > FLUSH_S:
                    self.flush()

    def _open_writer(self) -> ChunkWriter:
        done = self.done()
        kept = set()
        if done.any():  # a resumed store: its chunks with points done, whose values a flush must keep
            bad = {self.grid.chunk_of(tile) for tile in self.damaged()}  # recomputed whole: they start empty
            kept = {c for c in self.grid.chunk_indices() if c not in bad and done[self.grid.chunk_slices(c)].any()}
        return ChunkWriter(self.grid, {name: self.array(name) for name in [*self.variables, "done"]}, kept)

    def array(self, name: str):
        """The open array `name`: looked up once, as a lookup costs as much as a small chunk write."""
        if name not in self._arrays:
            self._arrays[name] = self.root[name]
        return self._arrays[name]

    def flush(self) -> None:
        """Write the chunks still filling, then the buffered tile records (they serve post-mortems and `info`)."""
        with naming(self.path):
            if self._writer is not None:
                self._writer.flush()
                self._read.clear()
                self._damaged.clear()
            log = self.array("log/tiles")
            per = log.chunks[:-1]  # tiles per chunk of records: each is read and written once
            groups: dict[tuple[int, ...], list] = {}
            for tile, record in self._records:
                groups.setdefault(tuple(i // c for i, c in zip(tile, per)), []).append((tile, record))
            for key, records in groups.items():
                where = tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, per, log.shape))
                block = np.full((*(s.stop - s.start for s in where), len(RECORD)), np.nan)
                if len({tile for tile, _ in records}) < block.size // len(RECORD):  # other tiles' records: keep them
                    try:
                        block = log[where]
                    except Exception:  # noqa: BLE001 - a damaged chunk of records costs only their speed estimate
                        pass
                for tile, record in records:
                    block[tuple(i - s.start for i, s in zip(tile, where))] = record
                log[where] = block
            self._records.clear()
            self._flushed = time.monotonic()

    def records(self) -> np.ndarray:
        """(tiles, 4) records of finished tiles: finished time, seconds, retries, actor number."""
        try:
            log = self.root["log/tiles"][...].reshape(-1, len(RECORD))
        except Exception:  # noqa: BLE001 - damaged records cost only the speed estimate
            return np.empty((0, len(RECORD)))
        return log[~np.isnan(log[:, 0])]

    def speed(self, window: float = 120.0) -> tuple[float, float] | None:
        """(points/s over the last `window` seconds of finished tiles, ETA in seconds), or None if too few tiles."""
        done = self.done()
        recs = self.records()
        if len(recs) < 2:
            return None
        finished = np.sort(recs[:, 0])
        recent = finished[finished >= finished[-1] - window]
        span = recent[-1] - recent[0]
        if span <= 0:
            return None
        rate = (len(recent) - 1) * done.sum() / len(recs) / span  # mean tile size × tiles per second
        return rate, (done.size - done.sum()) / rate

    def samples(self) -> dict[str, tuple[np.ndarray, int]]:
        """`eval.samples: adaptive`: {split: (<split>_samples, the split's size)}; empty for other stores."""
        sizes = split_sizes(self.inputs)
        return {s: (self.read(f"{s}_samples"), n) for s, n in sizes.items() if f"{s}_samples" in self.variables}

    def sample_lines(self) -> list[str]:
        """One line per split of a store with `eval.samples: adaptive`: the share of a full-data run's work."""
        return [
            f"samples ({split}, tolerance {self.spec.eval.sample_tolerance}): {n.sum() / (n.size * whole):.1%} of a "
            f"uniform full-data run's work; {int((n == whole).sum())} points on all {whole} samples, "
            f"{int(((n > 0) & (n < whole)).sum())} on fewer"
            for split, (n, whole) in self.samples().items()
        ]

    def directions(self) -> list[dict[str, np.ndarray]]:
        """The direction arrays; none for `directions.regenerate`, whose spec is the recipe."""
        if "directions" not in self.root:
            return []
        return [
            {name: array[...] for name, array in self.root[f"directions/{axis}"].arrays()}
            for axis in ("x", "y")[: len(self.grid.shape)]
        ]
