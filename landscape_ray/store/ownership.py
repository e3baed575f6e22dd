"""What this tool may delete, and how a new store takes an old one's place.

A user's data is never deleted by accident: only a path this tool can prove it
made is ever removed.

    check_ours(path)               # SpecError unless `path` is a landscape_ray store and nothing else
    swap(partial, path)            # atomic: the old store or the new one is at `path` at every instant
    remove(path)                   # chunks first, the root zarr.json (the proof) last

Proof of ownership: the root `zarr.json` carries `landscape_ray_format` from the
moment a store is created, and every file under the folder is Zarr metadata
(`zarr.json`) or a chunk (`…/c/0/1`). A thesis folder, `..`, the parent of a
store, a symlink or a store holding a stray file are refused with one line.

Who may write a store: lock.py (one writer at a time).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import socket
import sys
import uuid
from pathlib import Path

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import filesystem, is_remote, replace_file, sibling

MARKER = "landscape_ray_format"


# zarr writes a file there, then renames it: metadata, a chunk (`c/0/1`), a 0-d array's one chunk (`c`)
ZARR_TEMPORARY = re.compile(r"^(zarr|c|\d+)\.[0-9a-f]{32}\.partial$")


def written_order(rel: str) -> tuple[int, bool]:
    """The order a store's files are written in (sort key): a folder's metadata before anything else in it or under
    it, so the root's (the ownership marker) first. A kill at any file then leaves what `check_ours` proves ours."""
    return rel.count("/"), rel.rsplit("/", 1)[-1] != "zarr.json"


def put(path: Path, data: bytes) -> None:
    """Write a file of a store as zarr does, under a temporary name `ZARR_TEMPORARY` knows, then renamed: a kill
    mid-write leaves a file provably ours, never a truncated `zarr.json` that proves nothing."""
    temporary = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    replace_file(path, lambda t: t.write_bytes(data), temporary)


def _stray(path: str | Path, files: list[str]) -> str | None:
    """The first relative path under the store `path` that is not provably Zarr's, if any. Proof by content, not
    name: a `zarr.json` must be Zarr v3 metadata of a group or array whose every parent folder is a group of the
    store; a chunk must be a key its array's metadata implies (`c/i/j…`, each index inside the chunk grid). Zarr's
    own temporary files (a write in progress) go by their name, which carries a random 128-bit token."""
    read = _reader(path)
    metas: dict[str, dict | None] = {}

    def meta(folder: str) -> dict | None:
        if folder not in metas:
            try:
                m = json.loads(read(f"{folder}/zarr.json" if folder else "zarr.json"))
            except (OSError, ValueError):
                m = None
            valid = isinstance(m, dict) and m.get("zarr_format") == 3 and m.get("node_type") in ("group", "array")
            metas[folder] = m if valid else None
        return metas[folder]

    def node(folder: str) -> dict | None:
        """The metadata of the node at `folder`, if it and every folder above it are the store's."""
        parts = folder.split("/") if folder else []
        if any((meta("/".join(parts[:k])) or {}).get("node_type") != "group" for k in range(len(parts))):
            return None
        return meta(folder)

    for rel in files:
        *folders, name = rel.split("/")
        if ZARR_TEMPORARY.match(name):
            continue
        if name == "zarr.json" and node("/".join(folders)) is not None:
            continue
        keys = [*folders, name]
        if "c" in keys:  # a chunk key of the array in the folders before its last "c" (indices are digits)
            at = len(keys) - 1 - keys[::-1].index("c")
            array = node("/".join(keys[:at]))
            if array is not None and array["node_type"] == "array" and _implied(array, keys[at + 1 :]):
                continue
        return rel
    return None


def _implied(array: dict, index: list[str]) -> bool:
    """Whether `index` (after `c/`) names a chunk of `array`'s regular chunk grid, with `/` separated keys."""
    shape = array.get("shape")
    grid = (array.get("chunk_grid") or {}).get("configuration", {}).get("chunk_shape")
    encoding = array.get("chunk_key_encoding") or {}
    if encoding.get("name") != "default" or (encoding.get("configuration") or {}).get("separator", "/") != "/":
        return False
    if not (isinstance(shape, list) and isinstance(grid, list) and len(index) == len(shape) == len(grid)):
        return False
    if not all(i.isdigit() for i in index) or not all(type(c) is int and c > 0 for c in grid):
        return False
    return all(int(i) < -(-n // c) for i, n, c in zip(index, shape, grid))


def _reader(path: str | Path):
    """rel -> bytes of a file of the store at `path`."""
    if is_remote(path):
        fs, root = filesystem(path)
        return lambda rel: fs.cat_file(f"{root.rstrip('/')}/{rel}")
    return lambda rel: (Path(path) / rel).read_bytes()


def listing(path: str | Path) -> list[str]:
    """Every file under `path`, relative, '/'-separated; a symlink anywhere inside is refused."""
    if is_remote(path):
        fs, root = filesystem(path)
        return [p[len(root.rstrip("/")) + 1 :] for p in fs.find(root)]
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                raise SpecError(
                    f"output.store: {os.path.join(dirpath, name)} is a symbolic link inside the store; "
                    "refusing to delete through it"
                )
        rel = os.path.relpath(dirpath, path)
        out += [name if rel == "." else f"{rel}/{name}".replace(os.sep, "/") for name in filenames]
    return out  # empty folders hold nothing (Zarr makes an array's folder before its zarr.json)


def is_marked(path: str | Path) -> bool:
    """Whether the root zarr.json carries this tool's marker, a format number."""
    try:
        meta = json.loads(_reader(path)("zarr.json"))
    except (FileNotFoundError, NotADirectoryError, ValueError):  # other errors (network, permissions) propagate
        return False
    attributes = meta.get("attributes") if isinstance(meta, dict) else None
    marker = attributes.get(MARKER) if isinstance(attributes, dict) else None
    return type(marker) is int and marker >= 1  # a format number we write: not `true`, a string or a list


def refuse_special(path: str | Path, field: str = "output.store") -> None:
    """Paths no store may be at: a symlink (its target would be replaced), the working directory or a parent."""
    p = Path(path)
    if p.is_symlink():
        raise SpecError(f"{field}: {path} is a symbolic link; refusing to replace what it points to")
    here, target = Path.cwd().resolve(), p.resolve()
    if target == here or target in here.parents:
        raise SpecError(f"{field}: {path} is the working directory or one of its parents; refusing to delete it")


def check_ours(path: str | Path, field: str = "output.store") -> None:
    """Raise SpecError (one line) unless `path` is a landscape_ray store holding nothing but its own files."""
    if not is_remote(path):
        refuse_special(path, field)
        if not Path(path).is_dir():
            raise SpecError(f"{field}: {path} is not a landscape_ray store (not a folder); refusing to delete it")
    if not is_marked(path):
        raise SpecError(
            f"{field}: {path} is not a landscape_ray store (no {MARKER} in its zarr.json); refusing to delete it"
        )
    stray = _stray(path, listing(path))
    if stray is not None:
        raise SpecError(f"{field}: {path} holds {stray}, which no landscape_ray store has; refusing to delete it")


def remove(path: str | Path) -> None:
    """Delete a store proven ours, in the reverse of `written_order` (the root zarr.json last), so an interrupted
    delete stays provable."""
    check_ours(path)
    files = sorted(listing(path), key=written_order, reverse=True)
    if is_remote(path):
        fs, root = filesystem(path)
        root = root.rstrip("/")
        fs.rm([f"{root}/{rel}" for rel in files if rel != "zarr.json"])
        fs.rm(f"{root}/zarr.json")
        return
    for rel in files:
        if not rel.endswith("/"):
            os.remove(os.path.join(path, rel))
    for dirpath, _, _ in sorted(os.walk(path), key=lambda w: -len(w[0])):  # deepest first
        os.rmdir(dirpath)


def previous_path(path: Path) -> Path:
    """Where the whole store a new one replaces is kept until the new one is complete (layout.install)."""
    return sibling(path, "previous")


def recover(path: Path) -> None:
    """Put back at an empty `path` the old store a killed run had moved aside: between the two renames of `swap`
    (`.NAME.partial-old-PID`) or of `layout.install` (`.NAME.previous`). Renames only; the caller holds the lock."""
    olds = sorted(path.parent.glob(f".{path.name}.partial-old-*")) + [previous_path(path)]
    olds = [old for old in olds if os.path.lexists(old)]
    if olds and not os.path.lexists(path):
        os.rename(olds[0], path)


def clean_partials(path: Path) -> None:
    """Delete the partial stores of dead runs on `path` (the caller holds its lock and is about to build one, so
    every one is dead). Never the previous store (`previous_path`)."""
    for partial in path.parent.glob(f".{path.name}.partial-*"):
        try:
            files = listing(partial) if partial.is_dir() and not partial.is_symlink() else None
            if files is not None and all(ZARR_TEMPORARY.match(rel.rsplit("/", 1)[-1]) for rel in files):
                for rel in files:  # died while writing its first file, or before, or after deleting its last one
                    os.remove(partial / rel)
                for dirpath, _, _ in sorted(os.walk(partial), key=lambda w: -len(w[0])):
                    os.rmdir(dirpath)
            else:
                remove(partial)
        except SpecError as err:
            print(f"warning: left {partial} in place: {err}", file=sys.stderr)


def partial_path(path: Path) -> Path:
    return sibling(path, f"partial-{socket.gethostname()}-{os.getpid()}")


def swap(new: Path, path: Path) -> None:
    """Put the complete store `new` at `path`; an old store there ends up at `new` (to be removed).

    Linux renameat2(RENAME_EXCHANGE) swaps the two names in one step, so a kill at
    any instant leaves a complete store at `path`. Elsewhere two renames are used,
    with an instant in which `path` is empty: the old store is then at a
    `partial-old` sibling, which an exception puts back at once and the next
    claim (`recover`) after a kill.
    """
    if not path.exists():
        os.rename(new, path)
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        if libc.renameat2(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(path), rename_exchange) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(path))
    except AttributeError:  # no renameat2 in this libc
        pass
    old = sibling(path, f"partial-old-{os.getpid()}")  # put back at `path` by the next claim if we die here
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    os.rename(old, new)
