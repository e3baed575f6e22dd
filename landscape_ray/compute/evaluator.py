"""The evaluator: loss and metrics of θ* + αδ + βη on whole data splits, in plain PyTorch (no Ray).

It holds the model, the evaluation splits (on its device) and the directions. For each grid coordinate it sets
the perturbed weights in place, always from θ* (never incrementally, so a point's value does not depend on the
points before it; at (0, 0) they are θ* bit for bit), then runs the metric over every batch in eval mode.

    ev = Evaluator.from_payload(spec, prepare(spec))            # prepare: payload.py
    out = ev.evaluate(np.array([[0.0, 0.0], [0.5, -0.25]]))     # out["train_loss"]: one value per coordinate

A metric is `fn(model, batch) -> (loss_sum, count[, {name: sum}])`; the default, `classification`, gives the mean
loss and the accuracy, `eval.metric: package.module:fn` any other. Each sum becomes `<split>_<name>` (sum / count);
`loss_sq` becomes `<split>_loss_se`, the standard error of the mean loss, when `data.subset` samples the split or
the split is text (a metric that returns `loss_units` gives squared losses of that many units, such as token
windows, instead of one per counted item). Sums accumulate in float64 on the device, one host sync per split and
point. Speed-ups: speedups.py and firstlayer.py; `batch_size="auto"` and `fold="auto"` (the defaults) pick the
batch that runs fastest on the device and fold BN only where the folded forward agrees with the plain one within
`FOLD_RTOL` on the first batch.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from landscape_ray.compute import sampling
from landscape_ray.compute.firstlayer import FirstLayer
from landscape_ray.compute.language import causal_lm
from landscape_ray.compute.speedups import FoldedConv, auto_batch_size, compiled, fold_bn
from landscape_ray.core.errors import SpecError
from landscape_ray.core.plugins import import_object
from landscape_ray.inputs.data import BFloat16, ImageSplit, as_tensor, normalization, normalizer, on_device
from landscape_ray.inputs.directions import Recipe, ignored
from landscape_ray.inputs.models import build_model
from landscape_ray.inputs.payload import Payload
from landscape_ray.spec.schema import Spec

FOLD_RTOL = 1e-6  # fold_bn: auto folds only when the loss of the first batch moves less than this, relative


FEW_CLASSES = 16  # a vector register's floats (AVX-512); below it torch's CPU log-softmax has no vector path


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy, `F.cross_entropy(logits, y, reduction="none")`. On a CPU with fewer than
    FEW_CLASSES classes torch's log-softmax along the class dimension runs a scalar loop per sample (10 classes,
    3,000 samples: 460 µs on one thread, a third of a small MLP's point); along the first dimension of the transposed
    logits it runs across samples in vector registers (61 µs). The values are torch's to rounding: equal bit for bit
    on most shapes, a unit in the last place apart on some (tests/test_evaluator.py). Only int64 labels, none of
    them negative, take this path: torch's own handling of other dtypes and of ignore_index (-100) stays."""
    few = logits.device.type == "cpu" and logits.dim() == 2 and logits.shape[1] < FEW_CLASSES
    if few and y.dtype == torch.int64 and bool((y >= 0).all()):  # torch's own labels; -100 (ignored) to torch
        return -F.log_softmax(logits.t().contiguous(), 0).gather(0, y[None])[0]
    return F.cross_entropy(logits, y, reduction="none")


def classification(loss: str = "cross_entropy"):
    """The default metric: summed per-sample loss, accuracy, and squared losses for the standard error."""

    def metric(model: nn.Module, batch):
        x, y = batch
        logits = model(x).float()
        if loss == "cross_entropy":
            per = cross_entropy(logits, y)
        else:  # as the paper's code: squared error of the softmax against one-hot labels, mean over classes
            per = F.mse_loss(F.softmax(logits, dim=1), F.one_hot(y, logits.shape[1]).float(), reduction="none").mean(1)
        per = per.double()
        return per.sum(), len(y), {"acc": (logits.argmax(dim=1) == y).sum(), "loss_sq": per.square().sum()}

    metric.calls_model_once = True  # on the batch's inputs as they are: firstlayer.py may answer for its first layer
    return metric


def resolve_metric(metric: str | None, loss: str = "cross_entropy", dataset: str = ""):
    """`eval.metric` ('package.module:fn') or, when None, next-token cross-entropy for `dataset: text` and the
    classification metric with `loss` for the others."""
    if metric is not None:
        return import_object(metric, "eval.metric")
    return causal_lm if dataset == "text" else classification(loss)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("eval.device: cuda requested but no CUDA device is visible")
    return torch.device(name)


@dataclass
class Options:
    """How an evaluator computes (the spec's eval and data settings, resolved): the metric, the batch, the device,
    the train split for `eval.bn: recompute`, and the speed-ups."""

    metric: Callable | None = None  # fn(model, batch) -> (loss_sum, count[, {name: sum}]); None: classification
    batch_size: int | str = 1024  # or "auto"
    device: str | torch.device = "cpu"
    bn_split: object = None
    standard_error: bool = False  # <split>_loss_se where the split is a sample (data.subset)
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    fold: bool | str = False  # BN folding: True, False or "auto"
    sample_rule: sampling.Rule | None = None  # eval.samples: adaptive
    first_layer: bool = False  # eval.first_layer: firstlayer.py, where it applies


class Evaluator:
    def __init__(self, model, state, directions, splits, mean, std, options: Options | None = None):
        o = options or Options()
        self.device = torch.device(o.device)
        self.metric = o.metric or classification()
        self.standard_error = o.standard_error
        self.sample_rule = o.sample_rule
        self.precision = o.precision
        images = any(isinstance(s, ImageSplit) and s.images.ndim == 4 for s in splits.values())
        self.memory_format = torch.channels_last if o.channels_last and images else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.modules = list(self.model.modules())  # for measure's train-mode check (`eval()` itself: 50 µs a point)
        self.model.load_state_dict({k: as_tensor(v) for k, v in state.items()})
        live = self.model.state_dict(keep_vars=True)
        # Only entries that some direction moves are touched per point; zero directions cost nothing.
        self.recipe = directions if isinstance(directions, Recipe) else None
        if self.recipe is not None:
            names = [n for n in self.recipe.names if not ignored(live[n], self.recipe.ignore)]
            directions = []
        else:
            names = [n for n in (directions[0] if directions else ()) if any(np.any(d[n]) for d in directions)]
        self.names = names
        self.targets = [live[n].detach() for n in names]
        # θ* to reset to before each point. On the CPU, where the payload's array already is that tensor (same dtype,
        # same layout), it is used in place: one read-only copy in Ray's object store for every actor of a node,
        # instead of one per actor (a language model's weights are most of an actor's memory).
        self.base = [
            as_tensor(state[n]) if self._shareable(t, state[n]) else t.clone() for t, n in zip(self.targets, names)
        ]
        # Directions take the layout (and dtype) of the tensors they move, so the in-place updates run stride-aligned;
        # where the payload's array already is that, it is used in place (shared, as θ* is).
        self.directions = [
            [
                as_tensor(d[n]) if self._shareable(t, d[n]) else torch.empty_like(t).copy_(as_tensor(d[n]))
                for t, n in zip(self.targets, names)
            ]
            for d in directions
        ]
        self.normalize = normalizer(mean, std, self.device)
        self.splits = {name: self._resident(s) for name, s in splits.items()}
        self.bn_split = self._resident(o.bn_split) if o.bn_split is not None else None
        self.bn_modules = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.bn_saved = [
            (m.running_mean.clone(), m.running_var.clone()) for m in self.bn_modules if m.running_mean is not None
        ]
        first = next((s for s in self.splits.values() if not isinstance(s, list)), None)  # an image split
        sample = None if first is None else self.normalize(first[0][:1]).contiguous(memory_format=self.memory_format)
        self.auto_batch = o.batch_size == "auto"
        largest = max(len(s[1]) if isinstance(s, tuple) else 0 for s in self.splits.values())
        self.batch_size = auto_batch_size(self.model, sample, self.device, largest) if self.auto_batch else o.batch_size
        if self.auto_batch and self.sample_rule is not None:  # shards to stop between
            self.batch_size = sampling.cap(self.batch_size, largest)
        runner = self.model
        if o.fold and self.bn_split is None:
            runner = fold_bn(self.model, set(names), quiet=o.fold == "auto")
            # Checked only where something was folded: an unchanged model (no BN) agrees with itself.
            if o.fold == "auto" and runner is not self.model and not self._agrees(runner):
                runner = self.model
        self.folded = any(isinstance(m, FoldedConv) for m in runner.modules())
        # Compiled for one batch shape (dynamic=False: static shapes, and CUDA graphs under max-autotune); a split's
        # shorter last batch runs the same model uncompiled, rather than compiling (and capturing) a second shape.
        self.eager = runner
        self.runner = compiled(runner, o.compile, self.device)
        self.first = None
        simple = self.recipe is None and self.bn_split is None and not o.compile and self.precision == "fp32"
        if o.first_layer and simple and self.device.type == "cpu" and getattr(self.metric, "calls_model_once", False):
            self.first = FirstLayer.find(self, runner, self._few(), sum(len(s) for s in splits.values()))

    def _few(self, n: int = 2):
        """The first `n` samples of the first split as a batch (a look at the model: a whole batch's normalized
        copy would be 100 MB for 8,192 CIFAR images, which malloc keeps after)."""
        resident = next(iter(self.splits.values()))
        if isinstance(resident, tuple):
            return self.normalize(resident[0][:n]).contiguous(memory_format=self.memory_format), resident[1][:n]
        first = resident[0]
        return type(first)(t[:n] for t in first) if isinstance(first, (tuple, list)) else first

    def _shareable(self, target: torch.Tensor, array) -> bool:
        if self.device.type != "cpu" or not isinstance(array, (np.ndarray, BFloat16)):
            return False
        shared = as_tensor(array)
        return target.is_contiguous() and shared.is_contiguous() and shared.dtype == target.dtype

    @torch.no_grad()
    def _agrees(self, folded: nn.Module) -> bool:
        """The folded model's fp32 loss on the first batch of the first split is within FOLD_RTOL of the plain one."""
        batch = next(self.batches(next(iter(self.splits.values()))))
        plain, fast = (float(self.metric(m, batch)[0]) for m in (self.model, folded))
        return abs(fast - plain) <= FOLD_RTOL * abs(plain)

    def _resident(self, split):
        resident = on_device(split, self.device)
        if isinstance(split, ImageSplit) and split.images.ndim == 4 and self.device.type != "cpu":
            images, labels = resident  # an own device copy anyway: store it NHWC
            return images.contiguous(memory_format=self.memory_format), labels
        return resident

    @classmethod
    def from_payload(cls, spec: Spec, payload: Payload, device: str | None = None) -> Evaluator:
        # Every entry of its state comes from the payload. A handed model is copied: the caller's stays as it was.
        model = build_model(spec.model, initialise=False) if payload.model is None else copy.deepcopy(payload.model)
        e = spec.eval
        options = Options(
            payload.metric or resolve_metric(e.metric, e.loss, spec.data.dataset),
            spec.data.batch_size,
            device or resolve_device(e.device),
            payload.bn_split,
            spec.data.subset is not None or spec.data.dataset == "text",  # windows: a sample of the text
            e.precision,
            e.channels_last,
            e.compile,
            e.fold_bn,
            sampling.Rule(e.sample_tolerance, e.sample_ceiling) if e.samples == "adaptive" else None,
            e.first_layer,
        )
        directions = payload.directions.travelling
        return cls(model, payload.state, directions, payload.splits, *normalization(spec.data), options)

    def batch_count(self, resident) -> int:
        return len(resident) if isinstance(resident, list) else math.ceil(len(resident[1]) / self.batch_size)

    def batch_at(self, resident, i: int):
        """Batch i, ready for the metric: image splits are sliced and normalized here, on the device."""
        if isinstance(resident, list):
            return resident[i]
        images, labels = resident
        s = slice(i * self.batch_size, (i + 1) * self.batch_size)
        # On the CPU the images stay NCHW: the actors of a node share one zero-copy host copy.
        return self.normalize(images[s]).contiguous(memory_format=self.memory_format), labels[s]

    def batches(self, resident):
        return (self.batch_at(resident, i) for i in range(self.batch_count(resident)))

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @torch.no_grad()
    def reset(self) -> None:
        """Back to θ* (and its BN statistics, which eval.bn: recompute overwrites)."""
        if self.targets:  # none before directions exist (the Hessian kind's probe, a firstlayer look at θ*)
            torch._foreach_copy_(self.targets, self.base)
        if self.first is not None:
            self.first.point = ()
        if self.bn_split is not None:
            for m, (mean, var) in zip(self.bn_modules, self.bn_saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)

    @torch.no_grad()
    def set_point(self, coord) -> None:
        """θ = θ* + Σ c_k d_k, written into the model's own tensors."""
        self.reset()
        if self.first is not None:
            self.first.point = tuple(float(c) for c in coord)
        if self.recipe is None:
            for c, d in zip(coord, self.directions):
                torch._foreach_add_(self.targets, d, alpha=float(c))
            return
        # Regenerated directions: entry by entry, block of rows by block (Recipe.moved), so that little more than the
        # model exists at a time; the sum in fp32, rounded once into the model's dtype.
        moves = [(axis, float(c)) for axis, c in enumerate(coord) if c]
        for target, base, name in zip(self.targets, self.base, self.names):
            for rows, point in self.recipe.moved(name, base, moves, self.device) if moves else ():
                target[rows].copy_(point)

    @torch.no_grad()
    def recompute_bn(self) -> None:
        """Re-estimate BN running statistics at the current weights: an exact average over the train split."""
        momenta = [m.momentum for m in self.bn_modules]
        for m in self.bn_modules:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches, not an exponential one
        self.model.train()
        try:
            for batch in self.batches(self.bn_split):
                with self.autocast():
                    self.metric(self.model, batch)
        finally:
            self.model.eval()
            for m, momentum in zip(self.bn_modules, momenta):
                m.momentum = momentum

    @torch.inference_mode()
    def measure(self, limit: int | None = None) -> dict[str, float]:
        """Mean loss and the metric's other sums for the model as it is now, on every split (with `eval.samples:
        adaptive`, on as many of a split's batches as its loss needs: sampling.py)."""
        if self.bn_split is not None:
            with torch.inference_mode(False):
                self.recompute_bn()
        if any(m.training for m in self.modules):  # a training loop hands over its model in train mode
            self.model.eval()
        out = {}
        for name, resident in self.splits.items():
            shards = self.batch_count(resident)
            if self.sample_rule is None or limit is not None:  # limit: a probe or a warm-up, the first batches
                taken = {i: self._sums(name, i) for i in range(shards if limit is None else min(limit, shards))}
                se = None if self.sample_rule is None else math.nan
            else:
                taken, se = self._sample(name, shards)
            # In the batches' own order where a split is whole: the same additions as `samples: all`, bit for bit.
            keys = sorted(taken) if len(taken) == shards else list(taken)
            loss, count, sums = torch.zeros((), dtype=torch.float64, device=self.device), 0, {}
            for i in keys:
                loss, count = loss + taken[i][0], count + taken[i][1]
                for k, v in taken[i][2].items():
                    sums[k] = sums.get(k, 0) + v
            n = int(count)  # one host sync per split and point, not per batch
            out[f"{name}_loss"] = mean = loss.item() / n
            if getattr(self.metric, "perplexity", False):  # a language model's: exp of the token-weighted mean loss
                out[f"{name}_ppl"] = math.exp(min(mean, 700.0))  # beyond, float64 overflows
            units = int(sums.pop("loss_units", n))  # what loss_sq squares: one per counted item unless the metric says
            for k, v in sums.items():
                if k != "loss_sq":
                    out[f"{name}_{k}"] = v.item() / n
                elif self.standard_error:
                    var = max(v.item() / units - mean * mean, 0.0) * units / max(units - 1, 1)
                    out[f"{name}_loss_se"] = math.sqrt(var / units)
            if se is not None:  # sampled: against the whole split's value; whole: 0, or the sample's above
                out[f"{name}_loss_se"] = se if len(taken) < shards else out.get(f"{name}_loss_se", 0.0)
                out[f"{name}_samples"] = units
        return out

    def _sums(self, split: str, i: int):
        """(summed loss, count, {name: sum}) of batch i of a split, float64 on the device."""
        batch = self.batch_at(self.splits[split], i)
        short = isinstance(batch, tuple) and len(batch[1]) != self.batch_size
        if self.first is not None:
            self.first.at = (split, i, self.batch_size)
        try:
            with self.autocast():
                result = self.metric(self.eager if short else self.runner, batch)
        finally:
            if self.first is not None:
                self.first.at = None
        extra = {k: torch.as_tensor(v, device=self.device).double() for k, v in (result[2:] or [{}])[0].items()}
        return result[0].double(), result[1], extra

    def _sample(self, name: str, shards: int):
        """The batches of one split in sampling.order until the rule has enough: ({batch: sums}, standard error)."""
        taken, losses, counts, se = {}, [], [], math.nan
        for i in sampling.order(shards, name):
            taken[int(i)] = sums = self._sums(name, int(i))
            losses.append(sums[0].item())
            counts.append(int(sums[1]))
            stop, se = self.sample_rule.enough(losses, counts, shards)
            if stop:
                break
        return taken, se

    def warm(self) -> dict[str, float]:
        """Get ready for the first point before anything is timed: compile (one full batch through the compiled
        model), and on a GPU with `batch_size: auto` halve the batch until its first forward fits the memory.
        Returns the seconds this took and one point's seconds at θ* measured after it (`point_s`)."""
        start = time.perf_counter()
        while True:
            try:
                self.measure(limit=1)
                break
            except torch.OutOfMemoryError:
                if not (self.auto_batch and self.batch_size > 1):
                    raise
                self.batch_size //= 2
                torch.cuda.empty_cache()
        self.synchronize()
        warm = time.perf_counter() - start
        start = time.perf_counter()
        self.measure(limit=1)
        self.synchronize()
        # One batch per split took this long; a point is the longest split's batches (a list: collated batches).
        batches = max(
            len(s) if isinstance(s, list) else math.ceil(len(s[1]) / self.batch_size) for s in self.splits.values()
        )
        return {"warm_s": warm, "point_s": (time.perf_counter() - start) * batches}

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def evaluate(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        """Values at each coordinate row (α[, β]); θ* is restored afterwards."""
        rows = []
        for coord in np.atleast_2d(coords):
            self.set_point(coord)
            rows.append(self.measure())
        self.reset()
        return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]}
