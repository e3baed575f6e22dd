"""One writer per store: who holds it, and a second writer refused naming the holder.

    with claim(path, "landscape-ray run"):   # an OS file lock (local) or a lease object (remote)
        ...

Locks live in hidden siblings (`.NAME.lock`, `.NAME.owner`, removed on release), so a second `run`,
`--resume` or `--overwrite` of a live store is refused naming the owner, and the kernel releases a dead driver's
lock, so the next one takes over. Neither file is ever opened through a link: a lock or owner file that is a
symbolic link, a hard link or a folder is refused in one line, the owner record is created afresh, and another
process's record is printed escaped. Remote stores get a lease object (`.NAME.lease`) created with an exclusive put
where the backend supports it, kept alive by a heartbeat and taken over when stale.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import filelock

from landscape_ray.core.errors import SpecError, StoreBusy
from landscape_ray.core.paths import filesystem, is_remote, sibling
from landscape_ray.store.ownership import recover, refuse_special

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
    """Who holds a store, from its owner record (another process's file: its fields printed escaped, and short)."""

    def shown(key: str) -> str:
        return repr(str(info.get(key)))[1:-1][:200]  # a newline or a terminal escape in it stays visible text

    return f"pid {shown('pid')} on {shown('host')} ({shown('command')}, since {shown('started')})"


def own_file(path: Path, field: str) -> None:
    """Refuse a lock or owner file that is not a plain file of its own: a symbolic link, a hard link (more than one
    name) or a folder is someone else's (opening it would write into what it points to); one line, nothing touched."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        return
    if stat.S_ISLNK(st.st_mode):
        kind = "a symbolic link"
    elif stat.S_ISDIR(st.st_mode):
        kind = "a folder"
    else:
        kind = "a hard link" if stat.S_ISREG(st.st_mode) else "not a plain file"
    raise SpecError(f"{field}: {path} is {kind}, not a lock or owner file of ours; remove it to go on")


def write_owner(path: Path, command: str) -> None:
    """The owner record, in a file created afresh (never through a link: O_EXCL and O_NOFOLLOW)."""
    path.unlink(missing_ok=True)  # a dead run's record (checked a plain file of ours by `own_file`)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(owner_info(command)))


def read_owner(path: Path) -> dict:
    """Another process's owner record (never through a link); {} if it cannot be read as one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            info = json.loads(f.read(4096))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


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
    owner = sibling(path, "owner")
    own_file(sibling(path, "lock"), "output.store")  # filelock opens it for writing and truncates it
    lock = filelock.FileLock(sibling(path, "lock"), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        info = read_owner(owner)
        for _ in range(20):  # the holder writes its record just after it takes the lock: name it if it comes
            if info:
                break
            time.sleep(0.05)
            info = read_owner(owner)
        who = describe(info) if info else "another process"
        raise StoreBusy(f"output.store: {path} is in use by {who}; wait for it to finish or stop it") from None
    wrote = False
    try:
        own_file(owner, "output.store")
        write_owner(owner, command)
        wrote = True
        recover(path)  # an old store a killed run moved aside goes back (renames only: a refused run deletes nothing)
        yield
    finally:
        # Unlinked while still held, so nothing is left behind; filelock refuses an inode unlinked under it.
        if wrote:
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
