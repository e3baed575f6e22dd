"""The job spec: what to evaluate, where, and how — the service's one interface (training's: training.py).

The pydantic models below validate a spec (unknown keys are errors, floats finite); `specfile.py` reads one from
YAML with `--set a.b=v` overrides. The resolved spec (defaults filled in) is stored with every output, so a store
always says exactly how it was made.

    spec = Spec(grid={"x": {"min": -1, "max": 1, "num": 11}})
    print(spec.model_dump_json(indent=2))

Import paths this package once had (stored in older specs and stores) are read as the names they have now
(`MOVED`), so those specs and stores keep working.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

MAX_AXIS = 100_000_000  # points on one axis: beyond, a typo (and an array no machine holds); checked before arithmetic

# Factories that moved when the package was arranged in layers: the old import path → the name it has now.
MOVED = {"landscape_ray.paper:digits_resnet": "digits_resnet"}


def current(path: str) -> str:
    """An import path (or zoo name) as this version names it."""
    return MOVED.get(path, path)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # a NaN bound computes NaN coordinates


class ModelSpec(Strict):
    arch: str = Field(
        "digits_cnn",
        description="zoo name, 'package.module:factory' returning an nn.Module, hf (model.path), or object (a model "
        "a Python call handed over: landscape_ray.plane)",
    )
    object: str | None = Field(
        None, description="arch object: the SHA-256 of the handed model's state_dict, by which the call holds it"
    )
    path: str | None = Field(
        None, description="hf: a Hugging Face model folder as save_pretrained writes it (safetensors weights, local)"
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="hf: the dtype θ* is held and evaluated in (auto: the folder's config)"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the model factory")
    checkpoint: str | None = Field(
        None, description="θ*: a state_dict file (torch.save); None = the factory's own init"
    )
    trust_checkpoint: bool = Field(
        False, description="allow full unpickling of the checkpoint (only for files you trust)"
    )

    @field_validator("arch")
    @classmethod
    def _current_arch(cls, arch: str) -> str:
        return current(arch)

    @model_validator(mode="after")
    def _hf_fields(self):
        if (self.arch == "hf") != (self.path is not None):
            raise ValueError("path: arch hf needs it" if self.arch == "hf" else "path: only arch hf takes it")
        if self.arch == "hf" and (self.checkpoint or self.kwargs):
            raise ValueError("arch hf: θ* is the folder's weights (model.path); no checkpoint or kwargs")
        if (self.arch == "object") != (self.object is not None):
            need = "arch object needs it" if self.arch == "object" else "only arch object takes it"
            raise ValueError(f"object: {need}")
        if self.arch == "object" and (self.checkpoint or self.kwargs):
            raise ValueError("arch object: θ* is the handed model's weights; no checkpoint or kwargs")
        return self


class Normalize(Strict):
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")
        return self


class DataSpec(Strict):
    dataset: str = Field(
        "digits",
        description="digits | cifar10 | imagefolder | synthetic | text | 'package.module:factory' | object (data a "
        "Python call handed over: landscape_ray.plane)",
    )
    object: str | None = Field(
        None, description="dataset object: the SHA-256 of the handed splits' arrays, by which the call holds them"
    )
    root: str | None = Field(
        None, description="folder of the data set on disk (cifar10: the folder holding cifar-10-batches-py)"
    )
    download: bool = Field(False, description="let torchvision download the data set into root (needs internet)")
    splits: list[Literal["train", "test"]] = Field(default_factory=lambda: ["train"], min_length=1)
    subset: int | None = Field(None, ge=1, description="evaluate a seeded random subset of this many samples per split")
    subset_seed: int = 0
    batch_size: PositiveInt | Literal["auto"] = Field(
        "auto",
        description="samples per forward pass; auto: on a CPU the largest batch whose biggest activation fits 2 MiB "
        "(cache-sized, up to 2x faster), on a GPU the largest whose activations fit half its free memory",
    )
    normalize: Normalize | None = Field(
        None, description="per-channel mean/std in [0, 1] units; None = the data set's default"
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra options of the data set (synthetic: size, shape, classes)"
    )
    # dataset: text — token windows of text files (or, without files, Python's own bundled documentation text)
    files: dict[Literal["train", "test"], list[str]] | None = Field(
        None, description="text: .txt, .jsonl or .parquet files per split; none: the bundled text (pydoc topics)"
    )
    text_field: str = Field("text", description="text: the field of a .jsonl record or .parquet column")
    seq_len: PositiveInt = Field(128, description="text: tokens per sequence (consecutive, non-overlapping windows)")
    sequences: PositiveInt | None = Field(None, description="text: the first this many sequences (subset: seeded)")
    tokenizer: str | None = Field(None, description="text: a folder with the tokenizer; default model.path")

    @model_validator(mode="after")
    def _unique_splits(self):
        if len(set(self.splits)) != len(self.splits):
            raise ValueError(f"splits repeat a name: {self.splits}")
        if self.dataset != "text" and self.files is not None:
            raise ValueError("files: only dataset text takes them")
        if (self.dataset == "object") != (self.object is not None):
            need = "dataset object needs it" if self.dataset == "object" else "only dataset object takes it"
            raise ValueError(f"object: {need}")
        return self


KIND_DEFAULTS = {  # kind: (norm, ignore) when the spec leaves them out
    "random": ("filter", "biasbn"),
    "pca": ("none", "biasbn"),
    "interpolate": ("none", "none"),
    "plane": ("none", "none"),
    "file": ("none", "none"),
    "hessian": ("none", "none"),  # unit eigenvectors; norm: filter rescales them like random directions
}


class DirectionsSpec(Strict):
    kind: Literal["random", "interpolate", "plane", "pca", "file", "hessian"] = Field(
        "random",
        description="random | interpolate (θ* → target) | plane (θ*, targets) | pca (of checkpoints) | "
        "file (path) | hessian (top eigenvectors of the train loss's Hessian at θ*)",
    )
    seed: int = Field(0, description="random: seed of the Gaussian draws")
    norm: Literal["filter", "layer", "none"] | None = Field(None, description="random only; default filter")
    ignore: Literal["biasbn", "none"] | None = Field(
        None,
        description="biasbn: entries with <= 1 dim get no direction; default biasbn for random/pca, none otherwise",
    )
    dir_type: Literal["weights", "states"] = Field("weights", description="states: BN running statistics move too")
    target: str | None = Field(None, description="interpolate: checkpoint of θ_l (θ_s is model.checkpoint)")
    targets: list[str] | None = Field(None, description="plane: checkpoints θ1, θ2; directions θ1 − θ*, θ2 − θ*")
    checkpoints: list[str] | str | None = Field(None, description="pca: checkpoints θ0 … θn, a list or a glob")
    path: str | None = Field(None, description="file: a direction file (.npz, .h5 of the paper's code) or a store")
    seeding: Literal["stream", "entry"] | None = Field(
        None,
        description="random: stream (one generator, entries in order, x then y: the paper's) or entry (each entry "
        "from its own seed, hash of (seed, axis, name)); default entry for model.arch hf or regenerate, else stream",
    )
    regenerate: bool = Field(
        False,
        description="random: keep no direction arrays; every process redraws an entry's direction when it sets a "
        "point (memory of θ* alone, for models near the memory's size); the store records the recipe",
    )

    @model_validator(mode="after")
    def _kind_fields(self):
        need = {"interpolate": "target", "plane": "targets", "pca": "checkpoints", "file": "path"}
        for kind, name in need.items():
            if (self.kind == kind) != (getattr(self, name) is not None):
                verb = (
                    "needs"
                    if self.kind == kind
                    else "is only for kind " + kind + "; kind " + self.kind + " does not take"
                )
                raise ValueError(f"{name}: kind {kind} needs it" if self.kind == kind else f"{name}: {verb} it")
        if self.kind == "plane" and len(self.targets) != 2:
            raise ValueError(f"targets: a plane needs exactly 2 checkpoints, got {len(self.targets)}")
        if self.kind != "random" and (self.regenerate or self.seeding is not None):
            raise ValueError(f"{'regenerate' if self.regenerate else 'seeding'}: only random directions are drawn")
        if self.regenerate and self.seeding == "stream":
            raise ValueError("seeding: regenerate draws each entry alone, which needs seeding entry")
        if self.kind not in ("random", "hessian") and self.norm not in (None, "none"):
            raise ValueError(f"norm: only random and hessian directions are normalized (kind is {self.kind})")
        norm, ignore = KIND_DEFAULTS[self.kind]
        self.norm = self.norm or norm
        self.ignore = self.ignore or ignore
        return self


class Axis(Strict):
    min: float = -1.0
    max: float = 1.0
    num: int | None = Field(
        None, ge=1, le=MAX_AXIS, description="points, ends included; default 51 for surfaces, 401 for 1D scans"
    )

    @model_validator(mode="after")
    def _ordered(self):
        if self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be < max ({self.max})")
        if not math.isfinite(self.max - self.min):  # finite bounds whose span overflows: inf and NaN coordinates
            raise ValueError(
                f"max - min overflows ({self.min} to {self.max}); keep the span below {sys.float_info.max:.3g}"
            )
        # Every point its own coordinate: the step must exceed the float spacing at the larger bound.
        if (
            self.num
            and self.num > 1
            and (self.max - self.min) / (self.num - 1) <= 4 * math.ulp(max(abs(self.min), abs(self.max)))
        ):
            raise ValueError(
                f"num: {self.num} points between {self.min} and {self.max} are closer than float64 can tell apart"
            )
        return self


class GridSpec(Strict):
    x: Axis = Field(default_factory=Axis, description="α axis")
    y: Axis | None = Field(None, description="β axis; absent: a 1D scan along x")
    tile: Literal["auto"] | int | list[int] = Field(
        "auto",
        description="points per work item (small tiles share a Zarr chunk): auto (several tiles per actor), an int, "
        "or [cols] for 1D / [rows, cols] for 2D",
    )
    mode: Literal["uniform", "progressive", "adaptive"] = Field(
        "uniform",
        description="uniform: every point in one pass; progressive: the same points coarse to fine (every 2^k-th "
        "point along each axis first, then the points between), a picture of the whole grid after the first pass; "
        "adaptive: the passes of progressive, each computing only the cells the picture needs (grid.tolerance), the "
        "rest interpolated",
    )
    tolerance: float = Field(
        0.05,
        gt=0,
        description="adaptive: the cells around a new point are refined where its loss differs from the picture's "
        "value there before it by more than tolerance × max(|loss|, 0.1): relative, absolute near zero "
        "(store/refine.py)",
    )

    @model_validator(mode="after")
    def _default_num(self):
        # The paper's resolutions: 51 × 51 surfaces, 401-point 1D scans.
        for axis in (self.x, self.y):
            if axis is not None and axis.num is None:
                axis.num = 51 if self.y is not None else 401
        return self

    @model_validator(mode="after")
    def _tile_shape(self):
        if self.tile == "auto":
            return self
        tile = [self.tile] if isinstance(self.tile, int) else self.tile
        if any(t < 1 for t in tile) or (isinstance(self.tile, list) and len(tile) != 1 + (self.y is not None)):
            shape = "[rows, cols]" if self.y is not None else "[cols]"
            raise ValueError(f"tile must be auto, a positive int or {shape} of positive ints, got {self.tile}")
        return self


class EvalSpec(Strict):
    loss: Literal["cross_entropy", "mse"] = Field(
        "cross_entropy", description="loss of the default classification metric"
    )
    metric: str | None = Field(
        None,
        description="'package.module:fn'; "
        "fn(model, batch) returns (loss_sum, count[, {name: sum}]); None = classification",
    )
    bn: Literal["eval", "recompute"] = Field(
        "eval",
        description="eval: θ*'s BN running statistics (the paper); "
        "recompute: re-estimated on the train split at every point",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        "fp32",
        description="fp32: exact and deterministic; tf32 (CUDA matmuls/convs) or bf16 (autocast; loss reduced in fp32)",
    )
    channels_last: bool = Field(True, description="NHWC memory layout for image models (faster convolutions)")
    fold_bn: bool | Literal["auto"] = Field(
        "auto",
        description="fold each eval-mode BN into the conv before it (BN not moved by the directions); faster, "
        "not bit-equal; auto: only where the first batch's loss stays within 1e-6 relative of the unfolded one",
    )
    first_layer: bool = Field(
        True,
        description="where the first layer with weights is a Linear or conv reading the data itself (an MLP's), its "
        "outputs at θ* and along each direction are kept per batch and a point's output is their sum (the layer is "
        "linear in its weights): less work, values within rounding of the plain forward; CPU, fp32",
    )
    compile: bool | Literal["default", "max-autotune"] = Field(
        False,
        description="torch.compile the model: false, true (= default mode) or max-autotune; "
        "compiled once per actor before its first tile, kernels cached in ~/.cache/landscape_ray (LANDSCAPE_RAY_CACHE)",
    )
    curvature: bool = Field(
        False,
        description="also the largest and smallest Hessian eigenvalue of the train loss at every point "
        "(train_lambda_max, train_lambda_min; render --vars curvature draws |λmin/λmax|); costly",
    )
    curvature_batches: int | None = Field(None, ge=1, description="curvature from this many train batches only")
    samples: Literal["all", "adaptive"] = Field(
        "all",
        description="all: every point on the whole of each split; adaptive: a point's batches are taken in a fixed "
        "shuffled order until 2 standard errors of its loss are within sample_tolerance × max(|loss|, 0.1), or the "
        "loss is above sample_ceiling; points in the basin use all the data (compute/sampling.py). An auto batch "
        "size is cut to give a split 32 batches; <split>_samples records how many samples are behind each value",
    )
    sample_tolerance: float = Field(0.01, gt=0, description="samples: adaptive: the relative accuracy of a loss")
    sample_ceiling: float | None = Field(
        None,
        description="samples: adaptive: the top contour level you will draw (render's vmax): a point whose loss is "
        "above it by 2 standard errors stops there; its value is then only known to be above it",
    )


class ComputeSpec(Strict):
    actors: int | Literal["auto"] = Field("auto", description="auto: one per GPU, else one per cpus_per_actor CPUs")
    gpus_per_actor: float = Field(1.0, gt=0, description="GPUs per actor when GPUs are used (fractional packs actors)")
    cpus_per_actor: int = Field(1, ge=1, description="CPUs (and torch threads) per actor")
    in_flight: int = Field(2, ge=1, description="work items queued per actor so it never waits for the driver")
    item_seconds: float | None = Field(
        None,
        gt=0,
        description="a work item is consecutive tiles worth about this many seconds at the actor's measured rate "
        "(never more than a fair share of what is left); default: 2 on GPU actors, whose tiles are small, and one "
        "tile at a time on CPU actors, whose tiles are sized from the driver's estimate",
    )
    warmup: bool = Field(
        True,
        description="on a private local cluster with CPU actors, the driver computes points while the cluster and "
        "the actors start (same evaluator, same values)",
    )
    ray: Literal["auto", "always"] = Field(
        "auto",
        description="auto: where the driver would warm up (above) and the points take under 5 s of one core, the job "
        "is computed in this process and Ray is not started (a cluster's start is longer than such a job); "
        "always: on Ray actors",
    )
    max_tile_failures: int = Field(3, ge=1, description="actor deaths one tile may cause before the run fails")

    @model_validator(mode="after")
    def _positive_actors(self):
        if self.actors != "auto" and self.actors < 1:
            raise ValueError(f"actors must be >= 1 or 'auto', got {self.actors}")
        return self


RENDER_KINDS = ("contour", "contourf", "heatmap", "surface")


class OutputSpec(Strict):
    store: str = Field("runs/surface.zarr", description="path of the Zarr store")
    render: list[Literal["contour", "contourf", "heatmap", "surface"]] = Field(
        default_factory=lambda: list(RENDER_KINDS), description="pictures written next to the store when the run ends"
    )


def default_tokenizer(model: ModelSpec, data: DataSpec) -> None:
    """`dataset: text` is tokenized with data.tokenizer, by default the tokenizer of model.arch hf's folder."""
    if data.dataset == "text" and data.tokenizer is None:
        if model.path is None:
            raise ValueError("data.tokenizer: dataset text needs a tokenizer folder (or model.arch hf's path)")
        data.tokenizer = model.path


class Spec(Strict):
    name: str = "surface"
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    directions: DirectionsSpec = Field(default_factory=DirectionsSpec)
    grid: GridSpec = Field(default_factory=GridSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)

    @model_validator(mode="after")
    def _text_needs_a_tokenizer(self):
        default_tokenizer(self.model, self.data)
        return self

    @model_validator(mode="after")
    def _seeding(self):
        d = self.directions
        if d.kind == "random" and d.seeding is None:
            d.seeding = "entry" if d.regenerate or self.model.arch == "hf" else "stream"
        return self

    @model_validator(mode="after")
    def _curvature_needs_train(self):
        if self.eval.curvature and "train" not in self.data.splits:
            raise ValueError("eval.curvature: needs the train split in data.splits")
        return self

    def result_fields(self) -> dict:
        """The parts of the spec that decide the numbers in a store (not where or how fast they are made)."""
        return self.model_dump(mode="json", exclude={"compute": True, "output": True, "name": True, "grid": {"tile"}})
