"""A job from spec to store to pictures: what `landscape-ray run` does.

    summary = run(load_spec("jobs/quickstart.yaml"), overwrite=True)

Order matters for the promise that a user's data is never lost or mixed:
1. the store is claimed (transaction.claimed): a second driver is refused, an existing path must be ours;
2. everything that can be checked is checked before anything at the store's path
   changes: the grid size, that an existing store is ours, the cluster and room for
   an actor, every input loaded and fitted, and for `--resume` that no input file
   changed;
3. a new store is built whole beside the old one and swapped in (where the driver
   warms up, it is built as soon as the inputs are checked and the driver's first
   tiles go in while the cluster starts; a failure or Ctrl-C removes it; a small
   job's is built once the driver has computed its first pass: `built_after`);
4. only tiles not done (or damaged) are computed, with the store's own directions,
   so the result equals an uninterrupted run; Ctrl-C keeps every finished tile.
   A progressive grid (`grid.mode`, spec/passes.py) computes them in passes, coarse
   to fine, each finished before the next begins; an adaptive one chooses each pass's
   points from the values before it (store/refine.py).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from landscape_ray import hessians
from landscape_ray.cluster import connect
from landscape_ray.cluster.pool import Pool
from landscape_ray.cluster.scheduler import evaluate_tiles
from landscape_ray.compute.evaluator import Evaluator
from landscape_ray.compute.prepare import prepare
from landscape_ray.compute.warmup import Warmup, evaluate_here
from landscape_ray.core.errors import Interrupted, SpecError
from landscape_ray.core.paths import exists, is_remote, naming
from landscape_ray.inputs.kinds import ON_CLUSTER
from landscape_ray.pictures.render import render
from landscape_ray.spec.grid import Grid
from landscape_ray.spec.passes import Passes
from landscape_ray.spec.schema import Spec
from landscape_ray.store import ownership
from landscape_ray.store.fingerprint import changed, fingerprints
from landscape_ray.store.layout import build_beside, consolidate, create, discard_previous, install, kept_previous
from landscape_ray.store.refine import complete, schedule
from landscape_ray.store.tiles import Store
from landscape_ray.store.transaction import claimed

MAX_POINTS = 10_000_000  # beyond this a grid is more likely a typo than a plan; --force allows it
SMALL_LOAD_S = 1.0  # how long a private cluster's start waits for the inputs, to see whether the job is small


def check_size(spec: Spec, force: bool) -> None:
    grid = Grid.from_spec(spec.grid)
    if grid.size > MAX_POINTS and not force:
        shape = " × ".join(str(n) for n in grid.shape[::-1])
        raise SpecError(
            f"grid: {shape} = {grid.size:,} points is more than {MAX_POINTS:,} (each one a full pass "
            "over the data); pass --force if you mean it"
        )


def load(spec: Spec, resume: bool, timings: dict, local_cluster: bool, cancel: threading.Event) -> tuple:
    """The existing store to complete (with --resume) or else None, the payload, the driver's warmup (or None),
    and the new store it writes into while the cluster starts (or None); every input is checked here.

    Runs in a thread while the cluster starts. Once `cancel` is set (the run failed meanwhile) it starts no warmup
    and builds no store.
    """
    path = spec.output.store
    start = time.perf_counter()
    if not (exists(path) and resume):
        payload = prepare(spec)
        timings["load_s"] = time.perf_counter() - start
        actors = local_actors(spec)
        grid = cut(spec, payload, actors)
        here = Warmup.small_job(spec, grid.size, payload.point_seconds)  # by the probe: `run` builds its store after
        warmup = Warmup.start(spec, payload, grid, local_cluster, here=here, threads=actors)
        if warmup is None or warmup.here or is_remote(path):
            return None, payload, warmup, None
        if cancel.is_set():  # the run failed meanwhile
            abandon(warmup, None)
            return None, payload, None, None
        # Every input is checked: the new store is built beside the old one now, and the driver's first tiles go in
        # while the cluster starts; `start` puts it in place once the cluster is checked, or removes it.
        partial = None
        try:
            partial = new_store(spec, payload, warmup.work.grid, timings, beside=True)
            warmup.write_into(Store(partial))
        except BaseException:
            abandon(warmup, partial)
            raise
        return None, payload, warmup, partial
    store = Store(path)
    store.check_resumable(spec)
    payload = prepare(spec, vectors=store.directions())  # exactly the ones the finished tiles used
    timings["load_s"] = time.perf_counter() - start
    if store.format >= 2:  # format 1 stores recorded no fingerprints
        diff = changed(store.inputs, fingerprints(spec, payload.splits))
        if diff:
            raise SpecError("--resume: " + "; ".join(diff) + "; --overwrite starts the store over")
    return store, payload, None, None


def abandon(warmup, partial: Path | None) -> None:
    """Stop the driver's warmup and remove the store it wrote into, built beside and never put in place."""
    if warmup is not None:
        warmup.stop()
    if partial is not None and partial.exists():
        ownership.remove(partial)


def local_actors(spec: Spec) -> int:
    """The actors a private cluster on this machine makes room for (`connect.plan_actors` says once Ray is up);
    an estimate is enough, as only the balance of the tiles depends on it, never a value."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return connect.cpu_actors(spec, cpus)


def cut(spec: Spec, payload, workers: int, gpus: bool = False) -> Grid:
    """The grid cut into tiles for `workers` actors (`tile: auto` sizes them from the payload's cost estimate on
    the driver's CPU, or for GPU actors small, to be grouped at their measured rate)."""
    return Grid.from_spec(spec.grid, workers=workers, point_seconds=payload.point_seconds, fine=gpus)


def new_store(spec: Spec, payload, grid: Grid, timings: dict, overwrite: bool = False, beside: bool = False):
    """A new empty store for `spec` cut as `grid`: in place (replacing an old one with `overwrite`), or with
    `beside` built at a hidden sibling whose path is returned, for `layout.install` to swap in."""
    start = time.perf_counter()
    args = (spec.output.store, spec, grid, payload.variables, payload.directions)  # the store records grid.tile
    inputs = fingerprints(spec, payload.splits)
    store = build_beside(*args, inputs) if beside else create(*args, overwrite=overwrite, inputs=inputs)
    timings["store_s"] = time.perf_counter() - start
    return store


def start(spec: Spec, resume: bool, address: str | None, timings: dict) -> tuple:
    """The store (existing with --resume, else new where the driver warms up, else None), the payload, the
    driver's warmup (or None), the number of actors and their pool, started together: the inputs load in a
    thread while the cluster starts and the actors import torch, and on a private cluster the driver starts
    computing into a new store as soon as it has them. A small job (warmup.py) gets no cluster: no actors, no pool
    (None); the driver computes it. A bad input ends the run here, before any store is in
    place, and stops the Ray this call started (an input error is reported before a cluster's)."""
    fresh = not connect.connected()
    local = connect.private(address)
    pool = None
    cancel = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="load") as background:
        loading = background.submit(load, spec, resume, timings, local, cancel)
        try:
            if local and spec.compute.ray == "auto" and Warmup.applies(spec):
                # A small job is computed here, and no cluster is started: its inputs load in a moment, a large
                with contextlib.suppress(TimeoutError):  # job's may not (the cluster's start waits at most this)
                    store, payload, warmup, partial = loading.result(timeout=SMALL_LOAD_S)
                    if warmup is not None and warmup.here:  # small by the probe: computing; `run` builds the store
                        return None, payload, warmup, 0, None
                    if partial is not None and warmup.small(spec, payload.point_seconds):
                        warmup.detach()
                        return install(partial, spec.output.store), payload, warmup, 0, None
                    resumed = store is not None and payload.directions  # small too where the points left are few
                    if resumed and Warmup.small_job(spec, int((~store.done()).sum()), payload.point_seconds):
                        return store, payload, Warmup.idle(spec, payload, store.grid), 0, None
            begin = time.perf_counter()
            workers = connect.preflight(spec, address)
            timings["cluster_s"] = time.perf_counter() - begin
            if spec.directions.kind in ON_CLUSTER:  # directions computed on this cluster first (a resumed store
                store, payload, warmup, partial = loading.result()  # has its own), by actors that need its CPUs
                if not payload.directions:
                    payload.directions = hessians.eigen_directions(spec, payload)
                pool = Pool(spec, workers)
            else:
                pool = Pool(spec, workers)
                store, payload, warmup, partial = loading.result()
            if partial is not None:
                warmup.detach()
                store = install(partial, spec.output.store)
        except BaseException as err:  # noqa: BLE001 - cleanup, then re-raised (Ctrl-C included)
            cancel.set()
            # The actors go before the wait for the load: on a cluster this call joined or started, with the
            # disconnect (killed one by one mid-start, Ray logs a stray error line); on a caller's, here, once
            # those still being created are up (a bad input found in milliseconds; not after Ctrl-C).
            if fresh:
                connect.disconnect()
            elif pool is not None:
                pool.close(settle=0 if isinstance(err, KeyboardInterrupt) else 30)
            failed = loading.exception()  # waits for the load to end, so that nothing it made outlives the run
            if failed is None:
                _, _, warmup, partial = loading.result()
                abandon(warmup, partial)
            raise (err if failed is None or isinstance(err, KeyboardInterrupt) else failed) from None
    return store, payload, warmup, workers, pool


def built_after(spec: Spec, payload, warmup: Warmup, timings: dict, overwrite: bool) -> Store:
    """The store of a small job, built once the warmup has computed its first pass (every point of a uniform grid):
    built beside the computation, its Python would slow both, as they share the GIL (on 2 cores it took twice as
    long, and the points 3 times as long). A Ctrl-C meanwhile keeps every finished tile: the store is built with
    them, and the run ends there (`Interrupted`)."""
    stopped = warmup.finish()
    store = new_store(spec, payload, warmup.work.grid, timings, overwrite=overwrite)
    if stopped:
        warmup.write_into(store)
        warmup.detach()
        raise interrupted(store)
    return store


def interrupted(store: Store) -> Interrupted:
    """What Ctrl-C ends a run with, once the finished tiles are in `store`."""
    store.flush()
    done = store.done()
    return Interrupted(f"interrupted: {int(done.sum())}/{done.size} points are kept; --resume completes the store")


def process_start() -> float:
    """When this process started (epoch seconds). psutil's `create_time` adds the boot time, which Linux gives in
    whole seconds, so it reads up to a second early; Linux's /proc has the process's age to a clock tick."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, AttributeError, ValueError, IndexError):  # not Linux
        return psutil.Process().create_time()


def run(
    spec: Spec,
    resume: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    force: bool = False,
    log=print,
) -> dict:
    if resume and overwrite:
        raise SpecError("--resume and --overwrite exclude each other")
    check_size(spec, force)
    path = spec.output.store
    timings: dict[str, float] = {}
    with claimed(path, "landscape-ray run", replace=resume or overwrite):
        resumed = resume and exists(path)
        store, payload, warmup, workers, pool = start(spec, resume, address, timings)
        try:
            with pool or contextlib.nullcontext():
                if store is None and pool is None:  # a small job (warmup.here): its first pass is computed first
                    store = built_after(spec, payload, warmup, timings, overwrite)
                elif store is None:
                    gpus = any(slot.device == "cuda" for slot in pool.slots)
                    store = new_store(spec, payload, cut(spec, payload, workers, gpus), timings, overwrite=overwrite)
                work = Passes(store.grid, spec.grid.mode)
                # The pieces to compute, pass by pass (refine.py); a store this run built has no damaged tile yet.
                passes = schedule(store, work, store.damaged() if resumed else {})
                first = next(passes, [])
                left = Counter(piece.level for piece in first)
                here = "; a small job: computed in this process, Ray not started (compute.ray: always)"
                here = here if pool is None else ""
                if work.count == 1:
                    total, early = len(store.grid.tiles()), ""
                    if warmup and warmup.written and pool is not None:
                        early = f" ({warmup.written} by the driver as the cluster started)"
                    log(f"store {path}: {total - len(first)}/{total} tiles done{early}, {len(first)} to compute{here}")
                elif first:
                    done = store.done()
                    log(
                        f"store {path}: {int(done.sum())}/{done.size} points done; passes {first[0].level + 1} to "
                        f"{work.count} to compute (the first: a point every {work.stride} steps along each axis)"
                        + (f", refined where tolerance {spec.grid.tolerance} asks" if work.adaptive else "")
                        + here
                    )

                started = process_start()  # the command's, for the first tile's and the first pass's latency

                def pass_done(level: int, at: float, by: str = "") -> None:
                    timings.setdefault("first_pass_s", at - started)
                    spacing = work.spacing(level)
                    steps = f"{spacing} step{'s' if spacing > 1 else ''}"
                    which = (
                        f"{int((work.chosen & (work.levels == level)).sum())} points at a spacing of {steps}, where "
                        "the picture needed them, are"
                        if work.adaptive
                        else f"every point of the grid at a spacing of {steps} is"
                    )
                    log(f"pass {level + 1}/{work.count} done: {which} in the store{by}")

                def queued():
                    """The later passes, each counted as it is queued (an adaptive one is chosen only then)."""
                    for pieces in passes:
                        left.update(piece.level for piece in pieces)
                        yield pieces

                summary = {"tiles": 0, "points": 0}
                if first or (warmup is not None and warmup.written):  # the driver may have done them all already
                    if warmup is not None and warmup.first_written:  # into the store while it was built beside
                        timings["first_tile_s"] = warmup.first_written - started

                    def on_tile(piece, values, record):
                        timings.setdefault("first_tile_s", time.time() - started)
                        store.write_tile(piece.tile, values, record, work.mask(piece))
                        left[piece.level] -= 1
                        if work.count > 1 and not left[piece.level]:  # the barrier: no later pass has begun
                            store.flush()  # the pass's picture on disk, for `render` while the run goes on
                            pass_done(piece.level, time.time())

                    later = queued() if work.adaptive else list(queued())  # progressive: every pass known now
                    try:
                        if work.count > 1 and warmup is not None and warmup.written and not warmup.tiles:
                            # A barrier too: a Ctrl-C there ends the run as at any other.
                            pass_done(0, warmup.last_written, " (by the driver as the cluster started)")
                        if pool is None:
                            cores = min(local_actors(spec), max(len(first), 1))  # as many as the actors would be
                            helpers = warmup.helpers[: cores - 1]  # the warmup's own (a job here), then new ones
                            more = cores - 1 - len(helpers)
                            helpers += [Evaluator.from_payload(spec, payload, "cpu") for _ in range(more)]
                            summary = evaluate_here(warmup, work, first, on_tile, later, helpers)
                        else:
                            summary = evaluate_tiles(
                                spec, payload, work, first, on_tile, log=log, pool=pool, warmup=warmup, later=later
                            )
                    except KeyboardInterrupt:
                        raise interrupted(store) from None
                    finally:
                        store.flush()
        finally:
            if warmup is not None:  # stopped by the scheduler once an actor is up; here on any early exit
                warmup.stop()
        if summary["tiles"]:
            if warmup is not None and warmup.first_point:  # the driver's first point (it has stopped by now)
                timings["first_point_s"] = warmup.first_point - process_start()
            summary["startup"] = {k: round(v, 3) for k, v in timings.items()}
            with naming(path):  # a full disk now: the values are all written, the line says which store
                store.root.attrs["runs"] = store.root.attrs.get("runs", []) + [summary]
                consolidate(path)
            per_actor = ", ".join(
                f"{name} {a['points']} pts at {a['points_per_s']}/s" for name, a in summary["actors"].items()
            )
            log(
                f"done: {summary['points']} points in {summary['wall_s']:.1f} s ({summary['points_per_s']} points/s); "
                f"{summary['retried_tiles']} tile(s) retried, {summary['actor_deaths']} actor death(s); {per_actor}"
            )
            log("startup: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["startup"].items()))
            first = next(iter(summary["actors"].values()))
            log(f"evaluated at batch {first['batch_size']}, BN {'folded' if first['bn_folded'] else 'not folded'}")
        if work.adaptive:
            done = store.done()
            log(f"adaptive: {int(done.sum())} of {done.size} points evaluated ({done.mean():.1%} of a uniform run)")
        for line in store.sample_lines():
            log(line)
        if kept_previous(path) and complete(store):  # the whole store it replaced, kept until now, goes
            discard_previous(path)
    if spec.output.render:
        # Pictures go next to a local store; for a remote one, into runs/<name>/ here.
        out = Path("runs") / spec.name if is_remote(path) else Path(path).parent
        pictures = render(path, out=out, kinds=spec.output.render)
        log("pictures: " + ", ".join(str(p) for p in pictures))
        summary["pictures"] = [str(p) for p in pictures]
    return summary
