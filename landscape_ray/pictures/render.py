"""Pictures of stores: contour lines, filled contours, heatmap, 3D surface; loss/accuracy curves of 1D scans;
comparison panels of several stores on one scale (the paper's Fig. 4, 5, 7, 8).

Works on complete and partial stores alike: points not yet computed (NaN) and NaN/inf losses are masked,
so a running job can be watched; a progressive job's are interpolated from the passes done, with a faint dot
at each point computed (store/filled.py). Arrays are (y, x) and every kind is drawn against the stored
coordinates, so non-square grids come out the right way round. A PCA store's training path is drawn over its contour,
contourf and heatmap pictures (Fig. 10). Every function takes a store path or an xarray Dataset.

    render("runs/demo/surface.zarr", kinds=["contour", "surface"], log=True)    # files next to the store
    render("runs/pca.zarr", out="pics", vmin=0.1, vmax=10, level_step=0.5, mark_epochs=[150, 225])
    render("runs/demo/surface.zarr", fmt="html")                                 # interactive (export.py)
    compare(["sgd128.zarr", "sgd8192.zarr"], "fig5.pdf", var="train_loss", kind="contour")
    fig = plot("runs/demo/surface.zarr", "train_loss", "contourf")              # a matplotlib Figure

Scale options everywhere: `log` (log10 of the values; the loss axis of 1D curves), `vmin`/`vmax` (in the
values' units), `levels` (number of contour levels) or `level_step` (their spacing; decades with `log`);
by default the levels ring the minimum (draw.basin_levels). Figures are plain matplotlib Figures
(no pyplot), so importing this module leaves a notebook's backend alone.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import is_remote
from landscape_ray.pictures import export
from landscape_ray.pictures.draw import (
    check_marks,
    draw_curves,
    draw_field,
    draw_trajectory,
    is_2d,
    new_figure,
    save,
    scale,
    title,
    values,
)
from landscape_ray.spec.schema import RENDER_KINDS
from landscape_ray.store.reader import dataset

FORMATS = ("png", "pdf", "html", "vtp")


def _share_limits(axes, which: str) -> None:
    """Give every axes the union of their limits, so panels compare at a glance."""
    for w in which:
        lims = [getattr(ax, f"get_{w}lim")() for ax in axes]
        both = (min(lo for lo, _ in lims), max(hi for _, hi in lims))
        for ax in axes:
            getattr(ax, f"set_{w}lim")(both)


def figure(
    stores,
    var: str = "train_loss",
    kind: str = "contour",
    *,
    variables=None,
    log: bool = False,
    titles=None,
    cols=None,
    mark_epochs=None,
    vmin=None,
    vmax=None,
    levels: int | None = None,
    level_step=None,
):
    """A Figure with one panel per store, side by side (`cols` per row; default all in one row).

    2D stores: `var` drawn as `kind` with one colour scale, identical contour levels, identical axes limits
    and one colour bar; the training path of PCA stores over contour/contourf/heatmap, `mark_epochs` in red.
    1D stores: the curves of `variables` (default every loss and accuracy) with shared axes limits.
    Panels are titled from the store's metadata (`title`) unless `titles` are given.
    """
    dss = [dataset(s, filled=True) for s in stores]
    if not dss:
        raise SpecError("compare: no stores given")
    if len({is_2d(ds) for ds in dss}) > 1:
        raise SpecError("compare: the stores mix 1D scans and 2D surfaces")
    titles = [title(ds) for ds in dss] if titles is None else list(titles)
    if len(titles) != len(dss):
        raise SpecError(f"titles: {len(titles)} given for {len(dss)} stores")
    cols = min(cols or len(dss), len(dss))
    rows = -(-len(dss) // cols)
    two_d = is_2d(dss[0])
    flat = two_d and kind != "surface"
    if two_d:
        sc = scale([values(ds, var, log)[0] for ds in dss], log, vmin, vmax, levels, level_step)
        for ds in dss:
            check_marks(ds, mark_epochs)
    w, h = (6.0, 5.2) if two_d else (6.4, 4.4)
    fig = new_figure((w * cols, h * rows))
    grid = fig.subplots(rows, cols, squeeze=False, subplot_kw={"projection": "3d"} if two_d and not flat else {})
    axes = list(grid.ravel()[: len(dss)])
    for ax in grid.ravel()[len(dss) :]:
        ax.remove()
    for ax, t in zip(axes, titles):
        ax.set_title(t, fontsize=9)
    if not two_d:
        pairs = [draw_curves(ax, ds, variables, log) for ax, ds in zip(axes, dss)]
        _share_limits([loss for loss, _ in pairs], "xy")
        _share_limits([twin for _, twin in pairs if twin is not None], "y")
        return fig
    for ax, ds in zip(axes, dss):
        art = draw_field(ax, ds, var, kind, sc)
        if flat and "trajectory_x" in ds:
            draw_trajectory(ax, ds, mark_epochs)
    _share_limits(axes, "xy")
    fig.colorbar(art, ax=axes, label=values(dss[0], var, log)[1], shrink=1.0 if flat else 0.6)
    return fig


def plot(store, var: str = "train_loss", kind: str = "contour", **options):
    """One store's Figure: `var` as `kind` (2D) or its curves (1D); options as `figure`."""
    return figure([store], var, kind, **options)


def render(
    store, out=None, kinds=RENDER_KINDS, variables=None, log: bool = False, fmt: str = "png", mark_epochs=None, **style
) -> list[Path]:
    """Write pictures of one store into `out` (default: the store's folder); returns the paths.

    2D stores: `<var>_<kind>[_log].<fmt>` for each variable (default every *_loss) and kind; with fmt
    html or vtp, `<var>_surface[_log].<fmt>` (export.py). 1D stores: one `curves_1d[_log].<fmt>` of
    `variables` (default every loss and accuracy). `style`: vmin, vmax, levels, level_step.
    """
    ds = dataset(store, filled=True)
    if out is None and isinstance(store, xr.Dataset):
        raise SpecError("out: needed to render a Dataset (it has no folder of its own)")
    if fmt not in FORMATS:
        raise SpecError(f"format: unknown {fmt!r}; choose from {', '.join(FORMATS)}")
    if out is None and is_remote(store):  # Path("s3://b/x.zarr").parent would be a local folder named "s3:"
        out = Path("runs") / Path(str(store).rstrip("/")).stem
    out = Path(out if out is not None else Path(store).parent)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"{'_log' if log else ''}.{fmt}"
    if not is_2d(ds):
        if fmt in ("html", "vtp"):
            raise SpecError(f"format: {fmt} needs a 2D store; this one is a 1D scan")
        return [save(plot(ds, variables=variables, log=log), out / f"curves_1d{suffix}")]
    names = variables or [v for v in ds.data_vars if v.endswith("_loss")]
    for v in names:
        values(ds, v)  # every name known and computed before any file is written
    bad = [k for k in kinds if k not in RENDER_KINDS]
    if bad:
        raise SpecError(f"kind: unknown {', '.join(bad)}; choose from {', '.join(RENDER_KINDS)}")
    if fmt in ("html", "vtp"):
        if fmt == "html":
            return [
                export.html(ds, out / f"{v}_surface{suffix}", v, log, style.get("vmin"), style.get("vmax"))
                for v in names
            ]
        return [export.vtp(ds, out / f"{v}_surface{suffix}", v, log) for v in names]
    return [
        save(plot(ds, v, k, log=log, mark_epochs=mark_epochs, **style), out / f"{v}_{k}{suffix}")
        for v in names
        for k in kinds
    ]


def compare(stores, out, var: str = "train_loss", kind: str = "contour", **options) -> Path:
    """Write a comparison panel of several stores (see `figure`) to `out` (.png or .pdf); returns the path."""
    out = Path(out)
    if out.suffix not in (".png", ".pdf"):
        raise SpecError(f"out: {out} must end in .png or .pdf")
    out.parent.mkdir(parents=True, exist_ok=True)
    return save(figure(stores, var, kind, **options), out)
