"""The scheduler: a pool of Ray actors evaluating tiles — the only module that imports Ray.

Each actor builds one `Evaluator` from the spec and a payload (θ*, directions,
data as NumPy arrays) that goes through the object store once and is shared
zero-copy by the actors of a node. The driver keeps `compute.in_flight` tiles
queued on every actor with its own `ray.wait` loop and hands each finished tile
to a callback (the store writer) at once.

Faults: when an actor dies, every tile it held goes back to the front of the
queue and a replacement actor is started. The tile it was running is blamed;
one blamed `compute.max_tile_failures` times ends the run with an error rather
than killing actors forever. An exception raised inside an evaluation is a bug
or bad input, not a crash, and ends the run at once.

    connect(address=None)   # RAY_ADDRESS / --address, else a private local cluster
    summary = evaluate_tiles(spec, payload, grid, tiles, on_tile=store.write_tile)
"""
from __future__ import annotations

import os
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
        ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        return
    # Local workers inherit this environment: let them import the user's modules from the working directory.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")


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
        self.node = ray.get_runtime_context().get_node_id()

    def ready(self) -> dict:
        return {"pid": os.getpid(), "node": self.node, "device": str(self.evaluator.device)}

    def evaluate(self, tile: tuple, coords: np.ndarray):
        start = time.perf_counter()
        values = self.evaluator.evaluate(coords)
        return values, time.perf_counter() - start


@dataclass
class Slot:
    """One live actor and the tiles queued on it, oldest (= running) first."""

    name: str
    actor: ray.actor.ActorHandle
    queued: deque = field(default_factory=deque)
    points: int = 0
    seconds: float = 0.0


def plan_actors(spec: Spec) -> tuple[int, dict]:
    """How many actors, and the resources each asks for."""
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


def evaluate_tiles(spec: Spec, payload: Payload, grid, tiles: list, on_tile, log=print) -> dict:
    """Evaluate `tiles` on a pool of actors, calling `on_tile(tile, values)` as each finishes."""
    count, options = plan_actors(spec)
    count = min(count, max(1, len(tiles)))
    device = "cuda" if options["num_gpus"] else "cpu"
    payload_ref = ray.put(payload)
    spec_json = spec.model_dump(mode="json")
    serial = iter(range(1_000_000))

    def spawn() -> Slot:
        actor = EvalActor.options(**options).remote(spec_json, payload_ref, device, spec.compute.cpus_per_actor)
        return Slot(f"actor-{next(serial)}", actor)

    slots = [spawn() for _ in range(count)]
    try:
        info = ray.get([s.actor.ready.remote() for s in slots])
    except RayActorError as err:
        raise RunError(f"an actor failed to start: {getattr(err, 'cause', None) or err}") from None
    nodes = len({i["node"] for i in info})
    pids = ", ".join(f"{s.name} pid {i['pid']}" for s, i in zip(slots, info))
    log(f"{count} actor(s) on {device}, {nodes} node(s) ({pids}); {len(tiles)} tile(s) to compute")

    queue = deque(tiles)
    running: dict[ray.ObjectRef, tuple[tuple, Slot]] = {}
    blamed: Counter = Counter()
    retried, deaths, retired = set(), 0, []
    progress = Progress(sum(int(np.prod(grid.tile_shape(t))) for t in tiles))
    start = time.perf_counter()
    try:
        while queue or running:
            for slot in slots:
                while queue and len(slot.queued) < spec.compute.in_flight:
                    tile = queue.popleft()
                    ref = slot.actor.evaluate.remote(tile, grid.coords(tile))
                    running[ref] = (tile, slot)
                    slot.queued.append(ref)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=progress.interval)
            for ref in ready:
                if ref not in running:  # already requeued with its dead actor's other tiles
                    continue
                tile, slot = running[ref]
                try:
                    values, seconds = ray.get(ref)
                except RayTaskError as err:
                    raise RunError(f"tile {tile} failed on {slot.name}: {err.cause!r}") from None
                except RayActorError:
                    deaths += 1
                    culprit = running[slot.queued[0]][0]
                    blamed[culprit] += 1
                    if blamed[culprit] >= spec.compute.max_tile_failures:
                        raise RunError(
                            f"tile {culprit} (points {grid.coords(culprit)[[0, -1]].tolist()}) killed "
                            f"{blamed[culprit]} actors; giving up (compute.max_tile_failures={spec.compute.max_tile_failures})"
                        ) from None
                    lost = [running.pop(r)[0] for r in slot.queued]
                    retried.update(lost)
                    queue.extendleft(reversed(lost))
                    retired.append(slot)
                    slots[slots.index(slot)] = spawn()
                    log(f"{slot.name} died with {len(lost)} tile(s) queued; they go to other actors")
                    continue
                del running[ref]
                slot.queued.remove(ref)
                on_tile(tile, values)
                n = len(next(iter(values.values())))
                slot.points += n
                slot.seconds += seconds
                progress.update(n)
            progress.tick()
    finally:
        progress.close()
        for slot in slots:
            ray.kill(slot.actor)
    wall = time.perf_counter() - start
    points = sum(s.points for s in slots + retired)
    return {
        "tiles": len(tiles),
        "points": points,
        "wall_s": round(wall, 3),
        "points_per_s": round(points / wall, 2) if wall else None,
        "retried_tiles": len(retried),
        "actor_deaths": deaths,
        "actors": {s.name: {"points": s.points, "busy_s": round(s.seconds, 3)} for s in slots + retired if s.points},
    }
