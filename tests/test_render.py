"""Pictures from real stores: every kind is a valid image of the expected size, values land where they belong,
gaps are masked, PCA trajectories are drawn, and comparison panels share one scale, one set of levels and one
set of axes limits."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import zarr
from matplotlib.image import imread

from landscape_ray.cli.main import main
from landscape_ray.core.errors import SpecError
from landscape_ray.pictures.render import compare, figure, plot, render
from landscape_ray.spec.grid import Grid
from landscape_ray.spec.schema import RENDER_KINDS
from landscape_ray.spec.specfile import load_spec
from landscape_ray.store.layout import consolidate, create
from landscape_ray.store.reader import dataset

SURFACE_GRID = ("{min: -1, max: 2, num: 9}", "{min: 0, max: 1, num: 5}")  # non-square, and x has no centre point
EPOCHS = np.arange(11) * 30


def field(x, y):
    return 1.0 + x + 3.0 * y**2  # asymmetric in x and y, lowest at (-1, 0), highest at (2, 1)


def path_of(t):
    return 1.8 * (1 - t), 0.9 * (1 - t) ** 2  # from near the (2, 1) corner down to the centre


def make_store(path, grid=SURFACE_GRID, tile="[3, 3]", fill=None, skip_last=False, pca=False):
    """A store written tile by tile as a job would; `skip_last` leaves the last tile (bottom-right block) uncomputed,
    `pca` adds what a PCA job adds: explained variance on the axes and the projected trajectory."""
    x, y = grid
    spec = load_spec(None, [f"grid.x={x}", f"grid.y={y or 'null'}", f"grid.tile={tile}", f"output.store={path}"])
    g = Grid.from_spec(spec.grid)
    fill = fill or (lambda x, y: {"train_loss": field(x, y)})
    split = (lambda c: (c[:, 0], c[:, 1])) if y else (lambda c: (c[:, 0], None))
    s = create(path, spec, g, list(fill(*split(g.coords(g.tiles()[0])))), [{}, {}][: len(g.dims)])
    for tile in g.tiles()[: -1 if skip_last else None]:
        s.write_tile(tile, fill(*split(g.coords(tile))))
    s.flush()  # as a job does at its end: small tiles share a chunk, written whole or on flush
    if pca:
        root = zarr.open_group(str(path), mode="r+")
        root["x"].attrs.update(long_name="PC1", explained_variance_ratio=0.623)
        root["y"].attrs.update(long_name="PC2 (20.0%)", explained_variance_ratio=0.2)  # already says it: not twice
        root.create_array("epoch", data=EPOCHS, dimension_names=["epoch"])
        for name, values in zip(("trajectory_x", "trajectory_y"), path_of(np.linspace(0, 1, len(EPOCHS)))):
            root.create_array(name, data=values, dimension_names=["epoch"])
        consolidate(path)
    return s.path


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "s.zarr", skip_last=True)


@pytest.fixture
def pca(tmp_path):
    return make_store(tmp_path / "p.zarr", skip_last=True, pca=True)


def scan(path, lo=-0.5, hi=1.5, scale=1.0):
    """A 1D store like an interpolation θ_s → θ_l, with a standard error for the train loss."""

    def fill(x, _):
        return {
            "train_loss": 0.1 + scale * x**2,
            "test_loss": 0.3 + scale * x**2,
            "train_acc": 1 - x**2 / 4,
            "test_acc": 0.93 - x**2 / 4,
            "train_loss_se": np.full_like(x, 0.02),
        }

    return make_store(path, (f"{{min: {lo}, max: {hi}, num: 11}}", None), tile="4", fill=fill)


def pixel(fig, ax, x, y):
    fig.canvas.draw()
    px, py = ax.transData.transform((x, y))
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return rgba[rgba.shape[0] - int(round(py)), int(round(px)), :3] / 255.0


def test_heatmap_puts_each_value_at_its_coordinates(store):
    ds = dataset(store)
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
    fig = plot(store, "train_loss", kind)
    ax, art = fig.axes[0], fig.axes[0].collections[0]
    low, high = np.array(art.cmap(0.0))[:3], np.array(art.cmap(1.0))[:3]
    lo_px, hi_px = pixel(fig, ax, -0.95, 0.02), pixel(fig, ax, 0.85, 0.98)  # x = 0.875 is the last computed at y = 1
    assert np.abs(hi_px - 1).sum() > 0.3, "the high corner must be painted, not background"
    assert np.abs(lo_px - low).sum() < np.abs(lo_px - high).sum()
    assert np.abs(hi_px - high).sum() < np.abs(hi_px - low).sum()


def test_contour_lines_lie_where_the_field_has_their_level(store):
    lines = plot(store, "train_loss", "contour", levels=8).axes[0].collections[0]
    assert len(lines.levels) > 4
    for level, path in zip(lines.levels, lines.get_paths()):
        x, y = path.vertices.T
        # Linear interpolation along an edge 0.25 long misses 3y² by at most 3 · 0.125².
        np.testing.assert_allclose(field(x, y), level, atol=0.05, err_msg=f"level {level}")
        # Cells with two or more uncomputed corners get no line (one uncomputed corner leaves a triangle).
        crossing = ((x > 1.26) & (y > 0.51)) | ((x > 0.885) & (y > 0.76))
        assert not crossing.any(), "a line crosses the uncomputed corner"


def test_surface_faces_carry_the_values_of_their_cells(tmp_path):
    ds = dataset(make_store(tmp_path / "full.zarr"))
    ax = plot(ds, "train_loss", "surface").axes[0]
    z = field(*np.meshgrid(ds.x.values, ds.y.values))  # (y, x)
    cells = (z[:-1, :-1] + z[:-1, 1:] + z[1:, :-1] + z[1:, 1:]) / 4
    np.testing.assert_allclose(ax.collections[0].get_array().reshape(cells.shape), cells)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 <= -1 and x1 >= 2 and -0.2 < y0 <= 0 and 1 <= y1 < 1.2, "x and y swapped"


@pytest.mark.parametrize("log", [False, True])
def test_every_kind_writes_a_nonblank_image_of_the_expected_size(pca, tmp_path, log):
    paths = render(pca, tmp_path / "pics", kinds=RENDER_KINDS, log=log, mark_epochs=[150])
    assert [p.name for p in paths] == [f"train_loss_{k}{'_log' if log else ''}.png" for k in RENDER_KINDS]
    for path in paths:
        img = imread(path)
        assert img.shape[:2] == (624, 720), path.name  # 6 × 5.2 inches at 120 dpi
        coloured = (img[..., :3].max(axis=2) - img[..., :3].min(axis=2)) > 0.2
        assert coloured.mean() > 0.03, f"{path.name} is nearly blank"


@pytest.mark.parametrize("kind", ["contour", "contourf", "heatmap"])
def test_pca_trajectory_with_marked_epochs_and_explained_variance(pca, kind):
    ax = plot(pca, "train_loss", kind, mark_epochs=[150, 270]).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("PC1 (62.3%)", "PC2 (20.0%)")
    tx, ty = path_of(np.linspace(0, 1, len(EPOCHS)))
    path, *marks = ax.get_lines()
    np.testing.assert_allclose(path.get_xydata(), np.column_stack([tx, ty]))
    assert [m.get_color() for m in marks] == ["red", "red"]
    np.testing.assert_allclose([m.get_xydata()[0] for m in marks], [(tx[5], ty[5]), (tx[9], ty[9])])
    assert [t.get_text() for t in ax.texts if t.get_color() == "red"] == ["150", "270"]


def test_surface_axes_show_explained_variance(pca):
    ax = plot(pca, "train_loss", "surface").axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x (62.3%)", "y (20.0%)")


@pytest.mark.parametrize(
    "options, levels, limits",
    [
        ({"vmin": 0.1, "vmax": 10, "level_step": 0.5}, np.arange(0.1, 10, 0.5), (0.1, 10)),  # the paper's code
        ({"vmin": 0.1, "vmax": 10, "level_step": 0.5, "log": True}, [-1, -0.5, 0, 0.5, 1], (-1, 1)),  # decades
        ({"vmin": 0, "vmax": 4, "levels": 5}, [0, 1, 2, 3, 4], (0, 4)),
        ({"levels": 4}, [0, 2, 4], (0, 4.875)),  # round levels within the data's range
    ],
)
def test_levels_as_a_count_or_a_spacing(store, options, levels, limits):
    lines = plot(store, "train_loss", "contour", **options).axes[0].collections[0]
    np.testing.assert_allclose(lines.levels, levels, atol=1e-12)
    np.testing.assert_allclose((lines.norm.vmin, lines.norm.vmax), limits)


@pytest.mark.parametrize("log", [False, True])
def test_1d_curves_loss_and_accuracy_on_two_axes(tmp_path, log):
    ds = dataset(scan(tmp_path / "c.zarr"))
    loss_ax, acc_ax = plot(ds, log=log).axes
    x = ds.x.values
    for ax, names in ((loss_ax, ["train_loss", "test_loss"]), (acc_ax, ["train_acc", "test_acc"])):
        assert [line.get_label() for line in ax.get_lines()] == names
        for line, name in zip(ax.get_lines(), names):
            assert line.get_linestyle() == ("-" if name.startswith("train") else "--")
            np.testing.assert_allclose(line.get_xydata(), np.column_stack([x, ds[name].values]))
    assert (loss_ax.get_yscale(), acc_ax.get_yscale()) == ("log" if log else "linear", "linear")
    assert len(loss_ax.collections) == 1, "train_loss_se is shaded"
    paths = render(ds, tmp_path / "pics", log=log)
    assert [p.name for p in paths] == [f"curves_1d{'_log' if log else ''}.png"]
    assert imread(paths[0]).shape[:2] == (528, 768)


def test_pdf_output(tmp_path, store):
    paths = render(scan(tmp_path / "c.zarr"), tmp_path, fmt="pdf") + render(store, tmp_path, ["contour"], fmt="pdf")
    assert [p.name for p in paths] == ["curves_1d.pdf", "train_loss_contour.pdf"]
    assert all(p.read_bytes().startswith(b"%PDF") for p in paths)


def surfaces(tmp_path):
    """Three 2D stores with different grids and value ranges: partial non-square, centred, and PCA."""

    def with_acc(scale):
        return lambda x, y: {"train_loss": scale * field(x, y), "test_acc": 0.95 - 0.01 * scale * field(x, y)}

    centred = ("{min: -1, max: 1, num: 7}", "{min: -1, max: 1, num: 5}")
    return [
        make_store(tmp_path / "a.zarr", skip_last=True, fill=with_acc(1)),
        make_store(tmp_path / "b.zarr", centred, tile=4, fill=with_acc(3)),
        make_store(tmp_path / "c.zarr", centred, tile=4, pca=True, fill=with_acc(2)),
    ]  # its path leaves the grid


@pytest.mark.parametrize("kind", RENDER_KINDS)
def test_comparison_panel_has_one_scale_one_colour_bar_and_equal_axes(tmp_path, kind):
    stores = surfaces(tmp_path)
    fig = figure(stores, "train_loss", kind, cols=2, levels=12)
    panels, bars = fig.axes[:3], fig.axes[3:]
    assert len(bars) == 1, "one shared colour bar"
    arts = [ax.collections[0] for ax in panels]
    assert all(a.norm is arts[0].norm for a in arts)
    assert (arts[0].norm.vmin, arts[0].norm.vmax) == (0.0, 3 * field(1, 1))  # lowest and highest of all three
    if kind.startswith("contour"):
        assert all(np.array_equal(a.levels, arts[0].levels) for a in arts)
    assert len({(ax.get_xlim(), ax.get_ylim()) for ax in panels}) == 1
    # Test error at (0, 0) = 1 - (0.95 - 0.01 · 3 · field(0, 0)); the first grid has no x = 0.
    assert [ax.get_title() for ax in panels] == [
        "digits_cnn",
        "digits_cnn — test error 8.00%",
        "digits_cnn — test error 7.00%",
    ]
    path = compare(stores, tmp_path / f"{kind}.png", kind=kind, cols=2)
    assert imread(path).shape[:2] == (2 * 624, 2 * 720)


def test_comparison_of_1d_scans_shares_axes_limits(tmp_path):
    stores = [scan(tmp_path / "a.zarr"), scan(tmp_path / "b.zarr", lo=-1, hi=1, scale=3)]
    fig = figure(stores, titles=["SGD, 128", "SGD, 8192"])
    loss, acc = fig.axes[:2], fig.axes[2:]
    assert [ax.get_title() for ax in loss] == ["SGD, 128", "SGD, 8192"]
    assert loss[0].get_xlim() == loss[1].get_xlim() == (-1, 1.5)
    assert loss[0].get_ylim() == loss[1].get_ylim() and acc[0].get_ylim() == acc[1].get_ylim()
    assert loss[0].get_ylim()[1] > 3.3, "the steeper scan's top fits in both panels"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s, p, c: render(s, c, variables=["test_loss"]), "no variable test_loss in the store"),
        (lambda s, p, c: render(s, c, kinds=["wireframe"]), "kind: unknown wireframe"),
        (lambda s, p, c: render(s, c, fmt="svg"), "format: unknown 'svg'"),
        (lambda s, p, c: render(dataset(s)), "out: needed to render a Dataset"),
        (lambda s, p, c: render(s, c, vmin=2, vmax=1), r"vmax: must be > vmin \(2\), got 1"),
        (lambda s, p, c: render(s, c, log=True, vmin=-1), "vmin: must be > 0 on a log scale, got -1"),
        (lambda s, p, c: render(s, c, level_step=0), "level_step: must be > 0, got 0"),
        (lambda s, p, c: render(s, c, level_step=1e-5), "level_step: 1e-05 gives 487501 levels"),
        (lambda s, p, c: render(s, c, levels=1), "levels: need 2 to 1000, got 1"),
        (lambda s, p, c: render(s, c, mark_epochs=[150]), "mark_epochs: the store .* has no trajectory"),
        (
            lambda s, p, c: render(p, c, mark_epochs=[225]),
            r"mark_epochs: epoch 225 is not in the trajectory \(epochs 0–300\)",
        ),
        (lambda s, p, c: compare([s, c / "no.zarr"], c / "x.png"), "store: .*no.zarr not found"),
        (lambda s, p, c: compare([s, c], c / "x.png"), "store: .* is not a landscape_ray store"),
        (lambda s, p, c: compare([s, p], c / "x.svg"), "out: .*x.svg must end in .png or .pdf"),
        (
            lambda s, p, c: compare([s, scan(c / "1d.zarr")], c / "x.png"),
            "compare: the stores mix 1D scans and 2D surfaces",
        ),
        (lambda s, p, c: compare([s, p], c / "x.png", titles=["one"]), "titles: 1 given for 2 stores"),
    ],
)
def test_bad_options_are_one_clear_error(store, pca, tmp_path, call, message):
    with pytest.raises(SpecError, match=message):
        call(store, pca, tmp_path)


def test_empty_store_is_a_clear_error(tmp_path):
    spec = load_spec(None, ["grid.y={min: 0, max: 1, num: 3}", "grid.x.num=3", f"output.store={tmp_path / 'e.zarr'}"])
    empty = create(spec.output.store, spec, Grid.from_spec(spec.grid), ["train_loss"], [{}, {}])
    with pytest.raises(SpecError, match="train_loss has no computed points yet"):
        render(empty.path, tmp_path)


def test_cli_render_and_compare(store, pca, tmp_path, capsys):
    assert (
        main(
            [
                "render",
                str(pca),
                "--out",
                str(tmp_path),
                "--kind",
                "contour",
                "--log",
                "--vmin",
                "0.1",
                "--vmax",
                "10",
                "--level-step",
                "0.25",
                "--mark-epochs",
                "150,270",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.split() == [str(tmp_path / "train_loss_contour_log.png")]
    out = tmp_path / "panel.pdf"
    assert (
        main(
            [
                "compare",
                str(store),
                str(pca),
                "--out",
                str(out),
                "--kind",
                "heatmap",
                "--title",
                "a, 128",
                "--title",
                "b",
            ]
        )
        == 0
    )
    assert out.read_bytes().startswith(b"%PDF")
    assert main(["render", str(pca), "--mark-epochs", "150,late"]) == 2
    assert capsys.readouterr().err.strip() == "--mark-epochs: expected epochs like 150,225, got '150,late'"


def test_default_levels_ring_a_deep_minimum(tmp_path):
    """A basin 0.008 deep under a rim of 40 (the demo's range): the lowest lines ring θ*, not one empty region."""
    centred = ("{min: -1, max: 1, num: 21}", "{min: -1, max: 1, num: 21}")
    path = make_store(
        tmp_path / "basin.zarr", centred, tile=21, fill=lambda x, y: {"train_loss": 0.008 + 20 * (x**2 + y**2)}
    )
    lines = plot(path, "train_loss", "contour").axes[0].collections[0]
    levels = np.asarray(lines.levels)
    assert levels[0] > 0.008 and (levels < 1).sum() >= 4, f"too few lines in the basin: {levels}"
    wide = np.diff(levels[-10:])
    np.testing.assert_allclose(wide, wide[0])  # evenly spaced above the basin, as the paper's 0.1 … 10 by 0.5
    x, y = lines.get_paths()[0].vertices.T
    assert x.min() < 0 < x.max() and y.min() < 0 < y.max(), "the lowest line encloses the minimum"
    assert levels.max() <= 40.008
