"""Driver only: how the scheduler and the store scale with the grid, with an evaluator that returns at once.

    .venv/bin/python -m benchmarks.scale                          # 101², 401², 1001², tile: auto, 2 actors
    .venv/bin/python -m benchmarks.scale --sizes 101 --tiles 1,auto  # the per-tile cost: one point per tile

The evaluator is the real one (θ* + αδ + βη set per point, the metric run per split) with a one-weight
model, a metric that does not run it and one digits image, so a point costs well under a millisecond and
what is left is the service's own cost.
Each configuration runs in a fresh process (its own local Ray, 2 actors) and is measured three ways:

- scheduler: `evaluate_tiles` with a callback that drops the values (Ray, actors, the driver loop);
- store: `Store.write_tile` for every tile of a fresh store, in a loop (values precomputed), and a last `flush`;
- run: both together, as `landscape-ray run` does (`evaluate_tiles` writing into the store);

and reports the driver's peak RSS (the whole process) and the store's size and file count. Rates count from
the first actor ready (actor start-up is not the driver's cost); "run s" is that compute time. "tile" is
grid.tile and the work tile it resolves to, "chunk" the store's chunk (several small tiles share one).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def tiny():
    """One weight: setting a grid point costs next to nothing (the metric below never runs it)."""
    return torch.nn.Linear(1, 1)


def free(model, batch):
    """A metric that does not run the model: the evaluator's cost without the network's."""
    return torch.zeros((), dtype=torch.float64), 1


def folder_size(path: Path) -> tuple[int, int, int]:
    """Bytes of the files, bytes they take on disk (whole blocks), and how many there are."""
    files = [p.stat() for p in path.rglob("*") if p.is_file()]
    return sum(f.st_size for f in files), sum(f.st_blocks * 512 for f in files), len(files)


def measure(size: int, tile: str) -> dict:
    from landscape_ray.cluster import scheduler
    from landscape_ray.compute.prepare import prepare
    from landscape_ray.spec.grid import Grid
    from landscape_ray.spec.specfile import load_spec
    from landscape_ray.store.layout import create

    tmp = Path(tempfile.mkdtemp(prefix="scale-"))
    spec = load_spec(
        None,
        [
            "model.arch=benchmarks.scale:tiny",
            "data.subset=1",
            "data.batch_size=1",  # not auto: that probes the model with an image, which `tiny` cannot take
            "eval.metric=benchmarks.scale:free",
            "eval.device=cpu",
            f"grid.x={{num: {size}}}",
            f"grid.y={{num: {size}}}",
            f"grid.tile={tile}",
            "compute.actors=2",
            "output.render=[]",
        ],
    )
    workers = scheduler.preflight(spec)
    grid = Grid.from_spec(spec.grid, workers)
    spec = spec.model_copy(update={"grid": spec.grid.model_copy(update={"tile": list(grid.tile)})})
    payload = prepare(spec)
    tiles = grid.tiles()
    quiet = lambda *_: None

    sched = scheduler.evaluate_tiles(spec, payload, grid, tiles, lambda *_: None, log=quiet)

    store = create(tmp / "write.zarr", spec, grid, payload.variables, payload.directions)
    values = {name: np.zeros(int(np.prod(grid.tile))) for name in payload.variables}
    start = time.perf_counter()
    for t in tiles:
        n = int(np.prod(grid.tile_shape(t)))
        store.write_tile(t, {k: v[:n] for k, v in values.items()}, {"actor": "actor-0", "seconds": 0.0, "retries": 0})
    store.flush()
    write_s = time.perf_counter() - start

    store = create(tmp / "run.zarr", spec, grid, payload.variables, payload.directions)
    run = scheduler.evaluate_tiles(spec, payload, grid, tiles, store.write_tile, log=quiet)
    store.flush()  # as `landscape-ray run` does at the end
    assert store.done().all()
    nbytes, disk, files = folder_size(tmp / "run.zarr")
    rate = lambda summary: len(tiles) / (summary["wall_s"] - summary["first_actor_ready_s"])
    return {
        "grid": f"{size}²",
        "tile": f"{tile} ({'×'.join(map(str, grid.tile))})",
        "chunks": "×".join(map(str, grid.chunks)),
        "tiles": len(tiles),
        "sched_tiles_s": rate(sched),
        "write_ms": 1000 * write_s / len(tiles),
        "run_s": run["wall_s"] - run["first_actor_ready_s"],
        "run_tiles_s": rate(run),
        "points_s": rate(run) * grid.size / len(tiles),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "store_mb": nbytes / 2**20,
        "disk_mb": disk / 2**20,
        "files": files,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="101,401,1001", help="points per axis, comma-separated (default: 101,401,1001)")
    p.add_argument("--tiles", default="auto", help="grid.tile values, comma-separated (default: auto)")
    p.add_argument("--one", nargs=2, metavar=("SIZE", "TILE"), help=argparse.SUPPRESS)  # a child process
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1])))
        return
    rows = []
    for size in map(int, args.sizes.split(",")):
        for tile in args.tiles.split(","):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.scale", "--one", str(size), tile],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
            )
            if out.returncode:
                sys.exit(f"{size}² tile {tile} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nDriver-only scale, 2 actors, torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(
        "| grid | tile | chunk | tiles | scheduler tiles/s | store ms/tile | run s | run tiles/s | points/s "
        "| driver peak RSS MB | store MB (on disk) | files |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['grid']} | {r['tile']} | {r['chunks']} | {r['tiles']:,} | {r['sched_tiles_s']:,.0f} | "
            f"{r['write_ms']:.2f} | {r['run_s']:.1f} | {r['run_tiles_s']:,.0f} | {r['points_s']:,.0f} | "
            f"{r['rss_mb']:.0f} | {r['store_mb']:.1f} ({r['disk_mb']:.1f}) | {r['files']:,} |"
        )


if __name__ == "__main__":
    main()
