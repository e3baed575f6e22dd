"""Local folders and fsspec URLs (s3://, gs://, …) behind one small interface.

    is_remote("s3://bucket/a.zarr")     # True
    zarr_store(path, "w")               # what zarr and xarray open
    fs, root = filesystem(path)         # fsspec filesystem and the path inside it
    natural_glob("runs/x/model_*.pt")   # model_10.pt after model_9.pt
    epoch_checkpoints("runs/x")         # {0: model_0.pt, 1: model_1.pt, ...}
    cache_dir("inductor")               # ~/.cache/landscape_ray/inductor, or under $LANDSCAPE_RAY_CACHE
    replace_file("fig.png", lambda tmp: fig.savefig(tmp, format="png"))   # the old file or the new one, never half

Credentials come from the environment, as fsspec reads them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
from pathlib import Path


def is_remote(path: str | Path) -> bool:
    return "://" in str(path)


def cache_dir(name: str) -> Path:
    """A folder of this tool's caches (compiled kernels, token arrays), kept between runs and shared by the processes
    of a machine: `$LANDSCAPE_RAY_CACHE/name`, by default under ~/.cache/landscape_ray."""
    root = os.environ.get("LANDSCAPE_RAY_CACHE") or Path.home() / ".cache" / "landscape_ray"
    return Path(root) / name


def filesystem(path: str | Path):
    """(fsspec filesystem, path inside it) for a URL or a local path."""
    import fsspec

    return fsspec.core.url_to_fs(str(path))


def zarr_store(path, mode: str = "r"):
    """What zarr and xarray open: a local folder, an fsspec URL (credentials from the environment), or a zarr store
    object as it is (layout.py composes a store in memory)."""
    if not isinstance(path, (str, Path)):
        return path
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


def replace_file(path: str | Path, write, temporary: Path | None = None) -> Path:
    """`write(temporary)` into a hidden sibling of `path` (or the `temporary` given: a store's files take the name zarr
    gives its own), then renamed to it: a figure, page or store file killed mid-write leaves the old file or the new
    one, never a truncated one (at worst the temporary)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary or sibling(path, f"{os.getpid()}.partial")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def natural(name: str) -> list:
    """A sort key that orders the numbers in names by value: model_10.pt after model_9.pt."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def natural_glob(pattern: str | Path) -> list[Path]:
    """The files matching `pattern`, in natural order."""
    return [Path(p) for p in sorted(glob.glob(str(pattern)), key=natural)]


def epoch_checkpoints(run: str | Path) -> dict[int, Path]:
    """The `model_<epoch>.pt` files `landscape-ray train` writes into a run folder, by epoch."""
    found = {p.stem.split("_", 1)[1]: p for p in Path(run).glob("model_*.pt")}
    return {int(epoch): p for epoch, p in sorted(found.items(), key=lambda e: natural(e[0])) if epoch.isdigit()}


@contextlib.contextmanager
def naming(path):
    """An OSError raised in the block without a file name gets `path` (zarr's writes raise one: a full disk says
    only "No space left on device"), so that the CLI's one line says which store could not be written."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
