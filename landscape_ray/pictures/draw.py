"""Drawing pieces shared by the pictures (render.py) and the exports (export.py).

A store's values come out masked where missing or non-finite (`values`), a
`Scale` fixes one colour range and one set of contour levels for any number of
panels, and the `draw_*` functions paint one store onto one matplotlib Axes:
a 2D field as contour lines, filled contours, heatmap or 3D surface, a training
path over it, or the loss/accuracy curves of a 1D scan; a field partly interpolated
(a running progressive job, store/filled.py) gets a faint dot at each point
computed. `new_figure` makes a plain `matplotlib.figure.Figure` with its own Agg
canvas: no pyplot state, so a notebook keeps its backend and servers need no display.

    fig = new_figure((6, 5))
    sc = scale([values(ds, "train_loss")[0]])       # default levels: the basin gets its own lines
    draw_field(fig.add_subplot(), ds, "train_loss", "contour", sc)
    save(fig, "train_loss.png")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import replace_file
from landscape_ray.spec.schema import RENDER_KINDS
from landscape_ray.store.tiles import split_sizes

MAX_LEVELS = 1000  # more contour lines than this is a typo in the spacing, and would take minutes to draw
LABELLED_LEVELS = 10  # contour labels on at most about this many lines, so crowded lines stay readable
DPI = 120


def new_figure(figsize, **kwargs) -> Figure:
    """A Figure drawn by Agg (for files and pixel reads) that pyplot never sees: nothing to close, no backend switch."""
    fig = Figure(figsize=figsize, layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path) -> Path:
    """Write `fig` (.png, .pdf, … by the suffix) and return the path."""
    path = Path(path)
    return replace_file(path, lambda temporary: fig.savefig(temporary, dpi=DPI, format=path.suffix[1:] or None))


def is_2d(ds: xr.Dataset) -> bool:
    return "y" in ds.coords


def plotted(z, log: bool) -> np.ndarray:
    """`z` as float64, or its log10 with NaN where it is not positive."""
    z = np.asarray(z, dtype=np.float64)
    if not log:
        return z
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(z > 0, np.log10(z), np.nan)


def values(ds: xr.Dataset, var: str, log: bool = False) -> tuple[np.ma.MaskedArray, str]:
    """The variable's values with missing and non-finite points masked, and a label for the colour bar."""
    if var == "curvature" and {"train_lambda_max", "train_lambda_min"} <= set(ds.data_vars):
        # The paper's measure of non-convexity (§6): |λmin/λmax| where λmin < 0, else 0 (locally convex).
        lmax, lmin = ds.train_lambda_max.values, ds.train_lambda_min.values
        z = np.ma.masked_invalid(plotted(np.where(lmin < 0, np.abs(lmin / lmax), 0.0), log))
        return z, "|λmin/λmax|"
    if var not in ds.data_vars:
        raise SpecError(f"render: no variable {var} in the store; it has {', '.join(ds.data_vars)}")
    z = np.ma.masked_invalid(plotted(ds[var].values, log))
    if z.count() == 0:
        raise SpecError(f"render: {var} has no computed points yet")
    return z, f"log10({var})" if log else var


def axis_label(ds: xr.Dataset, dim: str, short: bool = False) -> str:
    """The coordinate's long name (or just `dim` when short), with the PCA variance it explains if the store has it."""
    attrs = ds[dim].attrs
    label = dim if short else attrs.get("long_name", dim)
    ratio = attrs.get("explained_variance_ratio")
    if ratio is not None and f"{100 * ratio:.1f}%" not in label:
        label += f" ({100 * ratio:.1f}%)"
    return label


def title(ds: xr.Dataset) -> str:
    """'arch — test error E%' with the test error at the centre point (θ*), or just the arch when that is unknown;
    a language model (`arch: hf`) is named by its folder and shown with its test perplexity instead."""
    model = ds.attrs.get("spec", {}).get("model", {})
    arch = model.get("arch", "?")
    if arch == "hf" and model.get("path"):
        arch = Path(model["path"]).name or model["path"]
    var = "test_ppl" if "test_ppl" in ds.data_vars else "test_acc"
    if var not in ds.data_vars:
        return arch
    at = {}
    for dim in ds[var].dims:
        c = ds[dim].values
        at[dim] = int(np.abs(c).argmin())
        if abs(c[at[dim]]) > 1e-6 * np.ptp(c):
            return arch  # the grid has no centre point
    value = float(ds[var][at])
    if not np.isfinite(value):
        return arch
    return (
        f"{arch} — test perplexity {value:.4g}"
        if var == "test_ppl"
        else f"{arch} — test error {100 * (1 - value):.2f}%"
    )


@dataclass(frozen=True)
class Scale:
    """One colour range and one set of contour levels, in plotted units (log10 of the values when `log`)."""

    lo: float
    hi: float
    levels: np.ndarray
    log: bool = False
    norm: Normalize = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "norm", Normalize(self.lo, self.hi))  # one instance, shared by every panel


def basin_levels(lo: float, hi: float, z_min_positive: float | None) -> np.ndarray:
    """Default levels for values (not logs) from `lo` to `hi`: evenly spaced, plus rings around a deep minimum.

    About 20 round, evenly spaced values (as the paper's code: 0.1 … 10 by 0.5); a field whose smallest positive
    value lies more than a decade below `hi` (a basin: 0.008 at θ*, 40 at the edge) also gets the 1-2-5 series
    from that value up to the first even step, so the basin — where the paper's figures put their detail — is
    ringed by lines instead of being one empty region.
    """
    even = MaxNLocator(20).tick_values(lo, hi)
    step = even[1] - even[0]
    floor = lo if lo > 0 else z_min_positive
    if floor is None or hi <= 10 * floor or floor >= step:
        return even
    decades = np.arange(np.floor(np.log10(floor)), np.ceil(np.log10(step)))
    rings = (10.0 ** decades[:, None] * np.array([1.0, 2.0, 5.0])).ravel()
    return np.union1d(rings[(rings >= floor) & (rings < step * (1 - 1e-9))], even[even >= step * (1 - 1e-9)])


def scale(
    zs: list[np.ma.MaskedArray], log: bool = False, vmin=None, vmax=None, levels: int | None = None, level_step=None
) -> Scale:
    """The scale covering all `zs` (already in plotted units); vmin/vmax are in the data's units.

    Contour levels: with `level_step`, every `level_step` from vmin up to vmax (in decades with `log`) — the
    paper's code uses vmin=0.1, vmax=10, step 0.5; with `levels`, at most that many round values between
    vmin and vmax; by default `basin_levels` (values) or about 20 round values (decades, with `log`).
    """

    def limit(v, name):
        if v is None or not log:
            return v
        if v <= 0:
            raise SpecError(f"{name}: must be > 0 on a log scale, got {v}")
        return float(np.log10(v))

    lo, hi = limit(vmin, "vmin"), limit(vmax, "vmax")
    if lo is not None and hi is not None and hi <= lo:
        raise SpecError(f"vmax: must be > vmin ({vmin}), got {vmax}")
    lo = min(float(z.min()) for z in zs) if lo is None else lo
    hi = max(float(z.max()) for z in zs) if hi is None else hi
    if hi <= lo:  # a flat field, or one given limit beyond the data: widen, keeping the given limit
        if vmin is None and vmax is None:
            lo, hi = lo - 0.5, hi + 0.5
        else:
            lo, hi = (lo, lo + 1) if vmax is None else (hi - 1, hi)
    span = 1e-9 * (hi - lo)
    if level_step is not None:
        if not level_step > 0:
            raise SpecError(f"level_step: must be > 0, got {level_step}")
        ticks = np.arange(lo, hi + span, level_step)
        if not 2 <= len(ticks) <= MAX_LEVELS:
            raise SpecError(
                f"level_step: {level_step} gives {len(ticks)} levels between {lo:.4g} and {hi:.4g}; "
                f"need 2 to {MAX_LEVELS}"
            )
        return Scale(lo, hi, ticks, log)
    if levels is not None:
        if not 2 <= levels <= MAX_LEVELS:
            raise SpecError(f"levels: need 2 to {MAX_LEVELS}, got {levels}")
        ticks = MaxNLocator(levels - 1).tick_values(lo, hi)  # round values, as matplotlib's own levels=N
    elif log:
        ticks = MaxNLocator(20).tick_values(lo, hi)
    else:
        positive = [float(z[z > 0].min()) for z in zs if (z > 0).any()]
        ticks = basin_levels(lo, hi, min(positive) if positive else None)
    ticks = ticks[(ticks >= lo - span) & (ticks <= hi + span)]
    if len(ticks) < 2:  # a field between two round values: its own ends
        ticks = np.linspace(lo, hi, 3)
    return Scale(lo, hi, ticks, log)


def computed(ds: xr.Dataset, z: np.ma.MaskedArray) -> np.ndarray | None:
    """The points computed (`done`) when some values drawn in `z` were not (interpolated: store/filled.py), else
    None."""
    if "done" not in ds:
        return None
    done = ds["done"].values
    return done if (~done & ~np.ma.getmaskarray(z)).any() else None


def sampled(ds: xr.Dataset, var: str) -> np.ndarray | None:
    """The points whose `var` was computed on part of its split (`eval.samples: adaptive`), where there are some,
    else None."""
    split = var.split("_", 1)[0]
    whole = split_sizes(ds.attrs.get("inputs", {})).get(split)
    if whole is None or f"{split}_samples" not in ds:
        return None
    n = ds[f"{split}_samples"].values
    part = (n > 0) & (n < whole)
    return part if part.any() else None


def caption(ax, done: np.ndarray | None, part: np.ndarray | None = None, text2d: bool = False) -> None:
    """Say, in a corner, how much of what is drawn was computed, and on how much of the data."""
    lines = [] if done is None else [f"{int(done.sum())} of {done.size} points computed (dots), the rest interpolated"]
    if part is not None:
        lines.append(f"{int(part.sum())} of {part.size} points on a sample of the data (rings)")
    (ax.text2D if text2d else ax.text)(0.01, 0.01, "\n".join(lines), transform=ax.transAxes, fontsize=6, alpha=0.7)


def draw_field(ax, ds: xr.Dataset, var: str, kind: str, sc: Scale):
    """One 2D variable as `kind` on `ax` (a 3D Axes for 'surface'); returns the mappable for the colour bar."""
    z, _ = values(ds, var, sc.log)
    x, y = ds["x"].values, ds["y"].values
    X, Y = np.meshgrid(x, y)  # (y, x), like the arrays
    done, part = computed(ds, z), sampled(ds, var)
    if kind == "surface":
        # Clip to the scale so panels share a z range and a given vmax flattens the top rather than leaving the box.
        art = ax.plot_surface(X, Y, z.clip(sc.lo, sc.hi).filled(np.nan), cmap="viridis", norm=sc.norm, linewidth=0)
        ax.set(xlabel=axis_label(ds, "x", short=True), ylabel=axis_label(ds, "y", short=True), zlim=(sc.lo, sc.hi))
        if done is not None or part is not None:
            caption(ax, done, part, text2d=True)
        return art
    if kind == "contour":
        art = ax.contour(X, Y, z, levels=sc.levels, cmap="summer", norm=sc.norm)
        # Label every k-th line only, so where lines crowd the labels do not cover them.
        step = max(1, -(-len(art.levels) // LABELLED_LEVELS))
        ax.clabel(art, art.levels[::step], inline=True, fontsize=7, fmt="%.3g")
    elif kind == "contourf":
        art = ax.contourf(X, Y, z, levels=sc.levels, cmap="viridis", norm=sc.norm, extend="both")
    elif kind == "heatmap":
        art = ax.pcolormesh(x, y, z, cmap="viridis", norm=sc.norm, shading="nearest")
    else:
        raise SpecError(f"kind: unknown {kind!r}; choose from {', '.join(RENDER_KINDS)}")
    if done is not None:
        ax.plot(X[done], Y[done], "o", color="white", mec="black", ms=2, mew=0.3, alpha=0.6, zorder=2)
    if part is not None:
        ax.plot(X[part], Y[part], "o", mfc="none", mec="white", ms=5, mew=0.5, alpha=0.7, zorder=2)
    if done is not None or part is not None:
        caption(ax, done, part)
    ax.set(xlabel=axis_label(ds, "x"), ylabel=axis_label(ds, "y"))
    return art


def check_marks(ds: xr.Dataset, mark_epochs) -> None:
    if not mark_epochs:
        return
    if "trajectory_x" not in ds:
        raise SpecError(f"mark_epochs: the store ({title(ds)}) has no trajectory; only PCA stores have one")
    epochs = ds["epoch"].values
    missing = [e for e in mark_epochs if e not in epochs]
    if missing:
        raise SpecError(
            f"mark_epochs: epoch {missing[0]} is not in the trajectory (epochs {epochs.min()}–{epochs.max()})"
        )


def draw_trajectory(ax, ds: xr.Dataset, mark_epochs=()) -> None:
    """A PCA store's projected training path (see `draw_path`)."""
    draw_path(ax, ds["trajectory_x"].values, ds["trajectory_y"].values, list(ds["epoch"].values), mark_epochs)


def draw_path(ax, tx, ty, epochs, mark_epochs=()) -> None:
    """A training path (blue dots and line) with the chosen epochs as red dots, as in the paper's Fig. 10."""
    ax.plot(tx, ty, "-o", color="tab:blue", lw=1, ms=3, mec="white", mew=0.4, zorder=3)
    for epoch in mark_epochs or ():
        i = list(epochs).index(epoch)
        ax.plot(tx[i], ty[i], "o", color="red", ms=6, mec="white", mew=0.6, zorder=4)
        ax.annotate(str(epoch), (tx[i], ty[i]), textcoords="offset points", xytext=(4, 4), fontsize=7, color="red")


def curve_variables(ds: xr.Dataset, variables=None) -> list[str]:
    # Default: losses before accuracies, train before test, as the legend should read.
    names = variables or sorted(
        (v for v in ds.data_vars if v.endswith(("_loss", "_acc"))),
        key=lambda v: (v.endswith("_acc"), not v.startswith("train"), v),
    )
    for v in names:
        values(ds, v)  # a clear error for a name the store lacks or has not computed
    return names


def draw_curves(ax, ds: xr.Dataset, variables=None, log: bool = False):
    """A 1D scan: losses on `ax` (log scale with `log`), other metrics on a twin axis; solid train, dashed test.

    Colour follows the metric (loss blue, accuracy red, as the paper's Fig. 2), dashes follow the split; a
    `<split>_loss_se` in the store shades ± one standard error. Returns (loss axes, twin axes or None).
    """
    names = curve_variables(ds, variables)
    x = ds["x"].values
    others = [v for v in names if not v.endswith("_loss")]
    twin = ax.twinx() if others else None
    colours = {"loss": "tab:blue", "acc": "tab:red"}
    for v in names:
        split, metric = v.split("_", 1) if "_" in v else ("", v)
        target = ax if v.endswith("_loss") else twin
        style = {"train": "-", "test": "--"}.get(split, ":")
        colour = colours.setdefault(metric, f"C{len(colours) + 2}")  # further metrics: C4, C5, … clear of blue and red
        y = values(ds, v)[0]
        target.plot(x, y, style, color=colour, lw=1.5, label=v)
        done = computed(ds, y)
        if done is not None:  # partly interpolated: a dot at each point computed
            target.plot(x[done], y[done], ".", color=colour, ms=3)
        part = sampled(ds, v)
        if part is not None:  # a ring at each point computed on a sample of the data
            target.plot(x[part], y[part], "o", mfc="none", mec=colour, ms=4, mew=0.6)
        if v + "_se" in ds:
            se = np.ma.masked_invalid(ds[v + "_se"].values)
            target.fill_between(x, (y - se).filled(np.nan), (y + se).filled(np.nan), color=colour, alpha=0.2, lw=0)
    ax.set(xlabel=axis_label(ds, "x"), ylabel="loss", xlim=(x.min(), x.max()))
    if log:
        ax.set_yscale("log")
    handles = [h for a in (ax, twin) if a is not None for h in a.get_lines()]
    if twin is not None:
        twin.set_ylabel("accuracy" if all(v.endswith("_acc") for v in others) else ", ".join(others))
    ax.legend(handles=handles, fontsize=7, loc="best")
    return ax, twin
