"""The actors of a run: started early, loaded once with the payload, retired when done or dead.

Each `EvalActor` builds one `Evaluator` from the spec and a payload (θ*, directions, data as NumPy arrays) that
goes through the object store once and is shared zero-copy by the actors of a node. It is started before the
payload exists (importing torch takes seconds), so the actors start while the driver loads the inputs.

`Blame` is the one policy for actor deaths, for surface tiles (scheduler.py) and Hessian shards (shards.py) alike:
the work an actor was running when it died is blamed and handed to a replacement; work that kills
`compute.max_tile_failures` actors ends the run with one line rather than killing actors forever.

    with Pool(spec, workers) as pool:     # actors import torch while the driver loads and creates the store
        pool.load(payload, tiles)         # then scheduler.evaluate_tiles feeds them
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
import warnings
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Self

import numpy as np
import psutil
import ray
import torch

from landscape_ray.cluster.connect import plan_actors
from landscape_ray.compute.curvature import Curvature
from landscape_ray.compute.evaluator import Evaluator
from landscape_ray.compute.spectrum import extremes
from landscape_ray.compute.speedups import keep_freed_memory, set_matmul_precision
from landscape_ray.core.errors import RunError
from landscape_ray.core.paths import cache_dir
from landscape_ray.inputs.payload import Payload
from landscape_ray.spec.schema import Spec

PEAK_WAIT_S = 2.0  # at the end of a run, how long the pool waits for its actors' peak memory


def start_actor_process(threads: int) -> None:
    """An actor's process-wide settings, made once at its start: threads, malloc, where Inductor caches kernels,
    and no TorchScript deprecation notice in the user's terminal (torch.func's Hessian-vector products set it off
    inside torch on first use; it is torch's, not the user's to act on)."""
    torch.set_num_threads(threads)
    keep_freed_memory()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir("inductor")))  # every actor of a node, every run
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")


class Blame:
    """Actor deaths charged to the work they were running; `limit` charges to one item end the run."""

    def __init__(self, limit: int):
        self.limit = limit
        self.charges: Counter = Counter()

    def charge(self, item, what: str) -> None:
        """One more death caused by `item` (`what` names it in the error)."""
        self.charges[item] += 1
        if self.charges[item] >= self.limit:
            raise RunError(
                f"{what} killed {self.charges[item]} actors; giving up (compute.max_tile_failures={self.limit})"
            )


@ray.remote(max_restarts=0)
class EvalActor:
    """Started before the payload exists (importing torch takes seconds); `load` then builds its evaluator."""

    def __init__(self, threads: int):
        start_actor_process(threads)
        self.evaluator = None

    def load(self, spec: dict, payload: Payload, device: str) -> dict:
        spec = Spec.model_validate(spec)
        self.evaluator = Evaluator.from_payload(spec, payload, device)
        set_matmul_precision(self.evaluator.device, spec.eval.precision)  # cuDNN/TF32 flags: this process only
        # eval.curvature: a second, exact (fp32, unfolded) evaluator whose Hessian-vector products give λmax, λmin.
        self.curvature = (
            Curvature.from_payload(spec, payload, "train", device, batches=spec.eval.curvature_batches)
            if spec.eval.curvature
            else None
        )
        # Compiled (and on a GPU the batch fitted to its memory) before the first tile, which then runs at speed;
        # one point's seconds after that sizes this actor's work items (scheduler.py). A plain CPU actor has nothing
        # to get ready: its first tile measures its rate.
        ready = spec.eval.compile or self.evaluator.device.type == "cuda"
        timing = self.evaluator.warm() if ready else {}
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "device": str(self.evaluator.device),
            "batch_size": self.evaluator.batch_size,  # resolved here: `auto` depends on the device
            "bn_folded": self.evaluator.folded,
            "uss_bytes": psutil.Process().memory_full_info().uss,
            **timing,
        }

    def evaluate(self, coords: np.ndarray):
        start = time.perf_counter()
        values = self.evaluator.evaluate(coords)
        if self.curvature is not None:
            lam = np.empty((len(coords), 2))
            for i, coord in enumerate(coords):
                self.curvature.set_point(coord)
                lam[i] = extremes(self.curvature)
            values["train_lambda_max"], values["train_lambda_min"] = lam[:, 0], lam[:, 1]
        return values, time.perf_counter() - start

    def peak_rss(self) -> int:
        """The most resident memory this process has held, in bytes (pages of the shared θ* it read included)."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


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
    items: int = 0
    seconds: float = 0.0

    def point_seconds(self) -> float:
        """Seconds a point takes on this actor: measured on its tiles once it has some, else at its warm-up."""
        return self.seconds / self.points if self.points else self.info.get("point_s", 0.0)


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
        payload.adopt(ray.get(self.payload_ref))  # the driver's own copies go: it reads the store's, as actors do
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

    def close(self, settle: float = 0.0) -> None:
        """Stop every actor. `settle`: at most this many seconds for actors still being created to come up first
        (a run that fails within milliseconds of starting them, on a caller's cluster: an actor killed while Ray
        creates it makes the cluster log a stray error line into the caller's terminal)."""
        if settle and self.slots:
            ready = [slot.actor.__ray_ready__.remote() for slot in self.slots]
            ray.wait(ready, num_returns=len(ready), timeout=settle)
        # The peak memory of each idle, loaded actor, for the run's record (a busy one, at an interrupt, is not waited
        # for: its tile would run first).
        peaks = {slot.actor.peak_rss.remote(): slot for slot in self.slots if slot.info and not slot.queued}
        done, _ = ray.wait(list(peaks), num_returns=len(peaks), timeout=PEAK_WAIT_S) if peaks else ([], [])
        for ref in done:
            with contextlib.suppress(ray.exceptions.RayError):
                peaks[ref].info["peak_rss_bytes"] = ray.get(ref)
        for slot in list(self.slots):
            self.retire(slot)

    def summary(self) -> dict:
        return {
            s.name: {
                "node": s.info["node"][:12],
                "pid": s.info["pid"],
                "uss_mb": round(s.info["uss_bytes"] / 2**20, 1),  # its own memory once loaded
                "peak_rss_mb": round(s.info["peak_rss_bytes"] / 2**20, 1) if "peak_rss_bytes" in s.info else None,
                "batch_size": s.info["batch_size"],
                "bn_folded": s.info["bn_folded"],
                "warm_s": round(s.info.get("warm_s", 0.0), 3),  # compilation included
                "points": s.points,
                "items": s.items,  # calls: a work item is one or more tiles
                "busy_s": round(s.seconds, 3),
                "points_per_s": round(s.points / s.seconds, 2) if s.seconds else None,
            }
            for s in self.slots + self.retired
            if s.info
        }
