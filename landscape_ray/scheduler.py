"""The scheduler: a pool of Ray actors evaluating tiles — the only module that imports Ray.

Each actor builds one `Evaluator` from the spec and a payload (θ*, directions,
data as NumPy arrays) that goes through the object store once and is shared
zero-copy by the actors of a node. The driver keeps `compute.in_flight` tiles
queued on every *ready* actor with its own `ray.wait` loop, so tiles go to
whichever actor is free and a slow actor never holds the job back; each
finished tile goes to a callback (the store writer) at once.

Faults: when an actor dies (its process or its node), every tile it held goes
back to the front of the queue and a replacement actor is started wherever the
cluster has room. The tile it was running is blamed; one blamed
`compute.max_tile_failures` times ends the run with an error rather than
killing actors forever. An exception raised inside an evaluation is a bug or
bad input, not a crash, and ends the run at once. With `compute.actors: auto`
the pool grows when nodes join the cluster mid-run.

    connect(address=None)   # RAY_ADDRESS / --address, else a private local cluster
    summary = evaluate_tiles(spec, payload, grid, tiles, on_tile=store.write_tile)
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from .evaluator import Evaluator, Payload
from .progress import Progress
from .spec import RunError, Spec


def connect(address: str | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS, as under `ray job submit`), else start a private one."""
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        except (ValueError, ConnectionError) as err:
            where = f"--address {address}" if address else f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
            raise RunError(f"{where}: cannot join that Ray cluster ({str(err).splitlines()[0]})") from None
    else:
        # Local workers inherit this environment: let them import the user's modules from the working directory.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
        ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    if threading.current_thread() is threading.main_thread():
        # Ray's own handler aborts the process; `ray job stop` sends SIGTERM, and we would rather unwind:
        # actors are stopped, every finished tile is already on disk, and --resume completes the store.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def run_task(fn, *args, device: str = "auto"):
    """Run `fn(*args)` as one Ray task (on a GPU when the cluster has one and `device` allows) and return its result."""
    gpus = 1 if device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    if device == "cuda" and not gpus:
        raise RunError("device: cuda requested but the Ray cluster has no GPUs")
    return ray.get(ray.remote(num_cpus=1, num_gpus=gpus)(fn).remote(*args))


@ray.remote(max_restarts=0)
class EvalActor:
    def __init__(self, spec: dict, payload: Payload, device: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.evaluator = Evaluator.from_payload(Spec.model_validate(spec), payload, device)

    def ready(self) -> dict:
        import psutil

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "device": str(self.evaluator.device), "uss_bytes": psutil.Process().memory_full_info().uss}

    def evaluate(self, coords: np.ndarray):
        start = time.perf_counter()
        values = self.evaluator.evaluate(coords)
        return values, time.perf_counter() - start


@dataclass
class Slot:
    """One actor: starting until `info` arrives, then fed tiles; `queued` oldest (= running) first."""

    name: str
    actor: ray.actor.ActorHandle
    starting: ray.ObjectRef | None
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
    if spec.compute.actors != "auto":
        return spec.compute.actors, options
    if gpus:
        return max(1, int(gpus / spec.compute.gpus_per_actor)), options
    return max(1, int(resources.get("CPU", 1) // spec.compute.cpus_per_actor)), options


class Pool:
    """The actors of one run, and their bookkeeping."""

    def __init__(self, spec: Spec, payload: Payload, log):
        self.spec, self.log = spec, log
        self.payload_ref = ray.put(payload)
        self.spec_json = spec.model_dump(mode="json")
        self.slots: list[Slot] = []
        self.retired: list[Slot] = []
        self.serial = 0
        self.start_failures = 0

    def spawn(self, options: dict) -> None:
        device = "cuda" if options["num_gpus"] else "cpu"
        actor = EvalActor.options(**options).remote(self.spec_json, self.payload_ref, device, self.spec.compute.cpus_per_actor)
        self.slots.append(Slot(f"actor-{self.serial}", actor, actor.ready.remote()))
        self.serial += 1

    def grow(self, limit: int) -> None:
        """Start actors up to what the cluster (or the spec) allows, never more than there are tiles."""
        count, options = plan_actors(self.spec)
        for _ in range(min(count, limit) - len(self.slots)):
            self.spawn(options)

    def retire(self, slot: Slot) -> None:
        self.slots.remove(slot)
        self.retired.append(slot)
        ray.kill(slot.actor, no_restart=True)

    def summary(self) -> dict:
        return {s.name: {"node": s.info["node"][:12], "pid": s.info["pid"], "uss_mb": round(s.info["uss_bytes"] / 2**20, 1),
                         "points": s.points, "busy_s": round(s.seconds, 3),
                         "points_per_s": round(s.points / s.seconds, 2) if s.seconds else None}
                for s in self.slots + self.retired if s.info}


def evaluate_tiles(spec: Spec, payload: Payload, grid, tiles: list, on_tile, log=print) -> dict:
    """Evaluate `tiles` on a pool of actors, calling `on_tile(tile, values, record)` as each finishes."""
    pool = Pool(spec, payload, log)
    pool.grow(len(tiles))
    queue = deque(tiles)
    running: dict[ray.ObjectRef, tuple[tuple, Slot]] = {}
    blamed: Counter = Counter()
    retries: Counter = Counter()
    deaths = 0
    progress = Progress(sum(int(np.prod(grid.tile_shape(t))) for t in tiles))
    start = time.perf_counter()

    def lose(slot: Slot, why: str) -> None:
        """An actor died: requeue its tiles, blame the one it was running, start a replacement."""
        nonlocal deaths
        deaths += 1
        lost = [running.pop(r)[0] for r in slot.queued]
        if lost:
            blamed[lost[0]] += 1
            if blamed[lost[0]] >= spec.compute.max_tile_failures:
                raise RunError(
                    f"tile {lost[0]} (points {grid.coords(lost[0])[[0, -1]].tolist()}) killed {blamed[lost[0]]} actors; "
                    f"giving up (compute.max_tile_failures={spec.compute.max_tile_failures})")
        retries.update(lost)
        queue.extendleft(reversed(lost))
        pool.retire(slot)
        log(f"{slot.name} died ({why}) with {len(lost)} tile(s) queued; they go to other actors")
        pool.grow(len(queue) + len(running))

    try:
        while queue or running:
            for slot in pool.slots:
                while slot.info and queue and len(slot.queued) < spec.compute.in_flight:
                    tile = queue.popleft()
                    ref = slot.actor.evaluate.remote(grid.coords(tile))
                    running[ref] = (tile, slot)
                    slot.queued.append(ref)
            starting = {s.starting: s for s in pool.slots if s.starting is not None}
            ready, _ = ray.wait(list(running) + list(starting), num_returns=1, timeout=progress.interval)
            for ref in ready:
                if ref in starting:
                    slot = starting[ref]
                    slot.starting = None
                    try:
                        slot.info = ray.get(ref)
                        log(f"{slot.name} ready on node {slot.info['node'][:12]} ({slot.info['device']}, pid {slot.info['pid']})")
                    except RayActorError as err:
                        pool.start_failures += 1
                        if not any(s.info for s in pool.slots) or pool.start_failures >= spec.compute.max_tile_failures * 2:
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
                on_tile(tile, values, {"actor": slot.name, "node": slot.info["node"], "seconds": seconds,
                                       "retries": retries[tile]})
                progress.update(n)
            if progress.tick() and spec.compute.actors == "auto":
                pool.grow(len(queue) + len(running))  # nodes may have joined
    finally:
        progress.close()
        for slot in list(pool.slots):
            pool.retire(slot)
    wall = time.perf_counter() - start
    points = sum(s.points for s in pool.retired)
    return {
        "tiles": len(tiles),
        "points": points,
        "wall_s": round(wall, 3),
        "points_per_s": round(points / wall, 2) if wall else None,
        "retried_tiles": len(retries),
        "actor_deaths": deaths,
        "actors": pool.summary(),
    }
