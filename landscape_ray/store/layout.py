"""What a landscape store holds, and how a new one is made: whole, beside the old one, then swapped in.

Layout (Zarr v3, readable with `xarray.open_zarr(path)` or `landscape_ray.open(path)`):

    x, y                    coordinates (α, β); 1-D arrays named after their dimension
    train_loss, train_acc   (y, x) float64, NaN until computed (test_* when evaluated)
    done                    (y, x) bool, set after a point's values are written
    directions/x/<name>     δ, one array per state_dict entry of the direction space
    directions/y/<name>     η (surfaces only)
    log/tiles               one record per tile: finished time, seconds, retries, actor
    epoch, trajectory_x/y   the training path projected on the directions (PCA directions only)
    hessian/                eigenvalues, eigenvectors, trace, density (`landscape-ray hessian`)
    attrs                   format marker, resolved spec (its grid.tile: the work tile), input fingerprints,
                            versions, creation time, one summary per run

A new store is built in a hidden sibling and swapped into place whole (ownership.swap), so a
bad input, a crash or a kill never leaves a half-made store; the caller holds the store's lock
(lock.claim). The ownership marker is in the first file written, so even a half-built store
is provably this tool's, and only such a store is ever removed. A local store whose directions
are small (under COMPOSED_BYTES) is composed in memory first and then written out (`_compose`).
A change to a whole store (a new `hessian` group) is made the same way, in a copy (`amend`).
"""

from __future__ import annotations

import datetime
import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import zarr
from zarr.storage import MemoryStore

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import exists, is_remote, naming, zarr_store
from landscape_ray.spec.grid import MAX_TILE_POINTS, Grid, auto_chunks
from landscape_ray.spec.schema import Spec
from landscape_ray.store import ownership
from landscape_ray.store.refine import complete
from landscape_ray.store.tiles import CODECS, FORMAT, RECORD, Store, kind

PACKAGES = ("landscape-ray", "torch", "ray", "zarr", "numpy", "pydantic")
WRITERS = 8  # threads writing the direction arrays of a new store
COMPOSED_BYTES = 64 << 20  # a new local store with smaller direction arrays is composed in memory (`_compose`)


def versions() -> dict[str, str]:
    return dict(_versions())


@functools.cache  # what this process runs, read once: each is a parse of the package's metadata file
def _versions() -> tuple[tuple[str, str], ...]:
    out = []
    for name in PACKAGES:
        try:
            out.append((name, version(name)))
        except PackageNotFoundError:
            out.append((name, "not installed"))
    return tuple(out)


def consolidate(path) -> None:
    """Consolidated metadata lets plain `xarray.open_zarr` open the store without warnings (`path`: a store's path,
    or a zarr store object)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(zarr_store(path, "w"))


def _build(path, spec: Spec, grid: Grid, variables: list[str], directions, inputs: dict) -> None:
    """A new store at `path` (a path, or a zarr store object: `_compose`'s)."""
    # The marker goes into the very first file written: even a half-built store is provably ours.
    target = zarr_store(path, "w")
    root = zarr.open_group(target, mode="w-", zarr_format=3, attributes={ownership.MARKER: FORMAT, "complete": False})
    labels = getattr(directions, "labels", list(grid.dims[::-1]))
    extras = getattr(directions, "axis_attrs", None) or [{}, {}]
    for axis, label, extra in zip(grid.dims[::-1], labels, extras):
        root.create_array(
            axis, data=getattr(grid, axis), dimension_names=[axis], attributes={"long_name": label, **extra}
        )
    for name in variables:
        dtype, fill = kind(name)
        root.create_array(
            name,
            shape=grid.shape,
            chunks=grid.chunks,
            dtype=dtype,
            fill_value=fill,
            dimension_names=list(grid.dims),
            **CODECS,
        )
    root.create_array(
        "done",
        shape=grid.shape,
        chunks=grid.chunks,
        dtype="bool",
        fill_value=False,
        dimension_names=list(grid.dims),
        **CODECS,
    )
    # One record per tile, for post-mortems and for `info` to tell the speed of a job running elsewhere; records
    # share chunks (a file per record would cost as much as the values).
    counts = tuple(-(-n // t) for n, t in zip(grid.shape, grid.tile))
    root.require_group("log").create_array(
        "tiles",
        shape=(*counts, len(RECORD)),
        chunks=(*auto_chunks(counts, MAX_TILE_POINTS), len(RECORD)),
        dtype="float64",
        fill_value=np.nan,
        attributes={"fields": list(RECORD)},
    )
    trajectory = getattr(directions, "trajectory", None)
    if trajectory is not None:
        root.create_array(
            "epoch", data=trajectory["epoch"], dimension_names=["epoch"], attributes={"long_name": "training epoch"}
        )
        for axis in ("x", "y"):
            root.create_array(
                f"trajectory_{axis}",
                data=trajectory[axis],
                dimension_names=["epoch"],
                attributes={"long_name": f"checkpoint θi − θ* projected on {axis}"},
            )
    # One array per direction tensor (a bf16 model's as float32), written WRITERS at a time: a small model's are
    # mostly zarr's waits (an MLP's 12 took 60 ms one after another, 35-45 ms at once), a large one's compression,
    # which runs outside the GIL.
    vectors = getattr(directions, "vectors", directions)
    # "directions" first: zarr writes a new node's metadata and its missing parents' at once, and a kill between
    # them would leave a group without its parent, which ownership cannot prove ours. None for `regenerate`.
    parent = root.require_group("directions") if vectors else None
    groups = [parent.require_group(axis) for axis, _ in zip("xy", vectors)]
    arrays = [(group, name, array) for group, vector in zip(groups, vectors) for name, array in vector.items()]
    with ThreadPoolExecutor(WRITERS, thread_name_prefix="store") as pool:
        list(pool.map(lambda a: a[0].create_array(a[1], data=np.asarray(a[2]), **CODECS), arrays))
    # The store keeps the tile it was cut into, so that a --resume cuts it the same way (tile: auto depends on the
    # actors of the run that made it).
    tiled = spec.model_copy(update={"grid": spec.grid.model_copy(update={"tile": list(grid.tile)})})
    root.attrs.update(
        {
            "spec": tiled.model_dump(mode="json"),
            "inputs": inputs,
            "versions": versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "complete": True,
        }
    )
    consolidate(target)


class _Files(dict):
    """A MemoryStore's contents that keep the first value each key had (the root's: the ownership marker alone)."""

    def __init__(self):
        super().__init__()
        self.first = {}

    def __setitem__(self, key, value):
        self.first.setdefault(key, value)
        super().__setitem__(key, value)

    def setdefault(self, key, value=None):  # zarr's set_if_not_exists
        if key not in self:
            self[key] = value
        return self[key]


def _compose(path: Path, spec: Spec, grid: Grid, variables: list[str], directions, inputs: dict) -> None:
    """`_build` into zarr's MemoryStore, then its files written into the new folder `path`: over a local folder
    zarr makes a round trip per file read or written (a small MLP's store: 99 reads and 90 writes, 80-90 ms), more
    than composing it (35-45 ms) and writing its 37 files (3-10 ms). The root's metadata goes first as zarr first
    wrote it (the ownership marker, no spec: a store stopped here is provably ours and reads as incomplete), and its
    final version last. Each file is written as zarr writes one (`ownership.put`): a kill mid-file leaves a
    temporary the next run may delete, never a truncated file."""
    files = _Files()
    _build(MemoryStore(files), spec, grid, variables, directions, inputs)
    root = "zarr.json"
    path.mkdir()
    ownership.put(path / root, files.first[root].to_bytes())
    for key in sorted(files, key=ownership.written_order):
        if key != root:
            ownership.put(path / key, files[key].to_bytes())
    ownership.put(path / root, files[root].to_bytes())


def create(
    path: str | Path,
    spec: Spec,
    grid: Grid,
    variables: list[str],
    directions,
    overwrite: bool = False,
    inputs: dict | None = None,
    fill=None,
    keep_previous: bool = True,
) -> Store:
    """Make a complete empty store at `path`, replacing an old one (proven ours) only with `overwrite`.

    The caller holds `lock.claim(path)`. `directions` is a `Directions` or bare vectors (one dict per axis);
    `fill(root)`, if given, writes into the new store before it takes the old one's place (`upgrade`).
    """
    present = exists(path)
    if present and not overwrite:
        raise SpecError(
            f"output.store: {path} already exists; pass --resume to complete it or --overwrite to replace it"
        )
    if present:
        ownership.check_ours(path)
    if is_remote(path):
        # Object stores have no rename: the old store is removed, then the new one built in place under the lease.
        if present:
            ownership.remove(path)
        try:
            with naming(path):
                _build(path, spec, grid, variables, directions, inputs or {})
                if fill:
                    _fill(path, fill)
        except BaseException:
            if exists(path):
                ownership.remove(path)
            raise
        return Store(path)
    partial = build_beside(path, spec, grid, variables, directions, inputs)
    return _fill_and_install(partial, path, fill, keep_previous)


def _fill(target, fill) -> None:
    """`fill(root)` on the store at `target` (a path), then its metadata consolidated again."""
    fill(zarr.open_group(zarr_store(target, "w"), mode="r+"))
    consolidate(target)


def _fill_and_install(partial: Path, path: str | Path, fill, keep_previous: bool) -> Store:
    """`fill` the store built beside at `partial` (if given), then `install` it at `path`; removed if `fill` fails."""
    if fill:
        try:
            with naming(path):  # the store the user named, not its hidden sibling
                _fill(partial, fill)
        except BaseException:
            ownership.remove(partial)
            raise
    return install(partial, path, keep_previous)


def build_beside(path: str | Path, spec: Spec, grid: Grid, variables: list[str], directions, inputs: dict | None):
    """A complete empty store at a hidden sibling of the local `path` (the caller holds its claim), to be filled
    and then put in place by `install`; the old store at `path`, if any, is untouched until then."""
    ownership.clean_partials(Path(path))  # dead runs' partial stores: every check has passed, this run builds now
    partial = ownership.partial_path(Path(path))
    try:
        with naming(path):  # the store the user named, not its hidden sibling
            size = sum(np.asarray(a).nbytes for v in getattr(directions, "vectors", directions) for a in v.values())
            make = _compose if size < COMPOSED_BYTES else _build
            make(partial, spec, grid, variables, directions, inputs or {})
    except BaseException:
        if partial.exists():
            ownership.remove(partial)
        raise
    return partial


def whole(path: Path) -> bool:
    """Whether `path` holds a store of ours with every point computed (adaptive: every point it chose)."""
    try:
        return complete(Store(path, mode="r"))
    except SpecError:  # not readable as a store of this version: nothing to keep as a result
        return False


def install(partial: Path, path: str | Path, keep_previous: bool = True) -> Store:
    """Put the store built by `build_beside` in at `path`. A whole store there (every point computed) is kept at
    `ownership.previous_path` until the new one is complete (`discard_previous`): a run killed at any instant leaves
    the old result there or at `path`, and the next claim puts it back at an empty `path`. Any other old store
    (incomplete, or `keep_previous` false: `upgrade`'s copy holds all it had) is swapped out and removed."""
    path = Path(path)
    if keep_previous and path.exists() and whole(path):
        previous = ownership.previous_path(path)
        if os.path.lexists(previous):  # an older whole result: superseded by the whole one at `path`
            ownership.remove(previous)
        os.rename(path, previous)
        os.rename(partial, path)  # killed just before: `path` is empty, and the next claim puts `previous` back
        return Store(path)
    try:
        ownership.swap(partial, path)  # now the old store (if any) is at `partial`
    finally:
        if partial.exists():
            ownership.remove(partial)
    return Store(path)


def amend(path: str | Path, fill) -> Store:
    """Change the store at `path` whole: `fill(root)` writes into a copy of it beside, which then takes its place
    (`install`), so a kill leaves the old store or the changed one (`hessian` replacing its group). The copy is
    made of hard links (no data copied): a store's files are only ever replaced, never written in place. The caller
    holds `lock.claim(path)` and has checked the store is ours. Object stores have no rename: changed in place."""
    if is_remote(path):
        with naming(path):
            _fill(path, fill)
        return Store(path)
    path = Path(path)
    ownership.clean_partials(path)
    partial = ownership.partial_path(path)
    partial.mkdir()
    try:
        for rel in sorted(ownership.listing(path), key=ownership.written_order):
            (partial / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path / rel, partial / rel)
            except OSError:  # a file system without hard links
                ownership.put(partial / rel, (path / rel).read_bytes())
    except BaseException:
        ownership.clean_partials(path)  # the copy so far, even none of it (we hold the claim: every partial is dead)
        raise
    return _fill_and_install(partial, path, fill, keep_previous=False)


def kept_previous(path: str | Path) -> bool:
    """Whether the whole store that the one at `path` replaced is kept beside it (`install`)."""
    return not is_remote(path) and os.path.lexists(ownership.previous_path(Path(path)))


def discard_previous(path: str | Path) -> None:
    """The store at `path` is complete: the whole one it replaced (if kept) goes."""
    if kept_previous(path):
        ownership.remove(ownership.previous_path(Path(path)))


def upgrade(path: str | Path) -> Store:
    """Rewrite a store of an older format in today's (checksums, marker first), whole, through the same swap.

    The caller holds `lock.claim(path)`. Values, done flags, tile records and run summaries are copied;
    input fingerprints stay unknown (format 1 did not record them), so --resume cannot check them.
    """
    old = Store(path, mode="r")
    if old.format == FORMAT:
        return old
    dims = old.grid.dims[::-1]
    axes = [old.root[a].attrs.asdict() for a in dims]
    directions = SimpleNamespace(
        vectors=old.directions(),
        labels=[a.pop("long_name", d) for a, d in zip(axes, dims)],
        axis_attrs=axes,
        trajectory={
            "epoch": old.root["epoch"][...],
            "x": old.root["trajectory_x"][...],
            "y": old.root["trajectory_y"][...],
        }
        if "epoch" in old.root
        else None,
    )
    copied = [*old.variables, "done"]

    def fill(root):
        for name in copied:
            root[name][...] = old.read(name)
        root["log/tiles"][...] = old.root["log/tiles"][...]
        root.attrs.update(
            {
                "runs": old.root.attrs.get("runs", []),
                "upgraded_from": old.format,
                "created": old.root.attrs.get("created"),
            }
        )

    return create(path, old.spec, old.grid, old.variables, directions, overwrite=True, fill=fill, keep_previous=False)
