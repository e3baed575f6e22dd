"""Service overhead: `landscape-ray run` against the bare evaluator doing the same points, side by side.

    .venv/bin/python -m benchmarks.overhead                  # 51 × 51, digits CNN, 500 train images
    .venv/bin/python -m benchmarks.overhead --num 21 --actors 2

Both sides use one CPU thread per evaluator. The bare side builds one Evaluator in
this process and evaluates every tile's points; the service side runs the job
(local Ray, actors, Zarr store, driver loop, progress lines) with the same spec.
The service's compute time is its summary's wall time (first dispatch to last
tile written); start-up (Ray, actors, inputs, store creation) is reported apart.
With `--actors N` the service uses N actors and the comparison is against
1/N of the bare time (perfect scaling).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from landscape_ray.compute.evaluator import Evaluator
from landscape_ray.compute.prepare import prepare
from landscape_ray.job import run
from landscape_ray.spec.grid import Grid
from landscape_ray.spec.specfile import load_spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=51, help="grid points per axis (default: 51)")
    p.add_argument("--subset", type=int, default=500, help="train images per point (default: 500)")
    p.add_argument("--actors", type=int, default=1, help="service actors (default: 1)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        spec = load_spec(
            None,
            [
                "model.arch=digits_cnn",
                "data.dataset=digits",
                f"data.subset={args.subset}",
                "data.batch_size=1024",
                f"grid.x.num={args.num}",
                f"grid.y={{num: {args.num}}}",
                f"grid.tile={args.num}",
                "eval.device=cpu",
                f"compute.actors={args.actors}",
                "compute.cpus_per_actor=1",
                f"output.store={Path(tmp) / 's.zarr'}",
                "output.render=[]",
            ],
        )
        grid = Grid.from_spec(spec.grid)

        torch.set_num_threads(1)
        ev = Evaluator.from_payload(spec, prepare(spec), "cpu")
        ev.evaluate(grid.coords(grid.tiles()[0])[:2])  # warm-up, as an actor's first tile would be
        start = time.perf_counter()
        bare = {}
        for tile in grid.tiles():
            bare[tile] = ev.evaluate(grid.coords(tile))["train_loss"]
        bare_s = time.perf_counter() - start

        start = time.perf_counter()
        summary = run(spec, log=lambda *_: None)
        total_s = time.perf_counter() - start
        service_s = summary["wall_s"]

        stored = xr.open_zarr(spec.output.store).train_loss.values
        same = all(np.array_equal(stored[grid.slices(t)].ravel(), v) for t, v in bare.items())

    ideal = bare_s / args.actors
    print(
        f"{grid.size} points ({args.num} x {args.num}), digits CNN, {args.subset} images/point, "
        f"torch {torch.__version__}"
    )
    print(f"bare evaluator, 1 thread:          {bare_s:8.2f} s  {grid.size / bare_s:7.1f} points/s")
    print(
        f"service, {args.actors} actor(s) x 1 thread:    {service_s:8.2f} s  {grid.size / service_s:7.1f} points/s"
        f"  (start-up {total_s - service_s:.1f} s apart)"
    )
    print(f"overhead vs bare/{args.actors}:                {100 * (service_s / ideal - 1):+7.2f} %")
    print(f"values identical to the bare evaluator: {same}")


if __name__ == "__main__":
    main()
