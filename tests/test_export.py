"""Exports of a surface: the .vtp is VTK XML with the right points, quads and values; the HTML holds the data."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from landscape_ray.core.errors import SpecError
from landscape_ray.pictures import export
from landscape_ray.pictures.render import render
from landscape_ray.store.reader import dataset

from .test_render import EPOCHS, field, make_store, scan


@pytest.fixture
def pca(tmp_path):
    return make_store(tmp_path / "p.zarr", skip_last=True, pca=True)


def vtp_arrays(path):
    piece = ET.parse(path).getroot().find("PolyData/Piece")
    arrays = {a.get("Name"): np.array(a.text.split(), dtype=float) for a in piece.iter("DataArray")}
    return piece.attrib, arrays


@pytest.mark.parametrize("log", [False, True])
def test_vtp_has_the_computed_points_and_the_cells_between_them(pca, tmp_path, log):
    ds = dataset(pca)
    (path,) = render(ds, tmp_path, fmt="vtp", log=log)
    assert path.name == f"train_loss_surface{'_log' if log else ''}.vtp"
    attrib, arrays = vtp_arrays(path)
    x, y = np.meshgrid(ds.x.values, ds.y.values)
    z = ds.train_loss.values
    keep = np.isfinite(z) & (z > 0 if log else True)  # log10 of the 0 at (-1, 0) is no point either
    points = arrays[None].reshape(-1, 3)
    want = np.log10(field(x, y)[keep]) if log else field(x, y)[keep]
    assert int(attrib["NumberOfPoints"]) == keep.sum() == len(points)
    np.testing.assert_array_equal(points, np.column_stack([x[keep], y[keep], want]))  # 17 digits: exact
    np.testing.assert_array_equal(arrays["log10(train_loss)" if log else "train_loss"], want)
    cells = keep[:-1, :-1] & keep[:-1, 1:] & keep[1:, :-1] & keep[1:, 1:]
    quads = arrays["connectivity"].astype(int).reshape(-1, 4)
    assert int(attrib["NumberOfPolys"]) == cells.sum() == len(quads)
    np.testing.assert_array_equal(arrays["offsets"], 4 * np.arange(1, len(quads) + 1))
    dx, dy = np.diff(ds.x.values)[0], np.diff(ds.y.values)[0]
    for quad in points[quads]:  # one grid cell each, counter-clockwise from its lower left corner
        np.testing.assert_allclose(quad[:, :2] - quad[0, :2], [[0, 0], [dx, 0], [dx, dy], [0, dy]])


def plotly_traces(path):
    text = path.read_text()
    start = text.index("[", text.index("Plotly.newPlot("))
    return json.JSONDecoder().raw_decode(text, start)[0]


def test_html_holds_the_surface_and_the_training_path(pca, tmp_path):
    ds = dataset(pca)
    (path,) = render(pca, tmp_path, fmt="html")
    assert path.name == "train_loss_surface.html"
    surface, trajectory = plotly_traces(path)
    assert (surface["type"], trajectory["type"]) == ("surface", "scatter3d")
    x, y = np.meshgrid(surface["x"], surface["y"])
    z = np.array(surface["z"], dtype=float)  # null (not computed) → NaN
    np.testing.assert_array_equal(np.isnan(z), np.isnan(ds.train_loss.values))
    np.testing.assert_allclose(z[~np.isnan(z)], field(x, y)[~np.isnan(z)])
    assert trajectory["text"] == [f"epoch {e}" for e in EPOCHS]
    np.testing.assert_allclose(trajectory["x"], ds.trajectory_x.values)
    inside = ~np.isnan(np.array(trajectory["z"], dtype=float))
    assert inside.sum() >= 5, "the path lies on the computed part of the surface"
    text = path.read_text()
    assert "PC1 (62.3%)" in text and "PC2 (20.0%)" in text


def test_html_without_plotly_is_one_clear_line(pca, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "plotly", None)  # makes `import plotly...` fail as if not installed
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    message = r"^render: --format html needs plotly \(pip install 'landscape-ray\[html\]'\)$"
    with pytest.raises(SpecError, match=message):
        export.html(pca, tmp_path / "x.html")


@pytest.mark.parametrize("fmt", ["html", "vtp"])
def test_surface_exports_need_a_2d_store(tmp_path, fmt):
    with pytest.raises(SpecError, match=f"format: {fmt} needs a 2D store; this one is a 1D scan"):
        render(scan(tmp_path / "c.zarr"), tmp_path, fmt=fmt)
    with pytest.raises(SpecError, match="export: train_loss is a 1D scan"):
        getattr(export, fmt)(scan(tmp_path / "d.zarr"), tmp_path / f"x.{fmt}")
