"""How tiles are spread over actors, and what is refused before a run starts (real local Ray, real stores)."""

from __future__ import annotations

import os
import subprocess
import sys
import weakref

import numpy as np
import pytest
import xarray as xr
import yaml

from landscape_ray.cluster.connect import preflight
from landscape_ray.cluster.pool import Pool, Slot
from landscape_ray.cluster.scheduler import evaluate_tiles, work_item
from landscape_ray.compute.prepare import prepare
from landscape_ray.core.errors import RunError
from landscape_ray.job import run
from landscape_ray.spec.grid import Grid
from landscape_ray.spec.passes import Passes
from landscape_ray.spec.schema import GridSpec
from landscape_ray.store.tiles import Store

from .conftest import ROOT, make_spec, quiet, reference

pytestmark = pytest.mark.usefixtures("ray_cluster")


def scan(tmp_path, checkpoint, *extra):
    """A 1D scan of 8 points in 4 tiles of 2; 300 train images in batches of 100 (3 forward passes per point)."""
    return make_spec(
        tmp_path / "s.zarr",
        checkpoint,
        "grid.y=null",
        "grid.x={min: -1, max: 1, num: 8}",
        "grid.tile=2",
        "data.batch_size=100",
        "compute.in_flight=2",
        "eval.fold_bn=false",  # no test forwards at load: an actor's pauses begin with its first tile
        *extra,
    )


@pytest.mark.parametrize("num", [4, 8])  # 2 and 4 tiles: fewer than actors × in_flight
@pytest.mark.slow
def test_every_actor_computes_when_tiles_are_few(checkpoint, tmp_path, num):
    spec = scan(
        tmp_path,
        checkpoint,
        "model.arch=tests.helpers:rendezvous_cnn",
        f"model.kwargs={{folder: {tmp_path / 'up'}}}",
        f"grid.x.num={num}",
    )
    summary = run(spec, log=quiet)
    points = sorted(a["points"] for a in summary["actors"].values())
    assert len(points) == 2 and min(points) > 0 and sum(points) == num, summary["actors"]


@pytest.mark.slow
def test_idle_actor_takes_a_tile_a_slow_actor_has_not_started(checkpoint, tmp_path):
    # One actor is 10× slower. Whichever actor is ready first, the slow one ends up computing one tile only:
    # a second tile queued on it is cancelled there and computed by the fast actor when it runs out of work.
    spec = scan(
        tmp_path,
        checkpoint,
        "model.arch=tests.helpers:rendezvous_cnn",
        f"model.kwargs={{folder: {tmp_path / 'up'}, delay: 0.05, slow: 0.5}}",
    )
    summary = run(spec, log=quiet)
    assert sorted(a["points"] for a in summary["actors"].values()) == [2, 6], summary["actors"]


def test_auto_tiles_store_equals_one_fixed_tile_in_process(checkpoint, tmp_path):
    spec = make_spec(tmp_path / "s.zarr", checkpoint, "grid.tile=auto", "grid.x.num=9", "grid.y.num=9")
    run(spec, log=quiet)
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert ds.attrs["spec"]["grid"]["tile"] != [9, 9]  # really cut into several tiles (small ones share a chunk)
    # The same points as one 9 × 9 tile, evaluated here without Ray.
    want = reference(spec.model_copy(update={"grid": spec.grid.model_copy(update={"tile": [9, 9]})}))
    for name, values in want.items():
        np.testing.assert_array_equal(ds[name].values, values, err_msg=name)


@pytest.mark.slow
def test_actors_started_before_the_payload_exists_compute_the_same_values(checkpoint, tmp_path):
    # The rendezvous: on a loaded machine one actor could otherwise do all 35 points before the other has loaded.
    spec = make_spec(
        tmp_path / "s.zarr",
        checkpoint,
        "model.arch=tests.helpers:rendezvous_cnn",
        f"model.kwargs={{folder: {tmp_path / 'up'}, delay: 0.01}}",
    )
    grid = Grid.from_spec(spec.grid)
    values = {}

    def keep(tile, out, record):
        for name, flat in out.items():
            array = values.setdefault(name, np.full(grid.shape, np.nan))
            array[grid.slices(tile)] = flat.reshape(grid.tile_shape(tile))

    with Pool(spec, preflight(spec)) as pool:  # the actors start importing torch while the inputs load here
        summary = evaluate_tiles(spec, prepare(spec), grid, grid.tiles(), keep, log=quiet, pool=pool)
    assert summary["points"] == grid.size and len(summary["actors"]) == 2
    want = reference(spec)
    assert set(values) == set(want)
    for name in want:
        np.testing.assert_array_equal(values[name], want[name], err_msg=name)


def test_preflight_counts_the_actors_the_run_starts(tmp_path):
    assert preflight(make_spec(tmp_path / "s.zarr", None, "compute.actors=auto")) == 2  # the fixture's 2 CPUs
    assert preflight(make_spec(tmp_path / "s.zarr", None, "compute.actors=auto", "compute.cpus_per_actor=2")) == 1
    assert preflight(make_spec(tmp_path / "s.zarr", None, "compute.actors=3")) == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("compute.cpus_per_actor=64", r"^compute\.cpus_per_actor: 64 per actor, .* the largest has 2 CPUs and 0 GPUs$"),
        ("eval.device=cuda", r"^eval\.device: cuda requested but the Ray cluster has no GPUs$"),
    ],
)
def test_preflight_refuses_what_cannot_run_in_one_line(tmp_path, override, message):
    with pytest.raises(RunError, match=message):
        preflight(make_spec(tmp_path / "s.zarr", None, override))
    assert not (tmp_path / "s.zarr").exists()


PREFLIGHT_SCRIPT = """
import ray
from landscape_ray.cluster.connect import preflight
from tests.conftest import make_spec
def attempt(*overrides, address=None):
    try:
        print("ok", preflight(make_spec("unused.zarr", None, "eval.device=auto", *overrides), address))
    except Exception as err:
        print(type(err).__name__, err)
attempt(address="127.0.0.1:9")
ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, logging_level="ERROR")
attempt("compute.gpus_per_actor=2")
attempt("compute.gpus_per_actor=0.5", "compute.actors=auto")
"""


@pytest.mark.slow
def test_preflight_on_a_fresh_process_unreachable_cluster_and_gpu_placement():
    """A process of its own: one whose Ray is not yet connected, and a local cluster declaring one GPU."""
    out = subprocess.run(
        [sys.executable, "-c", PREFLIGHT_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout + out.stderr
    assert lines[0].startswith("RunError --address 127.0.0.1:9: cannot join that Ray cluster")
    assert lines[1] == (
        "RunError compute.gpus_per_actor: 2 per actor, but no node of the cluster has that much; "
        "the largest has 1 CPUs and 1 GPUs"
    )
    assert lines[2] == "ok 2"


def test_the_driver_computes_while_the_actors_start(checkpoint, tmp_path):
    """Actors that take 4 s to build: the driver's warmup (warmup.py) computes tiles meanwhile. Its values are the
    in-process evaluator's, bit for bit, and its tiles are recorded as the driver's (-1) in log/tiles."""
    spec = make_spec(
        tmp_path / "s.zarr",
        checkpoint,
        "model.arch=tests.helpers:slow_start_cnn",
        "grid.tile=[1, 1]",
        "compute.warmup=true",
        "compute.ray=always",  # a job this small would otherwise be computed without actors
    )
    summary = run(spec, log=quiet)
    driver = summary["actors"]["driver"]["points"]
    assert 0 < driver and summary["points"] == 35, summary["actors"]
    assert sum(a["points"] for a in summary["actors"].values()) == 35
    ds = xr.open_zarr(tmp_path / "s.zarr")
    for name, values in reference(spec).items():
        np.testing.assert_array_equal(ds[name].values, values, err_msg=name)
    records = Store(tmp_path / "s.zarr", mode="r").records()
    assert len(records) == 35 and (records[:, 3] == -1).sum() == driver


@pytest.mark.parametrize("mode", ["progressive", "adaptive"])
def test_the_driver_computes_the_first_pass_while_the_actors_start(checkpoint, tmp_path, mode):
    """A progressive or adaptive grid: the driver's warmup takes the points of the first pass (the first picture)
    and no others, and the store holds the in-process evaluator's values at every point done."""
    grid = ["grid.x={min: -1, max: 1, num: 17}", "grid.y={min: -1, max: 1, num: 17}", "grid.tile=[2, 2]"]
    slow = "model.arch=tests.helpers:slow_start_cnn"
    always = "compute.ray=always"  # a job this small would otherwise be computed without actors
    spec = make_spec(tmp_path / "s.zarr", checkpoint, slow, *grid, f"grid.mode={mode}", "compute.warmup=true", always)
    lines = []
    summary = run(spec, log=lines.append)
    first = Passes(Grid.from_spec(spec.grid), mode).levels == 0
    assert 0 < summary["actors"]["driver"]["points"] <= first.sum(), summary["actors"]
    assert any(line.startswith("pass 1/") for line in lines), lines
    done = Store(tmp_path / "s.zarr", mode="r").done()
    assert done[first].all()
    ds = xr.open_zarr(tmp_path / "s.zarr")
    for name, values in reference(spec).items():
        np.testing.assert_array_equal(ds[name].values[done], values[done], err_msg=name)


@pytest.mark.slow
def test_the_driver_writes_tiles_while_its_private_cluster_starts(checkpoint, tmp_path):
    """`landscape-ray run` in a fresh process, on its own private cluster: the driver's tiles go into the store
    built beside while Ray starts (on a grid this small it may do them all), and the store that is swapped in holds
    the in-process evaluator's values bit for bit, every point counted once, and no partial store is left."""
    store = tmp_path / "s.zarr"
    spec = make_spec(store, checkpoint, "grid.tile=[1, 1]", "compute.warmup=true", "compute.ray=always")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "landscape_ray", "run", str(job)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    ds = xr.open_zarr(store)
    for name, values in reference(spec).items():
        np.testing.assert_array_equal(ds[name].values, values, err_msg=name)
    summary = Store(store, mode="r").root.attrs["runs"][-1]
    assert summary["points"] == 35 and summary["tiles"] == 35, summary
    assert summary["actors"]["driver"]["points"] > 0 and summary["startup"]["first_tile_s"] > 0, summary
    records = Store(store, mode="r").records()
    assert len(records) == 35 and (records[:, 3] == -1).sum() == summary["actors"]["driver"]["points"]
    assert (records[records[:, 3] == -1, 1] > 0).all()  # the driver's tiles record the seconds they took
    assert not list(tmp_path.glob(".s.zarr.partial-*"))


@pytest.mark.parametrize("mode", ["uniform", "adaptive"])
def test_a_small_job_is_computed_in_the_driver_without_ray(checkpoint, tmp_path, mode):
    """`landscape-ray run` of a job whose points take well under SMALL_S, in a fresh process with no cluster to
    join: no cluster is started, no actor, the driver computes every point, and the store holds
    the in-process evaluator's values bit for bit. With `compute.ray: always` the same job goes to Ray actors (for
    the adaptive grid, which must choose the same points either way; a uniform one on actors is every other test)."""
    grid = ["grid.x={min: -1, max: 1, num: 33}", "grid.y={min: -1, max: 1, num: 9}", f"grid.mode={mode}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for ray_mode in ("auto", "always") if mode == "adaptive" else ("auto",):
        store = tmp_path / f"{ray_mode}.zarr"
        spec = make_spec(store, checkpoint, *grid, "compute.warmup=true", f"compute.ray={ray_mode}")
        job = tmp_path / f"{ray_mode}.yaml"
        job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        done = subprocess.run(
            [sys.executable, "-m", "landscape_ray", "run", str(job)], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        summary = Store(store, mode="r").root.attrs["runs"][-1]
        small = ray_mode == "auto"
        assert ("a small job: computed in this process" in done.stdout) == small, done.stdout
        assert ("cluster_s" in summary["startup"]) != small, summary["startup"]  # no cluster started or joined
        assert list(summary["actors"]) == ["driver"] or not small, summary["actors"]
        stored = Store(store, mode="r")
        on = stored.done()
        for name, values in reference(spec).items():
            np.testing.assert_array_equal(stored.read(name)[on], values[on], err_msg=name)
        assert on.all() == (mode == "uniform")
    if mode == "adaptive":  # it chooses the same points either way
        a, b = Store(tmp_path / "auto.zarr", mode="r"), Store(tmp_path / "always.zarr", mode="r")
        np.testing.assert_array_equal(a.done(), b.done())


@pytest.mark.parametrize("point_s, actors", [(0.125, 1), (0.125, 4), (10.0, 1)])
def test_a_work_item_is_seconds_of_consecutive_tiles_at_the_actors_rate(point_s, actors):
    """51 points in tiles of 1 (a GPU's fine cut), items of 2 s: 16 tiles at 0.125 s a point (exact in binary), one
    at 10 s, never more than half of what is left per actor; the tiles stay in queue order."""
    from collections import deque

    grid = Grid.from_spec(GridSpec(x={"num": 51}, tile=1))
    slot = Slot("a", None, "cuda", info={"point_s": point_s})
    queue, items, want, left = deque(grid.tiles()), [], [], 51
    while queue:
        items.append(work_item(queue, grid, slot, 2.0, actors))
        want.append(max(1, min(int(2.0 // point_s), left // (2 * actors))))
        left -= want[-1]
    assert [len(i) for i in items] == want
    assert want[0] == (1 if point_s > 2 else min(16, 51 // (2 * actors)))
    assert [t for i in items for t in i] == grid.tiles()
    slot.points, slot.seconds = 4, 1.0  # measured on its tiles: 0.25 s a point overrides the warm-up's estimate
    assert slot.point_seconds() == 0.25
    # By default a GPU actor's items are 2 s; a CPU actor (tiles sized already) and a rate not yet known: one tile.
    assert len(work_item(deque(grid.tiles()), grid, slot, None, 1)) == 8
    cpu, unknown = Slot("c", None, "cpu", points=10, seconds=1.0), Slot("u", None, "cuda")
    assert [len(work_item(deque(grid.tiles()), grid, s, None, 1)) for s in (cpu, unknown)] == [1, 1]


def test_work_items_of_several_tiles_give_the_values_of_one_tile_at_a_time(checkpoint, tmp_path):
    """Tiles of one point, items of up to 100 s: the actors take several tiles per call, and each tile's values land
    where that tile belongs (equal to the in-process evaluation, bit for bit)."""
    spec = make_spec(tmp_path / "s.zarr", checkpoint, "grid.tile=1", "compute.item_seconds=100")
    summary = run(spec, log=quiet)
    actors = summary["actors"].values()
    assert sum(a["points"] for a in actors) == 35 and sum(a["items"] for a in actors) < 35, summary["actors"]
    ds = xr.open_zarr(tmp_path / "s.zarr")
    for name, values in reference(spec).items():
        np.testing.assert_array_equal(ds[name].values, values, err_msg=name)


def test_once_the_payload_is_in_the_object_store_the_driver_holds_no_copy_of_its_own(checkpoint, tmp_path):
    """After the actors have the payload, the driver's payload reads the object store's arrays (read-only, the
    actors' copy) and its own arrays of θ*, the directions and the data are gone: a large model's payload is not
    held twice. The values are those of the reference."""
    spec = scan(tmp_path, checkpoint)
    payload = prepare(spec)
    arrays = lambda: [*payload.state.values(), *payload.directions.vectors[0].values(), payload.splits["train"].images]
    own = [weakref.ref(a) for a in arrays()]
    assert all(a.flags.writeable for a in arrays())
    grid = Grid.from_spec(spec.grid)
    values = np.full(grid.shape, np.nan)

    def keep(tile, out, record):
        values[grid.slices(tile)] = out["train_loss"].reshape(grid.tile_shape(tile))

    with Pool(spec, preflight(spec)) as pool:
        evaluate_tiles(spec, payload, grid, grid.tiles(), keep, log=quiet, pool=pool)
        assert [ref() for ref in own] == [None] * len(own)
        assert not any(a.flags.writeable for a in arrays())
    np.testing.assert_array_equal(values, reference(spec)["train_loss"])


def test_a_resumed_small_job_is_computed_in_the_driver_without_ray(checkpoint, tmp_path):
    """A store interrupted after its first pass (on the test's cluster), then `run --resume` in a fresh process with
    no cluster to join: no cluster is started, the driver computes the points left, and the store equals the
    in-process evaluator's values everywhere."""
    from landscape_ray.core.errors import Interrupted

    store = tmp_path / "s.zarr"
    grid = ["grid.x={min: -1, max: 1, num: 33}", "grid.y={min: -1, max: 1, num: 9}", "grid.mode=progressive"]
    spec = make_spec(store, checkpoint, *grid, "compute.warmup=true")

    def stop(line: str) -> None:
        if line.startswith("pass 1/"):
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        run(spec.model_copy(update={"compute": spec.compute.model_copy(update={"ray": "always"})}), log=stop)
    before = Store(store, mode="r").done()
    assert before.any() and not before.all()
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "landscape_ray", "run", str(job), "--resume"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "a small job: computed in this process" in done.stdout, done.stdout
    summary = Store(store, mode="r").root.attrs["runs"][-1]
    assert "cluster_s" not in summary["startup"] and list(summary["actors"]) == ["driver"], summary
    assert summary["points"] == (~before).sum()
    stored = Store(store, mode="r")
    assert stored.done().all()
    for name, values in reference(spec).items():
        np.testing.assert_array_equal(stored.read(name), values, err_msg=name)
