"""Direction vectors δ, η in weight space (paper §3, §4, §7 and appendix 9.2, 9.5).

A direction is a dict {state_dict name: array} over the *direction space*: the
model's parameters (`dir_type: weights`) or every floating-point entry of its
state_dict, BN running statistics included (`dir_type: states`).

Kinds (`directions.kind`):
  random       Gaussian, drawn on the CPU from a generator seeded with `seed`, entry by
               entry in state_dict order, x before y — so a direction depends only on the
               seed and the model, and the x direction of a surface is the 1D scan's.
               `norm: filter` rescales every filter (slice along dim 0: one conv output
               channel, linear output unit or embedding row; along dim 1 for GPT-2's
               Conv1D, whose weight is (in, out)) to the norm of the same filter of θ*;
               `layer` rescales whole tensors; `none` leaves them as drawn.
  interpolate  δ = θ_l − θ_s (1D): α = 0 is θ_s = model.checkpoint, α = 1 is `target`.
  plane        δ = θ1 − θ*, η = θ2 − θ* through three models (`targets`).
  pca          the top principal components of a training trajectory (trajectory.py).
  file         read from `path`: this service's .npz export, a store, or the paper's .h5.
Entries with ≤ 1 dimension (biases, BN, and a transformer's LayerNorm/RMSNorm gains) get a zero
direction with `ignore: biasbn` (`ignored`); a random direction otherwise sets them to θ itself, as
in the paper's public code. An entry that shares its tensor with an earlier one (a language model's
lm_head tied to its embedding) is not in the direction space: it moves once, with the earlier one.

    vectors = make_directions(model, spec.directions, ndim=2)   # random: one {name: array} per axis
    dirs = payload.resolve_directions(model, spec)              # any kind: Directions (payload.py)
"""

from __future__ import annotations

import copy
import hashlib
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import replace_file
from landscape_ray.inputs.checkpoints import fit_state, read_checkpoint
from landscape_ray.inputs.data import as_array
from landscape_ray.inputs.hf import load_hf, tied_names
from landscape_ray.spec.schema import DirectionsSpec, Spec

EPS = 1e-10  # as the paper's code: keeps an all-zero filter of θ* from dividing by zero
# Floats of an entry's draw held at once where the draw can be cut into rows (Recipe.moved). A point holds a few
# fp32 temporaries of this size (the draw, θ* of the rows, the sum): at 4 M floats a 1.1 B Llama's actor peaked
# 2.58× the model's bytes, at 1 M 2.52× (benchmarks.llm_memory); smaller blocks cost no measurable time there.
BLOCK = 1 << 20


@dataclass
class Directions:
    vectors: list[dict[str, np.ndarray]]  # one per grid axis
    labels: list[str]  # axis descriptions for pictures
    axis_attrs: list[dict] = field(default_factory=list)  # e.g. PCA's explained_variance_ratio
    trajectory: dict | None = None  # PCA: {"epoch": ints, "x": coords, "y": coords}
    recipe: Recipe | None = None  # directions.regenerate: drawn where used, `vectors` empty

    def __bool__(self) -> bool:  # directions to evaluate with (a hessian kind's come once the cluster is up)
        return bool(self.vectors) or self.recipe is not None

    @property
    def ndim(self) -> int:
        return self.recipe.ndim if self.recipe is not None else len(self.vectors)

    @property
    def travelling(self) -> list[dict[str, np.ndarray]] | Recipe:
        """What evaluators are given: the arrays, or the recipe they draw them from."""
        return self.recipe or self.vectors


def direction_space(model: nn.Module, dir_type: str) -> dict[str, torch.Tensor]:
    """θ* restricted to the entries a direction spans, in state_dict order; tied entries once."""
    tied = tied_names(model)
    state = {k: v for k, v in model.state_dict().items() if k not in tied}
    if dir_type == "weights":
        names = {name for name, _ in model.named_parameters()}
        return {k: v for k, v in state.items() if k in names}
    return {k: v for k, v in state.items() if v.is_floating_point()}


def filter_dims(model: nn.Module) -> dict[str, int]:
    """Entries whose filters (output units) lie along dim 1, not 0: the weight of GPT-2's `Conv1D` (in, out),
    recognised by its type (transformers' own), not by its name."""
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    if conv1d is None:  # transformers not loaded: no such module in this model
        return {}
    return {f"{name}.weight": 1 for name, m in model.named_modules() if isinstance(m, conv1d)}


def ignored(theta: torch.Tensor, ignore: str) -> bool:
    """The biasbn rule: with `ignore: biasbn`, entries of ≤ 1 dimension (biases, BN) are not moved."""
    return ignore == "biasbn" and theta.dim() <= 1


def normalize(d: torch.Tensor, theta: torch.Tensor, norm: str, ignore: str, dim: int = 0) -> torch.Tensor:
    """`d` rescaled as `norm` says against θ*; `dim`: the axis along which a tensor's filters lie."""
    if ignored(theta, ignore):
        return torch.zeros_like(theta)
    if d.dim() <= 1:  # as the paper's code: a bias or BN entry that is not ignored moves along θ itself
        return theta.clone()
    if norm == "filter" and dim != 0:
        return normalize(d.movedim(dim, 0), theta.movedim(dim, 0), norm, ignore).movedim(0, dim)
    if norm == "filter":
        scale = theta.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + EPS)
        return d * scale.view(-1, *([1] * (d.dim() - 1)))
    if norm == "layer":
        return d * (theta.norm() / (d.norm() + EPS))
    return d


def exact(theta: torch.Tensor) -> torch.Tensor:
    """θ* of one entry on the CPU, in fp32 where the model holds it in 16 bits (norms are taken at full precision)."""
    theta = theta.detach().cpu()
    return theta.float() if theta.dtype in (torch.bfloat16, torch.float16) else theta


def entry_seed(seed: int, axis: int, name: str) -> int:
    """`seeding: entry`: the seed of one entry's draw, the same in every process and on every machine."""
    digest = hashlib.blake2b(f"{seed}/{axis}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch seeds are below 2**63


@dataclass(frozen=True)
class Recipe:
    """Random directions as the way to draw them: any entry's direction, alone, on demand (a CPU generator, so
    every device gets the same numbers). What `directions.regenerate` keeps instead of 2 × N floats."""

    seed: int
    norm: str
    ignore: str
    seeding: str  # stream | entry
    ndim: int
    names: tuple[str, ...] = ()  # the direction space (direction_space), in state_dict order
    dims: dict[str, int] = field(default_factory=dict)  # entries whose filters lie along dim 1 (filter_dims)

    @classmethod
    def of(cls, model: nn.Module, spec: DirectionsSpec, ndim: int) -> Recipe:
        names = tuple(direction_space(model, spec.dir_type))
        return cls(spec.seed, spec.norm, spec.ignore, spec.seeding or "stream", ndim, names, filter_dims(model))

    def entry(self, axis: int, name: str, theta: torch.Tensor) -> torch.Tensor:
        """The fp32 direction of one entry along `axis`, normalized against θ* (`theta`, any dtype or device)."""
        return self.drawn(self.generator(axis, name), name, exact(theta))

    def generator(self, axis: int, name: str) -> torch.Generator:
        """`seeding: entry`: the CPU generator of one entry's draw along `axis`."""
        return torch.Generator().manual_seed(entry_seed(self.seed, axis, name))

    def drawn(self, generator: torch.Generator, name: str, at: torch.Tensor) -> torch.Tensor:
        """The next fp32 draw of `generator` in the shape of `at` (θ* of the entry `name` or of its rows, fp32 on the
        CPU), normalized against it."""
        d = torch.randn(at.shape, generator=generator, dtype=torch.float32)
        return normalize(d, at, self.norm, self.ignore, self.dims.get(name, 0))

    def moved(self, name: str, theta: torch.Tensor, moves: list[tuple[int, float]], device, block: int = BLOCK):
        """θ* + Σ c · direction of one entry (`moves`: (axis, c) pairs) in fp32 on `device`, as (rows, values)
        pieces: the entry's direction along each axis drawn and normalized a block of rows at a time, so that no
        more than `block` floats of a draw exist at once (a language model's embedding: 65 M floats), with the
        numbers of `entry`. Rows only where that holds: `norm: filter` normalizes each row on its own, and the CPU
        generator gives a block of rows the numbers the whole draw would where a row is a multiple of 16 floats (its
        normal sampler works in groups of 16); any other entry is one piece (rows `...`, a 0-d entry included)."""
        width = theta[0].numel() if theta.dim() >= 2 else 0
        if self.norm == "filter" and self.dims.get(name, 0) == 0 and width and width % 16 == 0:
            step = max(1, block // width)
            pieces = [slice(start, start + step) for start in range(0, len(theta), step)]
        else:
            pieces = [...]
        generators = [self.generator(axis, name) for axis, _ in moves]
        for rows in pieces:
            part = theta[rows]
            point, at = part.to(device, torch.float32, copy=True), exact(part)
            for (_, c), generator in zip(moves, generators):
                point.add_(self.drawn(generator, name, at).to(device), alpha=c)
            yield rows, point

    def vectors(self, space: dict[str, torch.Tensor]) -> list[dict[str, np.ndarray]]:
        """All entries of every axis, in the dtype of the entry they move (rounded once; a bf16 model's as BFloat16)
        and the form directions travel, are stored and exported in. Entry by entry: no more than one entry's fp32
        draws exist at a time besides the result."""
        generator = torch.Generator().manual_seed(self.seed)  # seeding stream: entry after entry, x before y

        def draw(axis: int, name: str, theta: torch.Tensor) -> torch.Tensor:
            if self.seeding == "entry":
                return self.entry(axis, name, theta)
            return self.drawn(generator, name, exact(theta))

        return [{k: as_array(draw(a, k, v).to(v.dtype)) for k, v in space.items()} for a in range(self.ndim)]


def make_directions(model: nn.Module, spec: DirectionsSpec, ndim: int) -> list[dict[str, np.ndarray]]:
    """Random directions, one per grid axis, as NumPy arrays; a model held in bf16 gets the fp32 draws rounded once."""
    return Recipe.of(model, spec, ndim).vectors(direction_space(model, spec.dir_type))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a NumPy array; bfloat16, which NumPy lacks, as float32 (exact: every bf16 value is one)."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def difference(model: nn.Module, path: str, spec: Spec, field: str) -> dict[str, np.ndarray]:
    """θ_other − θ* over the direction space, θ_other read from `path` and checked against the model."""
    if spec.model.arch == "hf":  # another folder of the same model (a fine-tuned one, a training checkpoint)
        other = load_hf(path, spec.model.dtype, spec.model.trust_checkpoint, field)
    else:
        other = copy.deepcopy(model)
        fit_state(other, read_checkpoint(path, spec.model.trust_checkpoint, field), path, field)
    base = direction_space(model, spec.directions.dir_type)
    theirs = direction_space(other, spec.directions.dir_type)
    ignore = spec.directions.ignore
    return {
        k: to_numpy(torch.zeros_like(v) if ignored(v, ignore) else theirs[k].float() - v.float())
        if v.is_floating_point()
        else to_numpy(theirs[k] - v)
        for k, v in base.items()
    }


# --- direction files -------------------------------------------------------------------------
# .npz (this service's export): arrays "x/<name>", "y/<name>".
# .h5 / .hdf5 (the paper's code): groups xdirection, ydirection; datasets "0", "1", … in
#   named_parameters() order (weights) or state_dict() order, integer entries included (states).
# A store folder is a direction file too (its directions/x and directions/y): payload.py reads it with
# store.py and checks it with `fit_directions`, so this module needs nothing of the store's layout.


def _paper_order(model: nn.Module, dir_type: str) -> list[tuple[str, torch.Tensor]]:
    if dir_type == "weights":
        return [(k, v.detach()) for k, v in model.named_parameters()]
    return list(model.state_dict().items())


def fit_directions(
    vectors: list[dict], model: nn.Module, dir_type: str, ndim: int, where: str
) -> list[dict[str, np.ndarray]]:
    """The first `ndim` directions read from `where`, checked against the model's direction space, as float32."""
    vectors = [v for v in vectors if v]
    if len(vectors) < ndim:
        raise SpecError(f"directions.path: {where} holds {len(vectors)} direction(s), the grid needs {ndim}")
    space = direction_space(model, dir_type)
    for axis, vec in zip("xy", vectors[:ndim]):
        missing = [k for k in space if k not in vec]
        if missing:
            raise SpecError(f"directions.path: {where} has no {axis}/{missing[0]} ({len(missing)} entries missing)")
        for k, theta in space.items():
            if tuple(vec[k].shape) != tuple(theta.shape):
                raise SpecError(
                    f"directions.path: {where}: {axis}/{k} has shape {tuple(vec[k].shape)}, "
                    f"the model needs {tuple(theta.shape)}"
                )
    return [{k: np.asarray(vec[k], dtype=np.float32) for k in space} for vec in vectors[:ndim]]


def read_directions(path: str | Path, model: nn.Module, dir_type: str, ndim: int) -> list[dict[str, np.ndarray]]:
    """The directions of a .npz or .h5 file, checked against the model."""
    p = Path(path)
    if not p.exists():
        raise SpecError(f"directions.path: file not found: {p}")
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:  # object arrays would unpickle: refused
                vectors = [{k[2:]: z[k] for k in z.files if k.startswith(f"{a}/")} for a in "xy"]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise SpecError(f"directions.path: {p} is not a direction file ({str(err).splitlines()[0]})") from None
    elif p.suffix == ".safetensors":  # a flat table of arrays: no code, no pickle
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            z = load_file(p)
        except (SafetensorError, OSError, ValueError) as err:
            raise SpecError(f"directions.path: {p} is not a direction file ({str(err).splitlines()[0]})") from None
        vectors = [{k[2:]: v for k, v in z.items() if k.startswith(f"{a}/")} for a in "xy"]
    elif p.suffix in (".h5", ".hdf5"):
        vectors = _read_h5(p, model, dir_type)
    else:
        raise SpecError(f"directions.path: {p}: expected a .npz, .safetensors, .h5 or store folder")
    return fit_directions(vectors, model, dir_type, ndim, str(p))


def _h5py():
    try:
        import h5py
    except ImportError:
        raise SpecError("directions.path: .h5 files need h5py (pip install 'landscape-ray[h5]')") from None
    return h5py


def _read_h5(path: Path, model: nn.Module, dir_type: str) -> list[dict[str, np.ndarray]]:
    order = _paper_order(model, dir_type)
    vectors = []
    with _h5py().File(path, "r") as f:
        for group in ("xdirection", "ydirection"):
            if group not in f:
                continue
            g = f[group]
            if len(g) != len(order):
                raise SpecError(
                    f"directions.path: {path}: {group} has {len(g)} tensors, the model's {dir_type} have {len(order)}"
                )
            vec = {}
            for i, (name, theta) in enumerate(order):
                data = np.asarray(g[str(i)])
                if data.shape != tuple(theta.shape):
                    raise SpecError(
                        f"directions.path: {path}: {group}/{i} has shape {data.shape} "
                        f"but {name} needs {tuple(theta.shape)}"
                    )
                vec[name] = data
            vectors.append(vec)
    return vectors


def write_directions(
    vectors: list[dict[str, np.ndarray]], path: str | Path, model: nn.Module | None, dir_type: str
) -> Path:
    """Export directions as .npz or .safetensors (keyed "x/<entry name>", no `model` needed) or .h5 (the paper's
    code's layout: the entries in `model`'s order)."""
    path = Path(path)
    flat = {f"{a}/{k}": np.ascontiguousarray(v) for a, vec in zip("xy", vectors) for k, v in vec.items()}

    def npz(temporary: Path) -> None:
        with open(temporary, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, **flat)

    def safetensors(temporary: Path) -> None:  # what Hugging Face users load anywhere (safetensors.numpy, torch, JAX)
        from safetensors.numpy import save_file

        save_file(flat, temporary)

    def h5(temporary: Path) -> None:
        with _h5py().File(temporary, "w") as f:
            for group, vec in zip(("xdirection", "ydirection"), vectors):
                g = f.create_group(group)
                for i, (name, theta) in enumerate(_paper_order(model, dir_type)):
                    g.create_dataset(
                        str(i), data=vec[name] if name in vec else np.zeros(tuple(theta.shape), np.float32)
                    )

    writers = {".npz": npz, ".safetensors": safetensors, ".h5": h5, ".hdf5": h5}
    if path.suffix not in writers:
        raise SpecError(f"--out: {path}: expected a .npz, .safetensors or .h5 file")
    return replace_file(path, writers[path.suffix])  # beside, then renamed: a kill leaves the old file or the new
