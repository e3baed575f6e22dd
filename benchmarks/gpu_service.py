"""The GPU path in one command: the bare evaluator against `landscape-ray run` of the same shipped spec, side by side.

    python -m benchmarks.gpu_service                       # on a GPU machine: resnet56, 50,000 CIFAR-shaped images
    python -m benchmarks.gpu_service --grid 51             # the paper's whole 51 × 51 surface (target: ≤ 5 min)
    python -m benchmarks.gpu_service --device cpu --images 300 --grid 3 --spec jobs/paper/resnet20-surface.yaml  # smoke

Three steps, one table (issue 22's):
1. `benchmarks.gpu`'s evaluator modes (fp32, bf16 + channels_last + BN folded, + torch.compile) at a fixed batch;
2. the bare evaluator built from the spec as shipped (`data.batch_size: auto`, its precision and folding), warmed
   up as an actor warms up, then timed over `--points` points;
3. `landscape-ray run` of that spec on a private local Ray cluster, into a fresh store; from the run's record:
   points/s while computing (the actors' busy time), wall time, first tile, each actor's warm-up (compilation).
The service's overhead is 1 − (its points/s while computing) / (the bare evaluator's).

The data are seeded random CIFAR-shaped images (`data.dataset: synthetic`) and θ* the model's initialisation, so
the machine needs no data set; only the timings are of interest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from landscape_ray.compute.evaluator import Evaluator
from landscape_ray.compute.prepare import prepare
from landscape_ray.compute.speedups import set_matmul_precision
from landscape_ray.spec.specfile import load_spec


def shipped(path: str, images: int, grid: int, device: str, store: Path) -> list[str]:
    """`--set` overrides that run the shipped spec on synthetic data at the chosen size, into `store`."""
    return [
        "model.checkpoint=null",
        "data.dataset=synthetic",
        "data.root=null",
        f"data.kwargs={{size: {images}, shape: [3, 32, 32], classes: 10}}",
        f"grid.x.num={grid}",
        f"grid.y.num={grid}",
        f"eval.device={device}",
        f"output.store={store}",
        "output.render=[]",
        "compute.warmup=false",  # the actors alone (a GPU run has no driver warm-up anyway)
    ]


def bare(spec, points: int) -> dict:
    """The evaluator alone, as an actor builds and warms it, timed over `points` points."""
    payload = prepare(spec)
    ev = Evaluator.from_payload(spec, payload, "cuda" if spec.eval.device != "cpu" else "cpu")
    set_matmul_precision(ev.device, spec.eval.precision)
    warm = ev.warm()
    coords = np.stack([np.linspace(-0.5, 0.5, points), np.linspace(0.3, -0.3, points)], axis=1)
    start = time.perf_counter()
    ev.evaluate(coords)
    ev.synchronize()
    seconds = time.perf_counter() - start
    images = len(payload.splits["train"])
    return {"points_per_s": points / seconds, "img_per_s": images * points / seconds, "batch": ev.batch_size, **warm}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="jobs/paper/resnet56-surface.yaml")
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--grid", type=int, default=15, help="points per axis of the service's run (51: the paper's)")
    p.add_argument("--points", type=int, default=5, help="points the bare evaluator is timed on")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--skip-modes", action="store_true", help="leave out step 1 (benchmarks.gpu's modes)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "surface.zarr"
        overrides = shipped(args.spec, args.images, args.grid, args.device, store)
        if not args.skip_modes and args.device != "cpu":
            subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--images", str(args.images)], check=True)
        spec = load_spec(args.spec, overrides)
        b = bare(spec, args.points)
        command = [sys.executable, "-m", "landscape_ray", "run", args.spec]
        for o in overrides:
            command += ["--set", o]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env)
        wall = time.perf_counter() - start
        info = subprocess.run(
            [sys.executable, "-m", "landscape_ray", "info", str(store), "--json"], check=True, capture_output=True
        )
        run = json.loads(info.stdout)[-1]
    actors = {k: a for k, a in run["actors"].items() if k != "driver"}
    # Per actor (one per GPU), while it computes: comparable with the bare evaluator on one device.
    computing = float(np.mean([a["points"] / a["busy_s"] for a in actors.values() if a["busy_s"]] or [np.nan]))
    images = args.images
    print(f"\n{spec.model.arch}, {images} images, batch {b['batch']}, {spec.eval.precision}, fold {spec.eval.fold_bn}")
    rows = [
        ("bare evaluator, shipped spec", b["img_per_s"], b["points_per_s"], f"warm-up {b['warm_s']:.1f} s"),
        (
            f"landscape-ray run, {args.grid}×{args.grid}, per actor",
            computing * images,
            computing,
            f"{run['points']} points, wall {wall:.1f} s from the command, first tile "
            f"{run['startup'].get('first_tile_s', float('nan')):.1f} s, warm-up "
            + ", ".join(f"{a.get('warm_s', 0):.1f}" for a in actors.values())
            + " s",
        ),
    ]
    print("| what | img/s | points/s | note |\n| --- | ---: | ---: | --- |")
    for what, img_s, pts, note in rows:
        print(f"| {what} | {img_s:,.0f} | {pts:.2f} | {note} |")
    print(f"service overhead while computing: {100 * (1 - computing / b['points_per_s']):.1f} % of the bare evaluator")


if __name__ == "__main__":
    main()
