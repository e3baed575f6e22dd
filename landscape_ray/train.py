"""Training with a checkpoint per epoch: the θ* (and the trajectory θ0 … θn) that landscapes are drawn around.

    landscape-ray train jobs/quickstart-train.yaml
    landscape-ray train jobs/llm/tiny-gpt2-train.yaml     # model.arch hf: a save_pretrained folder per epoch

writes `model_0.pt` (the initialisation), `model_1.pt` … `model_N.pt` and `final.pt`
into `out`; for `model.arch: hf`, folders `epoch_0` … `epoch_N` and `final` as
`save_pretrained` writes them (safetensors, config, the data's tokenizer) with the
same record in each folder's `training.pt`, so that interpolation and PCA take them
like any other Hugging Face folder. A config folder without weights starts from the
config's initialisation under `seed`; one with weights is fine-tuned.

Each record is a dict {'state_dict', 'epoch', 'train_loss', 'train_acc', 'test_loss', 'test_acc', 'optimizer',
'spec', 'steps', 'weight_norm', 'step_weight_norms'} readable with `torch.load(weights_only=True)`: `steps` counts
the optimizer steps so far, `weight_norm` is ‖θ‖₂ over every parameter at the end of the epoch and
`step_weight_norms` (float64 tensor) the same after each step of the epoch (the paper's Fig. 11, by epoch and by
iteration; one fused norm per step, so nearly free). A rerun continues from the last epoch on disk; shuffling and
augmentation are seeded per epoch, so a resumed training gives the same weights as an uninterrupted one.

The defaults are the paper's CIFAR-10 recipe (appendix 9.7): SGD with Nesterov
momentum 0.9, batch 128, weight decay 5e-4, lr 0.1 divided by 10 at epochs 150,
225 and 275 of 300, random crop + flip augmentation. `jobs/` holds the variants
(Adam, batch 8192, WD 0, lr 0.01 for the deep `_noshort` nets).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from landscape_ray.compute.evaluator import Evaluator, Options, resolve_device, resolve_metric
from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import epoch_checkpoints
from landscape_ray.inputs.checkpoints import fit_state, read_record
from landscape_ray.inputs.data import BatchSplit, ImageSplit, load_splits, normalization, normalizer, on_device
from landscape_ray.inputs.hf import build_hf, fitting_state, holds_weights, load_tokenizer
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


class Checkpoints:
    """`model_<epoch>.pt` files in `out`, each the record of `record` with the weights in its state_dict."""

    def __init__(self, spec: TrainSpec):
        self.spec, self.out = spec, Path(spec.out)

    def last_epoch(self) -> int | None:
        epochs = list(epoch_checkpoints(self.out))
        return max(epochs) if epochs else None

    def path(self, epoch: int) -> Path:
        return self.out / f"model_{epoch}.pt"

    def save(self, epoch: int, model, ckpt: dict) -> None:
        partial = self.path(epoch).with_suffix(".partial")
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **ckpt}, partial)
        partial.replace(self.path(epoch))  # a killed training never leaves a truncated checkpoint behind

    def load(self, epoch: int, model) -> dict:
        """The record of `epoch`, its weights loaded into `model` (a file on disk, maybe not ours: read as data)."""
        ckpt = read_record(self.path(epoch), "out")
        fit_state(model, ckpt["state_dict"], str(self.path(epoch)), "out")
        return ckpt

    def finish(self) -> Path:
        final = self.out / "final.pt"
        torch.save(read_record(self.path(self.spec.epochs), "out"), final)
        return final


class FolderCheckpoints(Checkpoints):
    """`epoch_<n>` save_pretrained folders in `out`, each with the data's tokenizer and the record (less the
    weights) in `training.pt`."""

    def last_epoch(self) -> int | None:
        epochs = [int(p.name[6:]) for p in self.out.glob("epoch_*") if p.name[6:].isdigit() and p.is_dir()]
        return max(epochs) if epochs else None

    def path(self, epoch: int) -> Path:
        return self.out / f"epoch_{epoch}"

    def save(self, epoch: int, model, ckpt: dict) -> None:
        partial = self.out / f".epoch_{epoch}.partial"
        shutil.rmtree(partial, ignore_errors=True)  # a killed save's leftover, in our own output folder
        model.save_pretrained(partial)
        load_tokenizer(self.spec.data.tokenizer, "data.tokenizer").save_pretrained(partial)
        torch.save(ckpt, partial / "training.pt")
        partial.replace(self.path(epoch))  # a folder appears whole or not at all

    def load(self, epoch: int, model) -> dict:
        folder = self.path(epoch)
        model.load_state_dict(fitting_state(str(folder), model, field="out"), strict=False)
        return read_record(folder / "training.pt", "out", weights=False)

    def finish(self) -> Path:
        final, partial = self.out / "final", self.out / ".final.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(self.path(self.spec.epochs), partial)
        if final.exists():  # a rerun's: replaced by the same epoch's copy
            shutil.rmtree(final)
        partial.replace(final)
        return final


def initial_model(spec: TrainSpec):
    """The model to train: θ0 from the checkpoint or folder weights, or the initialisation drawn under `seed`."""
    if spec.model.arch == "hf" and not holds_weights(spec.model.path):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            return build_hf(spec.model.path, spec.model.dtype)
    return load_model(spec, seed=spec.seed)


def make_optimizer(spec: OptimizerSpec, params):
    if spec.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=spec.lr,
            momentum=spec.momentum,
            nesterov=spec.nesterov and spec.momentum > 0,
            weight_decay=spec.weight_decay,
        )
    if spec.name == "adamw":  # decoupled weight decay, what transformers are trained with
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
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
    checkpoints = (FolderCheckpoints if spec.model.arch == "hf" else Checkpoints)(spec)
    model = initial_model(spec).to(device)
    params = list(model.parameters())
    optimizer = make_optimizer(spec.optimizer, params)
    splits = load_splits(spec.data.model_copy(update={"batch_size": spec.batch_size}))
    if not isinstance(splits["train"], ImageSplit) and spec.augment:
        raise SpecError("augment: only image data sets can be augmented")
    data = TrainBatches(splits["train"], spec, device)
    mean, std = normalization(spec.data)
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    metric = resolve_metric(spec.metric, spec.loss, spec.data.dataset)
    meter = Evaluator(
        model, state, [], splits, mean, std, Options(metric=metric, batch_size=spec.data.batch_size, device=device)
    )
    out.mkdir(parents=True, exist_ok=True)

    start = checkpoints.last_epoch()
    if start is not None:
        last = checkpoints.path(start)
        ckpt = checkpoints.load(start, model)
        if "optimizer" in ckpt:
            try:
                optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
                raise SpecError(f"out: {last} holds an optimizer state that does not fit ({err})") from err
        steps = ckpt.get("steps", 0)
        log(f"resuming from {last} (epoch {start})")
    else:
        start = steps = 0
        checkpoints.save(0, model, record(optimizer, spec, 0, meter.measure(), steps, weight_norm(params), []))

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
        checkpoints.save(epoch, model, record(optimizer, spec, epoch, metrics, steps, weight_norm(params), norms))
        log(
            f"epoch {epoch}/{spec.epochs} lr {lr_at(spec.optimizer, epoch - 1):.3g} "
            + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        )
    return checkpoints.finish()


def record(
    optimizer, spec: TrainSpec, epoch: int, metrics: dict, steps: int, norm: torch.Tensor, step_norms: list
) -> dict:
    """What a checkpoint holds besides the weights."""
    step_norms = torch.stack(step_norms).cpu() if step_norms else torch.zeros(0, dtype=torch.float64)
    return {
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "spec": spec.model_dump(mode="json"),
        **metrics,
        "steps": steps,
        "weight_norm": float(norm),
        "step_weight_norms": step_norms,
    }
