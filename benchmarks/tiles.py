"""`grid.tile: 1` against `grid.tile: auto` on a cheap model, side by side in one call.

    .venv/bin/python -m benchmarks.tiles               # the demo net, train split, 41 × 41, two actors
    .venv/bin/python -m benchmarks.tiles --num 21      # a quicker look

The demo's digits CNN (trained with jobs/quickstart-train.yaml into a temporary folder) is the cheap model: a
point is one pass over 1,437 8 × 8 images, a few milliseconds. The same `landscape-ray run jobs/quickstart.yaml`
runs twice as fresh processes, once with one point per tile (one Ray call, one result and one record per point)
and once with the default auto tiles; the compute time of each comes from the run's own summary (`done: ... in
N s`), so the start-up, which does not depend on tiles, is shown apart. The values of both stores must be equal.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import numpy as np

from .peer import demo_checkpoint, quickstart, timed


def run(checkpoint: Path, store: Path, num: int, tile: str) -> tuple[float, str]:
    """Compute seconds of `landscape-ray run` (from its summary) and its summary lines."""
    # No driver warmup: it would take over the tiles of a small grid, and the question is the cost of a tile to an actor
    _, out = timed(quickstart(checkpoint, num, store, f"grid.tile={tile}", "compute.warmup=false"))
    lines = [line for line in out.splitlines() if line.startswith(("done:", "startup:", "store "))]
    seconds = float(re.search(r"points in ([\d.]+) s", out).group(1))
    return seconds, "\n    ".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=41, help="grid points per axis (default: 41)")
    args = p.parse_args()
    from landscape_ray.store.tiles import Store

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = demo_checkpoint(tmp / "ckpt")
        rows = {tile: run(checkpoint, tmp / f"t{tile}" / "s.zarr", args.num, tile) for tile in ("1", "auto")}
        stores = {tile: Store(tmp / f"t{tile}" / "s.zarr", mode="r") for tile in rows}
        equal = np.array_equal(stores["1"].read("train_loss"), stores["auto"].read("train_loss"))
        files = {tile: sum(1 for f in (tmp / f"t{tile}" / "s.zarr").rglob("*") if f.is_file()) for tile in rows}
        chunks = {tile: stores[tile].root["train_loss"].chunks for tile in rows}

    n = args.num**2
    print(f"\ndemo digits CNN, train split (1,437 images), {args.num} x {args.num}, 2 actors x 1 thread")
    print("| grid.tile | compute s | points/s | store chunk | files | vs auto |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for tile, (seconds, _) in rows.items():
        ratio = seconds / rows["auto"][0]
        print(f"| {tile} | {seconds:.1f} | {n / seconds:.0f} | {chunks[tile]} | {files[tile]} | {ratio:.2f}× time |")
    print(f"values equal: {equal}")
    for tile, (_, lines) in rows.items():
        print(f"tile {tile}:\n    {lines}")


if __name__ == "__main__":
    main()
