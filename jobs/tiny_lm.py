"""A tiny language model with its own data set and metric: how to plug a non-vision task into landscape_ray.

Used by `jobs/tiny-lm.yaml` (and by the test suite, so it cannot rot):

    model.arch:   jobs.tiny_lm:make_model      a factory returning an nn.Module
    data.dataset: jobs.tiny_lm:make_dataset    called as factory(split=..., root=..., **data.kwargs)
    eval.metric:  jobs.tiny_lm:next_token      fn(model, batch) -> (loss_sum, count, {name: sum})

Batches are dicts of token tensors; the metric returns the summed next-token
cross-entropy, the number of predicted tokens, and two more sums that become
the store variables `<split>_acc` and `<split>_loss_sq` → `<split>_loss_se`.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 16, width: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens):
        hidden, _ = self.rnn(self.embed(tokens))
        return self.head(self.norm(hidden))


class CountingSequences(Dataset):
    """Sequences that count up modulo `vocab` from a seeded start, with a little noise: learnable, deterministic."""

    def __init__(self, split: str, size: int = 256, length: int = 12, vocab: int = 16):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        start = torch.randint(0, vocab, (size, 1), generator=g)
        seq = (start + torch.arange(length)) % vocab
        noise = torch.rand(size, length, generator=g) < 0.1
        self.tokens = torch.where(noise, torch.randint(0, vocab, (size, length), generator=g), seq)

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        return {"tokens": self.tokens[i]}


def make_model(vocab: int = 16, width: int = 32) -> nn.Module:
    return TinyLM(vocab, width)


def make_dataset(split: str, root=None, size: int = 256, length: int = 12, vocab: int = 16) -> Dataset:
    return CountingSequences(split, size, length, vocab)


def next_token(model: nn.Module, batch: dict):
    tokens = batch["tokens"]
    logits = model(tokens[:, :-1]).float()
    target = tokens[:, 1:]
    per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none").double()
    correct = (logits.argmax(-1) == target).sum()
    return per.sum(), target.numel(), {"acc": correct, "loss_sq": per.square().sum()}
