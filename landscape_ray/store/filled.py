"""The field a partly computed progressive store stands for: its evaluated points as they are, and each point not
evaluated yet interpolated from the lattice of the pass before its own (spec/passes.py).

The points of the passes up to p form a lattice (every k-th row and column, and the last), so every point of pass
p + 1 lies on a cell of pass p's lattice, and linear interpolation along α, then along β (bilinear on the cell)
gives it from that cell's corners. Filled pass by pass, coarse to fine, a corner not evaluated has been filled
already, so the field is defined everywhere once the first pass is done (where its points are missing, NaN).
That is what the pictures of a running progressive job draw, and what `landscape_ray.open(path, filled=True)`
returns; NumPy only, so reading a store stays light.

    ds = fill(ds, passes)   # ds.attrs["filled"] says how; ds.done marks the evaluated points
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from landscape_ray.spec.passes import Passes


def interpolate(values: np.ndarray, lattice: tuple[np.ndarray, ...], coords: list[np.ndarray]) -> np.ndarray:
    """`values` at the points of `lattice` (indices per axis into `coords`), linearly interpolated to every point of
    the grid, one axis after the other."""
    out = values
    for axis, (index, c) in enumerate(zip(lattice, coords)):
        out = np.apply_along_axis(lambda line, c=c, index=index: np.interp(c, c[index], line), axis, out)
    return out


RULE = (
    "points not evaluated (done false) are interpolated linearly along each axis (bilinear on a plane) from the "
    "lattice of the pass before their own, whose points are evaluated or themselves interpolated; points of the "
    "first pass not evaluated are NaN"
)


def fill(ds: xr.Dataset, passes: Passes) -> xr.Dataset:
    """`ds` with the grid variables filled in where not evaluated (see the module), the rule in the attributes
    (`filled`, of the Dataset and of each variable)."""
    done = ds["done"].values
    names = [v for v in ds.data_vars if ds[v].dims == passes.grid.dims and v != "done"]
    if not done.all():
        coords = [ds[dim].values for dim in passes.grid.dims]
        ds = ds.load()
        filled = {}
        for v in names:
            field = np.where(done, ds[v].values, np.nan)
            for level in range(1, passes.count):  # coarse to fine: each pass from the lattice of the one before
                lattice = passes.lattice(level - 1)
                between = interpolate(field[np.ix_(*lattice)], lattice, coords)
                missing = (passes.levels == level) & ~done
                field[missing] = between[missing]
            filled[v] = (ds[v].dims, field, ds[v].attrs)
        ds = ds.assign(filled)
    how = "every point evaluated" if done.all() else RULE
    for v in names:
        ds[v].attrs["filled"] = how
    ds.attrs["filled"] = how
    return ds
