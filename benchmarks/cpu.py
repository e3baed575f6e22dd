"""CPU benchmark: the reference-style loop against each evaluator mode, in one process, same model, data and grid.

    .venv/bin/python -m benchmarks.cpu                 # resnet20, 1,000 CIFAR-shaped images, 6 grid points
    .venv/bin/python -m benchmarks.cpu --points 4 --modes fp32,bf16-cl

Baseline ("reference-style", as the paper's public code evaluates a grid point):
per-sample normalization in a Dataset, a DataLoader at batch 128, fp32, NCHW,
weights set with `p.data = w + step * d` per parameter, loss summed per batch.

Modes of the evaluator (data resident as uint8, normalized per batch, weights
updated in place with torch._foreach_*, one host sync per point):
  fp32        NCHW fp32                  fp32-cl     channels_last fp32
  bf16-cl     channels_last, bf16 autocast (loss reduced in fp32)
  fp32-cl-fold / bf16-cl-fold            BN folded into the preceding convs (eval.fold_bn)
  fp32-cl-compile / bf16-cl-compile      the same under torch.compile (compile time reported apart)

Prints a table: seconds per point, img/s, points/s, speed-up over the baseline,
and the max absolute / relative loss difference against the evaluator's fp32.
A second table repeats fp32 vs bf16 on a *trained* net (the demo's digits CNN) over
a 21 × 21 filter-normalized surface: the exactness figures the README quotes.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from landscape_ray.compute.evaluator import Evaluator, Options
from landscape_ray.inputs.checkpoints import read_checkpoint
from landscape_ray.inputs.data import ImageSplit, load_splits, normalization
from landscape_ray.inputs.directions import make_directions
from landscape_ray.inputs.models import build
from landscape_ray.spec.grid import Grid
from landscape_ray.spec.schema import DataSpec, DirectionsSpec, GridSpec
from landscape_ray.spec.training import TrainSpec
from landscape_ray.train import train

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
MODES = {  # name: Evaluator options
    "fp32": dict(precision="fp32", channels_last=False),
    "fp32-cl": dict(precision="fp32", channels_last=True),
    "bf16-cl": dict(precision="bf16", channels_last=True),
    "fp32-cl-fold": dict(precision="fp32", channels_last=True, fold=True),
    "bf16-cl-fold": dict(precision="bf16", channels_last=True, fold=True),
    "fp32-cl-compile": dict(precision="fp32", channels_last=True, compile=True),
    "bf16-cl-compile": dict(precision="bf16", channels_last=True, compile=True),
}


class PerSample(Dataset):
    """What torchvision's ToTensor + Normalize do: one image at a time, every pass."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        self.mean, self.std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return (torch.from_numpy(self.images[i]).float() / 255 - self.mean) / self.std, int(self.labels[i])


def baseline(model, state, directions, images, labels, coords, device="cpu"):
    loader = DataLoader(PerSample(images, labels), batch_size=128, shuffle=False)
    params = [p for _, p in model.named_parameters()]
    names = [n for n, _ in model.named_parameters()]
    weights = [torch.from_numpy(state[n]).to(device) for n in names]
    dirs = [[torch.from_numpy(d[n]).to(device) for n in names] for d in directions]
    losses = []
    model.eval()
    for a, b in coords:
        for p, w, dx, dy in zip(params, weights, *dirs):
            p.data = w + a * dx + b * dy
        total, n = 0.0, 0
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                total += F.cross_entropy(model(x), y, reduction="sum").item()
                n += len(y)
        losses.append(total / n)
    return np.array(losses)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def speed_table(args) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images).astype(np.int64)
    model = build(args.model)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    directions = make_directions(model, DirectionsSpec(seed=0), 2)
    coords = np.stack([np.linspace(-0.5, 0.5, args.points), np.linspace(0.3, -0.3, args.points)], axis=1)

    rows = []
    ref, seconds = timed(lambda: baseline(build(args.model), state, directions, images, labels, coords))
    rows.append(("baseline (reference-style)", seconds / len(coords), None, ref))
    exact = None
    for name in args.modes.split(","):
        ev = Evaluator(
            build(args.model),
            state,
            directions,
            {"train": ImageSplit(images, labels)},
            MEAN,
            STD,
            Options(batch_size=args.batch, **MODES[name]),
        )
        _, warm = timed(lambda ev=ev: ev.evaluate(coords[:1]))  # first call: allocations, autotuning or compilation
        out, seconds = timed(lambda ev=ev: ev.evaluate(coords)["train_loss"])
        rows.append((f"{name} (first point {warm:.1f} s)", seconds / len(coords), name, out))
        if name == "fp32":
            exact = out
    exact = ref if exact is None else exact
    base = rows[0][1]
    print(
        f"\n{args.model}, {args.images} images 3x32x32, {len(coords)} points, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(
        f"{'mode':<40} {'s/point':>8} {'img/s':>9} {'points/s':>9} {'speed-up':>9} "
        f"{'max|Δ| vs fp32':>15} {'max rel':>9}"
    )
    for label, per_point, _, out in rows:
        diff = np.abs(out - exact)
        print(
            f"{label:<40} {per_point:8.3f} {args.images / per_point:9.0f} {1 / per_point:9.3f} "
            f"{base / per_point:8.2f}x "
            f"{diff.max():15.2e} {(diff / np.abs(exact)).max():9.2e}"
        )


def exactness_table(args) -> None:
    """fp32 vs bf16 on a trained net over a surface: how far the fast path moves the picture."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = train(
            TrainSpec.model_validate(
                {
                    "epochs": 8,
                    "batch_size": 64,
                    "device": "cpu",
                    "out": tmp,
                    "optimizer": {"lr": 0.05, "milestones": [6]},
                }
            ),
            log=lambda *_: None,
        )
        model = build("digits_cnn")
        model.load_state_dict(read_checkpoint(ckpt))
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    data = DataSpec(dataset="digits", splits=["train", "test"])
    splits = load_splits(data)
    directions = make_directions(model, DirectionsSpec(seed=0), 2)
    grid = Grid.from_spec(GridSpec(x={"num": 21}, y={"num": 21}))
    coords = np.concatenate([grid.coords(t) for t in grid.tiles()])
    results = {}
    for precision in ("fp32", "bf16"):
        ev = Evaluator(
            build("digits_cnn"),
            state,
            directions,
            splits,
            *normalization(data),
            Options(batch_size=2048, precision=precision, channels_last=True),
        )
        results[precision] = ev.evaluate(coords)
    print(
        f"\ntrained digits CNN (the demo's recipe), 21 x 21 surface on [-1, 1]^2, "
        f"train {len(splits['train'])} / test {len(splits['test'])} images"
    )
    print(f"{'variable':<12} {'range':>22} {'max|Δ| bf16':>12} {'max rel':>9} {'max|Δ| where loss<1':>20}")
    for var in ("train_loss", "test_loss", "train_acc", "test_acc"):
        a, b = results["fp32"][var], results["bf16"][var]
        diff = np.abs(a - b)
        low = diff[results["fp32"][var.replace("acc", "loss")] < 1].max()
        print(
            f"{var:<12} {f'{a.min():.4g} .. {a.max():.4g}':>22} {diff.max():12.2e} "
            f"{(diff / np.maximum(np.abs(a), 1e-12)).max():9.2e} {low:20.2e}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", help="zoo name (default: resnet20)")
    p.add_argument("--images", type=int, default=1000, help="CIFAR-shaped images (default: 1000)")
    p.add_argument("--points", type=int, default=6, help="grid points per mode (default: 6)")
    p.add_argument("--batch", type=int, default=500, help="evaluator batch size (default: 500)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated evaluator modes (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--skip-exactness", action="store_true", help="only the speed table")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    speed_table(args)
    if not args.skip_exactness:
        exactness_table(args)


if __name__ == "__main__":
    main()
