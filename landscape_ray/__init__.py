"""landscape_ray: loss landscapes of neural nets (Li et al., ICLR 2018), computed by Ray actors into Zarr.

    import landscape_ray
    ds = landscape_ray.open("runs/demo/surface.zarr")   # an xarray Dataset
    ds.train_loss.plot()

Modules, in the paper's words: spec (the job), grid (coordinates and tiles),
directions (filter-normalized random directions), evaluator (plain torch),
scheduler (the only Ray code), store (Zarr), render (pictures), train
(checkpoints per epoch), job (spec → store → pictures), cli.
"""

__version__ = "0.1.0"


def open(path):  # noqa: A001 - mirrors xarray.open_zarr for notebook users
    """The store at `path` as a lazy xarray Dataset; NaN marks points not computed yet."""
    from .render import open_store

    return open_store(path)
