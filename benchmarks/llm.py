"""A Hugging Face causal LM: `landscape-ray run` against the peer `loss_landscapes.random_plane`, side by side.

    .venv/bin/python jobs/llm/make_tiny.py --out runs/llm/tiny-gpt2   # the default model (about half a minute)
    .venv/bin/python -m benchmarks.llm                                # tiny GPT-2, 32 x 64 tokens, 11 x 11
    .venv/bin/python -m benchmarks.llm --shape small --steps 5 --sequences 8   # GPT-2 small's shape, random weights
    .venv/bin/pip install loss-landscapes==3.0.6                      # the peer (the `bench` extra), if missing

Both see the same model folder and the same token windows (`load_text_split` of the bundled test text) and compute
the same number: the token-weighted mean next-token cross-entropy, in batches of --batch windows. The peer runs as
its README shows, `random_plane(model, metric, steps=..., normalization="filter", deepcopy_model=True)`, with a
`Metric` subclass for the loss and torch's default thread count, in a fresh process. The service runs
`landscape-ray run jobs/llm/tiny-gpt2-plane.yaml` (no pictures) in a fresh process and a fresh private Ray, with 1
and 2 actors (the driver computes points while the cluster starts, as by default), and with 2 actors and no
driver warmup. Walls run from the command to its exit, start-up included. Peak memory: the peak RSS of each driver
process (getrusage), and for the service each actor's peak RSS as the store's run record holds it (`info --json`).
The two draw their own random directions (and the peer's grid is its own), so only time and memory compare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = "jobs/llm/tiny-gpt2-plane.yaml"

PEER = """
import resource, sys, time
import torch, torch.nn.functional as F
from loss_landscapes import random_plane
from loss_landscapes.metrics import Metric
from transformers import AutoModelForCausalLM, AutoTokenizer
from landscape_ray.inputs.text import load_text_split
folder, seq_len, sequences, steps, batch = sys.argv[1], *map(int, sys.argv[2:6])

class TokenLoss(Metric):
    # the service's metric: every predicted token of every window weighs the same, whatever the batches
    def __init__(self, ids, batch):
        super().__init__()
        self.ids, self.batch = ids, batch

    def __call__(self, model_wrapper):
        total, count = 0.0, 0
        with torch.inference_mode():
            for chunk in self.ids.split(self.batch):
                logits = model_wrapper.forward(chunk).logits[:, :-1]
                targets = chunk[:, 1:]
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
                count += targets.numel()
        return float(total) / count

torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
ids = torch.from_numpy(load_text_split(None, "test", tokenizer, seq_len, sequences))
# eager attention, as the service builds it
model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, attn_implementation="eager").eval()
start = time.perf_counter()
# its plane spans ±model_norm / (2 distance) per axis: distance 0.5 is about the service's [-1, 1] filter units
surface = random_plane(model, TokenLoss(ids, batch), distance=0.5, steps=steps, normalization="filter",
                       deepcopy_model=True)
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(seconds, rss, surface.min(), surface.max(), torch.get_num_threads())
"""

# the service's driver: the CLI in this process, its peak RSS after it returns (a failure too)
DRIVER = """
import resource, sys
from landscape_ray.cli.main import main
try:
    code = main(sys.argv[1:])
finally:
    print("maxrss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr)
sys.exit(code)
"""


def timed(cmd: list[str]) -> tuple[float, str, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    seconds = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{out.stderr[-3000:]}")
    return seconds, out.stdout, out.stderr


def small_folder(folder: Path, tokenizer_from: Path) -> Path:
    """GPT-2 small's shape (12 layers, 768 wide, 12 heads, its 50,257-token vocabulary), random weights, with the
    tiny model's tokenizer (its ids are all below 512, so every one has an embedding)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # biases and LayerNorm shifts start at 0, where the peer's filter normalization divides by
        for p in model.parameters():  # 0 (ZeroDivisionError); a trained model's are not, nor are these
            if p.dim() == 1:
                p.add_(torch.randn_like(p), alpha=0.02)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from, local_files_only=True).save_pretrained(folder)
    return folder


def service(folder: Path, store: Path, args, actors: int, warmup: bool, regenerate: bool = False) -> dict:
    sets = [
        f"directions.regenerate={str(regenerate).lower()}",
        f"model.path={folder}",
        f"data.seq_len={args.seq_len}",
        f"data.sequences={args.sequences}",
        f"data.batch_size={args.batch}",
        f"grid.x={{min: -1, max: 1, num: {args.steps}}}",
        f"grid.y={{min: -1, max: 1, num: {args.steps}}}",
        f"compute.actors={actors}",
        f"compute.warmup={str(warmup).lower()}",
        f"output.store={store}",
        "output.render=[]",  # the peer draws nothing
    ]
    cmd = [sys.executable, "-c", DRIVER, "run", JOB, "--overwrite", *(f"--set={s}" for s in sets)]
    seconds, _, err = timed(cmd)
    driver_mb = float(next(line.split()[1] for line in err.splitlines() if line.startswith("maxrss_mb")))
    _, info, _ = timed([sys.executable, "-m", "landscape_ray", "info", str(store), "--json"])
    record = json.loads(info)[-1]
    return {"wall_s": seconds, "driver_mb": driver_mb, "record": record}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default="runs/llm/tiny-gpt2", help="a GPT-2 folder (default: make_tiny.py's)")
    p.add_argument("--shape", choices=["tiny", "small"], default="tiny", help="small: GPT-2 small, random weights")
    p.add_argument("--steps", type=int, default=11, help="grid points per axis (default: 11)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--sequences", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    folder = (ROOT / args.folder).resolve()
    if not (folder / "config.json").is_file():
        sys.exit(f"{folder}: no model; run .venv/bin/python jobs/llm/make_tiny.py --out {args.folder} first")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.shape == "small":
            folder = small_folder(tmp / "gpt2-small", folder)
        peer_cmd = [sys.executable, "-c", PEER, str(folder), str(args.seq_len), str(args.sequences)]
        peer_s, out, _ = timed([*peer_cmd, str(args.steps), str(args.batch)])
        call_s, peer_mb, low, high, threads = out.split()[-5:]
        config = json.loads((folder / "config.json").read_text())
        shape = f"{config['n_layer']} layers x {config['n_embd']}, vocabulary {config['vocab_size']}"
        runs = {
            (actors, warmup, regenerate): service(
                folder, tmp / f"{actors}{warmup}{regenerate}.zarr", args, actors, warmup, regenerate
            )
            for actors, warmup, regenerate in ((1, True, False), (2, True, False), (2, False, False), (2, True, True))
        }

    n = args.steps**2
    print(f"\nGPT-2 ({args.shape}: {shape}), {args.sequences} x {args.seq_len} tokens of the bundled test text, batch")
    print(f"{args.batch}, {args.steps} x {args.steps} = {n} points, {os.cpu_count()} CPUs")
    print("| run | wall s (process start to exit) | points/s | points by driver / actors | peak memory MB |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(
        f"| loss_landscapes.random_plane, {threads} torch threads (its call alone: {float(call_s):.1f} s) "
        f"| {peer_s:.1f} | {n / peer_s:.2f} | - | process RSS {float(peer_mb):.0f} |"
    )
    for (actors, warmup, regenerate), r in runs.items():
        workers = r["record"]["actors"]
        by_driver = workers.get("driver", {}).get("points", 0)
        peaks = [f"{w['peak_rss_mb']:.0f}" for n, w in workers.items() if n != "driver" and w.get("peak_rss_mb")]
        memory = f"driver RSS {r['driver_mb']:.0f}" + (f"; actor RSS {', '.join(peaks)}" if peaks else "; no actor ran")
        name = f"landscape-ray run, {actors} actor{'s' * (actors > 1)} × 1 thread" + ("" if warmup else ", no warmup")
        name += ", directions regenerated" if regenerate else ""
        row = f"| {name} | {r['wall_s']:.1f} | {n / r['wall_s']:.2f} | {by_driver} / {n - by_driver} | {memory} |"
        print(row)
    print(f"\npeer loss range {float(low):.3f} .. {float(high):.3f} (its own directions and grid: not comparable)")
    for (actors, warmup, _), r in runs.items():
        startup = ", ".join(f"{k} {v}" for k, v in r["record"].get("startup", {}).items())
        print(f"service {actors} actor(s){'' if warmup else ', no warmup'}: {startup}")


if __name__ == "__main__":
    main()
