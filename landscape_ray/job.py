"""A job from spec to store to pictures: what `landscape-ray run` does.

    summary = run(load_spec("jobs/quickstart.yaml"), overwrite=True)

Order matters for the promise that bad input never leaves a store behind:
every input (spec, checkpoint, data, model fit) is loaded and checked before the
store is created, and the store is created whole before any tile is computed.
With `resume`, only tiles whose points are not all done are computed, with the
directions stored in the store, so the result equals an uninterrupted run.
"""
from __future__ import annotations

from pathlib import Path

from . import scheduler
from .evaluator import prepare
from .grid import Grid
from .render import render
from .spec import Spec, SpecError
from .store import Store, consolidate, create, exists, is_remote


def run(spec: Spec, resume: bool = False, overwrite: bool = False, address: str | None = None, log=print) -> dict:
    if resume and overwrite:
        raise SpecError("--resume and --overwrite exclude each other")
    path = spec.output.store
    present = exists(path)
    if present and not (resume or overwrite):  # before the (slow) inputs load; create() checks again for API callers
        raise SpecError(f"output.store: {path} already exists; pass --resume to complete it or --overwrite to replace it")
    grid = Grid.from_spec(spec.grid)
    if present and resume:
        store = Store(path)
        store.check_resumable(spec)
        payload = prepare(spec, vectors=store.directions())  # exactly the ones the finished tiles used
    else:
        payload = prepare(spec)
        store = create(path, spec, grid, payload.variables, payload.directions, overwrite=overwrite)
    tiles = store.pending_tiles()
    total = len(grid.tiles())
    log(f"store {path}: {total - len(tiles)}/{total} tiles done, {len(tiles)} to compute")
    summary = {"tiles": 0, "points": 0}
    if tiles:
        scheduler.connect(address)
        summary = scheduler.evaluate_tiles(spec, payload, grid, tiles, store.write_tile, log=log)
        store.root.attrs["runs"] = store.root.attrs.get("runs", []) + [summary]
        consolidate(path)
        per_actor = ", ".join(f"{name} {a['points']} pts at {a['points_per_s']}/s" for name, a in summary["actors"].items())
        log(f"done: {summary['points']} points in {summary['wall_s']:.1f} s ({summary['points_per_s']} points/s); "
            f"{summary['retried_tiles']} tile(s) retried, {summary['actor_deaths']} actor death(s); {per_actor}")
    if spec.output.render:
        # Pictures go next to a local store; for a remote one, into runs/<name>/ here.
        out = Path("runs") / spec.name if is_remote(path) else Path(path).parent
        pictures = render(path, out=out, kinds=spec.output.render)
        log("pictures: " + ", ".join(str(p) for p in pictures))
        summary["pictures"] = [str(p) for p in pictures]
    return summary
