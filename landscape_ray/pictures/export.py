"""A 2D store's surface for other viewers: an interactive plotly HTML page, and VTK PolyData (.vtp) for ParaView.

    html("runs/demo/surface.zarr", "runs/demo/train_loss.html", "train_loss", log=True)
    vtp("runs/demo/surface.zarr", "runs/demo/train_loss.vtp", "train_loss")

Both take a store path or an xarray Dataset and write `var` (log10 of it with `log`) as the height over the
(x, y) grid; missing and non-finite points are left out (gaps in the HTML surface; no point and no quad in
the .vtp). `landscape-ray render STORE --format html|vtp` writes one file per variable. plotly is optional
(`pip install 'landscape-ray[html]'`); the .vtp is plain XML with ASCII arrays and needs nothing.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import xarray as xr

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import replace_file
from landscape_ray.pictures.draw import axis_label, is_2d, plotted, scale, title, values
from landscape_ray.store.reader import dataset


def _field(store, var: str, log: bool) -> tuple[xr.Dataset, np.ma.MaskedArray, str]:
    ds = dataset(store)
    if not is_2d(ds):
        raise SpecError(f"export: {var} is a 1D scan; surfaces need a 2D store")
    return (ds, *values(ds, var, log))


def surface_figure(store, var: str = "train_loss", log: bool = False, vmin=None, vmax=None):
    """A plotly Figure of the 3D surface, with the training path of a PCA store on it (the HTML page's content)."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise SpecError("render: --format html needs plotly (pip install 'landscape-ray[html]')") from None
    ds, z, label = _field(store, var, log)
    sc = scale([z], log, vmin, vmax)
    gaps = np.where(np.ma.getmaskarray(z), None, z.data).tolist()  # null in the page's JSON: a hole in the surface
    fig = go.Figure(
        go.Surface(
            x=ds["x"].values.tolist(),
            y=ds["y"].values.tolist(),
            z=gaps,
            cmin=sc.lo,
            cmax=sc.hi,
            colorscale="Viridis",
            colorbar={"title": {"text": label}},
            name=var,
        )
    )
    if "trajectory_x" in ds:
        # The path's height is the surface's value there, so it lies on the surface.
        path = ds[var].interp(x=ds["trajectory_x"], y=ds["trajectory_y"]).values
        fig.add_trace(
            go.Scatter3d(
                x=ds["trajectory_x"].values.tolist(),
                y=ds["trajectory_y"].values.tolist(),
                z=plotted(path, log).tolist(),
                mode="lines+markers",
                name="training path",
                text=[f"epoch {e}" for e in ds["epoch"].values],
                marker={"size": 3, "color": "royalblue"},
            )
        )
    fig.update_layout(
        title={"text": title(ds)},
        scene={"xaxis_title": axis_label(ds, "x"), "yaxis_title": axis_label(ds, "y"), "zaxis_title": label},
    )
    return fig


def html(store, out, var: str = "train_loss", log: bool = False, vmin=None, vmax=None, include_plotlyjs=True) -> Path:
    """An interactive 3D surface page (`surface_figure`); returns the path.

    `include_plotlyjs=True` embeds plotly.js (about 4 MB) so the page works offline; "cdn" links it instead.
    """
    fig = surface_figure(store, var, log, vmin, vmax)
    return replace_file(out, lambda temporary: fig.write_html(temporary, include_plotlyjs=include_plotlyjs))


def mesh(store, var: str = "train_loss", log: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """The surface as points (N, 3) = (x, y, value) of the finite grid points, row by row (y outer), and quads
    (M, 4) of point indices for every grid cell whose four corners are all finite, counter-clockwise seen
    from above (normals point up); plus the value's label."""
    ds, z, label = _field(store, var, log)
    X, Y = np.meshgrid(ds["x"].values, ds["y"].values)
    keep = ~np.ma.getmaskarray(z)
    index = np.full(z.shape, -1)
    index[keep] = np.arange(keep.sum())
    points = np.column_stack([X[keep], Y[keep], z.data[keep]])
    corners = (index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1])
    quads = np.stack([c.ravel() for c in corners], axis=1)
    return points, quads[(quads >= 0).all(axis=1)], label


def _array(name: str | None, data: np.ndarray, vtk_type: str, components: int = 1) -> str:
    fmt = "%.17g" if vtk_type.startswith("Float") else "%d"  # 17 digits: the float64 values come back exactly
    text = " ".join(fmt % v for v in np.asarray(data).ravel())
    named = f" Name={quoteattr(name)}" if name else ""
    return f'<DataArray type="{vtk_type}"{named} NumberOfComponents="{components}" format="ascii">{text}</DataArray>'


def vtp(store, out, var: str = "train_loss", log: bool = False) -> Path:
    """The surface as VTK XML PolyData (ASCII): grid points at height `var`, quads as polys, `var` as point
    data (ParaView: open, then colour by it); returns the path."""
    points, quads, label = mesh(store, var, log)
    offsets = 4 * np.arange(1, len(quads) + 1)
    xml = f"""<?xml version="1.0"?>
<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="UInt64">
<PolyData>
<Piece NumberOfPoints="{len(points)}" NumberOfVerts="0" NumberOfLines="0" NumberOfStrips="0" \
NumberOfPolys="{len(quads)}">
<PointData Scalars={quoteattr(label)}>
{_array(label, points[:, 2], "Float64")}
</PointData>
<Points>
{_array(None, points, "Float64", 3)}
</Points>
<Polys>
{_array("connectivity", quads, "Int64")}
{_array("offsets", offsets, "Int64")}
</Polys>
</Piece>
</PolyData>
</VTKFile>
"""
    return replace_file(out, lambda temporary: temporary.write_text(xml))
