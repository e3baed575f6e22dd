"""The causal language-model metric: next-token cross-entropy, summed over tokens, and top-1 accuracy.

    loss_sum, count, sums = causal_lm(model, {"input_ids": ids})           # ids: LongTensor (batch, seq_len)
    loss_sum, count, sums = causal_lm(model, {"input_ids": ids, "attention_mask": mask})
    loss = loss_sum / count; acc = sums["acc"] / count                     # what the evaluator reports per split

It has the interface of the evaluator's metrics, `fn(model, batch) -> (loss_sum, count, {name: sum})`. The loss is
token-weighted: summed over every predicted token of every batch and divided by their number, so loss_sum / count of
an unpadded batch is what transformers returns with `labels=input_ids`. `loss_sq` and `loss_units` (the squared mean
loss of each window, and the number of windows) give the evaluator `<split>_loss_se`, the standard error of the loss
over windows. Targets whose attention_mask is 0 (padding) are not counted. `causal_lm.perplexity` tells the
evaluator to report `<split>_ppl = exp(loss)` too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def causal_lm(model: nn.Module, batch):
    """(summed next-token loss in float64, number of predicted tokens, {"acc": number predicted right})."""
    if isinstance(batch, torch.Tensor):  # a batch of token windows without padding
        batch = {"input_ids": batch}
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    targets = ids[:, 1:]  # position t predicts token t + 1; the last position predicts nothing here
    # In float32 whatever the model's dtype, as transformers' own loss computes them, a window at a time: the whole
    # batch's float32 logits and log-softmax would be 2 × batch × seq_len × vocabulary floats more at once (a 32k
    # vocabulary, 8 × 64 tokens: 130 MB of an actor's peak; on a GPU, 128 × 80 tokens: 2.6 GB).
    per = torch.stack([F.cross_entropy(w.float(), t, reduction="none") for w, t in zip(logits, targets)])
    correct = logits.argmax(dim=-1) == targets  # the float32 logits' argmax: widening keeps order and ties
    keep = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask[:, 1:].bool()  # padding is not text
    per = torch.where(keep, per.double(), 0.0)  # not per[keep]: a sum on the device, no host sync
    # each window's mean loss, for the standard error over windows (the sample the text was cut into)
    window = per.sum(1) / keep.sum(1).clamp(min=1)
    sums = {"acc": (correct & keep).sum(), "loss_sq": window.square().sum(), "loss_units": len(ids)}
    return per.sum(), keep.sum() if mask is not None else targets.numel(), sums


causal_lm.perplexity = True  # the evaluator adds <split>_ppl = exp(<split>_loss)
