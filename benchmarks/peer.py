"""`landscape-ray run` against the simplest peer, `loss_landscapes.random_plane`, side by side in one call.

    .venv/bin/python -m benchmarks.peer            # the demo net, its train split, 21 × 21
    pip install loss-landscapes==3.0.6             # the peer (the `bench` extra), if missing

The demo's digits CNN is trained with jobs/quickstart-train.yaml into a temporary folder. The peer runs as
its README shows: `random_plane(model, Loss(cross_entropy, X, y), steps=21, normalization="filter")` with
the whole train split (1,437 images, normalized as the service does) as one batch and one torch thread, in
a fresh process. The service runs `landscape-ray run jobs/quickstart.yaml` with the train split only, the
same 21 × 21 grid and no pictures (the peer draws none), as a fresh process too, with the quickstart's two
actors and with one. Both walls run from the command to its exit; the peer's own call is shown apart. The
directions are each tool's own random draw, so the values differ; the work per point is the same.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PEER = """
import sys, time
import numpy as np, torch, torch.nn.functional as F
from loss_landscapes import random_plane
from loss_landscapes.metrics import Loss
from landscape_ray.inputs.data import load_split, normalization
from landscape_ray.inputs.checkpoints import read_checkpoint
from landscape_ray.inputs.models import build
from landscape_ray.spec.schema import DataSpec
torch.set_num_threads(1)
torch.manual_seed(0)
model = build("digits_cnn")
model.load_state_dict(read_checkpoint(sys.argv[1]))
model.eval()
spec = DataSpec(dataset="digits")
split = load_split(spec, "train")
mean, std = normalization(spec)
x = (torch.from_numpy(split.images).float() / 255 - mean[0]) / std[0]
start = time.perf_counter()
surface = random_plane(model, Loss(F.cross_entropy, x, torch.from_numpy(split.labels)), steps=int(sys.argv[2]),
                       normalization="filter")
print(f"{time.perf_counter() - start:.3f} {surface.shape} {np.isfinite(surface).all()}")
"""


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    seconds = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{out.stderr[-3000:]}")
    return seconds, out.stdout


def demo_checkpoint(folder: Path) -> Path:
    """The demo's digits CNN, trained with jobs/quickstart-train.yaml into `folder`."""
    from landscape_ray.spec.specfile import load_spec
    from landscape_ray.spec.training import TrainSpec
    from landscape_ray.train import train

    spec = load_spec(ROOT / "jobs" / "quickstart-train.yaml", [f"out={folder}"], model=TrainSpec)
    return train(spec, log=lambda *_: None)


def quickstart(checkpoint: Path, num: int, store: Path, *overrides: str) -> list[str]:
    """`landscape-ray run jobs/quickstart.yaml` on `checkpoint`: train split, num × num, no pictures."""
    sets = [
        f"model.checkpoint={checkpoint}",
        "data.splits=[train]",
        f"grid.x={{min: -1, max: 1, num: {num}}}",
        f"grid.y={{min: -1, max: 1, num: {num}}}",
        f"output.store={store}",
        "output.render=[]",
        *overrides,
    ]
    return [sys.executable, "-m", "landscape_ray", "run", "jobs/quickstart.yaml", *(f"--set={s}" for s in sets)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=21, help="grid points per axis (default: 21)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = demo_checkpoint(tmp / "ckpt")
        peer_s, peer_out = timed([sys.executable, "-c", PEER, str(checkpoint), str(args.num)])
        peer_call_s = float(peer_out.split()[0])
        rows = []
        for actors in (2, 1):
            store = tmp / f"a{actors}" / "surface.zarr"
            seconds, out = timed(quickstart(checkpoint, args.num, store, f"compute.actors={actors}"))
            startup = next((line for line in out.splitlines() if line.startswith("startup")), "")
            rows.append((actors, seconds, startup))

    print(f"\ndemo digits CNN, train split (1,437 images), {args.num} x {args.num} train loss, {os.cpu_count()} CPUs")
    print("| run | wall s (process start to exit) | points/s | speed-up vs peer |")
    print("| --- | ---: | ---: | ---: |")
    n = args.num * args.num
    print(
        f"| loss_landscapes.random_plane, 1 thread, whole split as one batch (its call alone: {peer_call_s:.1f} s) "
        f"| {peer_s:.1f} | {n / peer_s:.1f} | 1.00× |"
    )
    for actors, seconds, _ in rows:
        name = f"landscape-ray run, {actors} actor{'s' * (actors > 1)} × 1 thread"
        print(f"| {name} | {seconds:.1f} | {n / seconds:.1f} | {peer_s / seconds:.2f}× |")
    for actors, _, startup in rows:
        print(f"{actors} actor(s) {startup}")


if __name__ == "__main__":
    main()
