"""The paper's experiments at three sizes, and the `Plan` that trains and computes each of them once.

A driver of the existing pieces, not a second system: it trains with `train.train` (specs from
jobs/quickstart-train.yaml, or jobs/paper/<arch>-train.yaml at full scale), computes stores with `job.run` (specs
from jobs/quickstart.yaml, or jobs/paper/vgg9-surface.yaml / vgg9-scan.yaml), and the helpers below draw with
render.figure and figures.py for `catalogue.FIGURES`. Runs and stores live in DIR/runs and DIR/stores; a rerun
reuses what is complete there (training and stores resume), so an interrupted `paper` picks up where it stopped.

At quick scale VGG-9 is the digits CNN, the CIFAR ResNets are ResNet-8/14 (with/without shortcuts, width 1/2)
built by `models.digits_resnet`, DenseNet-121 is the widest of them, and repeated panels come at reduced count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from landscape_ray.core.paths import exists
from landscape_ray.inputs.checkpoints import read_record
from landscape_ray.inputs.directions import difference, make_directions, write_directions
from landscape_ray.inputs.models import load_model
from landscape_ray.inputs.trajectory import pca_directions
from landscape_ray.job import run as run_job
from landscape_ray.pictures.figures import (
    overlay_1d,
    training_curves,
    trajectory_figure,
    weight_histograms,
    weight_norm_figure,
)
from landscape_ray.pictures.render import figure
from landscape_ray.spec.schema import Spec
from landscape_ray.spec.specfile import load_spec
from landscape_ray.spec.training import TrainSpec
from landscape_ray.store.refine import complete
from landscape_ray.store.tiles import Store
from landscape_ray.train import train

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Size:
    epochs: int | None  # None: the spec file's
    surface: int  # points per axis of 2D grids
    scan: int  # points of 1D scans
    small: int  # the small and large batch
    large: int
    seeds: int  # directions in the repeatability figures
    overrides: tuple = ()  # for every train and store spec


DIGITS = "digits_resnet"
SIZES = {
    "tiny": Size(2, 5, 7, 64, 256, 2, ("data.subset=200",)),
    "quick": Size(10, 13, 31, 64, 256, 4),
    "full": Size(None, 51, 401, 128, 8192, 10),
}
NETS = {  # role: (quick label, arch, kwargs), (full label, arch, kwargs)
    "shallow": (("ResNet-8", DIGITS, {"depth": 8}), ("ResNet-20", "resnet20", {})),
    "deep": (("ResNet-14", DIGITS, {"depth": 14}), ("ResNet-56", "resnet56", {})),
    "wide": (("WRN-8-2", DIGITS, {"depth": 8, "width": 2}), ("WRN-56-2", "wrn56_2", {})),
    "dense": (("WRN-8-2 (for DenseNet-121)", DIGITS, {"depth": 8, "width": 2}), ("DenseNet-121", "densenet121", {})),
}


class Plan:
    """Trains and computes on demand, once each, and remembers the specs a figure used."""

    def __init__(self, out: Path, size: str, log=print):
        self.out, self.size, self.full, self.log = out, SIZES[size], size == "full", log
        self.cnn = ("VGG-9", "vgg9", {}) if self.full else ("CNN", "digits_cnn", {})
        self.used: list = []

    def _spec(self, path: str, overrides: list, model=Spec):
        spec = load_spec(ROOT / path, list(self.size.overrides) + overrides, model=model)
        self.used.append(spec)
        return spec

    def train(self, net, optimizer: str = "sgd", large: bool = False, wd: float = 5e-4) -> Path:
        """The run folder of `net` = (label, arch, kwargs) trained with `optimizer`, small/large batch, `wd`."""
        _, arch, kwargs = net
        batch = self.size.large if large else self.size.small
        name = f"{arch.rpartition(':')[2]}{''.join(f'-{k}{v}' for k, v in kwargs.items())}-{optimizer}-{batch}-wd{wd:g}"
        base = (
            f"jobs/paper/{arch}-train.yaml"
            if (ROOT / f"jobs/paper/{arch}-train.yaml").exists()
            else "jobs/paper/vgg9-train.yaml"
            if self.full
            else "jobs/quickstart-train.yaml"
        )
        over = [
            f"model.arch={arch}",
            f"model.kwargs={kwargs}",
            f"batch_size={batch}",
            f"optimizer.name={optimizer}",
            f"optimizer.weight_decay={wd}",
            f"out={self.out / 'runs' / name}",
            f"name={name}",
        ]
        over += [f"epochs={self.size.epochs}"] * (self.size.epochs is not None)
        over += ["optimizer.lr=0.001"] * (optimizer == "adam")
        spec = self._spec(base, over, TrainSpec)
        if not (Path(spec.out) / "final.pt").exists():
            self.log(f"training {name}")
            threads = torch.get_num_threads()
            # Small nets: one thread is faster (no OpenMP contention with the cluster's actors or anyone else).
            torch.set_num_threads(threads if self.full else 1)
            try:
                train(spec, log=lambda *_: None)
            finally:
                torch.set_num_threads(threads)
        return Path(spec.out)

    def title(self, run: Path, label: str | None = None) -> str:
        ckpt = read_record(run / "final.pt", f"runs: {run}", mmap=True)
        spec = ckpt["spec"]
        opt = spec["optimizer"]
        label = label or f"{opt['name'].upper()}, {spec['batch_size']}, WD {opt['weight_decay']:g}"
        return f"{label}, {100 * (1 - ckpt['test_acc']):.2f}%"

    def store(self, name: str, run: Path, directions: dict, x=(-1, 1), y=(-1, 1)) -> Path:
        """A store around `run`'s final weights (2D unless `y` is None), computed once."""
        path = self.out / "stores" / f"{name}.zarr"
        ckpt = read_record(run / "final.pt", f"runs: {run}", mmap=True)
        model = ckpt["spec"]["model"]
        n = self.size.surface if y is not None else self.size.scan
        over = [
            f"name={name}",
            f"model.arch={model['arch']}",
            f"model.kwargs={model['kwargs']}",
            f"model.checkpoint={run / 'final.pt'}",
            f"directions={directions}",
            f"output.store={path}",
            "output.render=[]",
            f"grid.x={{min: {x[0]}, max: {x[1]}, num: {n}}}",
            f"data.splits={'[train]' if y is not None else '[train, test]'}",  # the paper's 2D plots: train loss
            f"grid.y={f'{{min: {y[0]}, max: {y[1]}, num: {n}}}' if y is not None else 'null'}",
            f"grid.tile={n if y is not None else max(1, n // 4)}",
        ]
        if not self.full:  # one actor's start-up (seconds) is more than a small scan's work; two cores for surfaces
            over.append(f"compute.actors={2 if y is not None and self.size.surface > 9 else 1}")
        base = (
            ("jobs/paper/vgg9-surface.yaml" if y is not None else "jobs/paper/vgg9-scan.yaml")
            if self.full
            else "jobs/quickstart.yaml"
        )
        spec = self._spec(base, over)
        if not (exists(path) and complete(Store(path, mode="r"))):
            self.log(f"computing {name}")
            run_job(spec, resume=exists(path), log=lambda *_: None)
        return path

    def scan(self, run: Path, norm: str = "filter", seed: int = 0, x=(-1, 1)) -> Path:
        dirs = {"kind": "random", "norm": norm, "seed": seed}
        return self.store(f"{run.name}-scan-{norm}-s{seed}-{x[1]:g}", run, dirs, x=x, y=None)

    def surface(self, run: Path, seed: int = 0) -> Path:
        return self.store(f"{run.name}-surface-s{seed}", run, {"kind": "random", "seed": seed})

    def net(self, role: str, shortcut: bool = True, large: bool = False) -> tuple[Path, str]:
        label, arch, kwargs = NETS[role][self.full]
        if not shortcut:
            label, kwargs = f"{label}-noshort", {**kwargs, "shortcut": False} if arch == DIGITS else kwargs
            arch = arch if arch == DIGITS else f"{arch}_noshort"
        return self.train((label, arch, kwargs), large=large), label


def opt_runs(p: Plan, wd: float, optimizers=("sgd", "adam")) -> list[Path]:
    return [p.train(p.cnn, o, large, wd) for o in optimizers for large in (False, True)]


def compare(stores, titles, **options):
    return figure(stores, titles=titles, **options)


def scans(p: Plan, runs, **options):
    return compare([p.scan(r, **options) for r in runs], [p.title(r) for r in runs], cols=len(runs) // 2 or 1)


def interpolations(p: Plan, pairs) -> list:
    stores = [
        p.store(
            f"{a.name}-to-{b.name}", a, {"kind": "interpolate", "target": str(b / "final.pt")}, x=(-0.5, 1.5), y=None
        )
        for a, b in pairs
    ]
    return compare(stores, [f"{p.title(a)} → {p.title(b)}" for a, b in pairs], cols=len(stores) // 2 or 1)


def nets(p: Plan, roles) -> tuple[list[Path], list[str]]:
    pairs = [p.net(role, shortcut) for role, shortcut in roles]
    return [p.surface(run) for run, _ in pairs], [p.title(run, label) for run, label in pairs]


def fig9(p: Plan):
    run = p.train(p.cnn)
    spec = load_spec(None, [f"model.checkpoint={run / 'final.pt'}", f"model.arch={p.cnn[1]}"])
    model, npz = load_model(spec), p.out / "stores" / f"{run.name}-init-random.npz"
    if not npz.exists():
        vectors = [
            difference(model, str(run / "model_0.pt"), spec, "model_0"),
            make_directions(model, spec.directions, 1)[0],
        ]
        write_directions(vectors, npz, model, "weights")
    plane = p.store(f"{run.name}-init-random", run, {"kind": "file", "path": str(npz)}, x=(-0.5, 1.5))
    glob = str(run / "model_[0-9]*.pt")
    return [
        ("a", trajectory_figure(p.surface(run), glob)),
        ("b", trajectory_figure(plane, glob)),
        ("c", trajectory_figure(plane, glob, fit_path=True)),
    ]


def pca(p: Plan, run: Path) -> Path:
    dirs = {"kind": "pca", "checkpoints": str(run / "model_[0-9]*.pt")}
    spec = load_spec(None, [f"model.checkpoint={run / 'final.pt'}", f"model.arch={p.cnn[1]}", f"directions={dirs}"])
    path = pca_directions(load_model(spec), spec).trajectory  # the grid must hold the whole path
    pad = [0.2 * (path[a].max() - path[a].min()) for a in "xy"]
    x, y = ((round(path[a].min() - d, 3), round(path[a].max() + d, 3)) for a, d in zip("xy", pad))
    return p.store(f"{run.name}-pca", run, dirs, x=x, y=y)


def histograms(p: Plan):
    groups = [[r / "final.pt" for r in opt_runs(p, wd, ("sgd",))] for wd in (0, 5e-4)]
    return weight_histograms(groups, [f"batch {p.size.small}", f"batch {p.size.large}"], ["WD 0", "WD 5e-4"])


def curves(p: Plan, runs, labels):
    return training_curves(runs, labels)


def repeat_2d(p: Plan):
    run, label = p.net("shallow", False)
    return compare(
        [p.surface(run, s) for s in range(min(3, p.size.seeds))],
        [f"{label}, directions seed {s}" for s in range(min(3, p.size.seeds))],
        kind="contour",
    )


def overlay(p: Plan):
    run = p.train(p.cnn)
    return overlay_1d([p.scan(run, seed=s) for s in range(p.size.seeds)], [f"seed {s}" for s in range(p.size.seeds)])


def norms(p: Plan):
    runs = opt_runs(p, 0, ("sgd",)) + opt_runs(p, 5e-4, ("sgd",))
    return weight_norm_figure(runs, [p.title(r) for r in runs])
