"""Content fingerprints of a job's inputs: a store remembers exactly what it was computed from.

A `train` rerun rewrites `final.pt` at the same path; without a fingerprint a
`--resume` would mix two models in one surface. Every input file (the
checkpoint, direction files and targets, PCA checkpoints) is hashed, and the data
splits are hashed as the arrays the evaluator sees (the same for any file format
or loader). The store keeps the table in its attributes; `--resume` compares.

    table = fingerprints(spec, payload.splits)   # {"model.checkpoint /abs/final.pt": "sha256:…", …}
    changed(stored, table)                       # one line per input that differs
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import is_remote, natural_glob
from landscape_ray.spec.schema import Spec


def file_hash(path: str | Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def _arrays(obj):
    """The NumPy arrays inside a split, in a fixed order."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _arrays(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from _arrays(obj[key])
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _arrays(item)


def array_hash(obj) -> str:
    h = hashlib.sha256()
    for a in _arrays(obj):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).data)
    return "sha256:" + h.hexdigest()


def checkpoint_paths(spec: Spec) -> list[Path]:
    given = spec.directions.checkpoints
    if isinstance(given, str):
        paths = natural_glob(given)
    else:
        paths = [Path(p) for p in given]
    if len(paths) < 3:
        raise SpecError(f"directions.checkpoints: PCA needs at least 3 checkpoints, found {len(paths)} for {given!r}")
    return paths


FOLDER_FILES = (".safetensors", ".bin", "config.json", "tokenizer.json")  # what decides a model folder's numbers


def input_files(spec: Spec) -> list[tuple[str, Path]]:
    """(field, file) of every local input file the spec names."""
    d = spec.directions
    files = [("model.checkpoint", spec.model.checkpoint)]
    if d.kind == "interpolate":
        files.append(("directions.target", d.target))
    if d.kind == "plane":
        files += [(f"directions.targets[{i}]", t) for i, t in enumerate(d.targets)]
    if d.kind == "pca":
        files += [(f"directions.checkpoints[{i}]", p) for i, p in enumerate(checkpoint_paths(spec))]
    if d.kind == "file" and not is_remote(d.path) and Path(d.path).is_file():
        files.append(("directions.path", d.path))  # a store given as `path` has its own fingerprints
    if spec.model.path is not None:
        files.append(("model.path", spec.model.path))
    local = [(field, Path(p).resolve()) for field, p in files if p is not None and not is_remote(p)]
    # A model folder (arch hf, and the folders it is interpolated towards): its weights and config, file by file.
    return [
        (f"{field} {f.name}" if path.is_dir() else field, f)
        for field, path in local
        for f in (sorted(p for p in path.iterdir() if p.name.endswith(FOLDER_FILES)) if path.is_dir() else [path])
    ]


def fingerprints(spec: Spec, splits: dict) -> dict[str, str]:
    table = {f"{field} {path}": file_hash(path) for field, path in input_files(spec)}
    if spec.model.object is not None:  # a model a Python call handed over: its state_dict's hash (api.py)
        table["model.object"] = spec.model.object
    table.update({f"data.{name}": array_hash(split) for name, split in splits.items()})
    if spec.eval.samples == "adaptive":  # a value's <split>_samples equals this where it used the whole split
        table.update({f"data.{name} size": str(len(split)) for name, split in splits.items()})
    return table


def changed(stored: dict[str, str], now: dict[str, str]) -> list[str]:
    """One line per input whose fingerprint differs between the store and now."""
    out = []
    for key in sorted(set(stored) | set(now)):
        if stored.get(key) != now.get(key):
            was, new = stored.get(key, "absent"), now.get(key, "absent")
            out.append(f"{key} changed since the store was made ({was[:19]}… → {new[:19]}…)")
    return out
