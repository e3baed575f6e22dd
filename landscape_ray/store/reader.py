"""A store as an xarray Dataset: what notebooks (`landscape_ray.open`) and the pictures read.

    ds = dataset("runs/demo/surface.zarr")   # lazy; NaN marks points not computed yet
    ds.train_loss.sel(x=0, y=0)
    ds = dataset(path, filled=True)           # a running progressive job's picture: interpolated between (filled.py)

Reading a store imports neither torch, Ray, SciPy nor matplotlib.
"""

from __future__ import annotations

import sys

import xarray as xr

from landscape_ray.core.paths import zarr_store
from landscape_ray.spec.passes import Passes
from landscape_ray.store.filled import fill
from landscape_ray.store.tiles import Store


def dataset(store, filled: bool = False, find_damage: bool = True) -> xr.Dataset:
    """`store` itself if it is a Dataset, else the store at that path (lazy unless some chunk is damaged or it is
    `filled`).

    Damaged tiles (a chunk missing or failing its checksum) read as missing points, with one line on stderr; every
    chunk is read to find them, unless `find_damage` is false (a store this process has just completed: job.run
    recomputed any damaged tile, and wrote the rest itself).
    `filled`: a progressive store's points not evaluated yet are interpolated from the passes done (filled.py).
    """
    if isinstance(store, xr.Dataset):
        return store
    checked = Store(store, mode="r")  # one line for a path that is missing, not ours, or of a newer format
    ds = xr.open_zarr(zarr_store(store), consolidated=True)
    damaged = checked.damaged() if find_damage else {}
    if damaged:
        print(f"{checked.path}: {len(damaged)} damaged tiles (run verify); drawn as missing", file=sys.stderr)
        names = [*checked.variables, "done"]
        ds = ds.drop_vars(names).load().assign({name: (ds[name].dims, checked.read(name)) for name in names})
    if filled:
        ds = fill(ds, Passes(checked.grid, checked.spec.grid.mode))
    return ds
