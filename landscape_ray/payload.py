"""What every evaluator of a job receives: θ*, the data and the directions, loaded and checked once on the CPU.

`prepare` is where every input error surfaces (checkpoint, data, model fit, direction files, a metric that does
not fit the model), before a store exists or an actor starts. The payload is plain NumPy, so Ray's object store
hands it to the actors of a node without copying.

    payload = prepare(spec)                           # Payload: state, directions, splits, variables
    ev = Evaluator.from_payload(spec, payload)        # evaluator.py

The directions come from `DIRECTION_KINDS`, one entry per `directions.kind`: a function
(model, spec, ndim) -> Directions. Adding a kind is adding an entry (and its name to spec.DirectionsSpec).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from .data import BatchSplit, ImageSplit, load_split, load_splits, normalization
from .directions import Directions, difference, fit_directions, make_directions, read_directions
from .errors import SpecError
from .evaluator import Evaluator
from .hessian import eigen_directions
from .models import load_model
from .spec import Spec
from .store import Store
from .trajectory import pca_directions


@dataclass
class Payload:
    """Everything an evaluator needs besides the spec, as NumPy arrays (zero-copy through Ray's object store)."""

    state: dict[str, np.ndarray]
    directions: Directions
    splits: dict[str, ImageSplit | BatchSplit]
    bn_split: ImageSplit | BatchSplit | None = None  # the train split, for eval.bn: recompute
    variables: list[str] = field(default_factory=list)
    point_seconds: float | None = None  # a rough cost of one point on the driver's CPU, for tile: auto


def _random(model: nn.Module, spec: Spec, ndim: int) -> Directions:
    d = spec.directions
    norm = {"filter": "filter-normalized", "layer": "layer-normalized", "none": "unnormalized"}[d.norm]
    labels = [f"{a}: {norm} random direction ({d.dir_type}, seed {d.seed})" for a in "xy"[:ndim]]
    return Directions(make_directions(model, d, ndim), labels)


def _interpolate(model: nn.Module, spec: Spec, ndim: int) -> Directions:
    d = spec.directions
    return Directions(
        [difference(model, d.target, spec, "directions.target")],
        [f"α: interpolation θ_s → θ_l ({d.dir_type}; θ_l = {Path(d.target).name})"],
    )


def _plane(model: nn.Module, spec: Spec, ndim: int) -> Directions:
    targets = spec.directions.targets
    vectors = [difference(model, t, spec, f"directions.targets[{i}]") for i, t in enumerate(targets)]
    labels = [f"{a}: θ{i + 1} − θ* ({Path(t).name})" for i, (a, t) in enumerate(zip("xy", targets))]
    return Directions(vectors, labels)


def _pca(model: nn.Module, spec: Spec, ndim: int) -> Directions:
    return pca_directions(model, spec)


def _file(model: nn.Module, spec: Spec, ndim: int) -> Directions:
    d = spec.directions
    if Path(d.path).is_dir():  # a store: the directions it was computed with
        vectors = fit_directions(Store(d.path, mode="r").directions(), model, d.dir_type, ndim, d.path)
    else:
        vectors = read_directions(d.path, model, d.dir_type, ndim)
    return Directions(vectors, [f"{a}: direction {a} of {Path(d.path).name}" for a in "xy"[:ndim]])


DIRECTION_KINDS = {
    "random": _random,
    "interpolate": _interpolate,
    "plane": _plane,
    "pca": _pca,
    "file": _file,
    "hessian": eigen_directions,
}  # hessian.py: the top eigenvectors, from a Ray-sharded eigensolver
GRID_NDIM = {"interpolate": 1, "plane": 2, "pca": 2}  # kinds that make only a 1D scan or only a surface


def resolve_directions(model: nn.Module, spec: Spec) -> Directions:
    """The directions of `spec` around θ* (the loaded `model`), with labels for the axes."""
    kind = spec.directions.kind
    ndim = 1 if spec.grid.y is None else 2
    if GRID_NDIM.get(kind, ndim) != ndim:
        what = "a 1D scan: remove grid.y" if ndim == 2 else "a surface: add grid.y"
        raise SpecError(f"grid.y: directions.kind {kind} makes {what}")
    return DIRECTION_KINDS[kind](model, spec, ndim)


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
        if spec.eval.fold_bn is True:  # the evaluator folds only BN whose statistics stay at θ*
            warnings.warn(
                "eval.fold_bn: BN not folded, eval.bn: recompute changes its statistics at every point", stacklevel=2
            )
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    directions = resolve_directions(model, spec) if vectors is None else Directions(vectors, [])
    payload = Payload(state, directions, splits, bn_split)
    plain = spec.model_copy(update={"eval": spec.eval.model_copy(update={"compile": False})})  # no compiling to probe
    evaluator = Evaluator.from_payload(plain, payload, "cpu")
    start = time.perf_counter()
    payload.variables = probe(evaluator) + (["train_lambda_max", "train_lambda_min"] if spec.eval.curvature else [])
    # One batch per split took this long; a point takes about that many times more (cold first batch: an
    # overestimate, which only makes `tile: auto` cut a little smaller).
    batches = max(math.ceil(len(s) / evaluator.batch_size) for s in splits.values())
    payload.point_seconds = (time.perf_counter() - start) * batches
    return payload


def probe(evaluator: Evaluator) -> list[str]:
    """The variables an evaluator produces, from one batch per split: model, data and metric must fit."""
    try:
        return list(evaluator.measure(limit=1))
    except Exception as err:  # noqa: BLE001 - anything the user's model or metric raises is an input error here
        # Chained, so that `--debug` shows where in the user's code it failed.
        raise SpecError(
            f"eval: one batch at θ* failed (model, data and metric must fit): {type(err).__name__}: {err}"
        ) from err
