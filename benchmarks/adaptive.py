"""`grid.mode: progressive` against `uniform` on the demo's plane, side by side in one call.

    .venv/bin/python -m benchmarks.adaptive              # the demo: digits CNN, train and test splits, 51 × 51
    .venv/bin/python -m benchmarks.adaptive --num 21     # a quicker look

The demo's digits CNN (trained with jobs/quickstart-train.yaml into a temporary folder) and its spec,
`landscape-ray run jobs/quickstart.yaml` with both splits and no pictures, run twice as fresh processes: uniform (the
default, with the driver's warmup) and progressive. Times are from the command's start: the first complete picture
is when the whole plane can be drawn (uniform: its last point, the `done:` line; progressive: the first pass, its
`pass 1/N done` line), the wall time when the process ends. Both stores must hold the same values, bit for bit
(their tiles may differ: `tile: auto` follows each driver's estimate of a point's cost).

The picture after each pass is then measured against the uniform run: the store's values on that pass's lattice,
filled in between as `render` and `landscape_ray.open(path, filled=True)` do (store/filled.py), compared at every
point with the uniform values (max absolute and relative error, and the share of points within 3 % + 0.003, the
tolerance issue 24 sets).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from .peer import ROOT, demo_checkpoint, quickstart


def timed_lines(cmd: list[str]) -> tuple[float, list[tuple[float, str]]]:
    """Wall seconds of `cmd` and each line it printed with the seconds since its start."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.perf_counter() - start, line.rstrip()) for line in proc.stdout]
    if proc.wait():
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n" + "\n".join(line for _, line in lines[-30:]))
    return time.perf_counter() - start, lines


def at(lines: list[tuple[float, str]], prefix: str) -> float:
    return next(t for t, line in lines if line.startswith(prefix))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=51, help="grid points per axis (default: 51)")
    args = p.parse_args()
    import xarray as xr

    from landscape_ray.spec.passes import Passes
    from landscape_ray.store.filled import fill
    from landscape_ray.store.tiles import Store

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = demo_checkpoint(Path(tmp) / "ckpt")
        runs = {}
        for mode in ("uniform", "progressive"):
            store = Path(tmp) / f"{mode}.zarr"
            cmd = quickstart(checkpoint, args.num, store, "data.splits=[train, test]", f"grid.mode={mode}")
            wall, lines = timed_lines(cmd)
            first = at(lines, "done:" if mode == "uniform" else "pass 1/")
            runs[mode] = (store, wall, first, lines)
        stores = {mode: Store(store, mode="r") for mode, (store, *_) in runs.items()}
        names = [*stores["uniform"].variables, "done"]
        equal = all(
            np.array_equal(stores["uniform"].read(k), stores["progressive"].read(k), equal_nan=True) for k in names
        )

        print(f"\ndemo digits CNN, train and test splits, {args.num} x {args.num}, 2 actors x 1 thread")
        print("| grid.mode | first complete picture s | wall s | points |")
        print("| --- | ---: | ---: | ---: |")
        for mode, (_, wall, first, _) in runs.items():
            print(f"| {mode} | {first:.1f} | {wall:.1f} | {args.num**2} |")
        print(f"values equal, bit for bit (every array, done included): {equal}")

        uniform = xr.open_zarr(runs["uniform"][0]).load()
        passes = Passes(stores["progressive"].grid, "progressive")
        lines = runs["progressive"][3]
        print("\nthe picture after each pass (train_loss, filled as render draws it) against the uniform values")
        print("| pass | spacing | points done | at s | max abs error | max rel error | within 3 % + 0.003 |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        exact = uniform.train_loss.values
        for level in range(passes.count):
            done = passes.levels <= level
            partial = uniform.assign(
                {k: (uniform[k].dims, np.where(done, uniform[k].values, np.nan)) for k in stores["uniform"].variables}
            ).assign(done=(uniform.done.dims, done))
            drawn = fill(partial, passes).train_loss.values
            err = np.abs(drawn - exact)
            within = (err <= 0.03 * np.abs(exact) + 0.003).mean()
            print(
                f"| {level + 1} | {passes.spacing(level)} | {done.sum()} ({100 * done.mean():.1f} %) | "
                f"{at(lines, f'pass {level + 1}/'):.1f} | {err.max():.4f} | {(err / np.abs(exact)).max():.2%} | "
                f"{within:.1%} |"
            )
        for mode, (*_, lines) in runs.items():
            summary = [line for _, line in lines if line.startswith(("done:", "startup:", "store "))]
            print(f"{mode}:\n    " + "\n    ".join(summary))


if __name__ == "__main__":
    main()
