"""The scheduler: a pool of Ray actors evaluating tiles — the only module that imports Ray.

Each actor builds one `Evaluator` from the spec and a payload (θ*, directions,
data as NumPy arrays) that goes through the object store once and is shared
zero-copy by the actors of a node. The driver feeds *ready* actors from its
own `ray.wait` loop, so tiles go to whichever actor is free and a slow actor
never holds the job back; each finished tile goes to a callback (the store
writer) at once. An actor queues up to `compute.in_flight` tiles (so it never
waits for the driver) only while the queue holds more tiles than there are
actors; near the end it gets one at a time, and an idle actor takes over a tile
another actor holds but has not started (the tile is cancelled there), so no
actor idles while work is waiting.

Faults: when an actor dies (its process or its node), every tile it held goes
back to the front of the queue and a replacement actor is started wherever the
cluster has room. The tile it was running is blamed; one blamed
`compute.max_tile_failures` times ends the run with an error rather than
killing actors forever. An exception raised inside an evaluation is a bug or
bad input, not a crash, and ends the run at once. With `compute.actors: auto`
the pool grows when nodes join the cluster mid-run.

    workers = preflight(spec, address)   # joins the cluster; refuses what cannot run, before any store exists
    with Pool(spec, workers) as pool:    # actors start (import torch) while the driver loads and creates the store
        summary = evaluate_tiles(spec, payload, grid, tiles, on_tile=store.write_tile, pool=pool)
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from .errors import RunError, default_sigterm, unwind, unwind_on_sigterm
from .progress import Progress
from .spec import Spec

if TYPE_CHECKING:  # the driver imports torch (for the payload) in a thread while it starts the cluster
    from .payload import Payload


def knock(address: str, timeout: float = 5.0) -> None:
    """Raise OSError unless something listens at `host:port` (ray.init would retry a dead address for minutes)."""
    host, sep, port = address.rpartition("://")[2].rpartition(":")
    if sep and port.isdigit():  # not "auto", which Ray resolves from the local session files
        socket.create_connection((host, int(port)), timeout=timeout).close()


def private(address: str | None) -> bool:
    """Whether `connect(address)` starts a private cluster on this machine (no address, no RAY_ADDRESS)."""
    return not (address or os.environ.get("RAY_ADDRESS"))


def connect(address: str | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS, as under `ray job submit`), else start a private one."""
    if ray.is_initialized():
        return
    try:
        if not private(address):
            where = f"--address {address}" if address else f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
            try:
                knock(address or os.environ["RAY_ADDRESS"])
                ray.init(address=address, logging_level="WARNING", log_to_driver=True)
            except (ValueError, ConnectionError, OSError) as err:
                raise RunError(f"{where}: cannot join that Ray cluster ({str(err).splitlines()[0]})") from None
        else:  # the entry point (cli.py) has made it loopback-only and importable from the working directory
            ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    except SystemExit as err:  # ray.init's own SIGTERM handler is in place while it starts, and exits with 15
        if err.code != signal.SIGTERM:
            raise
        unwind(err.code)  # the run unwinds from here as from the handler below
    if threading.current_thread() is threading.main_thread():
        # ray.init has just installed its own process-wide SIGTERM handler, which aborts the process at exit;
        # replaced at once (the one global setting outside an entry point, because ray.init makes it) by one that
        # unwinds: actors are stopped, every finished tile is on disk, and --resume completes the store.
        unwind_on_sigterm()


def connected() -> bool:
    return ray.is_initialized()


def disconnect() -> None:
    """Leave the cluster (a private one stops)."""
    # Ray stops a private cluster's GCS before the autoscaler's monitor, which then spends a second failing to report
    # its own end to the gone GCS (`ray stop` stops the GCS last since ray-project/ray#30672, `ray.shutdown` does
    # not): the monitor goes first, and shutdown takes 0.2 s instead of 1.4 s. Where it started no monitor (a joined
    # cluster), this does nothing.
    kill_monitor = getattr(getattr(ray._private.worker, "_global_node", None), "kill_monitor", None)
    if kill_monitor is not None:
        kill_monitor(check_alive=False)
    ray.shutdown()
    if threading.current_thread() is threading.main_thread():
        default_sigterm()  # the handler `connect` put in place


def run_task(fn, *args, device: str = "auto"):
    """Run `fn(*args)` as one Ray task (on a GPU when the cluster has one and `device` allows) and return its result."""
    gpus = 1 if device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    if device == "cuda" and not gpus:
        raise RunError("device: cuda requested but the Ray cluster has no GPUs")
    return ray.get(ray.remote(num_cpus=1, num_gpus=gpus)(fn).remote(*args))


@ray.remote(max_restarts=0)
class EvalActor:
    """Started before the payload exists (importing torch takes seconds); `load` then builds its evaluator."""

    def __init__(self, threads: int):
        import torch

        from .speedups import keep_freed_memory

        # The actor's process-wide settings, made at its start-up: threads, malloc, and where Inductor caches kernels.
        torch.set_num_threads(threads)
        keep_freed_memory()
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "landscape_ray" / "inductor"))
        self.evaluator = None

    def load(self, spec: dict, payload: Payload, device: str) -> dict:
        import psutil

        from .curvature import Curvature
        from .evaluator import Evaluator
        from .speedups import set_matmul_precision

        spec = Spec.model_validate(spec)
        self.evaluator = Evaluator.from_payload(spec, payload, device)
        set_matmul_precision(self.evaluator.device, spec.eval.precision)  # cuDNN/TF32 flags: this process only
        # eval.curvature: a second, exact (fp32, unfolded) evaluator whose Hessian-vector products give λmax, λmin.
        self.curvature = (
            Curvature.from_payload(spec, payload, "train", device, batches=spec.eval.curvature_batches)
            if spec.eval.curvature
            else None
        )
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "device": str(self.evaluator.device),
            "batch_size": self.evaluator.batch_size,  # resolved here: `auto` depends on the device
            "bn_folded": self.evaluator.folded,
            "uss_bytes": psutil.Process().memory_full_info().uss,
        }

    def evaluate(self, coords: np.ndarray):
        from .hessian import extremes

        start = time.perf_counter()
        values = self.evaluator.evaluate(coords)
        if self.curvature is not None:
            lam = np.empty((len(coords), 2))
            for i, coord in enumerate(coords):
                self.curvature.set_point(coord)
                lam[i] = extremes(self.curvature)
            values["train_lambda_max"], values["train_lambda_min"] = lam[:, 0], lam[:, 1]
        return values, time.perf_counter() - start


@dataclass
class Slot:
    """One actor: loading (`starting`) until `info` arrives, then fed tiles; `queued` oldest (= running) first."""

    name: str
    actor: ray.actor.ActorHandle
    device: str
    starting: ray.ObjectRef | None = None
    info: dict = field(default_factory=dict)
    queued: deque = field(default_factory=deque)
    points: int = 0
    seconds: float = 0.0


def plan_actors(spec: Spec) -> tuple[int, dict]:
    """How many actors the cluster has room for now, and the resources each asks for."""
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0) if spec.eval.device != "cpu" else 0
    if spec.eval.device == "cuda" and gpus == 0:
        raise RunError("eval.device: cuda requested but the Ray cluster has no GPUs")
    options = {"num_cpus": spec.compute.cpus_per_actor, "num_gpus": spec.compute.gpus_per_actor if gpus else 0}
    if gpus and spec.compute.actors == "auto":
        return max(1, int(gpus / spec.compute.gpus_per_actor)), options
    return cpu_actors(spec, resources.get("CPU", 1)), options


def cpu_actors(spec: Spec, cpus: float) -> int:
    """CPU actors for `cpus` CPUs: the spec's count, or with `actors: auto` one per `cpus_per_actor` CPUs."""
    if spec.compute.actors != "auto":
        return spec.compute.actors
    return max(1, int(cpus // spec.compute.cpus_per_actor))


def preflight(spec: Spec, address: str | None = None) -> int:
    """Join the cluster and check that the run's actors can start; the number of actors it will start.

    Runs before the store is created, so a cluster that cannot be reached, GPUs that are not there or an actor
    no node can place (Ray would wait for it forever) end the run with one line and leave nothing behind.
    """
    connect(address)
    count, options = plan_actors(spec)
    need = {"CPU": options["num_cpus"], "GPU": options["num_gpus"]}
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    if not any(all(r.get(k, 0) >= v for k, v in need.items()) for r in nodes):
        largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        fields = (("CPU", "cpus_per_actor"), ("GPU", "gpus_per_actor"))
        short = [
            f"compute.{field}: {need[k]:g}"
            for k, field in fields
            if need[k] and not any(r.get(k, 0) >= need[k] for r in nodes)
        ]
        short = short or ["compute.cpus_per_actor/gpus_per_actor"]  # each fits some node, never both together
        raise RunError(
            f"{', '.join(short)} per actor, but no node of the cluster has that much; the largest has "
            f"{largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs"
        )
    return count


class Pool:
    """The actors of one run and their bookkeeping. Started right after `preflight`, the actors import torch
    while the driver loads the inputs and creates the store; `evaluate_tiles` then loads and feeds them.

        with Pool(spec, workers) as pool:
            ...                                   # prepare(spec), create the store
            evaluate_tiles(spec, payload, grid, tiles, store.write_tile, pool=pool)
    """

    def __init__(self, spec: Spec, count: int = 0):
        self.spec = spec
        self.spec_json = spec.model_dump(mode="json")
        self.payload_ref = None
        self.slots: list[Slot] = []
        self.retired: list[Slot] = []
        self.serial = 0
        self.start_failures = 0
        if count:
            options = plan_actors(spec)[1]
            for _ in range(count):
                self.spawn(options)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def spawn(self, options: dict) -> None:
        actor = EvalActor.options(**options).remote(self.spec.compute.cpus_per_actor)
        slot = Slot(f"actor-{self.serial}", actor, "cuda" if options["num_gpus"] else "cpu")
        self.slots.append(slot)
        self.serial += 1
        if self.payload_ref is not None:
            slot.starting = actor.load.remote(self.spec_json, self.payload_ref, slot.device)

    def load(self, payload: Payload, tiles: int) -> None:
        """Give every actor the payload (once through the object store), keeping no more actors than tiles."""
        self.payload_ref = ray.put(payload)
        for slot in self.slots[tiles:]:
            self.retire(slot)
        for slot in self.slots:
            slot.starting = slot.actor.load.remote(self.spec_json, self.payload_ref, slot.device)
        self.grow(tiles)

    def grow(self, limit: int) -> None:
        """Start actors up to what the cluster (or the spec) allows, never more than there are tiles."""
        count, options = plan_actors(self.spec)
        for _ in range(min(count, limit) - len(self.slots)):
            self.spawn(options)

    def retire(self, slot: Slot) -> None:
        self.slots.remove(slot)
        self.retired.append(slot)
        ray.kill(slot.actor, no_restart=True)

    def close(self) -> None:
        for slot in list(self.slots):
            self.retire(slot)

    def summary(self) -> dict:
        return {
            s.name: {
                "node": s.info["node"][:12],
                "pid": s.info["pid"],
                "uss_mb": round(s.info["uss_bytes"] / 2**20, 1),
                "batch_size": s.info["batch_size"],
                "bn_folded": s.info["bn_folded"],
                "points": s.points,
                "busy_s": round(s.seconds, 3),
                "points_per_s": round(s.points / s.seconds, 2) if s.seconds else None,
            }
            for s in self.slots + self.retired
            if s.info
        }


def evaluate_tiles(
    spec: Spec, payload: Payload, grid, tiles: list, on_tile, log=print, pool: Pool | None = None, warmup=None
) -> dict:
    """Evaluate `tiles` on the actors of `pool` (started now if None), calling `on_tile(tile, values, record)`
    as each finishes. The pool is closed when this returns. A `warmup` (warmup.py: points the driver computes until
    the first actor is ready) supplies the queued tiles whose points it has all done."""
    pool = pool or Pool(spec)
    pool.load(payload, len(tiles))
    queue = deque(tiles)
    running: dict[ray.ObjectRef, tuple[tuple, Slot]] = {}
    blamed: Counter = Counter()
    retries: Counter = Counter()
    deaths = 0
    # The run's clock and count start with its first computation: the warmup's, which may have written tiles already.
    start = warmup.began if warmup is not None else time.perf_counter()
    early, early_points = (warmup.written, warmup.taken) if warmup is not None else (0, 0)
    progress = Progress(early_points + sum(math.prod(grid.tile_shape(t)) for t in tiles), start=start)
    progress.update(early_points)
    begin = time.perf_counter()
    first_ready = None  # seconds from here until the first actor could take a tile (its start-up: torch, model, data)
    warmup_summary = None

    def lose(slot: Slot, why: str) -> None:
        """An actor died: requeue its tiles, blame the one it was running, start a replacement."""
        nonlocal deaths
        deaths += 1
        lost = [running.pop(r)[0] for r in slot.queued]
        if lost:
            blamed[lost[0]] += 1
            if blamed[lost[0]] >= spec.compute.max_tile_failures:
                raise RunError(
                    f"tile {lost[0]} (points {grid.coords(lost[0])[[0, -1]].tolist()}) "
                    f"killed {blamed[lost[0]]} actors; "
                    f"giving up (compute.max_tile_failures={spec.compute.max_tile_failures})"
                )
        retries.update(lost)
        queue.extendleft(reversed(lost))
        pool.retire(slot)
        log(f"{slot.name} died ({why}) with {len(lost)} tile(s) queued; they go to other actors")
        pool.grow(len(queue) + len(running))

    def submit(slot: Slot, tile: tuple) -> None:
        ref = slot.actor.evaluate.remote(grid.coords(tile))
        running[ref] = (tile, slot)
        slot.queued.append(ref)

    def dispatch() -> None:
        """Least-loaded ready actor first; a second tile only while the queue outnumbers the actors."""
        ready = [s for s in pool.slots if s.info]
        while queue and ready:
            slot = min(ready, key=lambda s: len(s.queued))
            if len(slot.queued) >= (spec.compute.in_flight if len(queue) > len(pool.slots) else 1):
                break
            submit(slot, queue.popleft())
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

    try:
        while queue or running:
            if warmup is not None:
                if any(s.info for s in pool.slots):  # an actor is up: the driver stops, its finished tiles go in
                    warmup.stop()
                    harvest()
                    warmup_summary, warmup = warmup.summary(), None
                else:
                    harvest()
                    if not queue and not running:
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
                tile, slot = running[ref]
                try:
                    values, seconds = ray.get(ref)
                except RayTaskError as err:
                    raise RunError(f"tile {tile} failed on {slot.name}: {err.cause!r}") from None
                except RayActorError:
                    lose(slot, "its process or node is gone")
                    continue
                del running[ref]
                slot.queued.remove(ref)
                n = len(next(iter(values.values())))
                slot.points += n
                slot.seconds += seconds
                on_tile(
                    tile,
                    values,
                    {"actor": slot.name, "node": slot.info["node"], "seconds": seconds, "retries": retries[tile]},
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
        "tiles": early + len(tiles),
        "points": points,
        "wall_s": round(wall, 3),
        "first_actor_ready_s": None if first_ready is None else round(first_ready, 3),  # None: the driver did all
        "points_per_s": round(points / wall, 2) if wall else None,
        "retried_tiles": len(retries),
        "actor_deaths": deaths,
        "actors": actors,
    }
