"""Training with a checkpoint per epoch: the θ* (and the trajectory θ0 … θn) that landscapes are drawn around.

    landscape-ray train jobs/quickstart-train.yaml

writes `model_0.pt` (the initialisation), `model_1.pt` … `model_N.pt` and `final.pt`
into `out`. Each is a dict {'state_dict', 'epoch', 'train_loss', 'train_acc',
'test_loss', 'test_acc', 'optimizer', 'spec', 'steps', 'weight_norm',
'step_weight_norms'} readable with `torch.load(weights_only=True)`: `steps` counts
the optimizer steps so far, `weight_norm` is ‖θ‖₂ over every parameter at the end
of the epoch and `step_weight_norms` (float64 tensor) the same after each step of
the epoch (the paper's Fig. 11, by epoch and by iteration; one fused norm per step,
so nearly free). A rerun continues from the last epoch on disk;
shuffling and augmentation are seeded per epoch, so a resumed training gives the
same weights as an uninterrupted one.

The defaults are the paper's CIFAR-10 recipe (appendix 9.7): SGD with Nesterov
momentum 0.9, batch 128, weight decay 5e-4, lr 0.1 divided by 10 at epochs 150,
225 and 275 of 300, random crop + flip augmentation. `jobs/` holds the variants
(Adam, batch 8192, WD 0, lr 0.01 for the deep `_noshort` nets).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from landscape_ray.compute.evaluator import Evaluator, Options, resolve_device, resolve_metric
from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import epoch_checkpoints
from landscape_ray.inputs.checkpoints import fit_state, read_record
from landscape_ray.inputs.data import BatchSplit, ImageSplit, load_splits, normalization, normalizer, on_device
from landscape_ray.inputs.models import load_model
from landscape_ray.spec.training import OptimizerSpec, TrainSpec


def lr_at(spec: OptimizerSpec, epoch: int) -> float:
    return spec.lr * spec.gamma ** sum(epoch >= m for m in spec.milestones)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crops and horizontal flips, one draw per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2, n), generator=generator).tolist()
    flip = torch.rand(n, generator=generator).tolist()
    crops = [padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)]
    return torch.stack([c.flip(-1) if f < 0.5 else c for c, f in zip(crops, flip)])


def last_epoch(out: Path) -> int | None:
    epochs = list(epoch_checkpoints(out))
    return max(epochs) if epochs else None


def make_optimizer(spec: OptimizerSpec, params):
    if spec.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=spec.lr,
            momentum=spec.momentum,
            nesterov=spec.nesterov and spec.momentum > 0,
            weight_decay=spec.weight_decay,
        )
    return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)


class TrainBatches:
    """The train split on the training device, served in a seeded order each epoch.

    Images are shuffled sample by sample (and cropped/flipped if asked), normalized as the evaluator does;
    other data (a BatchSplit) is served as shuffled whole batches.
    """

    def __init__(self, split: ImageSplit | BatchSplit, spec: TrainSpec, device: torch.device):
        self.batch_size = spec.batch_size
        self.flip_crop = spec.augment if spec.augment is not None else spec.data.dataset == "cifar10"
        if isinstance(split, ImageSplit):
            self.images, self.labels = on_device(split, device)
            self.normalize = normalizer(*normalization(spec.data), device)
            self.batches = None
        else:
            self.batches = on_device(split, device)

    def epoch(self, generator: torch.Generator):
        if self.batches is not None:
            for i in torch.randperm(len(self.batches), generator=generator).tolist():
                yield self.batches[i]
            return
        order = torch.randperm(len(self.labels), generator=generator).to(self.images.device)
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            x = self.normalize(self.images[idx])
            if self.flip_crop:
                x = augment(x.cpu(), generator).to(self.images.device)
            yield x, self.labels[idx]


@torch.no_grad()
def weight_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """‖θ‖₂ over all `params`, as a 0-d float64 tensor on their device (no host sync)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(params)).double())


def train(spec: TrainSpec, log=print) -> Path:
    """Train (or continue training) and return the path of the final checkpoint."""
    if "train" not in spec.data.splits:
        raise SpecError("data.splits: training needs the train split")
    out = Path(spec.out)
    device = resolve_device(spec.device)
    model = load_model(spec, seed=spec.seed).to(device)
    params = list(model.parameters())
    optimizer = make_optimizer(spec.optimizer, params)
    splits = load_splits(spec.data.model_copy(update={"batch_size": spec.batch_size}))
    if not isinstance(splits["train"], ImageSplit) and spec.augment:
        raise SpecError("augment: only image data sets can be augmented")
    data = TrainBatches(splits["train"], spec, device)
    mean, std = normalization(spec.data)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    metric = resolve_metric(spec.metric, spec.loss)
    meter = Evaluator(
        model, state, [], splits, mean, std, Options(metric=metric, batch_size=spec.data.batch_size, device=device)
    )
    out.mkdir(parents=True, exist_ok=True)

    start = last_epoch(out)
    if start is not None:
        last = out / f"model_{start}.pt"  # a file on disk, maybe not ours: read as data, checked, one line if off
        ckpt = read_record(last, "out")
        fit_state(model, ckpt["state_dict"], str(last), "out")
        if "optimizer" in ckpt:
            try:
                optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
                raise SpecError(f"out: {last} holds an optimizer state that does not fit ({err})") from err
        steps = ckpt.get("steps", 0)
        log(f"resuming from {out / f'model_{start}.pt'} (epoch {start})")
    else:
        start = steps = 0
        save(out / "model_0.pt", model, optimizer, spec, 0, meter.measure(), steps, weight_norm(params), [])

    for epoch in range(start + 1, spec.epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(spec.optimizer, epoch - 1)
        seed = spec.seed * 100_003 + epoch
        # Randomness inside the model (dropout) draws from torch's global generator: seeded per epoch, so a resumed
        # training repeats it, and forked, so the caller's random state is left as it was.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            model.train()
            norms = []
            for batch in data.epoch(torch.Generator().manual_seed(seed)):
                loss_sum, count, *_ = metric(model, batch)
                optimizer.zero_grad(set_to_none=True)
                (loss_sum / count).backward()
                optimizer.step()
                norms.append(weight_norm(params))
        steps += len(norms)
        metrics = meter.measure()
        save(out / f"model_{epoch}.pt", model, optimizer, spec, epoch, metrics, steps, weight_norm(params), norms)
        log(
            f"epoch {epoch}/{spec.epochs} lr {lr_at(spec.optimizer, epoch - 1):.3g} "
            + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        )
    final = out / "final.pt"
    ckpt = read_record(out / f"model_{spec.epochs}.pt", "out")
    torch.save(ckpt, final)
    return final


def save(
    path: Path,
    model,
    optimizer,
    spec: TrainSpec,
    epoch: int,
    metrics: dict,
    steps: int,
    norm: torch.Tensor,
    step_norms: list[torch.Tensor],
) -> None:
    step_norms = torch.stack(step_norms).cpu() if step_norms else torch.zeros(0, dtype=torch.float64)
    ckpt = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "spec": spec.model_dump(mode="json"),
        **metrics,
        "steps": steps,
        "weight_norm": float(norm),
        "step_weight_norms": step_norms,
    }
    partial = path.with_suffix(".partial")
    torch.save(ckpt, partial)
    partial.replace(path)  # a killed training never leaves a truncated checkpoint behind
