"""The paper's pictures that are not one store: weights, trajectories on any plane, weight norms, training curves.

Each function returns a matplotlib Figure (no pyplot; `draw.save(fig, "x.pdf")` writes it):

    weight_histograms([["sgd128/final.pt", "sgd8192/final.pt"]], labels=["128", "8192"])  # Fig. 3
    trajectory_figure("runs/random.zarr", "runs/train/model_*.pt")      # Fig. 9: the path on a store's plane
    weight_norm_figure(["runs/sgd128", "runs/sgd8192"])                 # Fig. 11: by epoch and by iteration
    training_curves(["runs/sgd128", "runs/adam128"])                    # Figs. 21-22: loss and error per epoch
    overlay_1d(["seed0.zarr", "seed1.zarr"])                            # Fig. 18: 1D scans on one axes

Checkpoints are given as paths or globs (natural order: model_10 after model_9); a run is a folder of the
`model_<epoch>.pt` files `landscape-ray train` writes. `project` places checkpoints on a store's plane exactly
as the PCA trajectory does (least squares onto span(δ, η), around the store's θ*), and tells how much of the
path's variance each direction captures — the PCA's explained variance for a PCA store, nearly nothing for
random directions (the paper's §7.1). `landscape-ray figure KIND …` (add_parser) writes them to files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import epoch_checkpoints, natural_glob
from landscape_ray.inputs.checkpoints import load_checkpoint, read_checkpoint, read_record
from landscape_ray.inputs.models import load_model
from landscape_ray.pictures.draw import axis_label, draw_field, draw_path, is_2d, new_figure, scale, title, values
from landscape_ray.spec.schema import Spec
from landscape_ray.store.fingerprint import file_hash
from landscape_ray.store.reader import dataset
from landscape_ray.store.tiles import Store


def checkpoint_files(given, field: str = "checkpoints") -> list[Path]:
    """Paths from a list of paths and globs, each glob in natural order (model_10.pt after model_9.pt)."""
    paths = []
    for item in [given] if isinstance(given, (str, Path)) else given:
        found = natural_glob(item)
        if not found:
            raise SpecError(f"{field}: nothing matches {item}")
        paths += found
    return paths


def run_checkpoints(run) -> list[dict]:
    """The per-epoch checkpoints of a training folder, by epoch (tensors memory-mapped)."""
    paths = epoch_checkpoints(run).values()
    if not paths:
        raise SpecError(f"runs: {run} has no model_<epoch>.pt checkpoints")
    ckpts = [read_record(p, f"runs: {run}", mmap=True) for p in paths]
    return sorted(ckpts, key=lambda c: c["epoch"])


def _labels(labels, items, what: str) -> list[str]:
    labels = [Path(str(i)).parent.name or str(i) for i in items] if labels is None else list(labels)
    if len(labels) != len(items):
        raise SpecError(f"labels: {len(labels)} given for {len(items)} {what}")
    return labels


def weights_of(path) -> np.ndarray:
    """Every weight of a checkpoint's conv and linear layers (entries with > 1 dimension), as one float64 array."""
    state, _ = load_checkpoint(path, field="checkpoints", mmap=True)
    return np.concatenate([v.double().numpy().ravel() for v in state.values() if v.dim() > 1 and v.is_floating_point()])


def weight_histograms(groups, labels=None, titles=None, bins: int = 100):
    """One panel per group of checkpoints, their weight histograms overlaid on shared bins (the paper's Fig. 3)."""
    groups = [checkpoint_files(g) for g in groups]
    titles = [""] * len(groups) if titles is None else _labels(titles, groups, "groups")
    fig = new_figure((5.0 * len(groups), 3.6))
    for ax, group, name in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups, titles):
        weights = [weights_of(p) for p in group]
        edges = np.histogram_bin_edges(np.concatenate(weights), bins)
        for w, label in zip(weights, _labels(labels, group, "checkpoints")):
            ax.stairs(np.histogram(w, edges)[0], edges, label=label, lw=1.5)
        ax.set(title=name, xlabel="weight value", ylabel="count", yscale="log")
        ax.legend(fontsize=7)
    return fig


def centre_of(st: Store, spec: Spec | None) -> dict[str, torch.Tensor]:
    """θ* of a store, as data: from the user's own `spec` (its model and checkpoint), else from the checkpoint file
    the store names, read as weights only and checked against the store's fingerprint of it. A store is someone
    else's file: no model named in it is imported (its model's own initialisation needs `spec`)."""
    if spec is not None:
        return load_model(spec).state_dict()
    path = st.spec.model.checkpoint
    if path is None:
        raise SpecError(
            f"store: {st.path} was computed around its model's initialisation (no model.checkpoint), and a store's "
            "model is not imported; give --spec with your spec of that model"
        )
    recorded = {k.partition(" ")[2]: v for k, v in st.inputs.items() if k.startswith("model.checkpoint ")}
    if recorded and file_hash(path) not in recorded.values():
        raise SpecError(f"store: its model.checkpoint {path} changed since the store was made")
    return read_checkpoint(path, field=f"the store's model.checkpoint {path}")


def project(store, checkpoints, spec: Spec | None = None, trust_checkpoint: bool = False) -> dict:
    """Checkpoints θi placed on the store's plane: {'epoch', 'x', 'y', 'captured'}; θ* from `centre_of(store,
    spec)`, the checkpoints read as weights only unless the caller (not the store) trusts them.

    (x_i, y_i) solve the least squares θi − θ* ≈ x δ + y η over the entries the directions move; `captured`
    is, per direction, the share of the centred path's variance along it (the explained variance for PCA).
    """
    st = Store(store, mode="r")
    if len(st.grid.shape) != 2:
        raise SpecError(f"store: {store} is a 1D scan; trajectories need a 2D store")
    dirs = st.directions()
    centre = {k: v.double() for k, v in centre_of(st, spec).items()}
    names = [k for k in dirs[0] if any(np.any(d[k]) for d in dirs)]
    d = np.stack([np.concatenate([np.asarray(v[k], np.float64).ravel() for k in names]) for v in dirs], axis=1)
    dots, epochs, total, sq = [], [], 0.0, 0.0
    for i, path in enumerate(checkpoint_files(checkpoints)):
        state, meta = load_checkpoint(path, trust_checkpoint, f"checkpoints[{i}]", mmap=True)
        if any(k not in state or k not in centre or state[k].shape != centre[k].shape for k in names):
            raise SpecError(f"checkpoints[{i}]: {path} does not fit the store's model {st.spec.model.arch!r}")
        r = np.concatenate([(state[k].double() - centre[k]).numpy().ravel() for k in names])
        dots.append(r @ d)
        total, sq = total + r, sq + r @ r
        epochs.append(meta.get("epoch", i))
    dots, n = np.array(dots), len(dots)
    coords = np.linalg.solve(d.T @ d, dots.T).T  # the normal equations, as trajectory.py
    along = dots / np.linalg.norm(d, axis=0)  # projections on the unit directions
    variance = sq - total @ total / n  # Σ‖rᵢ − r̄‖²
    captured = ((along - along.mean(0)) ** 2).sum(0) / variance if variance > 0 else np.zeros(2)
    return {"epoch": np.array(epochs), "x": coords[:, 0], "y": coords[:, 1], "captured": captured}


def trajectory_figure(
    store,
    checkpoints,
    var: str = "train_loss",
    kind: str = "contour",
    log: bool = False,
    mark_epochs=(),
    fit_path: bool = False,
    spec: Spec | None = None,
    trust_checkpoint: bool = False,
    **style,
):
    """The path of `checkpoints` over the store's `var` (the paper's Figs. 9 and 10); `fit_path` zooms onto it.
    `spec`, `trust_checkpoint`: as for `project`."""
    ds = dataset(store)
    path = project(store, checkpoints, spec, trust_checkpoint)
    missing = [e for e in mark_epochs or () if e not in path["epoch"]]
    if missing:
        raise SpecError(f"mark_epochs: epoch {missing[0]} is not among the checkpoints")
    fig = new_figure((6.0, 5.2))
    ax = fig.add_subplot()
    art = draw_field(ax, ds, var, kind, scale([values(ds, var, log)[0]], log, **style))
    draw_path(ax, path["x"], path["y"], path["epoch"], mark_epochs)
    for axis, share, setter in zip("xy", path["captured"], (ax.set_xlabel, ax.set_ylabel)):
        setter(f"{axis_label(ds, axis)}\n{100 * share:.2f}% of the path's variance")
    if fit_path:
        for axis, lim in (("x", ax.set_xlim), ("y", ax.set_ylim)):
            lo, hi = path[axis].min(), path[axis].max()
            pad = 0.1 * (hi - lo) or 0.05 * max(abs(lo), 1e-3)
            lim(lo - pad, hi + pad)
    if kind != "contour":
        fig.colorbar(art, ax=ax, label=values(ds, var, log)[1])
    ax.set_title(title(ds), fontsize=9)
    return fig


def weight_norm_figure(runs, labels=None):
    """‖θ‖₂ by epoch and by iteration, one line per training run (the paper's Fig. 11)."""
    fig = new_figure((10.0, 3.8))
    by_epoch, by_step = fig.subplots(1, 2)
    for run, label in zip(runs, _labels(labels, runs, "runs")):
        ckpts = run_checkpoints(run)
        if "weight_norm" not in ckpts[0]:
            raise SpecError(f"runs: {run} was trained before weight norms were recorded; train it again")
        by_epoch.plot([c["epoch"] for c in ckpts], [c["weight_norm"] for c in ckpts], "-o", ms=3, label=label)
        steps = np.concatenate([[ckpts[0]["weight_norm"]]] + [c["step_weight_norms"].numpy() for c in ckpts[1:]])
        by_step.plot(np.arange(ckpts[0]["steps"], ckpts[0]["steps"] + len(steps)), steps, lw=1, label=label)
    by_epoch.set(xlabel="epoch", ylabel="weight norm ‖θ‖₂")
    by_step.set(xlabel="iteration", ylabel="weight norm ‖θ‖₂")
    by_epoch.legend(fontsize=7)
    return fig


def training_curves(runs, labels=None):
    """Loss and error (1 − accuracy) per epoch, train solid and test dashed, a colour per run (Figs. 21-22)."""
    fig = new_figure((10.0, 3.8))
    loss_ax, err_ax = fig.subplots(1, 2)
    for i, (run, label) in enumerate(zip(runs, _labels(labels, runs, "runs"))):
        ckpts = run_checkpoints(run)
        epochs = [c["epoch"] for c in ckpts]
        for split, style in (("train", "-"), ("test", "--")):
            if f"{split}_loss" in ckpts[0]:
                loss_ax.plot(
                    epochs, [c[f"{split}_loss"] for c in ckpts], style, color=f"C{i}", label=f"{label} {split}"
                )
            if f"{split}_acc" in ckpts[0]:
                err_ax.plot(epochs, [100 * (1 - c[f"{split}_acc"]) for c in ckpts], style, color=f"C{i}")
    loss_ax.set(xlabel="epoch", ylabel="loss", yscale="log")
    err_ax.set(xlabel="epoch", ylabel="error (%)")
    loss_ax.legend(fontsize=7)
    return fig


def overlay_1d(stores, labels=None, variables=("train_loss", "train_acc"), log: bool = False):
    """Several 1D scans on one axes — losses left, accuracies right, a colour per store (the paper's Fig. 18)."""
    dss = [dataset(s) for s in stores]
    if any(is_2d(ds) for ds in dss):
        raise SpecError("overlay: every store must be a 1D scan")
    fig = new_figure((6.4, 4.4))
    ax = fig.add_subplot()
    twin = ax.twinx() if any(not v.endswith("_loss") for v in variables) else None
    for i, (ds, label) in enumerate(zip(dss, _labels(labels, stores, "stores"))):
        for v in variables:
            target = ax if v.endswith("_loss") else twin
            style = "-" if v.startswith("train") else "--"
            target.plot(
                ds["x"].values,
                values(ds, v)[0],
                style,
                color=f"C{i % 10}",
                lw=1.2,
                label=label if v == variables[0] else None,
            )
    ax.set(xlabel=axis_label(dss[0], "x"), ylabel="loss", yscale="log" if log else "linear")
    if twin is not None:
        twin.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    return fig
