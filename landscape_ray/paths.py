"""Local folders and fsspec URLs (s3://, gs://, …) behind one small interface.

    is_remote("s3://bucket/a.zarr")     # True
    zarr_store(path, "w")               # what zarr and xarray open
    fs, root = filesystem(path)         # fsspec filesystem and the path inside it

Only the store, the ownership rules and the renderer touch paths; credentials come
from the environment, as fsspec reads them.
"""

from __future__ import annotations

from pathlib import Path


def is_remote(path: str | Path) -> bool:
    return "://" in str(path)


def filesystem(path: str | Path):
    """(fsspec filesystem, path inside it) for a URL or a local path."""
    import fsspec

    return fsspec.core.url_to_fs(str(path))


def zarr_store(path: str | Path, mode: str = "r"):
    """What zarr and xarray open: a local folder, or an fsspec URL (credentials from the environment)."""
    if is_remote(path):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(str(path), read_only=mode == "r")
    return str(path)


def exists(path: str | Path) -> bool:
    if not is_remote(path):
        return Path(path).exists() or Path(path).is_symlink()  # a dangling link is still in the way
    fs, root = filesystem(path)
    return fs.exists(root)


def sibling(path: str | Path, name: str) -> str | Path:
    """A hidden sibling of `path` (`.NAME.suffix` next to it), for locks, leases and partial stores."""
    if is_remote(path):
        parent, _, base = str(path).rstrip("/").rpartition("/")
        return f"{parent}/.{base}.{name}"
    path = Path(path)
    return path.with_name(f".{path.name}.{name}")
