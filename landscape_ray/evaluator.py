"""The evaluator: loss and metrics of θ* + αδ + βη on whole data splits.

Plain PyTorch, no Ray: it holds the model, the evaluation splits (on its
device) and the directions, and for each grid coordinate sets the perturbed
weights in place — always from θ*, never incrementally, so a point's value does
not depend on which points came before it — then runs the metric over every
batch in eval mode.

    payload = prepare(spec)                         # CPU, NumPy: what actors receive
    ev = Evaluator.from_payload(spec, payload)
    out = ev.evaluate(np.array([[0.0, 0.0], [0.5, -0.25]]))
    out["train_loss"], out["train_acc"]             # one value per coordinate

A metric is `fn(model, batch) -> (loss_sum, count[, {name: sum}])`. The default,
`classification`, gives the mean loss and the accuracy (a fraction in [0, 1]);
`eval.metric: package.module:fn` plugs in any other task. Each sum becomes a
store variable `<split>_<name>` (sum / count); a sum named `loss_sq` (per-sample
squared losses) becomes `<split>_loss_se`, the standard error of the mean loss,
when `data.subset` samples the split. Sums accumulate in float64 on the device
with one host sync per split and point. At (0, 0) the weights are θ* bit for
bit, so the value is the checkpoint's own loss.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import BatchSplit, ImageSplit, load_split, load_splits, normalization, tree_map
from .directions import Directions, resolve
from .models import build, import_object, load_model
from .spec import Spec, SpecError


def classification(loss: str = "cross_entropy"):
    """The default metric: summed per-sample loss, accuracy, and squared losses for the standard error."""

    def metric(model: nn.Module, batch):
        x, y = batch
        logits = model(x).float()
        if loss == "cross_entropy":
            per = F.cross_entropy(logits, y, reduction="none")
        else:  # as the paper's code: squared error of the softmax against one-hot labels, mean over classes
            per = F.mse_loss(F.softmax(logits, dim=1), F.one_hot(y, logits.shape[1]).float(), reduction="none").mean(1)
        per = per.double()
        return per.sum(), len(y), {"acc": (logits.argmax(dim=1) == y).sum(), "loss_sq": per.square().sum()}

    return metric


def resolve_metric(metric: str | None, loss: str = "cross_entropy"):
    """`eval.metric` ('package.module:fn') or, when None, the classification metric with `loss`."""
    return classification(loss) if metric is None else import_object(metric, "eval.metric")


@dataclass
class Payload:
    """Everything an evaluator needs besides the spec, as NumPy arrays (zero-copy through Ray's object store)."""

    state: dict[str, np.ndarray]
    directions: Directions
    splits: dict[str, ImageSplit | BatchSplit]
    bn_split: ImageSplit | BatchSplit | None = None  # the train split, for eval.bn: recompute
    variables: list[str] = field(default_factory=list)


def prepare(spec: Spec, vectors: list[dict[str, np.ndarray]] | None = None) -> Payload:
    """Load θ*, the data and the directions once, on the CPU; every input error surfaces here.

    `vectors`: directions already made (a resumed store's), so they are not computed again (a PCA can be costly).
    """
    model = load_model(spec)
    splits = load_splits(spec.data)
    mean, _ = normalization(spec.data)
    for name, split in splits.items():
        if len(split) == 0:
            raise SpecError(f"data.splits: split {name!r} of {spec.data.dataset} is empty")
        if isinstance(split, ImageSplit) and len(mean) not in (1, split.images.shape[1]):
            raise SpecError(f"data.normalize: {len(mean)} channel means for {split.images.shape[1]}-channel images")
    bn_split = None
    if spec.eval.bn == "recompute":
        bn_split = splits["train"] if "train" in splits else load_split(spec.data, "train")
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    directions = resolve(model, spec) if vectors is None else Directions(vectors, [])
    payload = Payload(state, directions, splits, bn_split)
    plain = spec.model_copy(update={"eval": spec.eval.model_copy(update={"compile": False})})  # no compiling just to probe
    payload.variables = Evaluator.from_payload(plain, payload, "cpu").probe()
    return payload


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("eval.device: cuda requested but no CUDA device is visible")
    return torch.device(name)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """Share a (possibly read-only, object-store-backed) array without copying; we never write to it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(array)


def set_matmul_precision(device: torch.device, precision: str) -> None:
    """fp32 means IEEE fp32 and deterministic kernels (bit-identical reruns); tf32/bf16 let cuDNN pick the fastest."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.deterministic = precision == "fp32"
        torch.backends.cudnn.benchmark = precision != "fp32"


class FoldedConv(nn.Module):
    """A conv followed by an eval-mode BN, as one conv: w·s, (b − μ)·s + β with s = γ/√(σ² + ε).

    It reads the conv's live weights at every call, so the in-place weight updates of each grid point
    apply; the BN's statistics and affine parameters must stay at θ* (folding assumes they do).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        bias = self.bn.bias - self.bn.running_mean * scale
        if self.conv.bias is not None:
            bias = bias + self.conv.bias * scale
        return self.conv._conv_forward(x, self.conv.weight * scale.view(-1, 1, 1, 1), bias)


def fold_bn(model: nn.Module, moved: set[str]) -> nn.Module:
    """The model with each conv → BN pair folded into one conv, unless some direction moves that BN.

    Uses torch.fx; a model it cannot trace is returned unchanged (folding is only a speed-up).
    """
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model)
    except Exception:
        return model
    modules = dict(graph.named_modules())
    for node in list(graph.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or any(n.startswith(f"{node.target}.") for n in moved):
            continue
        conv_node = node.args[0]
        conv = modules.get(conv_node.target) if getattr(conv_node, "op", None) == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or len(conv_node.users) != 1 or bn.running_var is None:
            continue
        name = f"{conv_node.target.replace('.', '_')}_folded"
        graph.add_submodule(name, FoldedConv(conv, bn))
        with graph.graph.inserting_after(node):
            folded = graph.graph.call_module(name, conv_node.args, conv_node.kwargs)
        node.replace_all_uses_with(folded)
        graph.graph.erase_node(node)
        graph.graph.erase_node(conv_node)
    graph.recompile()
    return graph


def compiled(model: nn.Module, mode: bool | str, device: torch.device):
    """torch.compile with Inductor's cache kept in ~/.cache/landscape_ray, so restarts and reruns skip compilation.

    Parameters are graph inputs, so the in-place weight updates of each grid point need no recompilation.
    """
    if mode is False:
        return model
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "landscape_ray" / "inductor"))
    if mode == "max-autotune":
        mode = "max-autotune" if device.type == "cuda" else "max-autotune-no-cudagraphs"
    return torch.compile(model, mode=None if mode in (True, "default") else mode, dynamic=False)


class Evaluator:
    def __init__(self, model, state, directions, splits, mean, std, metric=None, batch_size=1024, device="cpu",
                 bn_split=None, standard_error=False, precision="fp32", channels_last=False, compile=False, fold=False):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.metric = metric or classification()
        self.standard_error = standard_error
        self.precision = precision
        set_matmul_precision(self.device, precision)
        images = any(isinstance(s, ImageSplit) and s.images.ndim == 4 for s in splits.values())
        self.memory_format = torch.channels_last if channels_last and images else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.model.load_state_dict({k: as_tensor(v) for k, v in state.items()})
        live = self.model.state_dict(keep_vars=True)
        # Only entries that some direction moves are touched per point; zero directions cost nothing.
        names = [n for n in (directions[0] if directions else ()) if any(np.any(d[n]) for d in directions)]
        self.targets = [live[n].detach() for n in names]
        self.base = [t.clone() for t in self.targets]
        # Directions take the layout of the tensors they move, so the in-place updates run stride-aligned.
        self.directions = [[torch.empty_like(t).copy_(as_tensor(d[n])) for t, n in zip(self.targets, names)] for d in directions]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.splits = {name: self._resident(s) for name, s in splits.items()}
        self.bn_split = self._resident(bn_split) if bn_split is not None else None
        self.bn_modules = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.bn_saved = [(m.running_mean.clone(), m.running_var.clone()) for m in self.bn_modules if m.running_mean is not None]
        runner = fold_bn(self.model, set(names)) if fold and self.bn_split is None else self.model
        self.runner = compiled(runner, compile, self.device)

    def _resident(self, split):
        if isinstance(split, ImageSplit):
            images = as_tensor(split.images).to(self.device)
            if images.ndim == 4 and self.device.type != "cpu":  # an own device copy anyway: store it NHWC
                images = images.contiguous(memory_format=self.memory_format)
            return images, as_tensor(split.labels).to(self.device)
        return [tree_map(lambda a: as_tensor(a).to(self.device), b, np.ndarray) for b in split.batches]

    @classmethod
    def from_payload(cls, spec: Spec, payload: Payload, device: str | None = None) -> "Evaluator":
        model = build(spec.model.arch, **spec.model.kwargs)  # weights come from the payload
        mean, std = normalization(spec.data)
        return cls(
            model, payload.state, payload.directions.vectors, payload.splits, mean, std,
            metric=resolve_metric(spec.eval.metric, spec.eval.loss), batch_size=spec.data.batch_size,
            device=device or resolve_device(spec.eval.device), bn_split=payload.bn_split,
            standard_error=spec.data.subset is not None, precision=spec.eval.precision,
            channels_last=spec.eval.channels_last, compile=spec.eval.compile, fold=spec.eval.fold_bn,
        )

    def batches(self, resident):
        """Batches ready for the metric: image splits are sliced and normalized here, on the device."""
        if isinstance(resident, list):
            yield from resident
            return
        images, labels = resident
        for i in range(0, len(labels), self.batch_size):
            x = images[i : i + self.batch_size].float().div_(255).sub_(self.mean).div_(self.std)
            # On the CPU the images stay NCHW: the actors of a node share one zero-copy host copy.
            yield x.contiguous(memory_format=self.memory_format), labels[i : i + self.batch_size]

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @torch.no_grad()
    def reset(self) -> None:
        """Back to θ* (and its BN statistics, which eval.bn: recompute overwrites)."""
        torch._foreach_copy_(self.targets, self.base)
        if self.bn_split is not None:
            for m, (mean, var) in zip(self.bn_modules, self.bn_saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)

    @torch.no_grad()
    def set_point(self, coord) -> None:
        """θ = θ* + Σ c_k d_k, written into the model's own tensors."""
        self.reset()
        for c, d in zip(coord, self.directions):
            torch._foreach_add_(self.targets, d, alpha=float(c))

    @torch.no_grad()
    def recompute_bn(self) -> None:
        """Re-estimate BN running statistics at the current weights: an exact average over the train split."""
        for m in self.bn_modules:
            m.reset_running_stats()
            m.momentum = None
        self.model.train()
        try:
            for batch in self.batches(self.bn_split):
                with self.autocast():
                    self.metric(self.model, batch)
        finally:
            self.model.eval()

    @torch.inference_mode()
    def measure(self, limit: int | None = None) -> dict[str, float]:
        """Mean loss and the metric's other sums for the model as it is now, on every split."""
        if self.bn_split is not None:
            with torch.inference_mode(False):
                self.recompute_bn()
        self.model.eval()  # also when a training loop hands over its model in train mode
        out = {}
        for name, resident in self.splits.items():
            loss, count, sums = torch.zeros((), dtype=torch.float64, device=self.device), 0, {}
            for i, batch in enumerate(self.batches(resident)):
                if limit is not None and i >= limit:
                    break
                with self.autocast():
                    result = self.metric(self.runner, batch)
                loss += result[0].double()
                count += result[1]
                for k, v in (result[2] if len(result) > 2 else {}).items():
                    sums[k] = sums.get(k, 0) + torch.as_tensor(v, device=self.device).double()
            n = int(count)  # one host sync per split and point, not per batch
            mean = loss.item() / n
            out[f"{name}_loss"] = mean
            for k, v in sums.items():
                if k != "loss_sq":
                    out[f"{name}_{k}"] = v.item() / n
                elif self.standard_error:
                    var = max(v.item() / n - mean * mean, 0.0) * n / max(n - 1, 1)
                    out[f"{name}_loss_se"] = math.sqrt(var / n)
        return out

    def probe(self) -> list[str]:
        """The variables this evaluator produces, from one batch per split (checks the metric too)."""
        try:
            return list(self.measure(limit=1))
        except Exception as err:
            raise SpecError(f"eval: one batch at θ* failed (model, data and metric must fit): {type(err).__name__}: {err}") from None

    def evaluate(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        """Values at each coordinate row (α[, β]); θ* is restored afterwards."""
        rows = []
        for coord in np.atleast_2d(coords):
            self.set_point(coord)
            rows.append(self.measure())
        self.reset()
        return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]}
