"""The field a progressive store being computed, or an adaptive one, stands for: its evaluated points as they are,
and each point not evaluated interpolated from the lattice of the pass before its own (spec/passes.py).

The points of the passes up to p form a lattice (every k-th row and column, and the last), so every point of pass
p + 1 lies on a cell of pass p's lattice, and interpolation along α, then along β, by the cubic through the four
nearest lattice points (bicubic on the cell) gives it. Cubics, not lines: a loss surface is a smooth bowl away from
its minimum, which a cubic carries exactly to second order (a bilinear fill misses a quadratic by h²f''/8), so few
points draw it. Filled pass by pass, coarse to fine, a corner not evaluated has been filled already, so the field
is defined everywhere once the first pass is done (where its points are missing, NaN). That is what the pictures of
a running progressive job, and of an adaptive one, draw, and what `landscape_ray.open(path, filled=True)` returns;
NumPy only, so reading a store stays light.

    ds = fill(ds, passes)   # ds.attrs["filled"] says how; ds.done marks the evaluated points
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from landscape_ray.spec.passes import Passes


def weights(knots: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local cubic interpolation from `knots` (increasing) to `targets`: each target's polynomial through the four
    knots nearest its interval (fewer where there are fewer), as (first knot, Lagrange weights) per target."""
    order = min(4, len(knots))
    interval = np.clip(np.searchsorted(knots, targets, side="right") - 1, 0, len(knots) - 2)
    first = np.clip(interval - (order - 1) // 2, 0, len(knots) - order)
    xs = knots[first[:, None] + np.arange(order)]
    w = np.ones((len(targets), order))
    for j in range(order):
        for i in range(order):
            if i != j:
                w[:, j] *= (targets - xs[:, i]) / (xs[:, j] - xs[:, i])
    return first, w


def interpolate(values: np.ndarray, lattice: tuple[np.ndarray, ...], coords: list[np.ndarray]) -> np.ndarray:
    """`values` at the points of `lattice` (indices per axis into `coords`), interpolated to every point of the grid
    by local cubics, one axis after the other (bicubic on a plane)."""
    out = values
    for axis, (index, c) in enumerate(zip(lattice, coords)):
        first, w = weights(c[index], c)
        line = np.moveaxis(out, axis, 0)
        # No limiter: clipping each cubic to its knots' values flattens a valley that crosses a cell (on a Rosenbrock
        # valley, errors of 9 % where the cubic has 1 %); the price is that a coarse first pass may dip below a
        # sharp minimum it straddles, until the finer passes (or an adaptive grid's basin, always refined) have it.
        out = sum(line[first + j] * w[:, j].reshape((-1,) + (1,) * (line.ndim - 1)) for j in range(w.shape[1]))
        out = np.moveaxis(out, 0, axis)
    return out


RULE = (
    "points not evaluated (done false) are interpolated along each axis (bicubic on a plane) by the cubic through the "
    "four nearest points of the lattice of the pass before their own, whose points are evaluated or themselves "
    "interpolated; points of the first pass not evaluated are NaN"
)


def filled(values: np.ndarray, done: np.ndarray, passes: Passes, coords: list[np.ndarray], upto=None) -> np.ndarray:
    """`values` where `done`, interpolated elsewhere (see the module), on the points of the passes up to `upto`
    (default: all; the points of later passes are NaN)."""
    upto = passes.count - 1 if upto is None else upto
    field = np.where(done, values, np.nan)
    for level in range(1, upto + 1):  # coarse to fine: each pass from the lattice of the one before
        lattice = passes.lattice(level - 1)
        between = interpolate(field[np.ix_(*lattice)], lattice, coords)
        missing = (passes.levels == level) & ~done
        field[missing] = between[missing]
    field[passes.levels > upto] = np.nan
    return field


def fill(ds: xr.Dataset, passes: Passes) -> xr.Dataset:
    """`ds` with the grid variables filled in where not evaluated (see the module), the rule in the attributes
    (`filled`, of the Dataset and of each variable)."""
    done = ds["done"].values
    # Counts (`<split>_samples`) stay as they are: 0 where a point was not evaluated.
    names = [v for v in ds.data_vars if ds[v].dims == passes.grid.dims and v != "done" and not v.endswith("_samples")]
    if not done.all():
        coords = [ds[dim].values for dim in passes.grid.dims]
        ds = ds.load()
        ds = ds.assign({v: (ds[v].dims, filled(ds[v].values, done, passes, coords), ds[v].attrs) for v in names})
    how = "every point evaluated" if done.all() else RULE
    for v in names:
        ds[v].attrs["filled"] = how
    ds.attrs["filled"] = how
    return ds
