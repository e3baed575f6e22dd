"""What this tool may delete, and who may write a store.

A user's data is never deleted by accident: only a path this tool can prove it
made is ever removed, and only one driver at a time writes a store.

    with claim(path, "run"):       # one writer: an OS file lock (local) or a lease object (remote)
        check_ours(path)           # SpecError unless `path` is a landscape_ray store and nothing else
        swap(partial, path)        # atomic: the old store or the new one is at `path` at every instant
        remove(path)               # chunks first, the root zarr.json (the proof) last

Proof of ownership: the root `zarr.json` carries `landscape_ray_format` from the
moment a store is created, and every file under the folder is Zarr metadata
(`zarr.json`) or a chunk (`…/c/0/1`). A thesis folder, `..`, the parent of a
store, a symlink or a store holding a stray file are refused with one line.

Locks live in hidden siblings (`.NAME.lock`, `.NAME.owner`, removed on release), so a second `run`,
`--resume` or `--overwrite` of a live store is refused naming the owner, and
the kernel releases a dead driver's lock, so the next one takes over. Remote
stores get a lease object (`.NAME.lease`) created with an exclusive put where
the backend supports it, kept alive by a heartbeat and taken over when stale.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import errno
import json
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path

import filelock

from landscape_ray.core.errors import SpecError, StoreBusy
from landscape_ray.core.paths import filesystem, is_remote, sibling

MARKER = "landscape_ray_format"
LEASE_TTL_S = 60.0  # a remote lease whose heartbeat is older than this belongs to a dead driver
HEARTBEAT_S = 10.0


def owner_info(command: str) -> dict:
    return {
        "command": command,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "heartbeat": time.time(),
    }


def describe(info: dict) -> str:
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}, since {info.get('started')})"


@contextlib.contextmanager
def claim(path: str | Path, command: str):
    """Hold the one-writer lock of `path` for the duration of the block; StoreBusy if a live process holds it."""
    if is_remote(path):
        with _lease(path, command):
            yield
        return
    refuse_special(path)
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(sibling(path, "lock"), timeout=0)
    owner = sibling(path, "owner")
    try:
        lock.acquire()
    except filelock.Timeout:
        try:
            who = describe(json.loads(owner.read_text()))
        except (OSError, ValueError):
            who = "another process"
        raise StoreBusy(f"output.store: {path} is in use by {who}; wait for it to finish or stop it") from None
    try:
        owner.write_text(json.dumps(owner_info(command)))
        clean_partials(path)  # nobody else can be building one: we hold the lock
        yield
    finally:
        # Unlinked while still held, so nothing is left behind; filelock refuses an inode unlinked under it.
        owner.unlink(missing_ok=True)
        Path(lock.lock_file).unlink(missing_ok=True)
        lock.release()


@contextlib.contextmanager
def _lease(path: str, command: str):
    fs, key = filesystem(sibling(path, "lease"))
    info = owner_info(command)
    for _ in range(2):
        try:
            with fs.open(key, "xb") as f:  # an exclusive put (If-None-Match: *) where the backend has one
                f.write(json.dumps(info).encode())
            break
        except FileExistsError:
            try:
                held = json.loads(fs.cat_file(key))
            except (OSError, ValueError):
                held = {}
            if time.time() - held.get("heartbeat", 0) < LEASE_TTL_S:
                raise StoreBusy(
                    f"output.store: {path} is in use by {describe(held)}; wait for it to finish or stop it"
                ) from None
            fs.rm(key)  # a stale lease: its driver died; take it over (the exclusive put decides any race)
    else:
        raise StoreBusy(f"output.store: {path}: another driver took over its stale lease just now")
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            fs.pipe_file(key, json.dumps({**info, "heartbeat": time.time()}).encode())

    thread = threading.Thread(target=beat, daemon=True, name="lease-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(OSError):
            fs.rm(key)


ZARR_TEMPORARY = re.compile(r"^(zarr|\d+)\.[0-9a-f]{32}\.partial$")  # zarr writes a file there, then renames it


def _stray(files: list[str]) -> str | None:
    """The first relative path that is neither Zarr metadata, a chunk nor Zarr's temporary file, if any."""
    for rel in files:
        parts = rel.split("/")
        *folders, name = parts
        if ZARR_TEMPORARY.match(name):
            name = "zarr.json" if name.startswith("zarr.") else name.split(".")[0]
        if name == "zarr.json" and "c" not in folders:
            continue
        if "c" in folders and all(p.isdigit() for p in [*folders[folders.index("c") + 1 :], name]):
            continue
        return rel
    return None


def _listing(path: str | Path) -> list[str]:
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
    """Whether the root zarr.json carries this tool's marker."""
    try:
        if is_remote(path):
            fs, root = filesystem(path)
            meta = json.loads(fs.cat_file(f"{root.rstrip('/')}/zarr.json"))
        else:
            meta = json.loads((Path(path) / "zarr.json").read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):  # other errors (network, permissions) propagate
        return False
    return isinstance(meta, dict) and MARKER in (meta.get("attributes") or {})


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
    stray = _stray(_listing(path))
    if stray is not None:
        raise SpecError(f"{field}: {path} holds {stray}, which no landscape_ray store has; refusing to delete it")


def remove(path: str | Path) -> None:
    """Delete a store proven ours; the root zarr.json goes last, so an interrupted delete stays provable."""
    check_ours(path)
    files = sorted(_listing(path), key=lambda rel: rel == "zarr.json")
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


def clean_partials(path: Path) -> None:
    """Delete the partial stores of dead runs on `path` (the caller holds its lock, so every one is dead). An old
    store that a two-rename `swap` had moved aside when its run died goes back to `path` instead."""
    olds = sorted(path.parent.glob(f".{path.name}.partial-old-*"))
    if olds and not os.path.lexists(path):
        os.rename(olds[0], path)
    for partial in path.parent.glob(f".{path.name}.partial-*"):
        try:
            if partial.is_dir() and not partial.is_symlink() and not _listing(partial):
                for dirpath, _, _ in sorted(os.walk(partial), key=lambda w: -len(w[0])):
                    os.rmdir(dirpath)  # died before writing a file, or after deleting its last one
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
    claim (clean_partials) after a kill.
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
