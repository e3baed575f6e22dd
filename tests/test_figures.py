"""The paper's other pictures, each checked against a computation made here from the checkpoint files themselves:
histogram counts (numpy.histogram), projected trajectories (numpy least squares), captured variance (numpy),
weight norms (torch.norm), training curves, 1D overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape_ray.core.errors import SpecError
from landscape_ray.inputs.directions import Directions, make_directions
from landscape_ray.inputs.models import DigitsCNN, load_model
from landscape_ray.inputs.trajectory import pca_directions
from landscape_ray.pictures import figures
from landscape_ray.spec.grid import Grid
from landscape_ray.spec.specfile import load_spec
from landscape_ray.spec.training import TrainSpec
from landscape_ray.store.layout import create
from landscape_ray.train import train

from .test_render import pixel, scan

PARAMS = [name for name, _ in DigitsCNN().named_parameters()]


def run(out, batch_size, epochs=3):
    spec = TrainSpec.model_validate(
        {
            "epochs": epochs,
            "batch_size": batch_size,
            "device": "cpu",
            "out": str(out),
            "data": {"subset": 300, "splits": ["train", "test"]},
            "optimizer": {"lr": 0.05},
        }
    )
    train(spec, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return run(root / "small", 32), run(root / "large", 150)


def states(paths):
    return [torch.load(p, weights_only=True)["state_dict"] for p in paths]


def store_with(path, final, kind, checkpoints=None):
    """A 9 × 7 store around `final` with PCA or random directions; its values are a bowl in (x, y)."""
    overrides = [
        f"model.checkpoint={final}",
        "grid.x={min: -1.5, max: 1.5, num: 9}",
        "grid.y={min: -1, max: 1, num: 7}",
        "grid.tile=[7, 9]",
        f"output.store={path}",
        f"directions.kind={kind}",
    ] + ([f"directions.checkpoints={checkpoints}"] if checkpoints else [])
    spec = load_spec(None, overrides)
    model, grid = load_model(spec), Grid.from_spec(spec.grid)
    if kind == "pca":
        dirs = pca_directions(model, spec)
    else:
        dirs = Directions(make_directions(model, spec.directions, 2), ["x", "y"])
    store = create(path, spec, grid, ["train_loss"], dirs)
    c = grid.coords(grid.tiles()[0])
    store.write_tile(grid.tiles()[0], {"train_loss": 0.01 + c[:, 0] ** 2 + 2 * c[:, 1] ** 2})
    return path, dirs


def direct_projection(final, paths, dirs):
    """Least squares θi − θ* ≈ X D by numpy over the entries the directions move, and the variance shares."""
    names = [k for k in dirs[0] if any(np.any(d[k]) for d in dirs)]
    flat = lambda s: np.concatenate([np.asarray(s[k], np.float64).ravel() for k in names])
    centre = flat(states([final])[0])
    m = np.stack([flat(s) - centre for s in states(paths)])
    d = np.stack([flat(v) for v in dirs], axis=1)
    coords = np.linalg.lstsq(d, m.T, rcond=None)[0].T
    mc = m - m.mean(0)
    shares = ((mc @ (d / np.linalg.norm(d, axis=0))) ** 2).sum(0) / (mc**2).sum()
    return coords, shares


def test_weight_histograms_count_every_conv_and_linear_weight(runs):
    paths = [r / "final.pt" for r in runs]
    fig = figures.weight_histograms([paths], labels=["small", "large"], bins=40)
    weights = [np.concatenate([v.double().numpy().ravel() for v in s.values() if v.dim() > 1]) for s in states(paths)]
    edges = np.histogram_bin_edges(np.concatenate(weights), 40)
    steps = fig.axes[0].patches
    assert [s.get_label() for s in steps] == ["small", "large"]
    for step, w in zip(steps, weights):
        counts, got_edges, _ = step.get_data()
        np.testing.assert_allclose(got_edges, edges)
        np.testing.assert_array_equal(counts, np.histogram(w, edges)[0])
        assert counts.sum() == sum(s.numel() for k, s in states([paths[0]])[0].items() if s.dim() > 1)


def test_projection_on_a_pca_store_is_the_least_squares_fit_and_its_explained_variance(runs, tmp_path):
    ckpts = sorted(runs[0].glob("model_*.pt"))
    path, dirs = store_with(tmp_path / "pca.zarr", runs[0] / "final.pt", "pca", str(runs[0] / "model_*.pt"))
    got = figures.project(path, str(runs[0] / "model_*.pt"))
    coords, shares = direct_projection(runs[0] / "final.pt", ckpts, dirs.vectors)
    np.testing.assert_allclose(np.column_stack([got["x"], got["y"]]), coords, atol=1e-6)
    np.testing.assert_allclose(got["captured"], shares, rtol=1e-6)
    # For PCA directions the share along each is the explained variance ratio trajectory.py computed.
    np.testing.assert_allclose(got["captured"], [a["explained_variance_ratio"] for a in dirs.axis_attrs], rtol=1e-5)
    assert list(got["epoch"]) == [0, 1, 2, 3]


def test_trajectory_on_random_directions_starts_and_ends_where_the_checkpoints_project(runs, tmp_path):
    ckpts = sorted(runs[1].glob("model_*.pt"))
    path, dirs = store_with(tmp_path / "random.zarr", runs[1] / "final.pt", "random")
    coords, shares = direct_projection(runs[1] / "final.pt", ckpts, dirs.vectors)
    fig = figures.trajectory_figure(path, [str(p) for p in ckpts], kind="heatmap", mark_epochs=[0], fit_path=False)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.get_lines()[0].get_xydata(), coords, atol=1e-6)
    for x, y in (coords[0], coords[-1]):  # the path's dots are drawn at the projections (θ* itself: the end)
        assert (
            np.abs(pixel(fig, ax, x, y) - [1, 0, 0]).sum() < 0.3
            or np.abs(pixel(fig, ax, x, y) - np.array([31, 119, 180]) / 255).sum() < 0.3
        )
    np.testing.assert_allclose(coords[-1], 0, atol=1e-9)
    assert ax.get_xlabel().endswith(f"{100 * shares[0]:.2f}% of the path's variance")
    assert ax.get_ylabel().endswith(f"{100 * shares[1]:.2f}% of the path's variance")
    assert shares.max() < 0.05, "random directions capture almost none of the path (the paper's §7.1)"


def test_weight_norms_by_epoch_and_iteration(runs):
    fig = figures.weight_norm_figure(list(runs), labels=["small", "large"])
    by_epoch, by_step = fig.axes[:2]
    for line, step_line, r, batch in zip(by_epoch.get_lines(), by_step.get_lines(), runs, (32, 150)):
        paths = [r / f"model_{e}.pt" for e in range(4)]
        norms = [torch.cat([s[k].double().ravel() for k in PARAMS]).norm().item() for s in states(paths)]
        np.testing.assert_allclose(line.get_xydata(), np.column_stack([range(4), norms]), rtol=1e-6)
        x, y = step_line.get_xydata().T
        assert len(x) == 1 + 3 * -(-300 // batch) and x[0] == 0 and x[-1] == 3 * -(-300 // batch)
        assert y[-1] == pytest.approx(norms[-1], rel=1e-6) and y[0] == pytest.approx(norms[0], rel=1e-6)


def test_training_curves_are_the_recorded_metrics(runs):
    loss_ax, err_ax = figures.training_curves(list(runs), labels=["small", "large"]).axes[:2]
    ckpts = [torch.load(runs[1] / f"model_{e}.pt", weights_only=True) for e in range(4)]
    train_loss, test_loss = loss_ax.get_lines()[2:4]
    assert train_loss.get_label() == "large train" and test_loss.get_linestyle() == "--"
    np.testing.assert_allclose(train_loss.get_ydata(), [c["train_loss"] for c in ckpts])
    np.testing.assert_allclose(err_ax.get_lines()[3].get_ydata(), [100 * (1 - c["test_acc"]) for c in ckpts])


def test_overlay_of_1d_scans(tmp_path):
    stores = [scan(tmp_path / "a.zarr"), scan(tmp_path / "b.zarr", scale=3)]
    fig = figures.overlay_1d(stores, labels=["seed 0", "seed 1"])
    loss, acc = fig.axes[:2]
    assert [line.get_label() for line in loss.get_lines()] == ["seed 0", "seed 1"]
    x = np.linspace(-0.5, 1.5, 11)
    np.testing.assert_allclose(loss.get_lines()[1].get_ydata(), 0.1 + 3 * x**2)
    np.testing.assert_allclose(acc.get_lines()[0].get_ydata(), 1 - x**2 / 4)
    with pytest.raises(SpecError, match="labels: 1 given for 2 stores"):
        figures.overlay_1d(stores, labels=["one"])


def test_cli_figures_write_files_and_bad_input_is_one_line(runs, tmp_path, capsys):
    from landscape_ray.cli.main import main

    for kind, inputs in (
        ("weights", [str(runs[0] / "final.pt"), str(runs[1] / "final.pt")]),
        ("norms", [str(r) for r in runs]),
        ("curves", [str(r) for r in runs]),
    ):
        assert main(["figure", kind, *inputs, "--out", str(tmp_path / f"{kind}.png")]) == 0
        assert (tmp_path / f"{kind}.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["figure", "weights", str(tmp_path / "none*.pt"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoints: nothing matches" in err and "none" in err and "\n" not in err
