"""`grid.mode: adaptive` against its independent reference, every point evaluated in this process without Ray
(conftest.reference), and the refinement rule on an analytic surface. Real local Ray, real Zarr stores, a trained
digits CNN."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

import landscape_ray
from landscape_ray.cli.main import main
from landscape_ray.core.errors import Interrupted
from landscape_ray.job import run
from landscape_ray.spec.grid import Grid
from landscape_ray.spec.passes import Passes
from landscape_ray.spec.schema import GridSpec, Spec
from landscape_ray.store.filled import filled
from landscape_ray.store.refine import complete, schedule
from landscape_ray.store.tiles import Store

from .conftest import ROOT, make_spec, quiet, reference

pytestmark = pytest.mark.usefixtures("ray_cluster")

PLANE = ["grid.x={min: -1, max: 1, num: 33}", "grid.y={min: -1, max: 1, num: 33}", "grid.tile=[4, 8]"]
SCAN = ["grid.x={min: -1, max: 1, num: 129}", "grid.y=null", "grid.tile=16"]
GRIDS = {"plane": PLANE, "scan": SCAN}


def adaptive(store: Path, checkpoint: Path, grid: list[str], *overrides: str) -> Spec:
    return make_spec(store, checkpoint, *grid, "grid.mode=adaptive", *overrides)


def arrays(path: Path) -> dict[str, np.ndarray]:
    store = Store(path, mode="r")
    return {name: store.read(name) for name in [*store.variables, "done"]}


@pytest.fixture(scope="module")
def references(checkpoint) -> dict[str, dict[str, np.ndarray]]:
    """Every point of the plane and the scan, evaluated in this process."""
    return {name: reference(make_spec(Path("unused.zarr"), checkpoint, *grid)) for name, grid in GRIDS.items()}


@pytest.mark.parametrize("name", GRIDS)
def test_adaptive_run_draws_the_uniform_picture_from_part_of_the_work(references, checkpoint, tmp_path, capsys, name):
    """Evaluated points equal the reference bit for bit, the rest are NaN in the store; the filled field is within
    3 % + 0.003 of the reference at every point; 1 and 2 actors evaluate the same points."""
    want = references[name]
    stores = {}
    for actors in (2, 1):
        stores[actors] = tmp_path / f"a{actors}.zarr"
        lines = []
        run(adaptive(stores[actors], checkpoint, GRIDS[name], f"compute.actors={actors}"), log=lines.append)
        assert any(line.startswith("adaptive: ") for line in lines), lines
    got, other = arrays(stores[2]), arrays(stores[1])
    for key in got:
        np.testing.assert_array_equal(got[key], other[key], err_msg=key)  # NaN where not evaluated, in both
    done = got["done"]
    passes = Passes(Store(stores[2], mode="r").grid, "adaptive")
    assert done[passes.levels <= 1].all()  # the first two passes whole
    assert 0.05 < done.mean() < 0.8  # refined somewhere, not everywhere
    for key in ("train_loss", "train_acc"):
        np.testing.assert_array_equal(got[key][done], want[key][done], err_msg=key)
        assert np.isnan(got[key][~done]).all()
    ds = landscape_ray.open(stores[2], filled=True)
    np.testing.assert_allclose(ds.train_loss.values, want["train_loss"], rtol=0.03, atol=0.003)
    assert complete(Store(stores[2], mode="r"))

    assert main(["info", str(stores[2])]) == 0
    out = capsys.readouterr().out
    assert f"adaptive (complete, tolerance 0.05): {done.sum()} points evaluated, {done.mean():.1%}" in out
    assert main(["render", str(stores[2]), "--out", str(tmp_path / "pics"), "--kind", "contour"]) == 0
    assert list((tmp_path / "pics").glob("*.png"))


def test_interrupted_at_a_pass_resumes_to_the_same_store(checkpoint, tmp_path):
    """Ctrl-C at the barrier after pass 2 (the third is not chosen yet), then --resume: the choice is replayed
    from the stored values, and the store equals an undisturbed run's."""
    whole, path = tmp_path / "whole.zarr", tmp_path / "a.zarr"
    run(adaptive(whole, checkpoint, PLANE), log=quiet)

    def stop(line: str) -> None:
        if line.startswith("pass 2/"):
            raise KeyboardInterrupt

    spec = adaptive(path, checkpoint, PLANE)
    with pytest.raises(Interrupted):
        run(spec, log=stop)
    assert not complete(Store(path, mode="r"))
    summary = run(spec, resume=True, log=quiet)
    want, got = arrays(whole), arrays(path)
    assert summary["points"] == want["done"].sum() - (Passes(Store(path, mode="r").grid, "adaptive").levels <= 1).sum()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.slow
def test_killed_adaptive_run_resumed_equals_an_undisturbed_one(references, checkpoint, tmp_path):
    """SIGKILL of the driver and its Ray mid-run, in the third pass (the first chosen one), then --resume."""
    path = tmp_path / "a.zarr"
    slow = ["model.arch=tests.helpers:slow_cnn", "model.kwargs={delay: 0.02}"]  # the digits CNN's values
    spec = adaptive(path, checkpoint, PLANE, *slow)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    proc = subprocess.Popen(
        [sys.executable, "-m", "landscape_ray", "run", str(job)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    early = Passes(Grid.from_spec(spec.grid), "adaptive").levels <= 1
    try:
        deadline = time.time() + 180
        while not (path.exists() and Store(path, mode="r").done().sum() > early.sum() + 5):
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not complete(Store(path, mode="r"))
    run(spec, resume=True, log=quiet)
    whole = tmp_path / "whole.zarr"
    run(adaptive(whole, checkpoint, PLANE), log=quiet)
    got, want = arrays(path), arrays(whole)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


class AnalyticStore:
    """A store's reading side over a known function: `schedule` asks it what is done and what the values are; the
    test computes each piece it yields by writing the function there, as an actor's tile is written."""

    def __init__(self, grid: Grid, f, tolerance: float = 0.05):
        self.grid, self.exact = grid, f(*np.meshgrid(grid.x, grid.y, indexing="xy"))
        self.values = np.full(grid.shape, np.nan)
        self.variables = ["train_loss"]
        self.spec = SimpleNamespace(grid=SimpleNamespace(tolerance=tolerance))

    def done(self) -> np.ndarray:
        return np.isfinite(self.values)

    def read(self, name: str) -> np.ndarray:
        return self.values.copy()

    def flush(self) -> None:
        pass

    def compute(self, passes: Passes, pieces) -> None:
        for piece in pieces:
            block = self.grid.slices(piece.tile)
            mask = passes.mask(piece)
            mask = np.ones(self.values[block].shape, bool) if mask is None else mask
            self.values[block][mask] = self.exact[block][mask]


def test_refinement_concentrates_in_a_narrow_valley():
    """A Rosenbrock-shaped loss (a narrow curved valley, steep walls, large smooth far field) on a 65 × 65 grid:
    the points the rule chooses after the second pass lie mostly near the valley floor, the work is a small part of
    the grid, and the filled field is within 3 % + 0.003 of the function everywhere."""
    axes = {"x": {"min": -2, "max": 2, "num": 65}, "y": {"min": -1, "max": 3, "num": 65}, "tile": [8, 8]}
    grid = Grid.from_spec(GridSpec.model_validate(axes))
    store = AnalyticStore(grid, lambda x, y: (1 - x) ** 2 + 10 * (y - x**2) ** 2)
    passes = Passes(grid, "adaptive")
    for pieces in schedule(store, passes):
        store.compute(passes, pieces)
    done = store.done()
    late = done & (passes.levels >= 2)  # the points the rule chose
    valley = store.exact < 1  # the valley floor: 6 % of the grid, where the loss is under 1 of its 0 to 259
    assert 0.03 < valley.mean() < 0.1
    assert (late & valley).sum() / late.sum() > 4 * valley.mean()  # chosen there 4× (or more) as densely as a whole
    assert done.mean() < 0.25
    filled_in = filled(store.values, done, passes, grid.axes)
    np.testing.assert_allclose(filled_in, store.exact, rtol=0.03, atol=0.003)
