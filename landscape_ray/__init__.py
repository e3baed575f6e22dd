"""landscape_ray: loss landscapes of neural nets (Li et al., ICLR 2018), computed by Ray actors into Zarr.

    import landscape_ray
    ds = landscape_ray.open("runs/demo/surface.zarr")   # an xarray Dataset
    ds.train_loss.plot()
    ds = landscape_ray.open(path, filled=True)           # a running progressive job: interpolated where not done
    ds = landscape_ray.plane(model, loader)              # the model in your notebook: api.py (scan, interpolate,
                                                         # hessian)

Packages by layer, bottom to top (each imports only from those below it; docs/ARCHITECTURE.md):
core (errors, paths, plugins), spec (the job, the grid), store (Zarr, ownership), inputs (models, data,
directions), compute (the plain-torch evaluator, curvature), cluster (the only Ray code), pictures; then
hessians, train, job (spec → store → pictures), paper/ and cli/ on top.
"""

__version__ = "0.1.0"


def open(path, filled: bool = False):  # noqa: A001 - mirrors xarray.open_zarr for notebook users
    """The store at `path` as a lazy xarray Dataset; NaN marks points not computed yet. `filled`: the field the
    pictures draw, where a progressive store's points not computed yet are interpolated from those that are (the
    rule in the attribute `filled`; `done` marks the computed points)."""
    # The one import inside a function: the package root is imported by every process that imports any of its
    # modules (each Ray actor too), and Zarr and xarray (~0.7 s) are only for those that read a store.
    from landscape_ray.store.reader import dataset  # noqa: PLC0415

    return dataset(path, filled)


# api.py, imported on first use: it loads torch and Ray, `open` needs neither
API = ("plane", "scan", "interpolate", "hessian")


def __getattr__(name: str):
    if name not in API:
        raise AttributeError(f"module 'landscape_ray' has no attribute {name!r}")
    # A private Ray cluster is loopback-only, as the CLI's entry point makes it (Ray reads this when first imported),
    # and its notice about token authentication is not printed above every call's output.
    import logging  # noqa: PLC0415
    import os  # noqa: PLC0415

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    from landscape_ray import api  # noqa: PLC0415

    return getattr(api, name)
