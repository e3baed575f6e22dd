"""Pictures of a store: contour lines, filled contours, heatmap, 3D surface; curves for 1D scans.

Works on complete and partial stores alike: points not yet computed (NaN) and
NaN/inf losses are masked, so a running job can be watched. Arrays are (y, x)
and every kind is drawn against the stored coordinates, so non-square grids
come out the right way round.

    paths = render("runs/demo/surface.zarr", out="runs/demo", kinds=["contour", "surface"], log=True)
    fig = plot(open_store("runs/demo/surface.zarr"), "train_loss", "contourf")
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and Ray workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from .spec import RENDER_KINDS, SpecError  # noqa: E402


def open_store(path: str | Path) -> xr.Dataset:
    """The store as an xarray Dataset (lazy; re-open to see a running job's new tiles)."""
    if not Path(path).exists():
        raise SpecError(f"store: {path} not found")
    return xr.open_zarr(str(path), consolidated=True)


def values(ds: xr.Dataset, var: str, log: bool = False) -> tuple[np.ma.MaskedArray, str]:
    """The variable's values with missing and non-finite points masked, and a label for the colour bar."""
    z = np.asarray(ds[var].values, dtype=np.float64)
    label = var
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(z > 0, np.log10(z), np.nan)
        label = f"log10({var})"
    return np.ma.masked_invalid(z), label


def _limits(z: np.ma.MaskedArray, vmin, vmax) -> tuple[float, float]:
    lo = float(z.min()) if vmin is None else vmin
    hi = float(z.max()) if vmax is None else vmax
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def plot(ds: xr.Dataset, var: str, kind: str, log: bool = False, levels: int = 30, vmin=None, vmax=None):
    """One figure of `var` as `kind` (2D stores) or as a curve (1D stores)."""
    z, label = values(ds, var, log)
    if z.count() == 0:
        raise SpecError(f"render: {var} has no computed points yet")
    lo, hi = _limits(z, vmin, vmax)
    x = ds["x"].values
    xlabel = ds["x"].attrs.get("long_name", "x")
    if "y" not in ds[var].dims:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(x, z, "-", lw=1.5)
        ax.set(xlabel=xlabel, ylabel=label, xlim=(x.min(), x.max()))
        fig.tight_layout()
        return fig
    y = ds["y"].values
    ylabel = ds["y"].attrs.get("long_name", "y")
    X, Y = np.meshgrid(x, y)  # (y, x), like the arrays
    if kind == "surface":
        fig = plt.figure(figsize=(7, 5.5))
        ax = fig.add_subplot(projection="3d")
        surf = ax.plot_surface(X, Y, z.filled(np.nan), cmap="viridis", vmin=lo, vmax=hi, linewidth=0, antialiased=True)
        ax.set(xlabel="x", ylabel="y", zlabel=label)
        fig.colorbar(surf, ax=ax, shrink=0.6, label=label)
        ax.set_title(f"{xlabel}\n{ylabel}", fontsize=8)
        return fig
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    ticks = np.linspace(lo, hi, levels)
    if kind == "contour":
        art = ax.contour(X, Y, z, levels=ticks, cmap="summer")
        ax.clabel(art, inline=True, fontsize=7, fmt="%.3g")
    elif kind == "contourf":
        art = ax.contourf(X, Y, z, levels=ticks, cmap="viridis", extend="both")
    elif kind == "heatmap":
        art = ax.pcolormesh(x, y, z, cmap="viridis", vmin=lo, vmax=hi, shading="nearest")
    else:
        raise SpecError(f"render: unknown kind {kind!r}; known: {', '.join(RENDER_KINDS)}")
    fig.colorbar(art, ax=ax, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, aspect="auto")
    fig.tight_layout()
    return fig


def render(store, out=None, kinds=RENDER_KINDS, variables=None, log: bool = False, fmt: str = "png", **style) -> list[Path]:
    """Write one picture per (variable, kind) next to the store or into `out`; returns the paths."""
    ds = store if isinstance(store, xr.Dataset) else open_store(store)
    out = Path(out if out is not None else Path(store).parent)
    out.mkdir(parents=True, exist_ok=True)
    names = variables or [v for v in ds.data_vars if v.endswith("_loss")]
    unknown = [v for v in names if v not in ds.data_vars]
    if unknown:
        raise SpecError(f"render: no variable {', '.join(unknown)} in the store; it has {', '.join(ds.data_vars)}")
    kinds = kinds if "y" in ds.dims else ["1d"]
    paths = []
    for var in names:
        for kind in kinds:
            fig = plot(ds, var, kind, log=log, **style)
            path = out / f"{var}_{kind}{'_log' if log else ''}.{fmt}"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            paths.append(path)
    return paths
