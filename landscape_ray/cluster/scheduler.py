"""The scheduler: grid tiles fed to a pool of Ray actors (pool.py), each result written as it arrives.

The driver feeds *ready* actors from its own `ray.wait` loop, so tiles go to
whichever actor is free and a slow actor never holds the job back; each finished
tile goes to a callback (the store writer) at once. A work item is one tile, or
consecutive tiles worth about `compute.item_seconds` at the actor's measured rate
(a GPU's tiles are cut small, so its first values come in seconds; `work_item`),
never more than a fair share of the queue. An actor queues up to
`compute.in_flight` items (so it never waits for the driver) only while the queue
holds more tiles than there are actors; near the end it gets one at a time, and an
idle actor takes over an item another actor holds but has not started (it is
cancelled there), so no actor idles while work is waiting.

Passes: a progressive grid's points come in passes, coarse to fine (spec/passes.py), and a pass is queued only once
every tile of the one before it is written. The barrier is what makes the store after a pass exactly that pass's
lattice, whatever the number of actors or their speed; it costs at most the last item of each pass. An adaptive
grid's passes are chosen at the barrier, from the values written (store/refine.py): `later` is then an iterator.

Faults: when an actor dies (its process or its node), every tile it held goes
back to the front of the queue and a replacement actor is started wherever the
cluster has room; the first tile of the item it was running is blamed (`pool.Blame`). An exception
raised inside an evaluation is a bug or bad input, not a crash, and ends the run
at once. With `compute.actors: auto` the pool grows when nodes join mid-run.

    workers = preflight(spec, address)   # connect.py: joins the cluster, refuses what cannot run
    with Pool(spec, workers) as pool:    # actors start (import torch) while the driver loads and creates the store
        summary = evaluate_tiles(spec, payload, grid, tiles, on_tile=store.write_tile, pool=pool)
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterator

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from landscape_ray.cluster.pool import Blame, Pool, Slot
from landscape_ray.core.errors import RunError
from landscape_ray.core.progress import Progress
from landscape_ray.inputs.payload import Payload
from landscape_ray.spec.schema import Spec

GPU_ITEM_SECONDS = 2.0  # compute.item_seconds on GPU actors: the first values seconds after an actor is up


def work_item(queue: deque, grid, slot: Slot, seconds: float | None, actors: int) -> tuple:
    """The tiles the next work item of `slot` takes from the front of `queue`: at least one, then more while the
    item stays under `seconds` (None: `GPU_ITEM_SECONDS` on a GPU, else one tile) at the actor's rate, once it is
    known, and under a fair share (a half of the queue per actor)."""
    seconds = seconds or (GPU_ITEM_SECONDS if slot.device == "cuda" else 0.0)
    share = max(1, len(queue) // (2 * max(1, actors)))
    rate = slot.point_seconds()
    item = [queue.popleft()]
    if not (seconds and rate):
        return tuple(item)
    cost = rate * grid.points(item[0])
    while queue and len(item) < share:
        more = rate * grid.points(queue[0])
        if cost + more > seconds:
            break
        item.append(queue.popleft())
        cost += more
    return tuple(item)


def evaluate_tiles(
    spec: Spec,
    payload: Payload,
    grid,
    tiles: list,
    on_tile,
    log=print,
    pool: Pool | None = None,
    warmup=None,
    later: list[list] | Iterator[list] = (),
) -> dict:
    """Evaluate `tiles` on the actors of `pool` (started now if None), calling `on_tile(tile, values, record)`
    as each finishes, then each pass of `later` once every tile before it is written (an iterator is asked for each
    pass then). The pool is closed when this returns. A `warmup` (warmup.py: points the driver computes until the
    first actor is ready) supplies the queued tiles whose points it has all done.

    `grid` says what a tile is: a `Grid` (tiles), or a progressive grid's `Passes` (pieces of tiles): its
    `coords(tile)` are sent to an actor and `points(tile)` counts them."""
    pool = pool or Pool(spec)
    if isinstance(later, (list, tuple)):
        known, most = list(later), max(len(p) for p in (tiles, *later))
    else:  # an adaptive grid's passes, chosen as they come: room for an actor per tile of the grid
        known, most = [], len(grid.grid.tiles())
    pool.load(payload, most)
    queue = deque(tiles)
    passes = iter(later)
    sent = len(tiles)  # tiles queued so far
    running: dict[ray.ObjectRef, tuple[tuple, Slot]] = {}  # an item (a tuple of tiles) and its actor
    blame = Blame(spec.compute.max_tile_failures)
    retries: Counter = Counter()
    deaths = 0
    # The run's clock and count start with its first computation: the warmup's, which may have written tiles already.
    start = warmup.began if warmup is not None else time.perf_counter()
    early, early_points = (warmup.written, warmup.taken) if warmup is not None else (0, 0)
    progress = Progress(early_points + sum(grid.points(t) for p in (tiles, *known) for t in p), start=start)
    progress.update(early_points)
    begin = time.perf_counter()
    first_ready = None  # seconds from here until the first actor could take a tile (its start-up: torch, model, data)
    warmup_summary = None

    def lose(slot: Slot, why: str) -> None:
        """An actor died: requeue its tiles, blame the one it was running, start a replacement."""
        nonlocal deaths
        deaths += 1
        lost = [tile for r in slot.queued for tile in running.pop(r)[0]]
        if lost:
            blame.charge(lost[0], f"tile {lost[0]} (points {grid.coords(lost[0])[[0, -1]].tolist()})")
        retries.update(lost)
        queue.extendleft(reversed(lost))
        pool.retire(slot)
        log(f"{slot.name} died ({why}) with {len(lost)} tile(s) queued; they go to other actors")
        pool.grow(len(queue) + len(running))

    def submit(slot: Slot, item: tuple) -> None:
        ref = slot.actor.evaluate.remote(np.concatenate([grid.coords(tile) for tile in item]))
        running[ref] = (item, slot)
        slot.queued.append(ref)

    def dispatch() -> None:
        """Least-loaded ready actor first; a second tile only while the queue outnumbers the actors."""
        ready = [s for s in pool.slots if s.info]
        while queue and ready:
            slot = min(ready, key=lambda s: len(s.queued))
            if len(slot.queued) >= (spec.compute.in_flight if len(queue) > len(pool.slots) else 1):
                break
            submit(slot, work_item(queue, grid, slot, spec.compute.item_seconds, len(pool.slots)))
        # Queue empty: an idle actor takes the newest tile of the most loaded one, which has not started yet.
        for slot in [s for s in ready if not s.queued]:
            donor = max(ready, key=lambda s: len(s.queued))
            if len(donor.queued) < 2:
                break
            ref = donor.queued.pop()
            ray.cancel(ref)  # skipped if still queued there; if it just started, its late result is ignored
            submit(slot, running.pop(ref)[0])

    def harvest() -> None:
        """Queued tiles the driver's warmup has finished (from the back of the queue, where it works)."""
        while queue and (done := warmup.take(grid.coords(queue[-1]))) is not None:
            tile, (values, seconds) = queue.pop(), done
            on_tile(tile, values, {"actor": "driver", "node": "driver", "seconds": seconds, "retries": 0})
            progress.update(len(next(iter(values.values()))))

    def next_pass() -> bool:
        """Queue the next pass (every tile before it is written); False when none is left."""
        nonlocal sent
        more = next(passes, ())
        queue.extend(more)
        sent += len(more)
        if not known:
            progress.grow(sum(grid.points(t) for t in more))
        return bool(queue)

    try:
        while queue or running or next_pass():
            if warmup is not None:
                if any(s.info for s in pool.slots):  # an actor is up: the driver stops, its finished tiles go in
                    warmup.release()  # stopped, its evaluator (a model, a hold on the driver's payload) gone
                    harvest()
                    warmup_summary, warmup = warmup.summary(), None
                else:
                    harvest()
                    if not queue and not running and not next_pass():  # the driver did them all
                        break
            dispatch()
            starting = {s.starting: s for s in pool.slots if s.starting is not None}
            ready, _ = ray.wait(list(running) + list(starting), num_returns=1, timeout=progress.interval)
            for ref in ready:
                if ref in starting:
                    slot = starting[ref]
                    slot.starting = None
                    try:
                        slot.info = ray.get(ref)
                        first_ready = first_ready or time.perf_counter() - begin
                        info = slot.info
                        log(f"{slot.name} ready on node {info['node'][:12]} ({info['device']}, pid {info['pid']})")
                    except RayActorError as err:
                        pool.start_failures += 1
                        none_up = not any(s.info for s in pool.slots)
                        if none_up or pool.start_failures >= spec.compute.max_tile_failures * 2:
                            raise RunError(f"an actor failed to start: {getattr(err, 'cause', None) or err}") from None
                        lose(slot, "failed to start")
                    continue
                if ref not in running:  # already requeued with its dead actor's other tiles
                    continue
                item, slot = running[ref]
                try:
                    values, seconds = ray.get(ref)
                except RayTaskError as err:
                    raise RunError(f"tile {item[0]} failed on {slot.name}: {err.cause!r}") from None
                except RayActorError:
                    lose(slot, "its process or node is gone")
                    continue
                del running[ref]
                slot.queued.remove(ref)
                n = len(next(iter(values.values())))
                slot.points += n
                slot.items += 1
                slot.seconds += seconds
                start_at = 0
                for tile in item:  # the item's values, tile by tile, in the order its coordinates went
                    size = grid.points(tile)
                    part = {k: v[start_at : start_at + size] for k, v in values.items()}
                    start_at += size
                    share = seconds * size / n
                    on_tile(
                        tile,
                        part,
                        {"actor": slot.name, "node": slot.info["node"], "seconds": share, "retries": retries[tile]},
                    )
                progress.update(n)
            if progress.tick() and spec.compute.actors == "auto":
                pool.grow(len(queue) + len(running))  # nodes may have joined
    finally:
        if warmup is not None:
            warmup.stop()
            warmup_summary = warmup.summary()
        progress.close()
        pool.close()
    wall = time.perf_counter() - start
    actors = pool.summary()
    if warmup_summary and warmup_summary["points"]:
        actors["driver"] = warmup_summary
    points = sum(a["points"] for a in actors.values())
    return {
        "tiles": early + sent,
        "points": points,
        "wall_s": round(wall, 3),
        "first_actor_ready_s": None if first_ready is None else round(first_ready, 3),  # None: the driver did all
        "points_per_s": round(points / wall, 2) if wall else None,
        "retried_tiles": len(retries),
        "actor_deaths": deaths,
        "actors": actors,
    }
