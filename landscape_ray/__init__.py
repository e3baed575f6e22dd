"""landscape_ray: loss landscapes of neural nets (Li et al., ICLR 2018), computed by Ray actors into Zarr.

    import landscape_ray
    ds = landscape_ray.open("runs/demo/surface.zarr")   # an xarray Dataset
    ds.train_loss.plot()

Packages by layer, bottom to top (each imports only from those below it; docs/ARCHITECTURE.md):
core (errors, paths, plugins), spec (the job, the grid), store (Zarr, ownership), inputs (models, data,
directions), compute (the plain-torch evaluator, curvature), cluster (the only Ray code), pictures; then
hessian, train, job (spec → store → pictures), paper/ and cli/ on top.
"""

__version__ = "0.1.0"


def open(path):  # noqa: A001 - mirrors xarray.open_zarr for notebook users
    """The store at `path` as a lazy xarray Dataset; NaN marks points not computed yet."""
    # The one import inside a function: the package root is imported by every process that imports any of its
    # modules (each Ray actor too), and Zarr and xarray (~0.7 s) are only for those that read a store.
    from landscape_ray.store.reader import dataset  # noqa: PLC0415

    return dataset(path)
