"""Hessian-vector products of the mean loss over a data split, on one device (plain torch, no Ray, no SciPy).

The loss is the one the surface plots: the evaluator's metric summed over every
batch of a split, in eval mode (BatchNorm uses its running statistics, which
are constants here), at θ* or at θ* + αδ + βη. Products are taken over the
model's parameters (`named_parameters()` order, each flattened), with
`torch.func`: forward-over-reverse (`jvp` of `grad`), or reverse-over-reverse
(`grad` of ⟨`grad`, v⟩) for a model whose operators lack forward-mode rules.
Each batch's product is float32; the sums over batches are float64.

    curv = Curvature.from_payload(spec, payload, "train", device="cpu", at=(0.5, -0.25))
    hv_sum, count = curv.hvp_sum(v)      # Σ over the samples: what a shard returns
    hv = curv.matvec(v)                  # the mean: H v for the split on this device
    curv.layout                          # [(name, shape)]: the order of the flat vector

A data split can be cut into `shards(split, n)`; the sums of the shards' products
divided by the total count are exactly the whole split's product (up to float
rounding), which is how `cluster/shards.py` spreads the work over Ray actors.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from landscape_ray.compute.evaluator import Evaluator
from landscape_ray.core.errors import SpecError
from landscape_ray.inputs.data import BatchSplit, ImageSplit
from landscape_ray.inputs.payload import Payload
from landscape_ray.spec.schema import Spec


def exact_spec(spec: Spec) -> Spec:
    """The spec with the evaluator's speed options that change numbers or graphs (bf16, compile, BN folding, the
    first layer's stored responses, which have no gradient) off."""
    plain = {"precision": "fp32", "compile": False, "fold_bn": False, "first_layer": False}
    return spec.model_copy(update={"eval": spec.eval.model_copy(update=plain)})


def parameter_layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the parameters, in the fixed order of every flat vector here."""
    return [(name, tuple(p.shape)) for name, p in model.named_parameters() if p.requires_grad]


def unflatten(flat, layout):
    """{name: view of `flat`} for a flat NumPy array or tensor in `layout` order."""
    out, offset = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        out[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    return out


def shards(split: ImageSplit | BatchSplit, n: int) -> list[ImageSplit | BatchSplit]:
    """`split` cut into at most `n` contiguous, non-empty pieces (views of the arrays, no copies)."""
    if isinstance(split, ImageSplit):
        bounds = np.linspace(0, len(split), min(n, len(split)) + 1).astype(int)
        return [ImageSplit(split.images[a:b], split.labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    groups = np.array_split(np.arange(len(split.batches)), min(n, len(split.batches)))
    return [BatchSplit([split.batches[i] for i in g], sum(_batch_size(split.batches[i]) for i in g)) for g in groups]


def _batch_size(batch) -> int:
    """Samples in a collated batch: the leading dimension of its first array."""
    while not isinstance(batch, np.ndarray):
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return len(batch)


class SummedLoss(nn.Module):
    """The metric's summed loss as a module of the model's parameters (for `functional_call`); aux: the count."""

    def __init__(self, model: nn.Module, metric):
        super().__init__()
        self.model, self.metric = model, metric

    def forward(self, batch):
        result = self.metric(self.model, batch)
        return result[0], torch.as_tensor(result[1])  # torch.func carries only tensors as aux


class Curvature:
    """Hessian-vector products of one split's summed loss at the evaluator's current weights."""

    def __init__(self, evaluator: Evaluator, split: str, batches: int | None = None):
        """`batches`: only the first this many batches of the split (e.g. a cheaper curvature per grid point)."""
        self.evaluator = evaluator
        resident = evaluator.splits[split]
        if batches is not None:  # image splits are (images, labels) on the device, other splits lists of batches
            n = batches * evaluator.batch_size
            resident = resident[:batches] if isinstance(resident, list) else (resident[0][:n], resident[1][:n])
        self.data = resident
        self.layout = parameter_layout(evaluator.model)
        self.dim = sum(math.prod(shape) for _, shape in self.layout)
        self.loss = SummedLoss(evaluator.model, evaluator.metric)
        self.mode = "forward"  # falls back to "reverse" when a model has no forward-mode derivative

    @classmethod
    def from_payload(
        cls,
        spec: Spec,
        payload: Payload,
        split: str,
        device: str | None = None,
        at: tuple[float, ...] | None = None,
        batches: int | None = None,
    ) -> "Curvature":
        if spec.eval.bn == "recompute":
            raise SpecError("eval.bn: the Hessian is taken with fixed BN statistics; use eval.bn: eval")
        evaluator = Evaluator.from_payload(exact_spec(spec), payload, device)
        if at is not None:
            evaluator.set_point(at)
        return cls(evaluator, split, batches)

    def _params(self) -> dict[str, torch.Tensor]:
        # Keys as SummedLoss sees them; the live weights, so a later set_point is honoured.
        return {f"model.{name}": p.detach() for name, p in self.evaluator.model.named_parameters() if p.requires_grad}

    def check(self) -> None:
        """One batch: the loss must depend differentiably on the parameters (else every product is silently 0)."""
        batch = next(iter(self.evaluator.batches(self.data)))
        with torch.enable_grad():
            loss = self.evaluator.metric(self.evaluator.model, batch)[0]
        if not loss.requires_grad:
            raise SpecError(
                "eval.metric: its loss is not differentiable with respect to the parameters, so it has no Hessian"
            )

    def _batch_hvp(self, params: dict, tangent: dict, batch):
        """(H_batch v as a dict, samples) for the summed loss of one batch."""

        def loss(p):
            return functional_call(self.loss, p, (batch,))

        if self.mode == "forward":
            try:
                _, hv, count = jvp(grad(loss, has_aux=True), (params,), (tangent,), has_aux=True)
                return hv, count
            except (NotImplementedError, RuntimeError) as err:
                if "forward AD" not in str(err) and not isinstance(err, NotImplementedError):
                    raise
                self.mode = "reverse"  # an operator without a forward-mode formula: double backward instead

        def directional(p):
            g, count = grad(loss, has_aux=True)(p)
            return sum((g[k] * tangent[k]).sum() for k in g), count

        return grad(directional, has_aux=True)(params)

    def hvp_sum(self, v: np.ndarray) -> tuple[np.ndarray, int]:
        """(Σ_samples ∇²ℓ_i v as float64, sample count) over this device's data; `v` is flat, in `layout` order."""
        device = self.evaluator.device
        flat = torch.as_tensor(np.asarray(v), dtype=torch.float32, device=device)
        tangent = {f"model.{k}": t for k, t in unflatten(flat, self.layout).items()}
        params = self._params()
        total = torch.zeros(self.dim, dtype=torch.float64, device=device)
        count = 0
        for batch in self.evaluator.batches(self.data):
            hv, n = self._batch_hvp(params, tangent, batch)
            total += torch.cat([hv[k].reshape(-1) for k in tangent]).double()
            count += int(n)
        return total.cpu().numpy(), count

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """H v of the mean loss over this device's data."""
        total, count = self.hvp_sum(v)
        return total / count

    def set_point(self, coord) -> None:
        """Move to θ* + Σ c_k d_k (the evaluator's directions); products are then taken there."""
        self.evaluator.set_point(coord)
