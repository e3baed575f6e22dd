"""The Zarr v3 store a job writes: one chunk per tile, the driver its only writer.

Layout (readable with `xarray.open_zarr(path)` or `landscape_ray.open(path)`):

    x, y                    coordinates (α, β); 1-D arrays named after their dimension
    train_loss, train_acc   (y, x) float64, NaN until computed (test_* when evaluated)
    done                    (y, x) bool, set after a tile's values are written
    directions/x/<name>     δ, one array per state_dict entry of the direction space
    directions/y/<name>     η (surfaces only)
    attrs                   resolved spec, library versions, axis labels, creation time

A new store is built in a hidden sibling folder and renamed into place when its
metadata and directions are complete, so a bad input or a crash never leaves a
half-made store. Zarr's local store writes each chunk atomically and `done` is
written after the values, so a killed driver loses at most the tiles in flight.
"""
from __future__ import annotations

import datetime
import os
import shutil
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import zarr

from .directions import Directions
from .grid import Grid
from .spec import Spec, SpecError

FORMAT = 1
RECORD = ("finished_unix_s", "seconds", "retries", "actor")  # fields of log/tiles; actor = N of "actor-N"
PACKAGES = ("landscape-ray", "torch", "ray", "zarr", "numpy", "pydantic")


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def is_remote(path: str | Path) -> bool:
    return "://" in str(path)


def zarr_store(path: str | Path, mode: str = "r"):
    """What zarr and xarray open: a local folder, or an fsspec URL (s3://, gs://, …; credentials from the environment)."""
    if is_remote(path):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(str(path), read_only=mode == "r")
    return str(path)


def exists(path: str | Path) -> bool:
    if not is_remote(path):
        return Path(path).exists()
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(path))
    return fs.exists(root)


def remove(path: str | Path) -> None:
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(path))
    if fs.exists(root):
        fs.rm(root, recursive=True)


def consolidate(path: str | Path) -> None:
    """Consolidated metadata lets plain `xarray.open_zarr` open the store without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(zarr_store(path, "w"))


def _build(path: Path, spec: Spec, grid: Grid, variables: list[str], directions: Directions) -> None:
    root = zarr.open_group(zarr_store(path, "w"), mode="w-", zarr_format=3)
    for axis, label, extra in zip(grid.dims[::-1], directions.labels, directions.axis_attrs or [{}, {}]):
        root.create_array(axis, data=getattr(grid, axis), dimension_names=[axis], attributes={"long_name": label, **extra})
    for name in variables:
        root.create_array(
            name, shape=grid.shape, chunks=grid.chunks, dtype="float64", fill_value=np.nan, dimension_names=list(grid.dims)
        )
    root.create_array("done", shape=grid.shape, chunks=grid.chunks, dtype="bool", fill_value=False, dimension_names=list(grid.dims))
    # One record per tile, for post-mortems and for `info` to tell the speed of a job running elsewhere.
    counts = tuple(-(-n // c) for n, c in zip(grid.shape, grid.chunks))
    root.require_group("log").create_array(
        "tiles", shape=(*counts, len(RECORD)), chunks=(*(1 for _ in counts), len(RECORD)), dtype="float64",
        fill_value=np.nan, attributes={"fields": list(RECORD)})
    if directions.trajectory is not None:
        t = directions.trajectory
        root.create_array("epoch", data=t["epoch"], dimension_names=["epoch"], attributes={"long_name": "training epoch"})
        for axis in ("x", "y"):
            root.create_array(f"trajectory_{axis}", data=t[axis], dimension_names=["epoch"],
                              attributes={"long_name": f"checkpoint θi − θ* projected on {axis}"})
    for axis, vector in zip("xy", directions.vectors):
        group = root.require_group(f"directions/{axis}")
        for name, array in vector.items():
            group.create_array(name, data=array)
    root.attrs.update({
        "landscape_ray_format": FORMAT,
        "spec": spec.model_dump(mode="json"),
        "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    consolidate(path)


def create(path: str | Path, spec: Spec, grid: Grid, variables: list[str], directions: Directions | list,
           overwrite: bool = False) -> "Store":
    """Make a complete empty store at `path` (replacing an old one only with `overwrite`).

    `directions` is a `Directions`, or bare vectors (one dict per axis) whose axes are labelled x and y.
    """
    if not isinstance(directions, Directions):
        directions = Directions(list(directions), list(grid.dims[::-1]))
    if exists(path) and not overwrite:
        raise SpecError(f"output.store: {path} already exists; pass --resume to complete it or --overwrite to replace it")
    if is_remote(path):
        # No rename on object stores: build in place; `spec` in the attributes, written last, marks it complete.
        remove(path)
        try:
            _build(path, spec, grid, variables, directions)
        except BaseException:
            remove(path)
            raise
        return Store(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _build(partial, spec, grid, variables, directions)
        if path.exists():
            shutil.rmtree(path)
        os.replace(partial, path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return Store(path)


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
        if not exists(path):
            raise SpecError(f"store: {self.path} not found")
        try:
            self.root = zarr.open_group(zarr_store(path, mode), mode=mode, zarr_format=3)
            raw = self.root.attrs["spec"]
        except Exception:
            raise SpecError(f"store: {self.path} is not a landscape_ray store") from None
        self.spec = Spec.model_validate(raw)
        self.grid = Grid.from_spec(self.spec.grid)

    @property
    def variables(self) -> list[str]:
        """The evaluated quantities (dims of the grid), not coordinates, `done` or trajectories."""
        return [name for name, a in self.root.arrays() if tuple(a.metadata.dimension_names or ()) == self.grid.dims and name != "done"]

    def check_resumable(self, spec: Spec) -> None:
        diff = differences(self.spec.result_fields(), spec.result_fields())
        if diff:
            raise SpecError("--resume: the spec differs from the store's in " + "; ".join(diff))

    def done(self) -> np.ndarray:
        return self.root["done"][...]

    def pending_tiles(self) -> list[tuple[int, ...]]:
        done = self.done()
        return [t for t in self.grid.tiles() if not done[self.grid.slices(t)].all()]

    def write_tile(self, tile: tuple[int, ...], values: dict[str, np.ndarray], record: dict | None = None) -> None:
        where = self.grid.slices(tile)
        shape = self.grid.tile_shape(tile)
        for name, flat in values.items():
            self.root[name][where] = np.asarray(flat).reshape(shape)
        self.root["done"][where] = True  # a tile counts only once all its values are on disk
        if record is not None:
            actor = int(record["actor"].rpartition("-")[2])
            self.root["log/tiles"][tile] = [time.time(), record["seconds"], record["retries"], actor]

    def records(self) -> np.ndarray:
        """(tiles, 4) records of finished tiles: finished time, seconds, retries, actor number."""
        log = self.root["log/tiles"][...].reshape(-1, len(RECORD))
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

    def directions(self) -> list[dict[str, np.ndarray]]:
        return [
            {name: array[...] for name, array in self.root[f"directions/{axis}"].arrays()}
            for axis in ("x", "y")[: len(self.grid.shape)]
        ]
