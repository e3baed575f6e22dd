"""End to end on a real local Ray cluster and real Zarr stores: layout, exactness, faults, resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
import zarr

from landscape_ray.core.errors import RunError
from landscape_ray.inputs.models import DigitsCNN
from landscape_ray.job import run
from landscape_ray.store.tiles import Store

from .conftest import ROOT, as_digits, make_spec, quiet, reference

pytestmark = pytest.mark.usefixtures("ray_cluster")


def stored(path) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(path)
    return {k: ds[k].values for k in ds.data_vars if k != "done"}


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_store_is_a_complete_xarray_dataset(checkpoint, tmp_path):
    spec = make_spec(tmp_path / "s.zarr", checkpoint, "data.splits=[train, test]")
    summary = run(spec, log=quiet)
    assert summary["points"] == 35 and summary["tiles"] == 9
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert set(ds.data_vars) == {
        "train_loss",
        "train_acc",
        "train_loss_se",
        "test_loss",
        "test_acc",
        "test_loss_se",
        "done",
    }
    assert ds.train_loss.dims == ("y", "x") and ds.train_loss.shape == (5, 7)
    np.testing.assert_array_equal(ds.x.values, np.linspace(-1, 1, 7))
    np.testing.assert_array_equal(ds.y.values, np.linspace(-0.5, 1, 5))
    assert ds.done.values.all() and np.isfinite(ds.train_loss.values).all()
    assert ((ds.test_acc.values >= 0) & (ds.test_acc.values <= 1)).all()
    assert ds.attrs["spec"] == spec.model_dump(mode="json")
    assert {"torch", "ray", "zarr"} <= set(ds.attrs["versions"])
    assert "filter-normalized" in ds.x.attrs["long_name"]
    # Directions are stored under the network's parameter names (dir_type: weights), filter-normalized to θ* as
    # read here with torch.load: every filter of δ and η has the norm of θ*'s filter; biases and BN are zero.
    theta = torch.load(checkpoint, weights_only=True)["state_dict"]
    names = [name for name, _ in DigitsCNN().named_parameters()]
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    x, y = ({n: torch.from_numpy(a[...]) for n, a in root[f"directions/{axis}"].arrays()} for axis in "xy")
    assert sorted(x) == sorted(y) == sorted(names)
    for n in names:
        if theta[n].dim() > 1:
            for d in (x[n], y[n]):
                torch.testing.assert_close(d.flatten(1).norm(dim=1), theta[n].flatten(1).norm(dim=1), rtol=1e-5, atol=0)
        else:
            assert not x[n].any() and not y[n].any(), n
    assert not torch.equal(x["head.weight"], y["head.weight"])


@pytest.mark.parametrize("actors, tile", [(1, "[2, 3]"), (2, "[1, 7]"), (2, "4"), (2, "[5, 7]")])
@pytest.mark.slow
def test_bit_identical_for_any_actor_count_and_tile_shape(checkpoint, tmp_path, actors, tile):
    spec = make_spec(tmp_path / "s.zarr", checkpoint, f"compute.actors={actors}", f"grid.tile={tile}")
    run(spec, log=quiet)
    assert_same(stored(tmp_path / "s.zarr"), reference(spec))


@pytest.mark.slow
def test_1d_run_equals_y0_row_of_2d_run(checkpoint, tmp_path):
    two = make_spec(tmp_path / "2d.zarr", checkpoint, "grid.y={min: -1, max: 1, num: 3}")
    one = make_spec(tmp_path / "1d.zarr", checkpoint, "grid.y=null", "grid.tile=3")
    run(two, log=quiet)
    run(one, log=quiet)
    ds1, ds2 = xr.open_zarr(tmp_path / "1d.zarr"), xr.open_zarr(tmp_path / "2d.zarr")
    assert ds1.train_loss.dims == ("x",)
    np.testing.assert_array_equal(ds1.train_loss.values, ds2.train_loss.sel(y=0.0).values)


def slow_spec(tmp_path, checkpoint, *extra):
    """A slow run whose forward passes wait while `tmp_path/hold` exists (tests.helpers.SlowCNN)."""
    return make_spec(
        tmp_path / "s.zarr",
        checkpoint,
        "model.arch=tests.helpers:slow_cnn",
        f"model.kwargs={{delay: 0.03, hold: {tmp_path / 'hold'}}}",
        "data.batch_size=300",
        "grid.x={min: -1, max: 1, num: 9}",
        "grid.y={min: -1, max: 1, num: 9}",
        "grid.tile=[1, 3]",
        *extra,
    )


@pytest.mark.slow
def test_killed_actor_its_tiles_are_recomputed_elsewhere(checkpoint, tmp_path):
    spec = slow_spec(tmp_path, checkpoint)
    lines, result = [], {}
    worker = threading.Thread(target=lambda: result.update(run(spec, log=lines.append)))
    worker.start()
    deadline = time.time() + 60
    while not any(line.startswith("actor-0 ready") for line in lines) or not (tmp_path / "s.zarr").exists():
        assert time.time() < deadline, lines
        time.sleep(0.05)
    pid = int(re.search(r"pid (\d+)", next(line for line in lines if line.startswith("actor-0 ready"))).group(1))
    while Store(tmp_path / "s.zarr", mode="r").done().sum() == 0:
        time.sleep(0.05)
    (tmp_path / "hold").touch()  # every actor waits mid-tile: the one killed has work to hand on
    try:
        os.kill(pid, signal.SIGKILL)
    finally:
        (tmp_path / "hold").unlink()
    worker.join(120)
    assert result["actor_deaths"] == 1 and result["retried_tiles"] >= 1, result
    assert any("died" in line for line in lines)
    assert Store(tmp_path / "s.zarr", mode="r").done().all()
    assert_same(stored(tmp_path / "s.zarr"), reference(as_digits(spec)))


def test_tile_that_keeps_killing_actors_ends_the_run(checkpoint, tmp_path):
    spec = make_spec(
        tmp_path / "s.zarr",
        checkpoint,
        "model.arch=tests.helpers:crashing_cnn",
        "compute.max_tile_failures=2",
        "eval.fold_bn=false",  # folding traces the forward with torch.fx, which would trace the crash away
    )
    with pytest.raises(RunError, match=r"killed 2 actors; giving up"):
        run(spec, log=quiet)
    assert not Store(tmp_path / "s.zarr", mode="r").done().any()


@pytest.mark.slow
def test_killed_driver_resume_recomputes_only_missing_tiles(checkpoint, tmp_path):
    spec = slow_spec(tmp_path, checkpoint)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    proc = subprocess.Popen(
        [sys.executable, "-m", "landscape_ray", "run", str(spec_file)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        done = 0
        while done < 4:
            assert proc.poll() is None and time.time() < deadline, "driver ended before it could be killed"
            time.sleep(0.1)
            if (tmp_path / "s.zarr").exists():
                done = Store(tmp_path / "s.zarr", mode="r").done().sum() // 3
        (tmp_path / "hold").touch()  # the run stays mid-way until the kill
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started, mid-run
        proc.wait()
    before = Store(tmp_path / "s.zarr", mode="r").done().reshape(-1, 3).all(axis=1).sum()
    assert 0 < before < 27
    (tmp_path / "hold").unlink()
    summary = run(spec, resume=True, log=quiet)
    assert summary["tiles"] == 27 - before
    assert_same(stored(tmp_path / "s.zarr"), reference(as_digits(spec)))


def test_nan_points_are_stored_and_the_run_goes_on(checkpoint, tmp_path):
    # Moving BN running variances along themselves scales them by 1 + x + y: NaN where that is negative.
    spec = make_spec(
        tmp_path / "s.zarr",
        checkpoint,
        "directions.dir_type=states",
        "directions.ignore=none",
        "grid.x={min: -2, max: 1, num: 7}",
        "output.render=[contour, heatmap]",
    )
    summary = run(spec, log=quiet)
    ds = xr.open_zarr(tmp_path / "s.zarr")
    loss = ds.train_loss.values
    assert ds.done.values.all()
    x, y = np.meshgrid(ds.x.values, ds.y.values)
    negative = 1 + x + y < 0
    assert negative.any() and (~negative).any()
    np.testing.assert_array_equal(np.isnan(loss), negative)
    assert len(summary["pictures"]) == 2 and all(os.path.getsize(p) > 1000 for p in summary["pictures"])


@pytest.mark.slow
def test_custom_model_data_and_metric_through_run(tmp_path, capsys):
    """jobs/tiny-lm.yaml — a GRU language model, dict batches, its own metric — on Ray actors, then info and render."""
    from landscape_ray.cli.main import main
    from landscape_ray.spec.specfile import load_spec

    spec = load_spec(
        ROOT / "jobs" / "tiny-lm.yaml",
        [
            "grid.x.num=5",
            "grid.y.num=3",
            "grid.tile=4",
            "data.kwargs={size: 64, length: 8}",
            "data.subset=48",
            "compute.actors=2",
            "eval.device=cpu",
            f"output.store={tmp_path / 'lm.zarr'}",
            "output.render=[contourf]",
        ],
    )
    summary = run(spec, log=quiet)
    ds = xr.open_zarr(tmp_path / "lm.zarr")
    assert set(ds.data_vars) == {
        "train_loss",
        "train_acc",
        "train_loss_se",
        "test_loss",
        "test_acc",
        "test_loss_se",
        "done",
    }
    assert_same(stored(tmp_path / "lm.zarr"), reference(spec))
    assert [p.split("/")[-1] for p in summary["pictures"]] == ["test_loss_contourf.png", "train_loss_contourf.png"]
    assert main(["info", str(tmp_path / "lm.zarr")]) == 0
    assert "train_acc: min" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_run_compiles_once_per_actor_before_its_first_tile_into_a_cache_kept_between_runs(
    checkpoint, tmp_path
):
    """eval.compile on the CPU (Inductor's C++ backend): the values equal the uncompiled in-process evaluation
    within 1e-5, each actor's warm-up (compilation) is recorded and shown by `info`, and the kernels land in
    LANDSCAPE_RAY_CACHE, kept for the next run (one run: a second, 20 s, asserted nothing more)."""
    spec = make_spec(tmp_path / "s.zarr", checkpoint, "eval.compile=true", "compute.actors=1", "grid.tile=[5, 7]")
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    # The training fixture touched Inductor in this process, which set TORCHINDUCTOR_CACHE_DIR to torch's default.
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["LANDSCAPE_RAY_CACHE"] = str(tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-m", "landscape_ray", "run", str(spec_file)], cwd=ROOT, env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert any((tmp_path / "cache" / "inductor").rglob("*.py"))  # Inductor's generated kernels, kept
    runs = Store(tmp_path / "s.zarr", mode="r").root.attrs["runs"]
    assert all(a["warm_s"] > 0 for a in runs[-1]["actors"].values())
    assert all(a["peak_rss_mb"] > 100 for a in runs[-1]["actors"].values())  # torch alone takes more
    want = reference(spec.model_copy(update={"eval": spec.eval.model_copy(update={"compile": False})}))
    got = stored(tmp_path / "s.zarr")
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)
    info = subprocess.run(
        [sys.executable, "-m", "landscape_ray", "info", str(tmp_path / "s.zarr")], cwd=ROOT, capture_output=True
    )
    assert "warm s" in info.stdout.decode() and "peak MB" in info.stdout.decode()
