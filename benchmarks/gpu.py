"""GPU benchmark for the lent device machine: the evaluator driven directly (no Ray, no Zarr: that image has neither).

    python -m benchmarks.gpu                      # resnet56, 50,000 CIFAR-shaped images on the device
    python -m benchmarks.gpu --images 20000 --points 3 --modes fp32,bf16-cl,bf16-cl-compile

Runs in one process on one card: the measured bf16 matmul peak (a large bf16 GEMM), the
reference-style loop (DataLoader at batch 128, fp32, per-sample normalization; on a subset, then
scaled per image), and each evaluator mode on the same model, data and grid points. Prints img/s,
points/s, speed-up over the baseline, the fraction of the measured bf16 peak the evaluator's
useful FLOPs reach, and the max loss difference against the evaluator's fp32.

Needs only torch, torchvision, numpy, pydantic and PyYAML on the device; carry pydantic/PyYAML as
wheels if the image lacks them (see the device tool's README). Not yet run: the task that wrote it
was not lent a device machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.cpu import MEAN, MODES, STD, baseline
from landscape_ray.compute.evaluator import Evaluator, Options
from landscape_ray.compute.speedups import set_matmul_precision
from landscape_ray.inputs.data import ImageSplit
from landscape_ray.inputs.directions import make_directions
from landscape_ray.inputs.models import build
from landscape_ray.spec.schema import DirectionsSpec


def bf16_peak(n: int = 8192, reps: int = 20) -> float:
    """Measured bf16 matmul TFLOP/s of this card."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def model_flops(model, shape) -> float:
    """Forward FLOPs per image (2 × multiply-adds of conv and linear layers)."""
    total = 0

    def hook(module, inp, out):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            total += (
                2 * out.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            )
        elif isinstance(module, torch.nn.Linear):
            total += 2 * out.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--points", type=int, default=3)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument(
        "--baseline-images", type=int, default=5_000, help="images for the slow reference loop (default: 5000)"
    )
    p.add_argument("--modes", default="fp32,fp32-cl,bf16-cl,bf16-cl-fold,bf16-cl-compile")
    args = p.parse_args()

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, args.images).astype(np.int64)
    model = build(args.model)
    flops = model_flops(model, (3, 32, 32))
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    directions = make_directions(model, DirectionsSpec(seed=0), 2)
    coords = np.stack([np.linspace(-0.5, 0.5, args.points), np.linspace(0.3, -0.3, args.points)], axis=1)
    peak = bf16_peak()
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, measured bf16 matmul peak {peak:.0f} TFLOP/s, "
        f"{args.model} {flops / 1e6:.1f} MFLOP/image, {args.images} images, {len(coords)} points"
    )

    n = args.baseline_images
    start = time.perf_counter()
    ref = baseline(build(args.model).cuda(), state, directions, images[:n], labels[:n], coords[:1], device="cuda")
    base_img_s = n / (time.perf_counter() - start)
    print(f"{'mode':<36} {'img/s':>10} {'points/s':>9} {'speed-up':>9} {'% of bf16 peak':>15} {'max|Δ| vs fp32':>15}")
    print(
        f"{'baseline (reference-style, fp32)':<36} {base_img_s:10.0f} {base_img_s / args.images:9.3f} {1:8.2f}x "
        f"{100 * base_img_s * flops / 1e12 / peak:14.2f}% {'':>15}"
    )
    exact = None
    for name in args.modes.split(","):
        # This script is an entry point: it sets the process-wide cuDNN/TF32 flags as an actor does.
        set_matmul_precision(torch.device("cuda"), MODES[name].get("precision", "fp32"))
        ev = Evaluator(
            build(args.model),
            state,
            directions,
            {"train": ImageSplit(images, labels)},
            MEAN,
            STD,
            Options(batch_size=args.batch, device="cuda", **MODES[name]),
        )
        ev.evaluate(coords[:1])  # warm-up: cuDNN autotuning or compilation
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = ev.evaluate(coords)["train_loss"]
        torch.cuda.synchronize()
        img_s = args.images * len(coords) / (time.perf_counter() - start)
        exact = out if exact is None else exact
        print(
            f"{name:<36} {img_s:10.0f} {img_s / args.images:9.3f} {img_s / base_img_s:8.2f}x "
            f"{100 * img_s * flops / 1e12 / peak:14.2f}% {np.abs(out - exact).max():15.2e}"
        )
    del ref


if __name__ == "__main__":
    main()
