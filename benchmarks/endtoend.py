"""End to end on the CPU: `landscape-ray run` as a user runs it against a reference-style loop, in one call.

    .venv/bin/python -m benchmarks.endtoend              # resnet20, 1,000 CIFAR-shaped images, 9 × 9
    .venv/bin/python -m benchmarks.endtoend --num 5      # a quicker look

The job is the paper code's: a ResNet-20 θ* (its seeded initialisation, saved as a checkpoint), a
1,000-image CIFAR-10 python-pickle folder written into a temporary directory (the held-out `test_batch`;
the split evaluated), random filter-normalized directions, a 9 × 9 surface. The service runs as a
subprocess `landscape-ray run` with the defaults plus the quickstart's two actors, start-up and
pictures included: with the defaults (fp32; cache-sized batches and BN folded where that stays within 1e-6
relative), with the defaults and `eval.fold_bn: false` (bit-equal to the plain fp32 forward), and with
`eval.precision: bf16` (fast, about 1e-3 relative). The reference
loop is what the paper's code does per point: `model.load_state_dict(θ* + αδ + βη)`, then a DataLoader
(batch 128) over a Dataset that turns each image into a tensor with torchvision's ToTensor + Normalize,
fp32, torch's default threads. It uses the service's own directions (read from its store), so the two
compute the same surface and the table also shows how far apart their values are. The reference runs twice, each
time in a fresh process: as it comes, and with glibc's malloc keeping freed memory (`speedups.keep_freed_memory`,
which the service's actors use): as it comes, a plain PyTorch loop's speed depends on what its process allocated
and freed before (0.65-1.35 million page faults in 4 points, 1.27-1.56 s per point, against 1.03 s with the setting).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Dataset

from landscape_ray.inputs.data import DEFAULT_NORMALIZE
from landscape_ray.inputs.models import build
from landscape_ray.spec.grid import Grid
from landscape_ray.store.tiles import Store

IMAGES = 1000


def write_cifar(root: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 python-pickle folder with `n` seeded random images as its test_batch (and tiny train batches)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = None
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        count = n if name == "test_batch" else 10
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, count).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f, protocol=2)
        out = data.reshape(-1, 3, 32, 32), np.asarray(labels)
    return out  # the test batch


class PerSample(Dataset):
    """torchvision's CIFAR10 __getitem__: a PIL image through ToTensor + Normalize, one image at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from torchvision import transforms

        self.images, self.labels = images.transpose(0, 2, 3, 1), labels  # HWC, as torchvision keeps CIFAR
        normalize = transforms.Normalize(*DEFAULT_NORMALIZE["cifar10"])
        self.transform = transforms.Compose([transforms.ToTensor(), normalize])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_loop(checkpoint: Path, directions: list[dict], images, labels, grid: Grid) -> np.ndarray:
    model = build("resnet20").eval()
    theta = torch.load(checkpoint)
    dirs = [{k: torch.from_numpy(v) for k, v in d.items()} for d in directions]
    loader = DataLoader(PerSample(images, labels), batch_size=128, shuffle=False)
    loss = np.full(grid.shape, np.nan)
    for iy, beta in enumerate(grid.y):
        for ix, alpha in enumerate(grid.x):
            state = {k: v + alpha * dirs[0][k] + beta * dirs[1][k] if k in dirs[0] else v for k, v in theta.items()}
            model.load_state_dict(state)
            total, count = 0.0, 0
            with torch.no_grad():
                for x, y in loader:
                    total += F.cross_entropy(model(x), y, reduction="sum").item()
                    count += len(y)
            loss[iy, ix] = total / count
    return loss


def reference(keep: bool, *args) -> tuple[np.ndarray, float]:
    """`reference_loop(*args)` and its seconds, in this process, with glibc's malloc as it comes or kept."""
    if keep:
        from landscape_ray.compute.speedups import keep_freed_memory

        keep_freed_memory()
    start = time.perf_counter()
    return reference_loop(*args), time.perf_counter() - start


def in_fresh_process(fn, *args):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def service(tmp: Path, name: str, overrides: list[str]) -> tuple[float, Path, str]:
    """`landscape-ray run` in a fresh process; wall seconds from the command to its exit, the store, its last lines."""
    store = tmp / name / "surface.zarr"
    cmd = [sys.executable, "-m", "landscape_ray", "run", str(tmp / "job.yaml"), f"--set=output.store={store}"]
    start = time.perf_counter()
    out = subprocess.run(cmd + [f"--set={o}" for o in overrides], capture_output=True, text=True, cwd=tmp, check=False)
    seconds = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"{name}: landscape-ray run failed:\n{out.stderr[-3000:]}")
    keep = ("done:", "startup:", "evaluated at")
    return seconds, store, "\n".join(line for line in out.stdout.splitlines() if line.startswith(keep))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=9, help="grid points per axis (default: 9)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, labels = write_cifar(tmp / "cifar", IMAGES)
        torch.manual_seed(0)
        torch.save(build("resnet20").state_dict(), tmp / "resnet20.pt")
        (tmp / "job.yaml").write_text(
            yaml.safe_dump(
                {
                    "name": "endtoend",
                    "model": {"arch": "resnet20", "checkpoint": str(tmp / "resnet20.pt")},
                    "data": {"dataset": "cifar10", "root": str(tmp / "cifar"), "splits": ["test"]},
                    "grid": {"x": {"num": args.num}, "y": {"num": args.num}},
                    "eval": {"device": "cpu"},
                    "compute": {"actors": 2},
                }
            )
        )
        runs = [
            ("service, defaults (fp32, within 1e-6)", service(tmp, "defaults", [])),
            ("service, fp32 bit-exact (eval.fold_bn: false)", service(tmp, "exact", ["eval.fold_bn=false"])),
            ("service, eval.precision: bf16", service(tmp, "bf16", ["eval.precision=bf16"])),
        ]
        stored = Store(runs[0][1][1], mode="r")
        grid = stored.grid
        inputs = (tmp / "resnet20.pt", stored.directions(), images, labels, grid)
        ref, ref_s = in_fresh_process(reference, False, *inputs)
        kept, kept_s = in_fresh_process(reference, True, *inputs)
        assert np.array_equal(ref, kept), "the malloc setting changed a value"
        values = {label: Store(store, mode="r").root["test_loss"][...] for label, (_, store, _) in runs}
        specs = {label: Store(store, mode="r").spec.eval for label, (_, store, _) in runs}

    print(
        f"\nresnet20, {IMAGES} CIFAR-shaped images, {args.num} x {args.num} grid, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs (reference loop: {torch.get_num_threads()} threads; service: 2 actors x 1 thread)"
    )
    for label, (_, _, tail) in runs:
        options = specs[label].model_dump(include={"precision", "fold_bn", "channels_last", "compile"})
        print(f"  {label}: eval {options}")
        print("    " + tail.replace("\n", "\n    "))
    print(
        "| run | wall s (start-up included) | points/s | max rel Δ test_loss vs reference | speed-up | "
        "speed-up vs the reference with malloc kept |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    name = "reference-style loop (per-sample ToTensor + Normalize, DataLoader 128, fp32)"
    print(f"| {name}, malloc as it comes | {ref_s:.1f} | {grid.size / ref_s:.2f} | 0 | 1.00× | {kept_s / ref_s:.2f}× |")
    print(f"| {name}, malloc kept | {kept_s:.1f} | {grid.size / kept_s:.2f} | 0 | {ref_s / kept_s:.2f}× | 1.00× |")
    for label, (seconds, _, _) in runs:
        rel = (np.abs(values[label] - ref) / np.abs(ref)).max()
        print(
            f"| {label} | {seconds:.1f} | {grid.size / seconds:.2f} | {rel:.1e} | {ref_s / seconds:.2f}× | "
            f"{kept_s / seconds:.2f}× |"
        )


if __name__ == "__main__":
    main()
