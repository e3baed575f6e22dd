"""A tiny GPT-2 trained on the bundled text, as two `save_pretrained` folders for the LLM jobs in jobs/llm/.

    .venv/bin/python jobs/llm/make_tiny.py --out runs/llm/tiny-gpt2 [--steps 300] [--seed 0]
    .venv/bin/python jobs/llm/make_tiny.py --config-only --out runs/llm/tiny-gpt2-config   # for landscape-ray train

Writes the trained model at --out and its initial weights at --out + "-init" (the interpolation's start), each
with the tokenizer. A byte-level BPE tokenizer (vocabulary 512) is trained on the train split of Python's bundled
documentation text (`landscape_ray.inputs.text.bundled_text`), so nothing is downloaded; the jobs evaluate on the
test split. About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from landscape_ray.inputs.text import bundled_text

EOS = "<|endoftext|>"
POSITIONS = 128  # the jobs' seq_len (64) fits, with room for longer windows
WINDOW = 64
BATCH = 16


def train_tokenizer(text: str, vocab: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE, as GPT-2's: every byte has a token, so no text is unknown."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split("\n\n"), trainer)  # one topic at a time: merges never span two topics
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS, model_max_length=POSITIONS
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/llm/tiny-gpt2", help="folder of the trained model")
    p.add_argument("--steps", type=int, default=300, help="AdamW steps of %d windows of %d tokens" % (BATCH, WINDOW))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--config-only", action="store_true", help="write the config and tokenizer only (no weights)")
    args = p.parse_args()
    start = time.perf_counter()

    text = bundled_text("train")
    tokenizer = train_tokenizer(text, args.vocab)
    ids = torch.tensor(tokenizer.backend_tokenizer.encode(text).ids, dtype=torch.long)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=POSITIONS,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # no dropout: a few hundred steps do not overfit, and the landscape is of the model as it is evaluated
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    if args.config_only:  # what `landscape-ray train jobs/llm/tiny-gpt2-train.yaml` starts from
        config.architectures = ["GPT2LMHeadModel"]
        config.save_pretrained(args.out)
        tokenizer.save_pretrained(args.out)
        print(f"config and tokenizer in {args.out}")
        return
    torch.manual_seed(args.seed)  # the same seed gives the same initial weights and the same windows
    model = GPT2LMHeadModel(config)
    init = f"{args.out}-init"
    model.save_pretrained(init)  # before any step: θ0 for interpolation init → final
    tokenizer.save_pretrained(init)
    params = sum(p.numel() for p in model.parameters())
    print(f"{len(ids):,} train tokens, vocabulary {len(tokenizer)}, {params:,} parameters; initial model in {init}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    # linear decay to zero: the last steps settle into the basin instead of bouncing around it
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / args.steps)
    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    for step in range(1, args.steps + 1):
        # random windows, not consecutive ones: each step sees a fresh sample of the whole train text
        at = torch.randint(0, len(ids) - WINDOW, (BATCH,), generator=generator)
        batch = torch.stack([ids[i : i + WINDOW] for i in at.tolist()])
        loss = model(batch, labels=batch).loss  # labels are shifted inside: next-token cross-entropy
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # lr 3e-3 is high; clipping keeps early steps sane
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)

    model.eval()
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"final loss {loss.item():.3f}; model in {args.out} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
