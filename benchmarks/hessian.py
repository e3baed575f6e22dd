"""Hessian benchmark: one Hessian-vector product against one loss evaluation on the same data, and 1 vs 2 actors.

    .venv/bin/python -m benchmarks.hessian                      # resnet20, 256 CIFAR-shaped images, batch 128
    .venv/bin/python -m benchmarks.hessian --arch digits_cnn --dataset digits --samples 1437

Table 1 (one process, `--threads` torch threads): seconds per loss evaluation (the evaluator's fp32 pass over the
split, as a grid point costs) and per Hessian-vector product (curvature.py, forward-over-reverse, and the
double-backward fallback), median of `--repeat` after a warm-up, and their ratio.
Table 2: wall time of `--products` products through the Ray driver (hessian.py) with 1 and 2 actors of one thread
each (actor start-up excluded), and the speed-up.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from landscape_ray.cluster.shards import ShardedOperator
from landscape_ray.compute.curvature import Curvature
from landscape_ray.compute.prepare import prepare
from landscape_ray.spec.specfile import load_spec


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up: torch.func traces its transforms on the first call
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--products", type=int, default=5)
    args = p.parse_args()
    data = [f"data.dataset={args.dataset}", f"data.batch_size={args.batch}", f"data.subset={args.samples}"]
    if args.dataset == "synthetic":
        data.append(f"data.kwargs={{size: {args.samples}}}")
    spec = load_spec(
        None,
        [
            f"model.arch={args.arch}",
            "model.checkpoint=null",
            *data,
            "eval.device=cpu",
            "grid.x.num=3",
            "grid.y={num: 3}",
            "compute.cpus_per_actor=1",
        ],
    )
    torch.set_num_threads(args.threads)
    payload = prepare(spec, vectors=[])
    curv = Curvature.from_payload(spec, payload, "train", "cpu")
    v = np.random.default_rng(0).standard_normal(curv.dim)
    loss_s = median_seconds(curv.evaluator.measure, args.repeat)
    forward_s = median_seconds(lambda: curv.hvp_sum(v), args.repeat)
    curv.mode = "reverse"
    reverse_s = median_seconds(lambda: curv.hvp_sum(v), args.repeat)
    n = len(payload.splits["train"])
    print(
        f"{args.arch}, {curv.dim:,} parameters, {n} samples ({args.dataset}), batch {args.batch}, "
        f"{args.threads} thread(s), torch {torch.__version__}, {platform.machine()}\n"
    )
    print("| pass | s | samples/s | × loss evaluation |\n| --- | ---: | ---: | ---: |")
    for name, s in [
        ("loss evaluation (evaluator, fp32)", loss_s),
        ("HVP, forward-over-reverse (default)", forward_s),
        ("HVP, double backward (fallback)", reverse_s),
    ]:
        print(f"| {name} | {s:.3f} | {n / s:,.0f} | {s / loss_s:.2f}× |")

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    walls = {}
    for actors in (1, 2):
        with ShardedOperator(spec, payload, "train", actors=actors, log=lambda *_: None) as op:
            op.matvec(v)  # actors started and warmed up
            start = time.perf_counter()
            for _ in range(args.products):
                op.matvec(v)
            walls[actors] = (time.perf_counter() - start) / args.products
    ray.shutdown()
    print(f"\n| actors | s per product (mean of {args.products}) | speed-up |\n| ---: | ---: | ---: |")
    for actors, s in walls.items():
        print(f"| {actors} | {s:.3f} | {walls[1] / s:.2f}× |")


if __name__ == "__main__":
    main()
