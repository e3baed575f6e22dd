"""Training with a checkpoint per epoch: the θ* (and the trajectory θ0 … θn) that landscapes are drawn around.

    landscape-ray train jobs/quickstart-train.yaml

writes `model_0.pt` (the initialisation), `model_1.pt` … `model_N.pt` and `final.pt`
into `out`. Each is a dict {'state_dict', 'epoch', 'train_loss', 'train_acc',
'test_loss', 'test_acc', 'optimizer', 'spec'} readable with
`torch.load(weights_only=True)`. A rerun continues from the last epoch on disk;
shuffling and augmentation are seeded per epoch, so a resumed training gives the
same weights as an uninterrupted one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from .data import load_split, normalization
from .evaluator import Evaluator, resolve_device
from .models import load_model
from .spec import DataSpec, ModelSpec, SpecError, Strict


class OptimizerSpec(Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    milestones: list[int] = Field(default_factory=lambda: [150, 225, 275], description="epochs where lr is multiplied by gamma")
    gamma: float = Field(0.1, gt=0)


class TrainSpec(Strict):
    name: str = "train"
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=lambda: DataSpec(splits=["train", "test"]))
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(128, ge=1)
    augment: bool = Field(False, description="random crop (pad 4) and horizontal flip, as for CIFAR-10")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out: str = Field("runs/train/checkpoints", description="folder for model_{epoch}.pt and final.pt")


def lr_at(spec: OptimizerSpec, epoch: int) -> float:
    return spec.lr * spec.gamma ** sum(epoch >= m for m in spec.milestones)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2, n), generator=generator).tolist()
    flip = torch.rand(n, generator=generator).tolist()
    crops = [padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)]
    return torch.stack([c.flip(-1) if f < 0.5 else c for c, f in zip(crops, flip)])


def last_epoch(out: Path) -> int | None:
    epochs = [int(p.stem.split("_")[1]) for p in out.glob("model_*.pt") if p.stem.split("_")[1].isdigit()]
    return max(epochs) if epochs else None


def train(spec: TrainSpec, log=print) -> Path:
    """Train (or continue training) and return the path of the final checkpoint."""
    if "train" not in spec.data.splits:
        raise SpecError("data.splits: training needs the train split")
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.device)
    torch.manual_seed(spec.seed)
    model = load_model(spec).to(device)
    opt_spec = spec.optimizer
    if opt_spec.name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=opt_spec.lr, momentum=opt_spec.momentum,
                                    nesterov=opt_spec.nesterov and opt_spec.momentum > 0, weight_decay=opt_spec.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=opt_spec.lr, weight_decay=opt_spec.weight_decay)

    splits = {s: load_split(spec.data, s) for s in spec.data.splits}
    mean, std = normalization(spec.data)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    meter = Evaluator(model, state, [], splits, mean, std, batch_size=spec.data.batch_size, device=device)
    images, labels = meter.splits["train"]

    start = last_epoch(out)
    if start is not None:
        ckpt = torch.load(out / f"model_{start}.pt", map_location=device, weights_only=True)
        model.load_state_dict(ckpt["state_dict"])
        if "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
        log(f"resuming from {out / f'model_{start}.pt'} (epoch {start})")
    else:
        start = 0
        save(out / "model_0.pt", model, optimizer, spec, 0, meter.measure())

    for epoch in range(start + 1, spec.epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(opt_spec, epoch - 1)
        generator = torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
        order = torch.randperm(len(labels), generator=generator).to(device)
        model.train()
        for i in range(0, len(order), spec.batch_size):
            idx = order[i : i + spec.batch_size]
            x = images[idx].float().div_(255).sub_(meter.mean).div_(meter.std)
            if spec.augment:
                x = augment(x.cpu(), generator).to(device)
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        metrics = meter.measure()
        save(out / f"model_{epoch}.pt", model, optimizer, spec, epoch, metrics)
        log(f"epoch {epoch}/{spec.epochs} lr {lr_at(opt_spec, epoch - 1):.3g} "
            + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    final = out / "final.pt"
    ckpt = torch.load(out / f"model_{spec.epochs}.pt", map_location="cpu", weights_only=True)
    torch.save(ckpt, final)
    return final


def save(path: Path, model, optimizer, spec: TrainSpec, epoch: int, metrics: dict) -> None:
    ckpt = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "epoch": epoch,
            "optimizer": optimizer.state_dict(), "spec": spec.model_dump(mode="json"), **metrics}
    partial = path.with_suffix(".partial")
    torch.save(ckpt, partial)
    partial.replace(path)  # a killed training never leaves a truncated checkpoint behind

