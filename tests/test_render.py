"""Pictures from real stores: every kind is a valid image, values land where they belong, gaps are masked."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from landscape_ray.grid import Grid
from landscape_ray.render import open_store, plot, render
from landscape_ray.spec import RENDER_KINDS, SpecError, load_spec
from landscape_ray.store import create


def field(x, y):
    return 1.0 + x + 3.0 * y**2  # asymmetric in x and y, lowest at (-1, 0), highest at (2, 1)


@pytest.fixture
def store(tmp_path):
    """A non-square 5 × 9 field with its last tile (bottom-right block) left uncomputed, as in a running job."""
    spec = load_spec(None, ["grid.x={min: -1, max: 2, num: 9}", "grid.y={min: 0, max: 1, num: 5}", "grid.tile=[3, 3]",
                            f"output.store={tmp_path / 's.zarr'}"])
    grid = Grid.from_spec(spec.grid)
    s = create(spec.output.store, spec, grid, ["train_loss"], [{}, {}])
    for tile in grid.tiles()[:-1]:
        c = grid.coords(tile)
        s.write_tile(tile, {"train_loss": field(c[:, 0], c[:, 1])})
    return s.path


def pixel(fig, ax, x, y):
    fig.canvas.draw()
    px, py = ax.transData.transform((x, y))
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return rgba[rgba.shape[0] - int(round(py)), int(round(px)), :3] / 255.0


def test_heatmap_puts_each_value_at_its_coordinates(store):
    ds = open_store(store)
    fig = plot(ds, "train_loss", "heatmap")
    ax, mesh = fig.axes[0], fig.axes[0].collections[0]
    for x in ds.x.values[::2]:
        for y in ds.y.values[:3]:
            want = np.array(mesh.cmap(mesh.norm(field(x, y))))[:3]
            np.testing.assert_allclose(pixel(fig, ax, x, y), want, atol=0.02, err_msg=f"({x}, {y})")
    # The uncomputed corner is masked: the axes background shows through.
    np.testing.assert_allclose(pixel(fig, ax, 2.0, 1.0), [1, 1, 1], atol=0.02)


@pytest.mark.parametrize("kind", ["contourf", "heatmap"])
def test_low_and_high_corners_get_low_and_high_colours(store, kind):
    ds = open_store(store)
    fig = plot(ds, "train_loss", kind)
    ax, art = fig.axes[0], fig.axes[0].collections[0]
    low, high = np.array(art.cmap(0.0))[:3], np.array(art.cmap(1.0))[:3]
    lo_px, hi_px = pixel(fig, ax, -0.95, 0.02), pixel(fig, ax, 0.85, 0.98)  # x = 0.875 is the last computed at y = 1
    assert np.abs(hi_px - 1).sum() > 0.3, "the high corner must be painted, not background"
    assert np.abs(lo_px - low).sum() < np.abs(lo_px - high).sum()
    assert np.abs(hi_px - high).sum() < np.abs(hi_px - low).sum()


@pytest.mark.parametrize("log", [False, True])
def test_every_kind_writes_a_nonblank_image(store, tmp_path, log):
    paths = render(store, tmp_path / "pics", kinds=RENDER_KINDS, log=log)
    assert [p.name for p in paths] == [f"train_loss_{k}{'_log' if log else ''}.png" for k in RENDER_KINDS]
    for path in paths:
        img = imread(path)
        assert img.shape[0] > 400 and img.shape[1] > 600
        coloured = (img[..., :3].max(axis=2) - img[..., :3].min(axis=2)) > 0.2
        assert coloured.mean() > 0.03, f"{path.name} is nearly blank"


def test_pdf_and_1d_curves(tmp_path):
    spec = load_spec(None, ["grid.x={min: -1, max: 1, num: 11}", "grid.tile=4", f"output.store={tmp_path / 'c.zarr'}"])
    grid = Grid.from_spec(spec.grid)
    s = create(spec.output.store, spec, grid, ["train_loss", "train_acc"], [{}])
    for tile in grid.tiles():
        c = grid.coords(tile)[:, 0]
        s.write_tile(tile, {"train_loss": c**2, "train_acc": 1 - c**2 / 2})
    paths = render(s.path, tmp_path, fmt="pdf", variables=["train_loss", "train_acc"])
    assert [p.name for p in paths] == ["train_loss_1d.pdf", "train_acc_1d.pdf"]
    assert all(p.read_bytes().startswith(b"%PDF") for p in paths)


def test_unknown_variable_and_empty_store_are_clear_errors(store, tmp_path):
    with pytest.raises(SpecError, match="no variable test_loss in the store"):
        render(store, tmp_path, variables=["test_loss"])
    spec = load_spec(None, ["grid.y={min: 0, max: 1, num: 3}", "grid.x.num=3", f"output.store={tmp_path / 'e.zarr'}"])
    empty = create(spec.output.store, spec, Grid.from_spec(spec.grid), ["train_loss"], [{}, {}])
    with pytest.raises(SpecError, match="train_loss has no computed points yet"):
        render(empty.path, tmp_path)
