"""Loading a job's inputs: θ*, the data splits, and the directions of the spec's kind.

The directions come from `DIRECTION_KINDS`, one entry per `directions.kind`: a function
(model, spec, ndim) -> Directions. Adding a kind is adding an entry (and its name to spec.schema.DirectionsSpec).

    payload = load_inputs(spec)                  # Payload: state, directions, splits
    payload = load_inputs(spec, vectors=store.directions())   # a resumed store's own directions
    with handing({spec.model.object: model, spec.data.object: splits}):   # model.arch, data.dataset: object
        payload = load_inputs(spec)      # the objects a Python call handed over (handed.py); the model travels too
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from torch import nn

from landscape_ray.core.errors import SpecError
from landscape_ray.inputs.data import BFloat16, ImageSplit, as_array, load_split, load_splits, normalization
from landscape_ray.inputs.directions import (
    Directions,
    Recipe,
    difference,
    fit_directions,
    make_directions,
    read_directions,
)
from landscape_ray.inputs.handed import HANDED, handed
from landscape_ray.inputs.hf import max_positions
from landscape_ray.inputs.models import load_model
from landscape_ray.inputs.payload import Payload
from landscape_ray.inputs.trajectory import pca_directions
from landscape_ray.spec.schema import Spec
from landscape_ray.store.tiles import Store


def _random(model: nn.Module, spec: Spec, ndim: int) -> Directions:
    d = spec.directions
    norm = {"filter": "filter-normalized", "layer": "layer-normalized", "none": "unnormalized"}[d.norm]
    labels = [f"{a}: {norm} random direction ({d.dir_type}, seed {d.seed})" for a in "xy"[:ndim]]
    if d.regenerate:  # drawn where used, entry by entry: no process holds them whole
        return Directions([], labels, recipe=Recipe.of(model, d, ndim))
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


DIRECTION_KINDS = {"random": _random, "interpolate": _interpolate, "plane": _plane, "pca": _pca, "file": _file}
# Kinds computed on the run's cluster once it is up (hessian.eigen_directions: the top eigenvectors of a sharded
# Hessian); the inputs come without directions until then.
ON_CLUSTER = {"hessian"}
GRID_NDIM = {"interpolate": 1, "plane": 2, "pca": 2}  # kinds that make only a 1D scan or only a surface


def resolve_directions(model: nn.Module, spec: Spec) -> Directions:
    """The directions of `spec` around θ* (the loaded `model`), with labels for the axes."""
    kind = spec.directions.kind
    ndim = 1 if spec.grid.y is None else 2
    if GRID_NDIM.get(kind, ndim) != ndim:
        what = "a 1D scan: remove grid.y" if ndim == 2 else "a surface: add grid.y"
        raise SpecError(f"grid.y: directions.kind {kind} makes {what}")
    if kind in ON_CLUSTER:
        return Directions([], [])
    return DIRECTION_KINDS[kind](model, spec, ndim)


def bf16(theta, direction) -> bool:
    """An entry held in bf16 whose direction is not yet."""
    return isinstance(theta, BFloat16) and not isinstance(direction, BFloat16)


def load_inputs(spec: Spec, vectors: list[dict[str, np.ndarray]] | None = None) -> Payload:
    """θ*, the data and the directions, loaded once on the CPU and checked against each other.

    `vectors`: directions already made (a resumed store's), so they are not computed again (a PCA can be costly).
    """
    model = load_model(spec)
    splits = handed(spec.data.object, "data.dataset") if spec.data.dataset == "object" else load_splits(spec.data)
    longest = max_positions(model.config) if spec.model.arch == "hf" else None
    if spec.data.dataset == "text" and longest is not None and spec.data.seq_len > longest:
        raise SpecError(f"data.seq_len: {spec.data.seq_len} tokens, the model takes at most {longest} positions")
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
    state = {k: as_array(v) for k, v in model.state_dict().items()}
    directions = Directions(vectors, []) if vectors else resolve_directions(model, spec)
    # A model held in bf16 gets its directions in bf16 too (as its evaluators would hold them), so that they travel
    # and are shared in two bytes a parameter; kept float32 they would take twice θ*'s memory in every actor.
    live = dict(model.state_dict())
    directions.vectors = [
        {k: as_array(live[k].new_tensor(np.asarray(v))) if bf16(state[k], v) else v for k, v in d.items()}
        for d in directions.vectors
    ]
    payload = Payload(state, directions, splits, bn_split)
    if spec.model.arch == "object":  # the network travels too: no spec can build it where the actors are
        payload.model, payload.metric = model, HANDED.get(spec.eval.metric)
    return payload
