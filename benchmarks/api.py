"""`landscape_ray.plane` against `loss_landscapes.random_plane`, side by side in one process, from the call to the
values: the same in-memory MLP and data, a 21 × 21 filter-normalized plane.

    .venv/bin/python -m benchmarks.api                     # (a) small: 3,000 samples; (b) large: peer ≥ 30 s
    .venv/bin/python -m benchmarks.api --cases mnist       # (c) MNIST's MLP shape on 784 features
    .venv/bin/python -m benchmarks.api --cases small --repeat 9   # later calls, each beside a peer run
    pip install loss-landscapes==3.0.6                     # the peer (the `bench` extra), if missing

The peer runs as its README shows: `random_plane(model, Loss(cross_entropy, x, y), distance=2, steps=21,
normalization="filter")`, the whole data as one batch, twice: on one torch thread, and on torch's default (a thread
per core, what a user gets; on this 2-core machine it is 2.2× faster than one thread). `plane` runs with its defaults
(`compute.ray: auto`: a small job, under 5 s of one core, is computed in the calling process; a larger one on a
private Ray cluster, `actors: auto`) three ways: the first call of the process, later calls (`--repeat`, each beside
a peer run of its own: medians, and the median of their ratios, for a noisy machine), and, for scale, the service's
evaluator alone in this process (`Evaluator.evaluate` on every point, no store). The peer's default-thread time is
the median of its runs. The directions are each
tool's own random draw, so the values differ; the work per point is the same.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from loss_landscapes import random_plane
from loss_landscapes.metrics import Loss
from torch import nn

import landscape_ray
from landscape_ray.api import split_of, state_hash
from landscape_ray.compute.evaluator import Evaluator
from landscape_ray.compute.prepare import prepare
from landscape_ray.inputs.handed import handing
from landscape_ray.store.tiles import Store

DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice at import: one per core
CASES = {  # name: (samples, features, width): an MLP features → width → width → 10
    "small": (3000, 64, 64),
    "large": (6000, 256, 512),
    "mnist": (6000, 784, 512),  # the classic MNIST MLP's shape: most of its work is in its first layer
}


def mlp(features: int, width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


def peer(model, x, y, steps: int, threads: int = 1) -> float:
    """loss-landscapes' time on `threads` torch threads (1, or torch's default: every core), on a copy of `model`
    made before the clock starts: `random_plane` leaves the model it is given at the plane's last point."""
    model = copy.deepcopy(model)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    surface = random_plane(model, Loss(F.cross_entropy, x, y), distance=2, steps=steps, normalization="filter")
    seconds = time.perf_counter() - start
    torch.set_num_threads(before)
    assert surface.shape == (steps, steps) and np.isfinite(surface).all()
    return seconds


def ours(model, x, y, steps: int, out: str) -> float:
    start = time.perf_counter()
    ds = landscape_ray.plane(model, (x, y), x=(-1, 1, steps), y=(-1, 1, steps), store=out, log=lambda *_: None)
    seconds = time.perf_counter() - start
    assert bool(ds.done.all()) and np.isfinite(ds.train_loss.values).all()
    return seconds


def alone(store: str, model, x, y) -> float:
    """Every point of `store`'s spec by the service's evaluator in this process, one torch thread as an actor (the
    objects the spec names held as the call held them)."""
    spec = Store(store, mode="r").spec
    held = model.cpu().eval()
    with handing({spec.model.object: held, spec.data.object: {"train": split_of((x, y), None, "data")}}):
        start = time.perf_counter()
        assert state_hash(held.state_dict()) == spec.model.object
        evaluator = Evaluator.from_payload(spec, prepare(spec), "cpu")
        threads = torch.get_num_threads()
        torch.set_num_threads(spec.compute.cpus_per_actor)
        grid = np.stack(np.meshgrid(*(np.linspace(a.min, a.max, a.num) for a in (spec.grid.x, spec.grid.y))), -1)
        evaluator.evaluate(grid.reshape(-1, 2))
        torch.set_num_threads(threads)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="small,large", help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--samples", type=int, help="override the samples of every case")
    parser.add_argument("--steps", type=int, default=21)
    parser.add_argument("--repeat", type=int, default=1, help="later calls, each beside a peer run (medians shown)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            samples, features, width = CASES[name]
            samples = args.samples or samples
            model = mlp(features, width)
            x, y = torch.randn(samples, features), torch.randint(0, 10, (samples,))
            peer_s = peer(model, x, y, args.steps)
            peers = [peer(model, x, y, args.steps, DEFAULT_THREADS)]
            first = ours(model, x, y, args.steps, f"{tmp}/{name}-0.zarr")
            later = []
            for i in range(args.repeat):  # a noisy machine: each later call beside a peer run of its own
                later.append(ours(model, x, y, args.steps, f"{tmp}/{name}-{i + 1}.zarr"))
                peers.append(peer(model, x, y, args.steps, DEFAULT_THREADS))
            driver = alone(f"{tmp}/{name}-0.zarr", model, x, y)
            ratio = np.median([s / p for s, p in zip(later, peers[1:])])
            label = f"({'abc'[list(CASES).index(name)]}) {name}: MLP {features}-{width}-{width}-10, {samples:,} samples"
            rows.append((label, peer_s, np.median(peers), first, np.median(later), driver, ratio))
            print(f"{label}: peer {peer_s:.1f} s, plane {first:.1f} s (first call) {later[0]:.1f} s (next)", flush=True)
    print(f"\n{args.steps} × {args.steps}, {torch.get_num_threads()} CPU threads, later calls: {args.repeat}\n")
    print(
        f"| job | loss_landscapes.random_plane, 1 thread | the same, {DEFAULT_THREADS} threads (torch's default) "
        "| plane, first call | plane, later calls | the evaluator alone, 1 thread | first call / peer (1 thread) "
        f"| first call / peer ({DEFAULT_THREADS} threads) | later call / the peer run beside it |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, peer_s, peer_all, first, second, driver, ratio in rows:
        print(
            f"| {label} | {peer_s:.2f} s | {peer_all:.2f} s | {first:.2f} s | {second:.2f} s | {driver:.2f} s "
            f"| {first / peer_s:.2f}× | {first / peer_all:.2f}× | {ratio:.2f}× |"
        )


if __name__ == "__main__":
    main()
