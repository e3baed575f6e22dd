"""The Hessian of a split's mean loss as an operator whose products are sharded over Ray actors.

The split is cut into one contiguous shard per actor; each actor holds the model and its shard (θ*, directions
and data travel once through the object store as NumPy arrays) and returns the float64 *sum* of its samples'
Hessian-vector products with their count; the driver adds the shards in shard order and divides by the total,
so any number of actors gives the same operator up to float rounding. An actor that dies mid-product is replaced
and its shard recomputed with the same vector (`pool.Blame`, as for surface tiles), so the numbers are those of an
undisturbed run.

    with ShardedOperator(spec, payload, "train", actors=2) as op:
        hv = op.matvec(v)                  # H v, v flat in `Curvature.layout` order
"""

from __future__ import annotations

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from landscape_ray.cluster.connect import plan_actors
from landscape_ray.cluster.pool import Blame, start_actor_process
from landscape_ray.compute.curvature import Curvature, shards
from landscape_ray.core.errors import RunError
from landscape_ray.inputs.directions import Directions, Recipe
from landscape_ray.inputs.payload import Payload
from landscape_ray.spec.schema import Spec


class ShardWorker:
    """One shard's Hessian-vector products (the body of a Ray actor; plain Python, importable without a cluster)."""

    def __init__(self, spec: dict, state: dict, directions, handed, shard, split: str, at, device: str, threads: int):
        start_actor_process(threads)
        recipe = directions if isinstance(directions, Recipe) else None  # directions.regenerate: drawn here
        payload = Payload(state, Directions([] if recipe else directions, [], recipe=recipe), {split: shard})
        payload.model, payload.metric = handed  # model.arch object: the network (and metric) a Python call handed
        self.curvature = Curvature.from_payload(Spec.model_validate(spec), payload, split, device, at)

    def hvp(self, v: np.ndarray) -> tuple[np.ndarray, int]:
        return self.curvature.hvp_sum(v)


class ShardedOperator:
    """v ↦ H v of the mean loss over `split`, one shard per actor. Use as a context manager (actors are stopped)."""

    def __init__(self, spec: Spec, payload, split: str, at=None, actors: int | None = None, log=print):
        planned, self.options = plan_actors(spec)
        self.actor_class = ray.remote(max_restarts=0)(ShardWorker)
        self.spec, self.split, self.at, self.log = spec, split, at, log
        self.spec_json = spec.model_dump(mode="json")
        self.state = ray.put(payload.state)
        self.directions = ray.put(payload.directions.travelling)
        self.handed = ray.put((payload.model, payload.metric))
        self.shards = [ray.put(s) for s in shards(payload.splits[split], actors or planned)]
        if not self.options["num_gpus"]:  # more CPU actors than CPUs share them rather than wait forever for one
            share = ray.cluster_resources().get("CPU", 1) / len(self.shards)
            self.options = {**self.options, "num_cpus": min(self.options["num_cpus"], share)}
        self.actors = [self._spawn(i) for i in range(len(self.shards))]
        self.blame = Blame(spec.compute.max_tile_failures)
        self.products = 0
        self.deaths = 0

    def _spawn(self, i: int):
        """An actor for shard i (again, after a death: the shard and θ* are still in the object store)."""
        device = "cuda" if self.options["num_gpus"] else "cpu"
        return self.actor_class.options(**self.options).remote(
            self.spec_json,
            self.state,
            self.directions,
            self.handed,
            self.shards[i],
            self.split,
            self.at,
            device,
            self.spec.compute.cpus_per_actor,
        )

    def matvec(self, v: np.ndarray) -> np.ndarray:
        ref = ray.put(np.asarray(v, dtype=np.float32))
        calls = {actor.hvp.remote(ref): i for i, actor in enumerate(self.actors)}
        results = [None] * len(self.actors)
        while calls:
            [done], _ = ray.wait(list(calls), num_returns=1)
            i = calls.pop(done)
            try:
                results[i] = ray.get(done)
            except RayTaskError as err:  # an exception in the model or metric: not a crash, so no retry
                raise RunError(f"hessian: shard {i} failed: {err.cause!r}") from None
            except RayActorError:
                self.deaths += 1
                self.blame.charge(i, f"hessian: shard {i}")
                self.log(f"hessian: the actor of shard {i} died; a new one recomputes the shard")
                self.actors[i] = self._spawn(i)
                calls[self.actors[i].hvp.remote(ref)] = i
        self.products += 1
        total = np.zeros_like(results[0][0])
        for partial, _ in results:  # in shard order, so reruns round identically
            total += partial
        return total / sum(count for _, count in results)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)

    def __enter__(self) -> "ShardedOperator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
