"""Direction kinds beyond random: interpolation, planes through three models, PCA trajectories, direction files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from landscape_ray.compute.evaluator import Evaluator
from landscape_ray.compute.prepare import prepare
from landscape_ray.core.errors import SpecError
from landscape_ray.inputs import trajectory
from landscape_ray.inputs.directions import write_directions
from landscape_ray.inputs.kinds import resolve_directions
from landscape_ray.inputs.models import build, load_model
from landscape_ray.job import run
from landscape_ray.spec.training import TrainSpec
from landscape_ray.store.tiles import Store
from landscape_ray.train import train

from .conftest import make_spec, quiet, reference


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A second solution: another seed, one epoch; BN statistics differ from the first."""
    out = tmp_path_factory.mktemp("other")
    spec = TrainSpec.model_validate(
        {"epochs": 1, "batch_size": 32, "device": "cpu", "out": str(out), "seed": 1, "optimizer": {"lr": 0.05}}
    )
    return train(spec, log=quiet)


def own_values(checkpoint, tmp_path):
    # BN unfolded, as in the interpolation (whose directions move BN, which is then never folded): bit for bit
    spec = make_spec(tmp_path / "own.zarr", checkpoint, "grid.y=null", "grid.tile=1", "eval.fold_bn=false")
    return Evaluator.from_payload(spec, prepare(spec), "cpu").evaluate(np.zeros((1, 1)))


@pytest.mark.parametrize("dir_type", ["states", "weights"])
def test_interpolation_ends_at_each_models_own_loss(checkpoint, other, tmp_path, dir_type):
    spec = make_spec(
        tmp_path / "i.zarr",
        checkpoint,
        "directions.kind=interpolate",
        f"directions.target={other}",
        f"directions.dir_type={dir_type}",
        "grid.y=null",
        "grid.x={min: -0.5, max: 1.5, num: 9}",
        "grid.tile=1",
    )
    out = Evaluator.from_payload(spec, prepare(spec), "cpu").evaluate(np.array([[0.0], [1.0]]))
    start, end = own_values(checkpoint, tmp_path), own_values(other, tmp_path)
    assert out["train_loss"][0] == start["train_loss"][0]  # α = 0 is θ_s bit for bit
    if dir_type == "states":  # BN statistics interpolated too: α = 1 is θ_l up to float32 rounding of θ_s + (θ_l − θ_s)
        assert out["train_loss"][1] == pytest.approx(end["train_loss"][0], rel=1e-5)
        assert out["train_acc"][1] == end["train_acc"][0]
    else:  # θ_s's BN statistics stay: the far end is not θ_l (why appendix 9.5 moves them)
        assert abs(out["train_loss"][1] - end["train_loss"][0]) > 1e-3


@pytest.mark.slow
def test_interpolation_runs_as_a_1d_job(ray_cluster, checkpoint, other, tmp_path):
    spec = make_spec(
        tmp_path / "i.zarr",
        checkpoint,
        "directions.kind=interpolate",
        f"directions.target={other}",
        "directions.dir_type=states",
        "grid.y=null",
        "grid.x={min: -0.5, max: 1.5, num: 9}",
        "grid.tile=4",
    )
    run(spec, log=quiet)
    ds = xr.open_zarr(tmp_path / "i.zarr")
    assert ds.train_loss.dims == ("x",) and "interpolation" in ds.x.attrs["long_name"]
    np.testing.assert_array_equal(ds.train_loss.values, reference(spec)["train_loss"])
    with pytest.raises(SpecError, match="grid.y: directions.kind interpolate makes a 1D scan"):
        prepare(make_spec(tmp_path / "j.zarr", checkpoint, "directions.kind=interpolate", f"directions.target={other}"))


def test_plane_through_three_models(checkpoint, other, tmp_path):
    third = tmp_path / "third.pt"
    torch.manual_seed(5)
    torch.save(build("digits_cnn").state_dict(), third)
    spec = make_spec(
        tmp_path / "p.zarr",
        checkpoint,
        "directions.kind=plane",
        f"directions.targets=[{other}, {third}]",
        "directions.dir_type=states",
    )
    out = Evaluator.from_payload(spec, prepare(spec), "cpu").evaluate(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    for i, ckpt in enumerate([checkpoint, other, third]):
        assert out["train_loss"][i] == pytest.approx(own_values(ckpt, tmp_path)["train_loss"][0], rel=1e-5)


def synthetic_trajectory(tmp_path, checkpoint, n=8):
    """Checkpoints θi = θ* + a_i u + b_i v for two fixed random vectors: a trajectory that lies in a known plane."""
    model = load_model(make_spec(tmp_path / "x.zarr", checkpoint))
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    u = {k: torch.randn(v.shape, generator=g) for k, v in theta.items() if v.is_floating_point()}
    v_ = {k: torch.randn(v.shape, generator=g) for k, v in theta.items() if v.is_floating_point()}
    a = np.linspace(-3, 0, n) ** 2 / 3
    b = np.sin(np.linspace(0, 3, n))
    paths = []
    for i in range(n):
        state = {k: (t + a[i] * u[k] + b[i] * v_[k]) if k in u else t for k, t in theta.items()}
        paths.append(tmp_path / f"traj_{i}.pt")
        torch.save({"state_dict": state, "epoch": 10 * i}, paths[-1])
    return model, theta, paths


@pytest.mark.parametrize("block", [trajectory.BLOCK, 97])
def test_pca_recovers_the_plane_and_projects_every_checkpoint_exactly(checkpoint, tmp_path, monkeypatch, block):
    monkeypatch.setattr(trajectory, "BLOCK", block)  # blocked accumulation must not change the result
    model, theta, paths = synthetic_trajectory(tmp_path, checkpoint)
    spec = make_spec(
        tmp_path / "pca.zarr",
        checkpoint,
        "directions.kind=pca",
        f"directions.checkpoints={tmp_path}/traj_*.pt",
        "directions.ignore=none",
        "directions.dir_type=states",
    )
    dirs = resolve_directions(model, spec)
    ratios = [a["explained_variance_ratio"] for a in dirs.axis_attrs]
    assert sum(ratios) == pytest.approx(1.0, abs=1e-9) and ratios[0] >= ratios[1] > 0.01
    assert list(dirs.trajectory["epoch"]) == [10 * i for i in range(len(paths))]
    for i, path in enumerate(paths):
        state = torch.load(path, weights_only=True)["state_dict"]
        cx, cy = dirs.trajectory["x"][i], dirs.trajectory["y"][i]
        for k, d in dirs.vectors[0].items():
            rebuilt = (
                theta[k].double()
                + cx * torch.from_numpy(d).double()
                + cy * torch.from_numpy(dirs.vectors[1][k]).double()
            )
            torch.testing.assert_close(rebuilt, state[k].double(), atol=2e-5, rtol=1e-5)
    assert "% of variance" in dirs.labels[0]


@pytest.mark.slow
def test_pca_of_a_real_training_run_through_run(ray_cluster, checkpoint, tmp_path):
    spec = make_spec(
        tmp_path / "pca.zarr",
        checkpoint,
        "directions.kind=pca",
        f"directions.checkpoints={checkpoint.parent}/model_*.pt",
        "grid.tile=[5, 7]",
    )
    run(spec, log=quiet)
    ds = xr.open_zarr(tmp_path / "pca.zarr")
    assert list(ds.epoch.values) == [0, 1, 2] and ds.trajectory_x.dims == ("epoch",)
    assert ds.trajectory_x.values[-1] == pytest.approx(0, abs=1e-6)  # the last checkpoint is θ*
    assert 0 < ds.x.attrs["explained_variance_ratio"] <= 1 and "PC1" in ds.x.attrs["long_name"]
    assert ds.done.values.all()
    with pytest.raises(SpecError, match="PCA needs at least 3 checkpoints"):
        prepare(
            make_spec(
                tmp_path / "q.zarr", checkpoint, "directions.kind=pca", f"directions.checkpoints={tmp_path}/none_*.pt"
            )
        )


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.slow
def test_direction_file_reproduces_the_surface_it_came_from(ray_cluster, checkpoint, tmp_path, suffix):
    first = make_spec(tmp_path / "a.zarr", checkpoint, "directions.seed=7", "directions.dir_type=states")
    run(first, log=quiet)
    model = load_model(first)
    path = write_directions(
        Store(tmp_path / "a.zarr", mode="r").directions(), tmp_path / f"dirs{suffix}", model, "states"
    )
    again = make_spec(
        tmp_path / "b.zarr", checkpoint, "directions.kind=file", f"directions.path={path}", "directions.dir_type=states"
    )
    run(again, log=quiet)
    a, b = xr.open_zarr(tmp_path / "a.zarr"), xr.open_zarr(tmp_path / "b.zarr")
    np.testing.assert_array_equal(a.train_loss.values, b.train_loss.values)
    # A store is a direction file too.
    from_store = make_spec(
        tmp_path / "c.zarr",
        checkpoint,
        "directions.kind=file",
        f"directions.path={tmp_path / 'a.zarr'}",
        "directions.dir_type=states",
    )
    assert all(
        np.array_equal(prepare(from_store).directions.vectors[0][k], v)
        for k, v in Store(tmp_path / "a.zarr", mode="r").directions()[0].items()
    )


def test_paper_h5_layout_and_a_file_that_does_not_fit(checkpoint, tmp_path):
    import h5py

    small = build("digits_cnn", width=8)
    with h5py.File(tmp_path / "paper.h5", "w") as f:  # as the paper's code writes them: one dataset per parameter
        for group in ("xdirection", "ydirection"):
            g = f.create_group(group)
            for i, (_, p) in enumerate(small.named_parameters()):
                g.create_dataset(str(i), data=np.ones(tuple(p.shape), np.float32))
    spec = make_spec(
        tmp_path / "f.zarr", checkpoint, "directions.kind=file", f"directions.path={tmp_path / 'paper.h5'}"
    )
    with pytest.raises(
        SpecError, match=r"xdirection/0 has shape \(8, 1, 3, 3\) but features.0.0.weight needs \(16, 1, 3, 3\)"
    ):
        prepare(spec)
    write_directions(
        [{k: np.full(p.shape, 0.5, np.float32) for k, p in load_model(spec).named_parameters()}] * 2,
        tmp_path / "fits.h5",
        load_model(spec),
        "weights",
    )
    with h5py.File(tmp_path / "fits.h5") as f:
        assert sorted(f) == ["xdirection", "ydirection"] and len(f["xdirection"]) == len(list(small.parameters()))
    fits = make_spec(tmp_path / "g.zarr", checkpoint, "directions.kind=file", f"directions.path={tmp_path / 'fits.h5'}")
    assert float(prepare(fits).directions.vectors[1]["head.bias"][0]) == 0.5


@pytest.mark.slow
def test_directions_command_exports_what_file_kind_imports(ray_cluster, checkpoint, tmp_path, capsys):
    from landscape_ray.cli.main import main

    spec = make_spec(tmp_path / "a.zarr", checkpoint, "grid.x.num=3", "grid.y.num=3")
    run(spec, log=quiet)
    mine = tmp_path / "mine.yaml"  # the user's spec of the model: a .h5 lists its entries in the model's order
    mine.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    for suffix, extra in ((".npz", []), (".h5", ["--spec", str(mine)])):
        assert main(["directions", str(tmp_path / "a.zarr"), "--out", str(tmp_path / f"d{suffix}"), *extra]) == 0
        again = make_spec(
            tmp_path / "b.zarr", checkpoint, "directions.kind=file", f"directions.path={tmp_path / f'd{suffix}'}"
        )
        for mine, theirs in zip(prepare(again).directions.vectors, Store(tmp_path / "a.zarr", mode="r").directions()):
            assert all(np.array_equal(mine[k], theirs[k]) for k in theirs)
    assert main(["directions", str(tmp_path / "a.zarr"), "--out", str(tmp_path / "d.txt")]) == 2
    assert "--out: " in capsys.readouterr().err
