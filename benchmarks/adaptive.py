"""`grid.mode: progressive` and `adaptive`, and `eval.samples: adaptive`, against `uniform`, side by side in one call.

    .venv/bin/python -m benchmarks.adaptive                  # the demo plane (51 × 51) and a resnet20 plane (37 × 37)
    .venv/bin/python -m benchmarks.adaptive --skip-resnet    # the demo alone
    .venv/bin/python -m benchmarks.adaptive --num 21 --resnet-num 11   # a quicker look
    .venv/bin/python -m benchmarks.adaptive --skip-resnet --samples     # and the demo with eval.samples: adaptive
    .venv/bin/python -m benchmarks.adaptive --skip-demo --resnet-data digits   # resnet20 on digits as CIFAR images

Two planes, each run three times as fresh `landscape-ray run` processes (2 actors × 1 thread, the driver's warmup
on), in the modes uniform, progressive and adaptive (default tolerance):
- the demo: jobs/quickstart.yaml, the digits CNN trained with jobs/quickstart-train.yaml, train and test splits;
- resnet20 on 1,000 CIFAR-shaped images (`dataset: synthetic`, seeded random images and labels), trained for 10
  epochs with `landscape-ray train` (it memorises them: a sharp basin of its own), the plane on the same images;
  uniform and adaptive only (progressive computes the uniform run's points, as the demo shows).
  With `--resnet-data digits`, the images are scikit-learn's digits as 32 × 32 × 3 images in CIFAR-10's python
  layout (a task the net learns rather than memorises: a smoother plane, nearer a real CIFAR-10 net's).

Times are from the command's start: the first complete picture is when the whole plane can be drawn (uniform: its
last point, the `done:` line; progressive and adaptive: the first pass, the `pass 1/N done` line), the wall time is
when the process ends. Work is the share of a uniform run's point evaluations done (points evaluated / points of the
grid). The error is the store's picture (`landscape_ray.open(path, filled=True)`, what `render` draws) against the
uniform run's values at every point: max absolute, max relative, and the share within 3 % + 0.003 (issue 24's
tolerance), for every loss variable. Evaluated points must equal the uniform run's bit for bit (`exact`).
For the demo, the picture after each progressive pass is also measured. With `--samples`, the demo also runs with
`eval.samples: adaptive` (default tolerance) on the uniform grid, on the adaptive grid, and with `sample_ceiling: 10`
(the paper's vmax): work is then the share of a uniform run's sample evaluations (Σ <split>_samples over points ×
split sizes), values above the ceiling are compared clipped to it (what a picture with vmax 10 draws), and `exact`
compares the points evaluated on all their samples.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .peer import ROOT, demo_checkpoint, quickstart

MODES = ("uniform", "progressive", "adaptive")
SAMPLED = {  # --samples: name → overrides (the grid mode first)
    "samples": ("grid.mode=uniform", "eval.samples=adaptive"),
    "adaptive + samples": ("grid.mode=adaptive", "eval.samples=adaptive"),
    "samples, ceiling 10": ("grid.mode=uniform", "eval.samples=adaptive", "eval.sample_ceiling=10"),
}


def work(store) -> tuple[float, np.ndarray]:
    """(share of a uniform full-data run's sample evaluations, points evaluated on every sample)."""
    done, samples = store.done(), store.samples()
    if not samples:
        return done.mean(), done
    whole = np.logical_and.reduce([n == size for n, size in samples.values()])
    share = sum(n.sum() for n, _ in samples.values()) / (done.size * sum(size for _, size in samples.values()))
    return share, whole


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


def digits_as_cifar(root: Path) -> Path:
    """scikit-learn's digits as a CIFAR-10 python folder: 1,000 train images (5 batches of 200) and 797 test, each
    8 × 8 digit scaled to 0-255, repeated to 32 × 32 and to 3 channels: a task a resnet20 learns, not memorises."""
    import pickle

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images * (255 / 16), np.ones((4, 4))).round().astype(np.uint8)  # (n, 32, 32)
    images = np.repeat(images[:, None], 3, axis=1).reshape(len(images), -1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = {f"data_batch_{i + 1}": slice(200 * i, 200 * (i + 1)) for i in range(5)} | {"test_batch": slice(1000, None)}
    for name, rows in parts.items():
        with open(folder / name, "wb") as f:
            pickle.dump({"data": images[rows], "labels": digits.target[rows].tolist()}, f)
    return root


def resnet20(tmp: Path, num: int, data_kind: str = "random") -> tuple[str, dict[str, list[str]]]:
    """resnet20 trained on 1,000 CIFAR-shaped images (random ones with random labels, or digits), and the commands
    of its plane in each mode."""
    data = ["data.dataset=synthetic", "data.kwargs={size: 1000}", "data.splits=[train]"]
    if data_kind == "digits":
        data = ["data.dataset=cifar10", f"data.root={digits_as_cifar(tmp / 'digits32')}", "data.splits=[train]"]
    train = [sys.executable, "-m", "landscape_ray", "train", "jobs/quickstart-train.yaml"]
    sets = ("model.arch=resnet20", "epochs=10", "optimizer.lr=0.01", "optimizer.milestones=[8]", *data)
    train += [f"--set={s}" for s in (*sets, f"out={tmp / 'resnet20'}")]
    subprocess.run(train, cwd=ROOT, check=True, capture_output=True)
    sets = [
        "model.arch=resnet20",
        f"model.checkpoint={tmp / 'resnet20' / 'final.pt'}",
        *data,
        f"grid.x={{min: -1, max: 1, num: {num}}}",
        f"grid.y={{min: -1, max: 1, num: {num}}}",
        "output.render=[]",
    ]
    cmd = [sys.executable, "-m", "landscape_ray", "run", "jobs/quickstart.yaml", *(f"--set={s}" for s in sets)]
    images = "random CIFAR-shaped images and labels" if data_kind == "random" else "digits as 32 x 32 x 3 images"
    title = f"resnet20 (10 epochs), 1,000 {images}, {num} x {num}"
    modes = ("uniform", "adaptive")  # progressive computes the uniform run's points (the demo shows it)
    return title, {m: [*cmd, f"--set=output.store={tmp / f'r-{m}.zarr'}", f"--set=grid.mode={m}"] for m in modes}


def demo(tmp: Path, num: int, samples: bool = False) -> tuple[str, dict[str, list[str]]]:
    checkpoint = demo_checkpoint(tmp / "ckpt")
    modes = {m: (f"grid.mode={m}",) for m in MODES} | (SAMPLED if samples else {})
    cmds = {
        m: quickstart(checkpoint, num, tmp / f"d-{i}.zarr", "data.splits=[train, test]", *sets)
        for i, (m, sets) in enumerate(modes.items())
    }
    return f"demo digits CNN, train and test splits, {num} x {num}", cmds


def compare(title: str, cmds: dict[str, list[str]]) -> dict:
    import landscape_ray
    from landscape_ray.store.tiles import Store

    runs = {}
    for mode, cmd in cmds.items():
        wall, lines = timed_lines(cmd)
        store = Path(next(c.split("=", 2)[2] for c in cmd if c.startswith("--set=output.store=")))
        passes = {"--set=grid.mode=progressive", "--set=grid.mode=adaptive"} & set(cmd)
        first = "pass 1/" if passes else "done:"
        runs[mode] = (store, wall, at(lines, first), lines)
    uniform = Store(runs["uniform"][0], mode="r")
    losses = [n for n in uniform.variables if n.endswith("_loss")]
    exact = {n: uniform.read(n) for n in uniform.variables}
    print(f"\n{title}, 2 actors x 1 thread")
    print(
        "| grid.mode | work | first complete picture s | wall s | max abs error | max rel error | within 3 % + 0.003 "
        "| evaluated points exact |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for mode, (store, wall, first, _) in runs.items():
        opened = Store(store, mode="r")
        share, whole = work(opened)
        done = opened.done() & whole
        ceiling = opened.spec.eval.sample_ceiling or np.inf
        ds = landscape_ray.open(store, filled=True)
        same = all(np.array_equal(ds[n].values[done], exact[n][done]) for n in uniform.variables)
        if not same:  # points on all the data, at another batch size (the sampled runs' cap): how far off
            gap = max(np.max(np.abs(ds[n].values[done] / exact[n][done] - 1)) for n in losses)
            same = f"off by {gap:.1e} rel"
        err = {n: np.abs(np.minimum(ds[n].values, ceiling) - np.minimum(exact[n], ceiling)) for n in losses}
        worst = max(e.max() for e in err.values())
        rel = max((e / np.abs(exact[n])).max() for n, e in err.items())
        within = min((e <= 0.03 * np.abs(exact[n]) + 0.003).mean() for n, e in err.items())
        print(
            f"| {mode} | {share:.1%} ({opened.done().sum()} points) | {first:.1f} | {wall:.1f} | {worst:.4f} | "
            f"{rel:.2%} | {within:.1%} | {same} |"
        )
    for mode, (*_, lines) in runs.items():
        summary = [
            line for _, line in lines if line.startswith(("done:", "startup:", "store ", "adaptive:", "samples"))
        ]
        print(f"{mode}:\n    " + "\n    ".join(summary))
    return runs


def passes_table(runs: dict) -> None:
    """The picture after each progressive pass against the uniform values (train_loss)."""
    import xarray as xr

    from landscape_ray.spec.passes import Passes
    from landscape_ray.store.filled import fill
    from landscape_ray.store.tiles import Store

    uniform = xr.open_zarr(runs["uniform"][0]).load()
    passes = Passes(Store(runs["progressive"][0], mode="r").grid, "progressive")
    names = Store(runs["uniform"][0], mode="r").variables
    lines = runs["progressive"][3]
    print("\nthe picture after each progressive pass (train_loss, filled as render draws it) against uniform values")
    print("| pass | spacing | points done | at s | max abs error | max rel error | within 3 % + 0.003 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    exact = uniform.train_loss.values
    for level in range(passes.count):
        done = passes.levels <= level
        partial = uniform.assign(
            {k: (uniform[k].dims, np.where(done, uniform[k].values, np.nan)) for k in names}
        ).assign(done=(uniform.done.dims, done))
        err = np.abs(fill(partial, passes).train_loss.values - exact)
        within = (err <= 0.03 * np.abs(exact) + 0.003).mean()
        print(
            f"| {level + 1} | {passes.spacing(level)} | {done.sum()} ({100 * done.mean():.1f} %) | "
            f"{at(lines, f'pass {level + 1}/'):.1f} | {err.max():.4f} | {(err / np.abs(exact)).max():.2%} | "
            f"{within:.1%} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=51, help="demo grid points per axis (default: 51)")
    p.add_argument("--resnet-num", type=int, default=37, help="resnet20 grid points per axis (default: 37)")
    p.add_argument("--skip-resnet", action="store_true", help="the demo alone")
    p.add_argument("--samples", action="store_true", help="also the demo with eval.samples: adaptive")
    p.add_argument("--resnet-data", choices=["random", "digits"], default="random", help="resnet20's images")
    p.add_argument("--skip-demo", action="store_true", help="resnet20 alone")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_demo:
            runs = compare(*demo(tmp, args.num, args.samples))
            passes_table(runs)
        if not args.skip_resnet:
            compare(*resnet20(tmp, args.resnet_num, args.resnet_data))


if __name__ == "__main__":
    main()
