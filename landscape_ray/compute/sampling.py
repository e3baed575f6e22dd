"""Adaptive sample size (`eval.samples: adaptive`): a point's split is evaluated batch by batch and stops as soon
as its loss is known well enough for the picture; points in the basin use all the data.

The batches of a split (the evaluator's, `data.batch_size` samples each) are its shards. They are taken in an order
shuffled once per split by a fixed seed, the same on every actor and in every resume, so 1 or 2 actors compute the
same values. After each shard, from MIN_SHARDS on, the loss so far, r = Σ y_i / Σ n_i over the k shards taken (y_i
a shard's summed loss, n_i its count), gets the standard error of a ratio estimate from a cluster sample of k of
the K shards, drawn without replacement (Cochran, Sampling Techniques, 3rd ed., §6.4 and §9.2):

    se² = (1 − k/K) · Σ (y_i − r·n_i)² / (k (k − 1) n̄²)          n̄ = Σ n_i / k

Shards, not samples, are the unit: a split's batches are slices of it as stored, which may be ordered (by class,
say), and the spread between shards is what that ordering costs; the factor 1 − k/K makes it 0 on the whole split.
The point stops where

    Z · se ≤ tolerance · max(|r|, FLOOR)      its loss is placed within the tolerance (relative, absolute near 0)
    r − Z · se > ceiling                       or it lies above the top contour level drawn (`eval.sample_ceiling`)

and otherwise takes every shard. A whole split's sums are then added in the batches' own order, as `samples: all`
adds them, so a point that used all the data equals a run with `samples: all` (and the same batch size) bit for
bit. The store holds `<split>_samples` (0: not evaluated; the split's size: exact) and `<split>_loss_se`.

    rule = Rule(tolerance=0.01)
    for i in order(shards, "train"):
        ...; stop, se = rule.enough(losses, counts, shards)
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

Z = 2.0  # standard errors: with the default tolerance of 1 %, a sampled loss is off by 3 % only at 6 of them
FLOOR = 0.1  # loss units, as the adaptive grid's (store/refine.py): below it the tolerance is absolute
MIN_SHARDS = 8  # no stop before: the spread of fewer shards says too little about the rest
SHARDS = 32  # `data.batch_size: auto` is cut so that a split has at least this many batches
SEED = 20180215  # the order of the shards; fixed, so that it is the same everywhere


def order(shards: int, split: str) -> np.ndarray:
    """The order in which a split's shards are taken: shuffled once, by split name, the same in every process."""
    return np.random.default_rng([SEED, zlib.crc32(split.encode())]).permutation(shards)


def cap(batch_size: int, samples: int) -> int:
    """An automatic batch size cut to a power of two that gives `samples` at least SHARDS batches (not below 1)."""
    if samples < SHARDS:
        return batch_size
    return min(batch_size, 2 ** int(math.log2(samples // SHARDS)))


@dataclass(frozen=True)
class Rule:
    """When a point has seen enough of a split (see the module)."""

    tolerance: float
    ceiling: float | None = None

    def enough(self, losses: list[float], counts: list[int], shards: int) -> tuple[bool, float]:
        """(stop, standard error of the loss so far) after the shards with these summed losses and counts."""
        k = len(losses)
        if k >= shards:
            return True, 0.0
        if k < MIN_SHARDS:
            return False, math.nan
        y, n = np.asarray(losses, dtype=np.float64), np.asarray(counts, dtype=np.float64)
        r = y.sum() / n.sum()
        se = math.sqrt((1 - k / shards) * np.square(y - r * n).sum() / (k * (k - 1))) / n.mean()
        if not math.isfinite(r):
            return False, se
        placed = Z * se <= self.tolerance * max(abs(r), FLOOR)
        above = self.ceiling is not None and r - Z * se > self.ceiling
        return placed or above, se
