"""Memory of a 1.1 B-parameter language model's plane on this machine: regenerated against kept directions.

    .venv/bin/python jobs/llm/make_tiny.py --out runs/llm/tiny-gpt2   # for its tokenizer (about half a minute)
    .venv/bin/python -m benchmarks.llm_memory                         # TinyLlama's shape in bf16, 2 actors, 3 x 3
    .venv/bin/python -m benchmarks.llm_memory --layers 8              # the same with 8 of its 22 layers (0.6 B)
    .venv/bin/python -m benchmarks.llm_memory --model DIR --only regenerated   # a folder made before, one run

A Llama-shaped model of TinyLlama-1.1B's size (22 layers, 2048 wide, 32 heads with 4 key/value heads, 5632 MLP,
32,000-token vocabulary) with random weights, saved in bf16, and the tiny model's tokenizer (its ids are all below
512). `landscape-ray run jobs/llm/tiny-gpt2-plane.yaml` with that folder, 2 actors, a 3 x 3 plane on 8 windows of 64
tokens, once with `directions.regenerate: true` and once with kept directions, each in a fresh process and a fresh
private Ray. Reported per run: each actor's peak RSS from the store's run record (it counts the pages of the shared
θ* the actor read), the driver's peak RSS, and both against the model's own bytes (2 per parameter).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.llm import DRIVER, JOB, ROOT, timed

SHAPE = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)


def llama_folder(folder: Path, tokenizer_from: Path, layers: int) -> int:
    """The model, saved in bf16 with the tokenizer; returns its parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**SHAPE, "num_hidden_layers": layers}, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from, local_files_only=True).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def parameters(folder: Path) -> int:
    """The parameter count of a saved folder, from its safetensors header (no weights read)."""
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def run(folder: Path, store: Path, regenerate: bool) -> dict:
    sets = [
        f"model.path={folder}",
        "model.dtype=bfloat16",
        "data.seq_len=64",
        "data.sequences=8",
        "data.batch_size=8",
        "grid.x={min: -1, max: 1, num: 3}",
        "grid.y={min: -1, max: 1, num: 3}",
        "compute.actors=2",
        "compute.warmup=false",  # the memory of the actors alone, not of a driver that also evaluates
        f"directions.regenerate={str(regenerate).lower()}",
        f"output.store={store}",
        "output.render=[]",
    ]
    seconds, _, err = timed([sys.executable, "-c", DRIVER, "run", JOB, "--overwrite", *(f"--set={s}" for s in sets)])
    driver_mb = float(next(line.split()[1] for line in err.splitlines() if line.startswith("maxrss_mb")))
    _, info, _ = timed([sys.executable, "-m", "landscape_ray", "info", str(store), "--json"])
    record = json.loads(info)[-1]
    return {"wall_s": seconds, "driver_mb": driver_mb, "record": record}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", default="runs/llm/tiny-gpt2", help="a folder with a tokenizer (make_tiny.py's)")
    p.add_argument("--layers", type=int, default=SHAPE["num_hidden_layers"], help="decoder layers (default: 22)")
    p.add_argument("--model", help="a folder llama_folder wrote before (it is not made again)")
    p.add_argument("--only", choices=["regenerated", "kept"], help="one of the two runs")
    args = p.parse_args()
    tokenizer = (ROOT / args.tokenizer).resolve()
    if not (tokenizer / "tokenizer.json").is_file():
        sys.exit(f"{tokenizer}: no tokenizer; run .venv/bin/python jobs/llm/make_tiny.py --out {args.tokenizer} first")
    with tempfile.TemporaryDirectory(dir=ROOT / "runs") as tmp:
        tmp = Path(tmp)
        folder = Path(args.model).resolve() if args.model else tmp / "llama-1.1b"
        params = parameters(folder) if args.model else llama_folder(folder, tokenizer, args.layers)
        which = {"regenerated": (1,), "kept": (0,), None: (1, 0)}[args.only]
        runs = {regenerate: run(folder, tmp / f"{regenerate}.zarr", regenerate) for regenerate in which}
    model_mb = 2 * params / 2**20
    print(f"\nLlama, TinyLlama-1.1B's shape with {args.layers} layers: {params / 1e9:.3f} B parameters, bf16 ")
    print(f"({model_mb:.0f} MB); 2 actors,")
    print(f"3 x 3 plane on 8 x 64 tokens; {os.cpu_count()} CPUs, {os.sysconf('SC_PHYS_PAGES') * 4096 / 2**30:.0f} GiB")
    print("| directions | wall s | peak RSS per actor MB (× model) | driver peak RSS MB (× model) |")
    print("| --- | ---: | --- | ---: |")
    for regenerate, r in runs.items():
        actors = [a for name, a in r["record"]["actors"].items() if name != "driver"]
        peaks = ", ".join(f"{a['peak_rss_mb']:.0f} ({a['peak_rss_mb'] / model_mb:.2f})" for a in actors)
        name = "regenerated" if regenerate else "kept"
        print(f"| {name} | {r['wall_s']:.1f} | {peaks} | {r['driver_mb']:.0f} ({r['driver_mb'] / model_mb:.2f}) |")


if __name__ == "__main__":
    main()
