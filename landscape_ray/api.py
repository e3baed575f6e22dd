"""The loss landscape of the model in your notebook: plane, scan and interpolate on in-memory objects.

    import landscape_ray
    ds = landscape_ray.plane(model, loader)                      # 21 × 21, filter-normalized random directions
    ds.train_loss.plot()                                          # an xarray Dataset of the store
    ds = landscape_ray.scan(model, (x, y), x=(-1, 1, 51))        # a 1D scan
    ds = landscape_ray.interpolate(model_a, model_b, loader)     # θ_a → θ_b (α = 0 at θ_a, 1 at θ_b)
    h = landscape_ray.hessian(model, loader, top=3, trace=True)  # eigenpairs, trace (h["eigenvalues"], ...)
    ds = landscape_ray.plane(model, {"train": train_loader, "test": test_loader}, store="runs/p.zarr",
                             metric=my_metric, eval={"precision": "bf16"}, **{"compute.cpus_per_actor": 2})

Each call is a spec (spec/schema.py) run by the service (`job.run`: the same actors, scheduler, store, lock,
fingerprints and resume as `landscape-ray run`), and the store records it. The keywords are the spec's fields: `x`,
`y` the grid's axes as (min, max, num); `directions`, `norm`, `ignore`, `seed` the directions'; `actors` compute's;
`device` eval's; any other field as a section's dict (`eval={"precision": "bf16"}`) or a dotted name
(`**{"data.subset": 500}`), over the call's own values.

What the call hands over (inputs/handed.py), named in the spec by its contents:
- `model`: any nn.Module (its class may live in the notebook: Ray ships it by value); a copy, on the CPU in eval
  mode, is evaluated, and the spec's `model.object` is the SHA-256 of its state_dict.
- `data`: a DataLoader (its dataset, batch size and collate_fn, read in order), a torch Dataset, a pair (x, y) of
  tensors or arrays, a tensor of token ids (batch, seq_len) for a language model (metric: next-token loss), or a
  dict {"train": …, "test": …} of those; collated once into batches of `data.batch_size` as given (default: a
  DataLoader's own, else 1024, up to 8192 for a narrow model, as the CPU evaluator's `batch_size: auto`), without
  normalisation. Each split gives `<split>_loss` and the metric's other sums.
- `metric`: fn(model, batch) -> (loss_sum, count[, {name: sum}]), as `eval.metric` (the evaluator's docstring);
  default: cross-entropy and accuracy of (x, y) batches.

`store=None` writes `runs/api/<model class>-<hash of what decides the values>.zarr`: the same call again reads it
back (and completes it if it was interrupted). A store named by `store` is refused if it exists, unless `resume=True`
(complete it) or `overwrite=True` (replace it), as `run --resume | --overwrite`. Ctrl-C ("interrupt kernel") keeps
every finished tile and returns the partial Dataset (NaN where not computed); the same call with `resume=True`
completes it. Bad input is a `SpecError` (a ValueError) naming the argument or field; a model that fails on the data
is one too, raised from the model's own exception. `address`: a Ray cluster to join (default: RAY_ADDRESS, else a
private one on this machine, started by the first call and kept for the next); `log`: the run's lines (print).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from landscape_ray import hessians, job
from landscape_ray.compute.evaluator import classification
from landscape_ray.compute.language import causal_lm
from landscape_ray.compute.speedups import auto_batch_size
from landscape_ray.core.errors import Interrupted, SpecError
from landscape_ray.core.paths import exists, replace_file
from landscape_ray.inputs.data import COLLATE_BATCH, BatchSplit, as_array, tree_map
from landscape_ray.inputs.handed import handing
from landscape_ray.spec.schema import Spec
from landscape_ray.spec.specfile import validate
from landscape_ray.store.fingerprint import array_hash
from landscape_ray.store.reader import dataset

LM_METRIC = "landscape_ray.compute.language:causal_lm"  # the default metric of token data: importable anywhere
FLAGS = {"--resume": "resume=True", "--overwrite": "overwrite=True", "--force": "force=True"}  # in run's messages
ONE_CALL = threading.Lock()  # the objects are held by name for one call at a time (a notebook's threads)


def plane(model, data, *, x=(-1, 1, 21), y=(-1, 1, 21), directions="random", **options) -> xr.Dataset:
    """f(α, β) = L(θ* + αδ + βη) on the grid `x` × `y`; the keywords are those of `landscape` (module docstring)."""
    return landscape(model, data, {"kind": directions}, x, y, **options)


def scan(model, data, *, x=(-1, 1, 51), directions="random", **options) -> xr.Dataset:
    """f(α) = L(θ* + αδ) along one direction."""
    return landscape(model, data, {"kind": directions}, x, None, **options)


def interpolate(model_a, model_b, data, *, x=(-0.5, 1.5, 41), store=None, **options) -> xr.Dataset:
    """f(α) = L(θ_a + α(θ_b − θ_a)), the paper's 1D linear interpolation. θ_b is written once next to the store,
    named by its hash, as the checkpoint `directions.target` (the store fingerprints it, as for `run`)."""
    target_state = held(model_b, "model_b").state_dict()
    name = f"target-{state_hash(target_state)[7:19]}.pt"
    target = Path("runs/api/targets", name) if store is None else Path(store).with_name(f"{Path(store).stem}.{name}")
    target = target.resolve()
    if not target.exists():  # written beside and renamed: a kill never leaves a truncated file under the hash name
        replace_file(target, lambda temporary: torch.save(target_state, temporary))
    return landscape(model_a, data, {"kind": "interpolate", "target": str(target)}, x, None, store=store, **options)


def hessian(
    model,
    data,
    *,
    top=1,
    which="largest",
    trace=False,
    density=False,
    at=None,
    probes=100,
    steps=80,
    tol=1e-4,
    actors=None,
    address=None,
    **options,
) -> dict:
    """The Hessian of the mean loss over the first split of `data` at θ* (or at θ* + Σ at_k d_k of the call's
    directions): `top` eigenpairs at the `which` end(s) (largest, smallest, both), Hutchinson's `trace` and the
    Lanczos `density`, from Hessian-vector products sharded over `actors` Ray actors (hessians.py, as
    `landscape-ray hessian`). Returns the result (`eigenvalues`, `eigenvectors` as {parameter name: array} each,
    `trace` and `trace_se`, `density`, ...),
    also written into the store's `hessian` group (the store of the same `plane` call, or a new one)."""
    hessians.check_request(top, which, probes, steps, actors, tol)
    plane_of = (model, data, {"kind": "random"}, (-1, 1, 21), (-1, 1, 21))  # plane's store: its group hessian
    spec, objects, _ = specified(*plane_of, address=address, **options)
    request = dict(top=top, which=which, trace=trace, density=density, probes=probes, steps=steps, tol=tol)
    with ONE_CALL, handing(objects):
        try:
            result, _ = hessians.run(spec, address, at=None if at is None else tuple(at), actors=actors, **request)
        except SpecError as err:
            raise type(err)(as_call(str(err))) from None
    if "eigenvectors" in result:  # by the model's own parameter names, as directions are
        result["eigenvectors"] = hessians.vectors_of(result)
    return result


def landscape(model, data, directions: dict, x, y, *, log=print, **options) -> xr.Dataset:
    """The store of one spec as a Dataset, computed (or completed, or read back) by `job.run` (`specified`'s
    keywords; `log`: the run's lines), filled where a progressive or adaptive grid computed no point (`done` says
    where it did; store/filled.py)."""
    spec, objects, resume = specified(model, data, directions, x, y, **options)
    overwrite, force = options.get("overwrite", False), options.get("force", False)
    path = spec.output.store  # job.run's first line says where, and what is left to compute
    with ONE_CALL, handing(objects):
        try:
            job.run(spec, resume=resume, overwrite=overwrite, address=options.get("address"), force=force, log=log)
        except Interrupted as err:  # Ctrl-C: every finished tile is in the store, returned as it is
            log(as_call(str(err)))
            return dataset(path, filled=True)
        except SpecError as err:
            raise type(err)(as_call(str(err))) from None
    # The field the pictures draw (an adaptive grid's points between filled in), of a store job.run completed.
    return dataset(path, filled=True, find_damage=False)


def specified(
    model,
    data,
    directions: dict,
    x,
    y,
    *,
    norm=None,
    ignore=None,
    seed=0,
    metric=None,
    store=None,
    address=None,
    actors="auto",
    device="auto",
    resume=False,
    overwrite=False,
    force=False,
    **spec,
) -> tuple[Spec, dict, bool]:
    """The call as a checked spec, the objects it hands over (by the names the spec gives them), and whether the
    store is to be resumed. `norm`, `ignore`: the spec's defaults for the kind when None (filter, biasbn for random
    directions); `force`: more than 10⁷ points."""
    net = held(model, "model")
    section = spec.get("data") if isinstance(spec.get("data"), dict) else {}
    batch = spec.get("data.batch_size", section.get("batch_size"))
    batch = batch if isinstance(batch, int) else None  # auto: a DataLoader's own, else wide_batch
    splits = {
        name: split_of(d, batch, f"data[{name!r}]", net if metric is None else None)
        for name, d in named_splits(data).items()
    }
    tokens = all(isinstance(s.batches[0], dict) for s in splits.values())
    metric_name, handed_metric = metric_of(metric, LM_METRIC if tokens else None)
    check_fit(net, splits, handed_metric)
    directions |= {"norm": norm, "ignore": ignore} | ({"seed": seed} if directions["kind"] == "random" else {})
    raw = {
        "name": type(model).__name__,
        "model": {"arch": "object", "object": state_hash(net.state_dict())},
        "data": {"dataset": "object", "object": array_hash(splits), "splits": list(splits), "batch_size": "auto"},
        "directions": directions,
        "grid": {"x": axis(x, "x"), "y": None if y is None else axis(y, "y")},
        "eval": {"device": device, "metric": metric_name},
        "compute": {"actors": actors},
        "output": {"store": str(store or "runs/api/unnamed.zarr"), "render": []},
    }
    for key, value in spec.items():
        merge(raw, key.split("."), value, key)
    resolved = validate(Spec, raw)
    if store is None:  # named by what decides the values: the same call again finds its own store
        digest = hashlib.sha256(json.dumps(resolved.result_fields(), sort_keys=True).encode()).hexdigest()[:12]
        path = f"runs/api/{resolved.name}-{digest}.zarr"
        resolved = resolved.model_copy(update={"output": resolved.output.model_copy(update={"store": path})})
        resume = resume or (exists(path) and not overwrite)
    objects = {resolved.model.object: net, resolved.data.object: splits}
    if handed_metric is not None and metric_name != LM_METRIC:
        objects[metric_name] = handed_metric
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if address is None and not os.environ.get("RAY_ADDRESS") and os.getcwd() not in paths:
        # A private cluster's workers import the user's modules from the working directory, as the CLI's do.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), *paths]))
    return resolved, objects, resume


def as_call(message: str) -> str:
    """A message of `job.run`, with the command line's flags named as this call's keywords."""
    for flag, keyword in FLAGS.items():
        message = message.replace(flag, keyword)
    return message


def held(model, argument: str) -> nn.Module:
    """A copy of `model` on the CPU in eval mode: what is evaluated, whatever the caller does with theirs."""
    if not isinstance(model, nn.Module):
        raise SpecError(f"{argument}: a torch.nn.Module, got {type(model).__name__}")
    return copy.deepcopy(model).cpu().eval()


def state_hash(state: dict) -> str:
    """A state_dict's contents (bfloat16 included, as its bits) as one SHA-256, entries in name order."""
    return array_hash({name: as_array(tensor) for name, tensor in state.items()})


def named_splits(data) -> dict:
    if isinstance(data, dict):
        unknown = set(data) - {"train", "test"}
        if unknown or not data:
            raise SpecError(f"data: a dict's keys are train and/or test, got {sorted(map(str, data))}")
        return data
    return {"train": data}


def split_of(data, batch_size: int | None, argument: str, model: nn.Module | None = None) -> BatchSplit:
    """`data` collated once, in order, into batches of NumPy arrays (the service's form for any data: data.py): of
    `batch_size`, else a DataLoader's own, else `wide_batch` for `model` under the built-in metric (None: custom)."""
    collate = None
    if isinstance(data, DataLoader):
        if data.batch_size is None:
            raise SpecError(f"{argument}: a DataLoader with a batch_sampler; pass its dataset and a batch size")
        data, batch_size, collate = data.dataset, batch_size or data.batch_size, data.collate_fn
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        data = TensorDataset(*(torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a) for a in data))
    elif torch.is_tensor(data) or isinstance(data, np.ndarray):
        ids = torch.as_tensor(data)
        if ids.ndim != 2 or ids.is_floating_point():
            raise SpecError(f"{argument}: one array is token ids (batch, seq_len); for features and labels pass (x, y)")
        size = batch_size or COLLATE_BATCH
        return BatchSplit([{"input_ids": ids[i : i + size].numpy()} for i in range(0, len(ids), size)], len(ids))
    if not isinstance(data, Dataset):
        raise SpecError(f"{argument}: a DataLoader, a Dataset, (x, y) or token ids, got {type(data).__name__}")
    if len(data) == 0:
        raise SpecError(f"{argument}: empty")
    size = batch_size or (COLLATE_BATCH if model is None else wide_batch(model, data[0]))
    if isinstance(data, TensorDataset) and collate is None:  # slices: what collating its rows gives, in one go
        batches = [tuple(t[i : i + size] for t in data.tensors) for i in range(0, len(data), size)]
    else:
        batches = DataLoader(data, batch_size=size, **({"collate_fn": collate} if collate else {}))
    with torch.no_grad():
        return BatchSplit([tree_map(lambda t: t.detach().cpu().numpy(), b, torch.Tensor) for b in batches], len(data))


def wide_batch(model: nn.Module, item) -> int:
    """The collated batch for a (features, label) item under the built-in metric: COLLATE_BATCH, or more where the
    CPU evaluator's own rule (speedups.auto_batch_size) allows it. The evaluator runs a list of batches as it is given,
    and a narrow model's per-batch Python is a large part of its point: an MLP 64-64-64-10 on 3,000 samples takes
    0.54 s a 21 × 21 plane in three batches and 0.41 s in one (one thread, benchmarks/api.py's small case)."""
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        return COLLATE_BATCH
    try:
        sample = torch.as_tensor(np.asarray(item[0]) if not torch.is_tensor(item[0]) else item[0])[None]
        return max(COLLATE_BATCH, auto_batch_size(model, sample, torch.device("cpu")))
    except Exception:  # noqa: BLE001 - a model that fails on the data: check_fit says so in the user's words
        return COLLATE_BATCH


def metric_of(metric, default: str | None) -> tuple[str | None, object]:
    """The spec's `eval.metric` (a name) and the function this process runs under it (None: the default)."""
    if metric is None:
        return default, causal_lm if default else None
    if isinstance(metric, str):
        return metric, None
    if not callable(metric):
        raise SpecError(f"metric: fn(model, batch) -> (loss_sum, count[, sums]), got {type(metric).__name__}")
    return f"{metric.__module__}:{getattr(metric, '__qualname__', type(metric).__name__)}", metric


def check_fit(model: nn.Module, splits: dict, metric) -> None:
    """The model and metric on one batch of each split, here, so that a model that fails on the data raises from
    the user's own code (the service checks the same in a thread and reports it in one line)."""
    metric = metric or classification()
    for name, split in splits.items():
        batch = tree_map(torch.as_tensor, split.batches[0], np.ndarray)
        try:
            with torch.no_grad():
                metric(model, batch)
        except Exception as err:  # noqa: BLE001 - anything the user's model or metric raises is bad input here
            raise SpecError(f"model: fails on the first batch of data[{name!r}] ({type(err).__name__}: {err})") from err


def axis(value, argument: str) -> dict:
    """(min, max, num) or (min, max) or a dict of the spec's axis fields."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        raise SpecError(f"{argument}: (min, max, num) or (min, max), got {value!r}")
    return dict(zip(("min", "max", "num"), value))


def merge(raw: dict, keys: list[str], value, argument: str) -> None:
    """Set the field at `keys` (a dotted keyword's parts) to `value`; a dict is merged into the section it names."""
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SpecError(f"{argument}: {key} is not a section")
    leaf = keys[-1]
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        for key, item in value.items():
            merge(node[leaf], [key], item, argument)
    else:
        node[leaf] = value
