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
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run(checkpoint: Path, store: Path, num: int, tile: str) -> tuple[float, str]:
    """Compute seconds of `landscape-ray run` (from its summary) and its summary lines."""
    cmd = [
        sys.executable,
        "-m",
        "landscape_ray",
        "run",
        "jobs/quickstart.yaml",
        f"--set=model.checkpoint={checkpoint}",
        "--set=data.splits=[train]",
        f"--set=grid.x={{min: -1, max: 1, num: {num}}}",
        f"--set=grid.y={{min: -1, max: 1, num: {num}}}",
        f"--set=grid.tile={tile}",
        f"--set=output.store={store}",
        "--set=output.render=[]",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode:
        sys.exit(f"tile {tile}: landscape-ray run failed:\n{out.stderr[-3000:]}")
    lines = [line for line in out.stdout.splitlines() if line.startswith(("done:", "startup:", "store "))]
    seconds = float(re.search(r"points in ([\d.]+) s", out.stdout).group(1))
    return seconds, "\n    ".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=41, help="grid points per axis (default: 41)")
    args = p.parse_args()
    from landscape_ray.spec import load_spec
    from landscape_ray.store import Store
    from landscape_ray.train import TrainSpec, train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = load_spec(ROOT / "jobs" / "quickstart-train.yaml", [f"out={tmp / 'ckpt'}"], model=TrainSpec)
        checkpoint = train(spec, log=lambda *_: None)
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
