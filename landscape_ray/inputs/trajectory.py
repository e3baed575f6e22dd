"""PCA directions of an optimization trajectory, and the trajectory projected onto them (paper §7).

Given checkpoints θ0 … θn (`directions.checkpoints`: a list or a glob, ordered by epoch; files, or save_pretrained
folders for `model.arch: hf`) and the centre θ* (`model.checkpoint` or `model.path`, usually θn), the rows of M =
[θi − θ*] are centred and their top two principal components become the x and y directions; the explained-variance
ratio of each is kept for the axis labels. Every checkpoint is then projected onto the plane by least squares
(solving the 2 × 2 normal equations, so the coordinates are exact even if the stored directions are not exactly
orthogonal).

Memory stays small for big models and long trajectories: checkpoints are
memory-mapped, M is never formed — only its (n × n) Gram matrix, accumulated
block by block over the parameters — and the directions are built from the
Gram eigenvectors in a second pass, block by block again.

    dirs = pca_directions(model, spec)   # Directions with axis_attrs and trajectory
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landscape_ray.core.errors import SpecError
from landscape_ray.inputs.checkpoints import load_checkpoint
from landscape_ray.inputs.directions import Directions, direction_space, ignored
from landscape_ray.inputs.hf import fitting_state
from landscape_ray.spec.schema import Spec
from landscape_ray.store.fingerprint import checkpoint_paths

BLOCK = 1 << 22  # values per parameter block: n × BLOCK float64 at a time


def _epoch(meta: dict, path: Path, index: int) -> int:
    if isinstance(meta.get("epoch"), int):
        return meta["epoch"]
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else index


def _blocks(theta: dict[str, torch.Tensor], names: list[str]):
    for name in names:
        size = theta[name].numel()
        for start in range(0, size, BLOCK):
            yield name, slice(start, min(size, start + BLOCK))


def pca_directions(model: nn.Module, spec: Spec) -> Directions:
    d = spec.directions
    paths = checkpoint_paths(spec)
    theta = direction_space(model, d.dir_type)
    names = [k for k, v in theta.items() if not ignored(v, d.ignore)]  # the others stay zero
    states, epochs = [], []
    for i, path in enumerate(paths):
        field, trust = f"directions.checkpoints[{i}]", spec.model.trust_checkpoint
        if path.is_dir():  # a save_pretrained folder (landscape-ray train of an HF model writes one per epoch)
            state, meta = fitting_state(str(path), model, trust, field), {}
        else:
            state, meta = load_checkpoint(path, trust, field, mmap=True)
        bad = [k for k in names if k not in state or state[k].shape != theta[k].shape]
        if bad:
            raise SpecError(f"directions.checkpoints[{i}]: {path} does not fit the model at {bad[0]}")
        states.append(state)
        epochs.append(_epoch(meta, path, i))

    def rows(name, where):  # (n, block) of θi − θ*, float64
        base = theta[name].reshape(-1)[where].double()
        return torch.stack([s[name].reshape(-1)[where].double() - base for s in states])

    n = len(states)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for name, where in _blocks(theta, names):
        x = rows(name, where)
        gram += x @ x.T
    centre = torch.eye(n, dtype=torch.float64) - 1.0 / n  # PCA centres the rows, as the paper's code (sklearn) does
    gram_c = centre @ gram @ centre
    eigval, eigvec = torch.linalg.eigh(gram_c)
    top = eigval.flip(0)[:2]
    if top[1] <= 1e-12 * max(float(top[0]), 1e-300):
        raise SpecError("directions.checkpoints: the trajectory spans fewer than 2 dimensions; PCA has no plane")
    ratio = (top / eigval.clamp(min=0).sum()).tolist()
    # v_k = M_cᵀ u_k / √λ_k; M_cᵀ u = Mᵀ u because u ⟂ 1 for the centred Gram matrix.
    coef = centre @ eigvec.flip(1)[:, :2] / top.sqrt()

    vectors = [{k: torch.zeros_like(v) for k, v in theta.items()} for _ in range(2)]
    dtd = torch.zeros(2, 2, dtype=torch.float64)
    dtx = torch.zeros(n, 2, dtype=torch.float64)
    for name, where in _blocks(theta, names):
        x = rows(name, where)
        block = (x.T @ coef).to(theta[name].dtype)  # what is stored, so projections use exactly it
        for k in range(2):
            vectors[k][name].view(-1)[where] = block[:, k]
        b = block.double()
        dtd += b.T @ b
        dtx += x @ b
    coords = torch.linalg.solve(dtd, dtx.T).T.numpy()  # least squares onto span(δ, η)

    labels = [
        f"{a}: PC{i + 1} of {n} checkpoints ({100 * r:.1f}% of variance)" for i, (a, r) in enumerate(zip("xy", ratio))
    ]
    return Directions(
        vectors=[{k: v.numpy() for k, v in vec.items()} for vec in vectors],
        labels=labels,
        axis_attrs=[{"explained_variance_ratio": r} for r in ratio],
        trajectory={"epoch": np.asarray(epochs, dtype=np.int64), "x": coords[:, 0], "y": coords[:, 1]},
    )
