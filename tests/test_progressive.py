"""`grid.mode: progressive` against its independent reference, a uniform run of the same spec: real local Ray, real
Zarr stores, the bundled digits quickstart (θ* the model's own init, so no checkpoint is needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

import landscape_ray
from landscape_ray.cli.main import main
from landscape_ray.core.errors import Interrupted, SpecError
from landscape_ray.job import run
from landscape_ray.spec.grid import Grid
from landscape_ray.spec.passes import Passes, first_stride
from landscape_ray.spec.schema import GridSpec
from landscape_ray.spec.specfile import load_spec
from landscape_ray.store.filled import RULE, fill
from landscape_ray.store.tiles import Store

from .conftest import ROOT, quiet

pytestmark = pytest.mark.usefixtures("ray_cluster")

PLANE = ["grid.x={min: -1, max: 1, num: 17}", "grid.y={min: -1, max: 1, num: 17}", "grid.tile=[3, 5]"]
SCAN = ["grid.x={min: -1, max: 1, num: 33}", "grid.y=null", "grid.tile=4"]


def quickstart(store: Path, *overrides: str):
    """jobs/quickstart.yaml at θ* = the digits CNN's own init, on a small grid (small tiles: several per chunk)."""
    base = ["model.checkpoint=null", f"output.store={store}", "output.render=[]"]
    return load_spec(ROOT / "jobs" / "quickstart.yaml", [*base, *overrides])


def arrays(path: Path) -> dict[str, np.ndarray]:
    """Every grid array of a store (values and done flags), as on disk."""
    store = Store(path, mode="r")
    return {name: store.read(name) for name in [*store.variables, "done"]}


def chunk_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if "/c/" in str(p.relative_to(path)))


@pytest.fixture(scope="module")
def uniform(tmp_path_factory, ray_cluster) -> dict[str, Path]:
    """The references: uniform runs (2 actors, the driver's warmup on) of the plane and the scan."""
    out = {}
    for name, grid in (("plane", PLANE), ("scan", SCAN)):
        path = tmp_path_factory.mktemp("uniform") / f"{name}.zarr"
        run(quickstart(path, *grid), log=quiet)
        out[name] = path
    return out


@pytest.mark.parametrize(
    "shape, stride, first",
    [
        ((51, 51), 8, [0, 8, 16, 24, 32, 40, 48, 50]),
        ((17, 17), 2, list(range(0, 17, 2))),
        ((9,), 1, list(range(9))),
        ((401,), 64, [0, 64, 128, 192, 256, 320, 384, 400]),
        ((5, 33), 4, [0, 4]),
    ],
)
def test_passes_cover_every_point_once_coarse_to_fine(shape, stride, first):
    axes = {"x": {"num": shape[-1]}, **({"y": {"num": shape[0]}} if len(shape) == 2 else {})}
    grid = Grid.from_spec(GridSpec.model_validate({**axes, "tile": [3, 5][-len(shape) :]}))
    passes = Passes(grid, "progressive")
    assert first_stride(shape) == stride == passes.stride
    assert passes.lattice(0)[0].tolist() == first  # along the first axis (rows of a plane)
    assert passes.count == stride.bit_length()  # 8 → passes at spacings 8, 4, 2, 1
    covered = np.zeros(shape, dtype=int)
    for level in range(passes.count):
        for piece in passes.pieces(level):
            mask = passes.mask(piece)
            block = covered[grid.slices(piece.tile)]
            block[np.ones(block.shape, bool) if mask is None else mask] += 1
            assert len(passes.coords(piece)) == passes.points(piece) > 0
        lattice = np.zeros(shape, bool)
        lattice[np.ix_(*passes.lattice(level))] = True
        np.testing.assert_array_equal(lattice, passes.levels <= level)  # the passes so far: a whole lattice
    np.testing.assert_array_equal(covered, 1)


def test_filling_is_exact_on_a_bilinear_field_whatever_part_of_the_later_passes_is_done():
    """Bilinear interpolation from each pass's lattice reproduces a bilinear field: any pattern of evaluated points
    that holds the first pass fills in to it exactly; evaluated points keep their values, and NaN stays where the
    first pass is missing."""
    grid = Grid.from_spec(GridSpec.model_validate({"x": {"num": 33}, "y": {"min": 0, "max": 3, "num": 21}}))
    passes = Passes(grid, "progressive")
    y, x = np.meshgrid(grid.y, grid.x, indexing="ij")
    exact = 1 + 2 * x - 3 * y + 0.5 * x * y
    rng = np.random.default_rng(0)
    done = (passes.levels == 0) | (rng.random(grid.shape) < 0.3)
    ds = xr.Dataset(
        {"f": (("y", "x"), np.where(done, exact, np.nan)), "done": (("y", "x"), done)},
        coords={"x": grid.x, "y": grid.y},
    )
    np.testing.assert_allclose(fill(ds, passes).f.values, exact, rtol=0, atol=1e-12)
    wavy = ds.assign(f=(("y", "x"), np.where(done, np.sin(3 * x) * y, np.nan)))
    np.testing.assert_array_equal(fill(wavy, passes).f.values[done], wavy.f.values[done])
    gap = done.copy()
    gap[0, :2] = False  # a point of the first pass missing: its cells cannot be drawn
    filled = fill(ds.assign(done=(("y", "x"), gap)), passes).f.values
    assert np.isnan(filled[0, 1]) and np.isfinite(filled[-1, -1])


@pytest.mark.parametrize("name, grid", [("plane", PLANE), ("scan", SCAN)])
def test_after_all_passes_progressive_equals_uniform_bit_for_bit(uniform, tmp_path, name, grid):
    # One actor here, two in the reference: neither the actors nor the order change a value or the layout.
    path = tmp_path / "p.zarr"
    lines = []
    run(quickstart(path, *grid, "grid.mode=progressive", "compute.actors=1"), log=lines.append)
    assert sum(line.startswith("pass ") for line in lines) == Passes(Store(path, mode="r").grid, "progressive").count
    want, got = arrays(uniform[name]), arrays(path)
    assert set(got) == set(want) and got["done"].all()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert chunk_files(path) == chunk_files(uniform[name])
    for key in want:
        assert Store(path, mode="r").root[key].chunks == Store(uniform[name], mode="r").root[key].chunks


def stop_after_pass(n: int):
    """A `log` that presses Ctrl-C as pass `n` is reported done (at the barrier: no later pass has begun)."""

    def log(line: str) -> None:
        if line.startswith(f"pass {n}/"):
            raise KeyboardInterrupt

    return log


@pytest.mark.parametrize("name, grid", [("plane", PLANE), ("scan", SCAN)])
def test_a_run_stopped_after_the_first_pass_holds_its_lattice_and_resumes(uniform, tmp_path, capsys, name, grid):
    path = tmp_path / "p.zarr"
    spec = quickstart(path, *grid, "grid.mode=progressive")
    with pytest.raises(Interrupted):
        run(spec, log=stop_after_pass(1))
    store, want = Store(path, mode="r"), arrays(uniform[name])
    passes = Passes(store.grid, "progressive")
    first = passes.levels == 0
    got = arrays(path)
    np.testing.assert_array_equal(got["done"], first)
    for key in store.variables:
        np.testing.assert_array_equal(got[key][first], want[key][first], err_msg=key)
        assert np.isnan(got[key][~first]).all(), key

    # `info` reports each pass; the pictures draw the whole grid, interpolated between the lattice's points.
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"pass 1: {first.sum()}/{first.sum()} points" in out and f"pass 2: 0/{(passes.levels == 1).sum()}" in out
    assert main(["render", str(path), "--out", str(tmp_path / "pics"), "--kind", "contour,heatmap"]) == 0
    assert len(list((tmp_path / "pics").glob("*.png"))) == (4 if name == "plane" else 1)

    # The filled field: the evaluated points as they are, the rest close to the uniform run's values.
    ds = landscape_ray.open(path, filled=True)
    assert ds.attrs["filled"] == ds.train_loss.attrs["filled"] == RULE
    for key in ("train_loss", "test_loss"):
        filled, exact = ds[key].values, want[key]
        np.testing.assert_array_equal(filled[first], exact[first])
        np.testing.assert_allclose(filled, exact, rtol=0.03, atol=0.003, err_msg=key)
    assert np.isnan(landscape_ray.open(path).train_loss.values[~first]).all()  # unfilled unless asked

    # The mode is part of the store's identity: a resume continues the same passes, or is refused.
    with pytest.raises(SpecError, match=r"grid\.mode \(store: 'progressive', now: 'uniform'\)"):
        run(quickstart(path, *grid), resume=True, log=quiet)
    # A chunk lost meanwhile: its tiles are recomputed in every pass, the first one included.
    lost = sorted(p for p in (path / "train_loss" / "c").rglob("*") if p.is_file())[0]
    lost.unlink()
    damaged = Store(path, mode="r").damaged()
    assert damaged
    again = sum(first[store.grid.slices(t)].sum() for t in damaged)
    summary = run(spec, resume=True, log=quiet)
    assert summary["points"] == (~first).sum() + again
    got = arrays(path)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.slow
def test_killed_progressive_run_resumed_equals_the_uniform_run(uniform, tmp_path):
    """SIGKILL of the driver and its Ray mid-run (in the second pass), then --resume: the uniform run's store."""
    path = tmp_path / "p.zarr"
    spec = quickstart(
        path,
        *PLANE,
        "grid.mode=progressive",
        "model.arch=tests.helpers:slow_cnn",  # the digits CNN, slowed down: its values are the reference's
        "model.kwargs={delay: 0.01}",
        "compute.actors=2",
    )
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    proc = subprocess.Popen(
        [sys.executable, "-m", "landscape_ray", "run", str(job)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    first = Passes(Grid.from_spec(spec.grid), "progressive").levels == 0
    try:
        deadline = time.time() + 180
        while not (path.exists() and Store(path, mode="r").done().sum() > first.sum() + 20):
            assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = Store(path, mode="r").done()
    assert done[first].all() and not done.all()
    run(spec, resume=True, log=quiet)
    got, want = arrays(path), arrays(uniform["plane"])
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
