"""The evaluator: loss and accuracy of θ* + αδ + βη on whole data splits.

Plain PyTorch, no Ray: it holds the model, the evaluation splits (uint8, on its
device) and the directions, and for each grid coordinate sets the perturbed
weights in place — always from θ*, never incrementally, so a point's value does
not depend on which points came before it — then runs the model in eval mode
over every sample.

    payload = prepare(spec)                         # CPU, NumPy: what actors receive
    ev = Evaluator.from_payload(spec, payload)
    out = ev.evaluate(np.array([[0.0, 0.0], [0.5, -0.25]]))
    out["train_loss"], out["train_acc"]             # one value per coordinate

Losses are summed in float64 and divided by the sample count; accuracy is a
fraction in [0, 1]. At (0, 0) the weights are θ* bit for bit, so the value is the
checkpoint's own loss.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data import Split, load_splits, normalization
from .directions import make_directions
from .models import build, load_model
from .spec import Spec, SpecError


@dataclass
class Payload:
    """Everything an evaluator needs besides the spec, as NumPy arrays (zero-copy through Ray's object store)."""

    state: dict[str, np.ndarray]
    directions: list[dict[str, np.ndarray]]
    splits: dict[str, Split]


def prepare(spec: Spec) -> Payload:
    """Load θ*, the data and the directions once, on the CPU; every input error surfaces here."""
    model = load_model(spec)
    splits = load_splits(spec.data)
    for name, split in splits.items():
        if len(split) == 0:
            raise SpecError(f"data.splits: split {name!r} of {spec.data.dataset} is empty")
        mean, _ = normalization(spec.data)
        if len(mean) not in (1, split.images.shape[1]):
            raise SpecError(f"data.normalize: {len(mean)} channel means for {split.images.shape[1]}-channel images")
    ndim = 1 if spec.grid.y is None else 2
    directions = make_directions(model, spec.directions, ndim)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return Payload(state, directions, splits)


def variables(spec: Spec) -> list[str]:
    return [f"{split}_{metric}" for split in spec.data.splits for metric in ("loss", "acc")]


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


class Evaluator:
    def __init__(self, model, state, directions, splits, mean, std, loss="cross_entropy", batch_size=1024, device="cpu"):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.loss = loss
        self.model = model.to(self.device).eval()
        self.model.load_state_dict({k: as_tensor(v) for k, v in state.items()})
        live = self.model.state_dict(keep_vars=True)
        # Only entries that some direction moves are touched per point; zero directions cost nothing.
        names = [n for n in (directions[0] if directions else ()) if any(np.any(d[n]) for d in directions)]
        self.targets = [live[n].detach() for n in names]
        self.base = [t.clone() for t in self.targets]
        self.directions = [[as_tensor(d[n]).to(self.device) for n in names] for d in directions]
        self.splits = {
            name: (as_tensor(s.images).to(self.device), as_tensor(s.labels).to(self.device)) for name, s in splits.items()
        }
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    @classmethod
    def from_payload(cls, spec: Spec, payload: Payload, device: str | None = None) -> "Evaluator":
        model = build(spec.model.arch, **spec.model.kwargs)  # weights come from the payload
        mean, std = normalization(spec.data)
        return cls(
            model, payload.state, payload.directions, payload.splits, mean, std,
            loss=spec.eval.loss, batch_size=spec.data.batch_size,
            device=device or resolve_device(spec.eval.device),
        )

    @torch.no_grad()
    def reset(self) -> None:
        torch._foreach_copy_(self.targets, self.base)

    @torch.no_grad()
    def set_point(self, coord) -> None:
        """θ = θ* + Σ c_k d_k, written into the model's own tensors."""
        self.reset()
        for c, d in zip(coord, self.directions):
            torch._foreach_add_(self.targets, d, alpha=float(c))

    def _batch_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.loss == "cross_entropy":
            return F.cross_entropy(logits, labels, reduction="sum")
        # As the paper's code: squared error of the softmax against one-hot labels, mean over classes.
        onehot = F.one_hot(labels, logits.shape[1]).float()
        return F.mse_loss(F.softmax(logits, dim=1), onehot, reduction="sum") / logits.shape[1]

    @torch.inference_mode()
    def measure(self) -> dict[str, float]:
        """Mean loss and accuracy of the model as it is now, on every split."""
        out = {}
        for name, (images, labels) in self.splits.items():
            loss = torch.zeros((), dtype=torch.float64, device=self.device)
            correct = torch.zeros((), dtype=torch.int64, device=self.device)
            for i in range(0, len(labels), self.batch_size):
                x = images[i : i + self.batch_size].float().div_(255).sub_(self.mean).div_(self.std)
                y = labels[i : i + self.batch_size]
                logits = self.model(x)
                loss += self._batch_loss(logits, y).double()
                correct += (logits.argmax(dim=1) == y).sum()
            # One host sync per split and point, not per batch.
            out[f"{name}_loss"] = loss.item() / len(labels)
            out[f"{name}_acc"] = correct.item() / len(labels)
        return out

    def evaluate(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        """Values at each coordinate row (α[, β]); θ* is restored afterwards."""
        rows = []
        for coord in np.atleast_2d(coords):
            self.set_point(coord)
            rows.append(self.measure())
        self.reset()
        return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]}
