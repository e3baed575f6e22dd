"""Shared fixtures and helpers: one real local Ray cluster per session, a trained digits checkpoint, spec builders,
and `reference`, every point of a spec evaluated in this process without Ray."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Every Ray process of the tests (and of the CLI runs they start) binds to 127.0.0.1, never the machine's address.
# Ray reads this when it is first imported, so it is set before anything imports ray.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Ray workers (and CLI subprocesses) must import tests.helpers, the custom models of these tests.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from landscape_ray.compute.evaluator import Evaluator  # noqa: E402
from landscape_ray.compute.prepare import prepare  # noqa: E402
from landscape_ray.spec.grid import Grid  # noqa: E402
from landscape_ray.spec.schema import Spec  # noqa: E402
from landscape_ray.spec.specfile import load_spec  # noqa: E402
from landscape_ray.spec.training import TrainSpec  # noqa: E402
from landscape_ray.train import train  # noqa: E402


def quiet(*_) -> None:
    """A `log=` that says nothing."""


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A digits CNN trained for two epochs: a real minimum-ish θ*, made in a few seconds."""
    out = tmp_path_factory.mktemp("ckpt")
    spec = TrainSpec.model_validate(
        {"epochs": 2, "batch_size": 64, "device": "cpu", "out": str(out), "optimizer": {"lr": 0.05}}
    )
    return train(spec, log=quiet)


def make_spec(store: Path, checkpoint: Path | None, *overrides: str) -> Spec:
    """A small 2D job on digits (7 × 5, train subset of 300) with the given `a.b=v` overrides.

    The driver's warmup is off: these tests time, kill or slow down actors, and on a grid this small the driver
    would compute every tile before an actor is up. test_scheduling.py tests the warmup itself."""
    base = [
        f"model.checkpoint={checkpoint}" if checkpoint else "model.checkpoint=null",
        "data.subset=300",
        "data.batch_size=128",
        "grid.x={min: -1, max: 1, num: 7}",
        "grid.y={min: -0.5, max: 1, num: 5}",
        "grid.tile=[2, 3]",
        "eval.device=cpu",
        "compute.actors=2",
        "compute.warmup=false",
        f"output.store={store}",
        "output.render=[]",
    ]
    return load_spec(None, base + list(overrides))


def as_digits(spec: Spec) -> Spec:
    """The same spec with the plain digits CNN: the values the tests' slow or crashing variants must reproduce."""
    return spec.model_copy(update={"model": spec.model.model_copy(update={"arch": "digits_cnn", "kwargs": {}})})


def reference(spec: Spec) -> dict[str, np.ndarray]:
    """Every point evaluated in this process by the in-process Evaluator, without Ray, one thread like an actor.

    The same code an actor runs, so comparing a run with it shows that scheduling (actor count, tile shape,
    retries, resume, remote stores) never changes a value; whether the values are right is tests/test_oracle.py's
    question, against a plain PyTorch loop."""
    grid = Grid.from_spec(spec.grid)
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.compute.cpus_per_actor)
    try:
        ev = Evaluator.from_payload(spec, prepare(spec), "cpu")
        out = {}
        for tile in grid.tiles():
            values = ev.evaluate(grid.coords(tile))
            for k, v in values.items():
                out.setdefault(k, np.full(grid.shape, np.nan))[grid.slices(tile)] = v.reshape(grid.tile_shape(tile))
        return out
    finally:
        torch.set_num_threads(threads)
