"""The driver's own evaluator: grid points computed while the cluster starts and the actors load.

On a private local cluster the driver runs on the machine that computes, and for the first seconds of a run (Ray
starting, actors importing torch) it has the payload and nothing to do. A `Warmup` evaluates the points of the
grid's first pass (all of a uniform grid; the coarse lattice of a progressive or adaptive one, its first picture)
in a thread, last tile first (the actors take tiles from the front), until the first actor is ready. While the cluster
starts it writes each tile it completes into the new store, still being built beside the old one (job.py); once
the store is in place the scheduler takes over: it writes every queued tile whose points are all done here, as if
an actor had returned it, and sends the rest to the actors. The evaluator is the actors' (same spec, payload,
device and thread count), so the values are the same.

    warmup = Warmup.start(spec, payload, grid, local_cluster=True)  # None where it does not apply
    warmup.work                                 # the grid's passes (spec/passes.py): its pieces are the tiles
    warmup.write_into(store)                    # tiles completed by now and from now on go into `store` ...
    warmup.detach()                             # ... until the caller takes the store over
    values, seconds = warmup.take(coords)       # a tile's values when all its points are done here, else None
    warmup.stop()                               # when the first actor is ready

A small job, whose points take less than `SMALL_S` of one core, is not worth a cluster's start (seconds): job.py
then computes every point here (`evaluate_here`), with the same evaluator and thread count as an actor, so the
values are a cluster run's, bit for bit. Where the probe already says so (`small_job`), the warmup starts `here`:
one thread per actor the job would have had, every point of the first pass, and the store is built after them
(`finish`; job.built_after), as the store's Python and the points' slow each other down on the GIL; where the
warmup's own points say so (`small`), it stops and the rest are computed into the store it wrote. So is a resumed
store whose points left take that little (`idle`: a warmup with nothing computed ahead).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
import torch

from landscape_ray.compute.evaluator import Evaluator
from landscape_ray.core.progress import Progress
from landscape_ray.spec.grid import Grid
from landscape_ray.spec.passes import Passes
from landscape_ray.spec.schema import Spec

SMALL_S = 5.0  # seconds of one core: about a private cluster's start and its actors' on a small machine


class Warmup:
    def __init__(self, evaluators: list[Evaluator], work: Passes):
        self.evaluator, self.helpers = evaluators[0], evaluators[1:]  # helpers: a thread each, for a job `here`
        self.batch_size, self.folded = self.evaluator.batch_size, self.evaluator.folded  # for the summary, later
        self.work = work
        self.tiles = work.pieces(0)  # the first pass's, still to write into the store, taken from the back
        self.coords = np.concatenate([work.coords(t) for t in self.tiles])[::-1]  # in the order they are computed
        self.values: dict[tuple[float, ...], dict[str, float]] = {}
        self.took: dict[tuple[float, ...], float] = {}  # seconds per point, for the tile records
        self.began = time.perf_counter()  # the run's first computation starts here
        self.taken = 0  # points handed to the store or the scheduler
        self.store = None
        self.written = 0  # tiles written into the store
        self.first_written = None  # when the first one was (epoch seconds)
        self.last_written = None  # and the last
        self.first_point = None  # when the first point was computed (epoch seconds)
        self.torch_threads = None  # the caller's torch thread count while this warmup sets its own
        self.next = 0  # the index in `coords` of the next point to compute
        self.here = False  # a small job by the probe: every point of the first pass before the store (`finish`)
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(e,), name=f"warmup-{i}", daemon=True)
            for i, e in enumerate(evaluators)
        ]

    @staticmethod
    def applies(spec: Spec) -> bool:
        """Whether the spec lets the driver warm up: on, CPU actors, nothing compiled, no curvature maps."""
        e = spec.eval
        cpu = e.device == "cpu" or (e.device == "auto" and not torch.cuda.is_available())
        return spec.compute.warmup and cpu and not (e.compile or e.curvature)

    @classmethod
    def start(
        cls, spec: Spec, payload, grid: Grid, local_cluster: bool, here: bool = False, threads: int = 1
    ) -> Warmup | None:
        """A running warmup for a fresh run on CPU actors of a private local cluster, else None (also where the
        directions are still to come: `directions.kind: hessian` computes them on the cluster once it is up).
        One thread computes beside a cluster's start; for a job `here` (one the probe finds small: `small_job`),
        `threads` compute every point of the first pass, one per actor the job would have had."""
        if not (cls.applies(spec) and local_cluster and payload.directions):
            return None
        evaluators = [Evaluator.from_payload(spec, payload, "cpu") for _ in range(threads if here else 1)]
        warmup = cls(evaluators, Passes(grid, spec.grid.mode))
        warmup.here = here
        # An actor runs `cpus_per_actor` torch threads; the driver evaluates as one does while it warms up, and
        # `stop` puts the caller's thread count back. (The CLI also keeps freed memory, as an actor does: a
        # process-wide malloc setting, made at the entry point.)
        warmup.cpus = spec.compute.cpus_per_actor
        warmup.torch_threads = torch.get_num_threads()
        torch.set_num_threads(warmup.cpus)
        for thread in warmup.threads:
            thread.start()
        return warmup

    @classmethod
    def idle(cls, spec: Spec, payload, grid: Grid) -> Warmup:
        """A warmup that computes nothing ahead, for `evaluate_here` to compute a resumed small job with (its first
        pass is in the store already)."""
        warmup = cls([Evaluator.from_payload(spec, payload, "cpu")], Passes(grid, spec.grid.mode))
        warmup.cpus = spec.compute.cpus_per_actor
        warmup.halt.set()
        warmup.threads[0].start()  # ends at once: `stop` joins it as any other
        return warmup

    @staticmethod
    def small_job(spec: Spec, points: int, point_seconds: float) -> bool:
        """Whether `points` (an adaptive grid's at most) of `point_seconds` each are better computed here than on a
        cluster (`compute.ray`)."""
        return spec.compute.ray == "auto" and points * point_seconds <= SMALL_S

    def small(self, spec: Spec, point_seconds: float) -> bool:
        """Whether the job is small (`small_job`) at this warmup's fastest point so far (the first is cold: slower),
        or else at `point_seconds` (the probe's estimate, also cold)."""
        with self.lock:
            if self.took:
                point_seconds = min(self.took.values())
        return self.small_job(spec, self.work.grid.size, point_seconds)

    def _run(self, evaluator: Evaluator) -> None:
        try:
            while not self.halt.is_set():
                with self.lock:
                    if self.next == len(self.coords):
                        return
                    coord, self.next = self.coords[self.next], self.next + 1
                self._point(coord, evaluator)
        except Exception:  # noqa: BLE001 - the driver just stops helping: a point that fails here fails on an actor
            return  # too and is reported there, once; a tile it did not write stays pending

    def _point(self, coord: np.ndarray, evaluator: Evaluator) -> None:
        """Evaluate one point, then write every tile (from the back) it completes while a store is attached."""
        begin = time.perf_counter()
        out = evaluator.evaluate(coord[None])
        with self.lock:
            self.values[tuple(coord)] = {k: v[0] for k, v in out.items()}
            self.took[tuple(coord)] = time.perf_counter() - begin
            self.first_point = self.first_point or time.time()
            self._write_completed()

    def _write_completed(self) -> None:
        """Write every tile (from the back) whose points are all done while a store is attached; the lock is held."""
        while self.store is not None and self.tiles:
            piece = self.tiles[-1]
            coords = self.work.coords(piece)
            done = self._complete(coords)
            if done is None:
                break
            record = {"actor": "driver", "seconds": done[1], "retries": 0}
            self.store.write_tile(piece.tile, done[0], record, self.work.mask(piece))
            self.tiles.pop()  # counted only once written: a write that fails leaves the tile to the actors
            self.written += 1
            self.taken += len(coords)
            self.last_written = time.time()
            self.first_written = self.first_written or self.last_written

    def write_into(self, store) -> None:
        """Write each tile completed by now into `store` (cut as this warmup's grid), in the caller's thread, and
        each completed from now on, in this warmup's."""
        with self.lock:
            self.store = store
            self._write_completed()

    def finish(self) -> bool:
        """Wait until every point of the first pass is computed (a job `here`). Ctrl-C stops the threads once their
        points under way are done; returns whether it did."""
        try:
            for thread in self.threads:
                thread.join()
        except KeyboardInterrupt:
            self.stop()
            return True
        return False

    def detach(self) -> None:
        """Stop writing into the store, with everything written so far flushed: the caller owns it from now on."""
        with self.lock:
            if self.store is not None:
                self.store.flush()
            self.store = None

    def _complete(self, coords: np.ndarray) -> tuple[dict[str, np.ndarray], float] | None:
        rows = [self.values.get(tuple(c)) for c in coords]
        if any(r is None for r in rows):
            return None
        values = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]}
        return values, sum(self.took[tuple(c)] for c in coords)

    def take(self, coords: np.ndarray) -> tuple[dict[str, np.ndarray], float] | None:
        """The values at `coords` (a tile's points) and the seconds they took, when every one is done here, else
        None."""
        with self.lock:
            done = self._complete(coords)
            self.taken += 0 if done is None else len(coords)
            return done

    def evaluate(self, coords: np.ndarray, evaluator: Evaluator | None = None) -> tuple[dict[str, np.ndarray], float]:
        """The values at `coords` and their seconds: the warmup's points as they are, the others computed now by
        `evaluator` (default: this warmup's, once it is stopped) in the caller's thread, at the thread count the
        caller set (evaluate_here)."""
        with self.lock:
            missing = np.array([tuple(c) not in self.values for c in coords])
        if missing.any():
            begin = time.perf_counter()
            out = (evaluator or self.evaluator).evaluate(coords[missing])
            each = (time.perf_counter() - begin) / int(missing.sum())
            with self.lock:
                for i, c in enumerate(coords[missing]):
                    self.values[tuple(c)] = {k: v[i] for k, v in out.items()}
                    self.took[tuple(c)] = each
        with self.lock:
            self.taken += len(coords)
            return self._complete(coords)

    def stop(self) -> None:
        """No new points; the one under way finishes (its value may still complete a queued tile)."""
        self.halt.set()
        for thread in self.threads:
            thread.join()
        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
            self.torch_threads = None

    def release(self) -> None:
        """Stop for good and let the evaluator go (the actors compute the rest); `take` and the summary stay."""
        self.stop()
        self.evaluator, self.helpers = None, []

    def summary(self) -> dict:
        n, seconds = len(self.took), sum(self.took.values())
        return {
            "node": "driver",
            "pid": os.getpid(),
            "uss_mb": None,
            "batch_size": self.batch_size,
            "bn_folded": self.folded,
            "points": self.taken,
            "busy_s": round(seconds, 3),
            "points_per_s": round(n / seconds, 2) if seconds else None,
        }


def evaluate_here(warmup: Warmup, work: Passes, tiles: list, on_tile, later=(), helpers=()) -> dict:
    """`tiles` (pieces of `work`, the run's passes: an adaptive grid's choices are made there), then each pass of
    `later` (a list, or an iterator asked for each pass once the one before is written), computed in this process
    (a small job), each passed to `on_tile(piece, values, record)` in this thread; returns a summary like the
    scheduler's. The warmup's evaluator and `helpers` (evaluators of the same spec and payload: one per actor the
    job would have had) each compute pieces in a thread of their own at an actor's thread count, as actors would
    (torch lets go of the GIL in its kernels), so the values are a cluster run's and the machine's cores are used."""
    warmup.stop()
    known = isinstance(later, (list, tuple))
    points = lambda pieces: sum(work.points(p) for p in pieces)
    progress = Progress(warmup.taken + points(tiles) + (sum(map(points, later)) if known else 0), start=warmup.began)
    progress.update(warmup.taken)
    free = queue.SimpleQueue()  # the evaluators not computing now
    for evaluator in (warmup.evaluator, *helpers):
        free.put(evaluator)

    def compute(piece):
        evaluator = free.get()
        try:
            return piece, *warmup.evaluate(work.coords(piece), evaluator)
        finally:
            free.put(evaluator)

    count, threads = 0, torch.get_num_threads()
    torch.set_num_threads(warmup.cpus)  # process-wide: each evaluator's kernels then run in its own thread
    pool = ThreadPoolExecutor(1 + len(helpers), thread_name_prefix="evaluate")
    try:
        for pieces in itertools.chain([tiles], later):
            if not known and pieces is not tiles:
                progress.grow(points(pieces))
            for future in as_completed([pool.submit(compute, piece) for piece in pieces]):  # a pass at a time
                piece, values, seconds = future.result()
                on_tile(piece, values, {"actor": "driver", "node": "driver", "seconds": seconds, "retries": 0})
                progress.update(len(next(iter(values.values()))))
                count += 1
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C: the pieces under way finish, no new one starts
        torch.set_num_threads(threads)
        progress.close()
    wall = time.perf_counter() - warmup.began
    return {
        "tiles": warmup.written + count,
        "points": warmup.taken,
        "wall_s": round(wall, 3),
        "first_actor_ready_s": None,
        "points_per_s": round(warmup.taken / wall, 2) if wall else None,
        "retried_tiles": 0,
        "actor_deaths": 0,
        "actors": {"driver": warmup.summary()},
    }
