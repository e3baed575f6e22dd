"""How fast this CPU can go, and whether the service's actors get there, in one call.

    .venv/bin/python -m benchmarks.ceiling          # about 2 minutes

Table 1: a large matrix multiply (2048², oneDNN/MKL) is the best a core does in a precision; the resnet20 forward at
the service's CPU settings (batch 32, channels_last, eval mode) is what a grid point costs, counted in FLOPs by
torch's FlopCounterMode (81.6 GFLOP per 1,000 images). Each row runs 1 or 2 processes of one torch thread at once,
as the actors do, and prints what one of them reaches: a forward near the multiply's rate has no exact speed-up left
in that precision, and 1 against 2 processes is what two busy cores cost each other.

Table 2: the service's own evaluator (resnet20 on 1,000 CIFAR-shaped images, its defaults) timed per point in two
fresh processes and in two Ray actors of a local cluster, with glibc's malloc as it comes and with
`speedups.keep_freed_memory`, which the actors now call at start-up, and the minor page faults meanwhile.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SECONDS = 4.0  # each rate of table 1 is measured this long
POINTS = 4  # points per evaluator measurement (after one to warm up)


def gemm(dtype: torch.dtype) -> float:
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < SECONDS:
        a @ b
        n += 1
    return 2 * 2048**3 * n / (time.perf_counter() - start) / 1e9


def forward(dtype: torch.dtype) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from landscape_ray.inputs.models import build

    model = build("resnet20").eval().to(memory_format=torch.channels_last)
    x = torch.randn(32, 3, 32, 32).to(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        model(x)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        model(x)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < SECONDS:
            model(x)
            n += 1
    return counter.get_total_flops() * n / (time.perf_counter() - start) / 1e9


def per_point(spec, payload, keep: bool) -> tuple[float, int]:
    """Seconds per point of the service's evaluator in this process (one thread), and the minor page faults."""
    from landscape_ray.compute.evaluator import Evaluator
    from landscape_ray.compute.speedups import keep_freed_memory

    torch.set_num_threads(1)
    if keep:
        keep_freed_memory()
    evaluator = Evaluator.from_payload(spec, payload, "cpu")
    coords = np.array([[0.1 * i, -0.05 * i] for i in range(POINTS + 1)])
    evaluator.evaluate(coords[:1])
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    evaluator.evaluate(coords[1:])
    return (time.perf_counter() - start) / POINTS, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def worker(fn, args, out) -> None:
    torch.set_num_threads(1)
    out.put(fn(*args))


def side_by_side(fn, args, procs: int) -> list[float]:
    """`fn(*args)` in `procs` fresh processes at once."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=worker, args=(fn, args, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    results = [out.get() for _ in workers]
    for w in workers:
        w.join()
    return results


def in_actors(spec, payload, keep: bool) -> list[tuple[float, int]]:
    import ray

    actor = ray.remote(num_cpus=1)(_Timer)
    actors = [actor.remote() for _ in range(2)]
    ray.get([a.__ray_ready__.remote() for a in actors])
    ref = ray.put(payload)
    seconds = ray.get([a.time.remote(spec, ref, keep) for a in actors])
    for a in actors:
        ray.kill(a)
    return seconds


class _Timer:
    def time(self, spec, payload, keep: bool) -> tuple[float, int]:
        return per_point(spec, payload, keep)


def evaluator_table() -> None:
    import ray

    from benchmarks.endtoend import IMAGES, write_cifar
    from landscape_ray.compute.prepare import prepare
    from landscape_ray.inputs.models import build
    from landscape_ray.spec.specfile import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cifar(tmp / "cifar", IMAGES)
        torch.manual_seed(0)
        torch.save(build("resnet20").state_dict(), tmp / "resnet20.pt")
        spec = load_spec(
            None,
            [
                "model.arch=resnet20",
                f"model.checkpoint={tmp / 'resnet20.pt'}",
                "data.dataset=cifar10",
                f"data.root={tmp / 'cifar'}",
                "data.splits=[test]",
                "eval.device=cpu",
            ],
        )
        payload = prepare(spec)
        rows = [
            ("2 plain processes, malloc as it comes", side_by_side(per_point, (spec, payload, False), 2)),
            ("2 plain processes, keep_freed_memory", side_by_side(per_point, (spec, payload, True), 2)),
        ]
        ray.init(address="local", include_dashboard=False, logging_level="ERROR")
        rows += [
            ("2 Ray actors, malloc as it comes", in_actors(spec, payload, False)),
            ("2 Ray actors, keep_freed_memory", in_actors(spec, payload, True)),
        ]
        ray.shutdown()
    print(f"\nthe service's evaluator, resnet20 on {IMAGES} CIFAR-shaped images, defaults, 1 thread per process")
    print(f"| where | s per point, each | minor page faults in {POINTS} points, each |")
    print("| --- | --- | --- |")
    for name, results in rows:
        seconds, faults = zip(*results)
        print(f"| {name} | {', '.join(f'{s:.3f}' for s in seconds)} | {', '.join(f'{f:,}' for f in faults)} |")


def main() -> None:
    print("| precision | processes | matmul GFLOP/s each | resnet20 forward GFLOP/s each | forward / matmul |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for dtype in (torch.float32, torch.bfloat16):
        for procs in (1, 2):
            mm = np.mean(side_by_side(gemm, (dtype,), procs))
            fw = np.mean(side_by_side(forward, (dtype,), procs))
            print(f"| {str(dtype).removeprefix('torch.')} | {procs} | {mm:.1f} | {fw:.1f} | {fw / mm:.0%} |")
    evaluator_table()


if __name__ == "__main__":
    main()
