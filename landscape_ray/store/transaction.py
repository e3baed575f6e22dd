"""One writer's hold on a store path: the lock, then what may be done with what is there. Every command that
writes a store (`run`, `hessian`, `upgrade`) goes through `claimed`.

    with claimed(path, "landscape-ray run", replace=resume or overwrite) as there:
        ...   # `there`: a store of ours is at `path` (to resume or replace); nothing else is there

In order: the one-writer lock (lock.claim: a second live driver is refused, a dead one's lock taken over and
its partial stores removed); an existing path is refused unless the caller may replace it, and then only when it is
provably one of our stores.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import exists
from landscape_ray.store.lock import claim
from landscape_ray.store.ownership import check_ours


@contextlib.contextmanager
def claimed(path: str | Path, command: str, replace: bool, field: str = "output.store"):
    """Hold `path` for `command` for the block; yields whether a store (of ours) is there. `field` names the path
    in the one-line errors."""
    with claim(path, command):
        there = exists(path)
        if there:
            if not replace:
                raise SpecError(
                    f"{field}: {path} already exists; pass --resume to complete it or --overwrite to replace it"
                )
            check_ours(path, field)
        yield there
