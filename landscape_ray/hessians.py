"""The Hessian of the loss at θ* (or any grid point): eigenvalues, eigenvectors, trace and spectral density.

    landscape-ray hessian jobs/quickstart.yaml --top 5 --which both --trace --density --actors 2
    landscape-ray hessian jobs/quickstart.yaml --at 0.5,-0.25        # at θ* + 0.5δ − 0.25η

    payload = prepare(spec)                                   # compute/prepare.py: the inputs, checked
    connect(address)                                          # cluster/connect.py
    result = compute(spec, payload, top=5, which="both", trace=True, density=True, actors=2)
    amend(store_path, lambda root: write_group(root, result, spec))  # store/layout.py: in a copy, swapped in
    result, existed = run(spec, top=5, trace=True)             # all of it, as the command: into output.store

The products come from `cluster.shards.ShardedOperator` (the split sharded over Ray actors; any number of actors
gives the same operator up to float rounding); SciPy's eigensolver (`compute/spectrum.py`) sees only that
operator. A shard that kills `compute.max_tile_failures` actors ends the job with one line.

The store gets a `hessian` group (replaced on every call): `eigenvalues` (with each one's end, largest/smallest),
`eigenvectors/<k>/<name>` (unit vectors over the parameters, by state_dict name), `trace` and `trace_se`,
`density_grid` and `density` (with the Lanczos `density_nodes` and `density_weights`). Where the spec's
`output.store` does not exist yet, `hessian` writes a store of its own holding that group and the spec.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence

from landscape_ray.cluster.connect import connect, connected, disconnect
from landscape_ray.cluster.shards import ShardedOperator
from landscape_ray.compute import spectrum
from landscape_ray.compute.curvature import Curvature, unflatten
from landscape_ray.compute.prepare import prepare
from landscape_ray.core.errors import RunError, SpecError
from landscape_ray.inputs.directions import Directions, direction_space, normalize
from landscape_ray.inputs.kinds import ON_CLUSTER
from landscape_ray.inputs.models import load_model
from landscape_ray.inputs.payload import Payload
from landscape_ray.spec.grid import Grid
from landscape_ray.spec.schema import Spec
from landscape_ray.store.fingerprint import fingerprints
from landscape_ray.store.layout import amend, create, versions
from landscape_ray.store.transaction import claimed


def check_request(top: int | None, which: str, probes: int, steps: int, actors: int | None, tol: float) -> None:
    """The numeric options, checked before any data is loaded."""
    minima = {"--top": (top, 1), "--probes": (probes, 2), "--steps": (steps, 1), "--actors": (actors, 1)}
    for name, (value, least) in minima.items():
        if value is not None and value < least:
            raise SpecError(f"{name}: must be >= {least}, got {value}")
    if which not in spectrum.ENDS:
        raise SpecError(f"--which: expected one of {', '.join(spectrum.ENDS)}, got {which!r}")
    if not 0 < tol < 1:
        raise SpecError(f"--tol: must be between 0 and 1, got {tol}")


def compute(
    spec: Spec,
    payload: Payload,
    top: int | None = 1,
    trace: bool = False,
    density: bool = False,
    which: str = "largest",
    at: tuple[float, ...] | None = None,
    actors: int | None = None,
    probes: int = 100,
    steps: int = 80,
    seed: int = 0,
    tol: float = 1e-4,
    log=print,
) -> dict:
    """Eigenpairs (`top` per end; None: none), trace and density of the Hessian of the first split's mean loss, on
    the connected cluster (connect.connect), from the inputs in `payload` (prepare.prepare)."""
    check_request(top, which, probes, steps, actors, tol)
    split = spec.data.splits[0]
    if at is not None and len(at) != payload.directions.ndim:
        raise SpecError(
            f"--at: the spec's directions span {payload.directions.ndim} axes, got {len(at)} "
            f"coordinate(s) {','.join(map(str, at))}"
        )
    local = Curvature.from_payload(spec, payload, split, "cpu")  # zero-copy views of the payload: a cheap check
    local.check()
    dim, layout = local.dim, local.layout
    if top is not None and top >= dim:
        raise SpecError(f"--top: {top} eigenvalues asked of a Hessian of {dim} parameters; at most {dim - 1}")
    start = time.perf_counter()
    result = {
        "split": split,
        "samples": len(payload.splits[split]),
        "parameters": dim,
        "at": list(at) if at is not None else None,
        "layout": layout,
        "seed": seed,
    }
    with ShardedOperator(spec, payload, split, at, actors, log) as op:
        if top is not None:
            try:
                values, vectors, ends = spectrum.eigenpairs(op.matvec, dim, top, which, seed, tol)
            except ArpackNoConvergence as err:
                raise RunError(f"hessian: the eigensolver did not converge ({err}); try a larger --tol") from None
            result.update(eigenvalues=values, eigenvectors=vectors, ends=ends)
        if trace:
            trace, se, samples = spectrum.hutchinson(op.matvec, dim, probes, seed)
            result.update(trace=trace, trace_se=se, trace_samples=samples)
        if density:
            result["density"] = spectrum.density(op.matvec, dim, steps=steps, seed=seed)
        result.update(actors=len(op.actors), products=op.products, actor_deaths=op.deaths)
    result["wall_s"] = round(time.perf_counter() - start, 3)
    return result


def run(spec: Spec, address: str | None = None, **request) -> tuple[dict, bool]:
    """`landscape-ray hessian` (and `landscape_ray.hessian`): `compute(**request)` on `address`'s cluster (a private
    one if None, stopped after), written into `spec.output.store`, one writer at a time and only into a store of ours.
    Returns the result and whether the store existed (its `hessian` group replaced) or was made for it."""
    path = spec.output.store
    joined = connected()
    with claimed(path, "landscape-ray hessian", replace=True) as there:
        # A new store is a whole landscape store of the spec, no point computed yet (`run --resume` computes
        # them), so it needs the spec's directions; so do products away from θ* (at).
        directed = request.get("at") is not None or not there
        payload = prepare(spec, vectors=None if directed else [])
        try:
            connect(address)
            if directed and spec.directions.kind in ON_CLUSTER:
                payload.directions = eigen_directions(spec, payload)
            result = compute(spec, payload, **request)
        finally:
            if not joined:
                disconnect()
        if there:  # changed in a copy that then takes its place: a kill leaves the old group or the new one
            amend(path, lambda root: write_group(root, result, spec))
        else:  # made whole, beside and swapped in, like a run's (or in place on an object store)
            inputs = fingerprints(spec, payload.splits)
            grid, fill = Grid.from_spec(spec.grid), lambda root: write_group(root, result, spec)
            create(path, spec, grid, payload.variables, payload.directions, inputs=inputs, fill=fill)
    return result, there


def vectors_of(result: dict) -> list[dict[str, np.ndarray]]:
    """The eigenvectors as {state_dict name: array} dicts, in parameter order (the form directions take)."""
    layout = result["layout"]
    return [{k: v.astype(np.float32) for k, v in unflatten(vec, layout).items()} for vec in result["eigenvectors"]]


def eigen_directions(spec: Spec, payload: Payload) -> Directions:
    """`Directions` along the top eigenvectors at θ* (`directions.kind: hessian`: one per grid axis), eigenvalues
    attached, computed on the connected cluster: a run calls this once its cluster is up, before the tiles.

    Entries outside the parameters (BN statistics with `dir_type: states`) get zero; `norm: filter` rescales as for
    random directions.
    """
    ndim = 1 if spec.grid.y is None else 2
    at_theta = replace(payload, directions=Directions([], []))  # the products need no directions at θ*
    result = compute(spec, at_theta, top=ndim, which="largest", log=lambda *_: None)
    model = load_model(spec)  # the names and shapes of the direction space
    space = direction_space(model, spec.directions.dir_type)
    vectors = []
    for vec in vectors_of(result):
        full = {k: vec.get(k, np.zeros(tuple(t.shape), np.float32)) for k, t in space.items()}
        if spec.directions.norm == "filter":
            full = {
                k: normalize(torch.from_numpy(v), space[k].detach().cpu(), "filter", spec.directions.ignore).numpy()
                for k, v in full.items()
            }
        vectors.append(full)
    values = [float(v) for v in result["eigenvalues"]]
    labels = [f"{a}: Hessian eigenvector {k + 1} at θ* (λ = {v:.4g})" for k, (a, v) in enumerate(zip("xy", values))]
    return Directions(vectors, labels, axis_attrs=[{"eigenvalue": v} for v in values])


def write_group(root, result: dict, spec: Spec) -> None:
    """`result` as the `hessian` group of the open store `root` (a fill of `layout.create` or `layout.amend`)."""
    attrs = {k: result[k] for k in ("split", "samples", "parameters", "at", "seed", "actors", "products", "wall_s")}
    group = root.create_group(
        "hessian", overwrite=True, attributes={**attrs, "spec": spec.model_dump(mode="json"), "versions": versions()}
    )

    def array(name: str, data, dims: list[str], **attributes) -> None:
        group.create_array(
            name,
            data=np.asarray(data, dtype=np.float64),
            fill_value=np.nan,
            dimension_names=dims,
            attributes=attributes,
        )

    if "eigenvalues" in result:
        array(
            "eigenvalues",
            result["eigenvalues"],
            ["eigen"],
            ends=result["ends"],
            long_name="Hessian eigenvalues of the mean loss",
        )
        eigenvectors = group.create_group("eigenvectors")  # each group before what it holds: see layout._build
        for k, vector in enumerate(vectors_of(result)):
            one = eigenvectors.create_group(str(k))
            for name, values in vector.items():
                one.create_array(name, data=values, fill_value=np.nan)
    if "trace" in result:
        array("trace", result["trace"], [], long_name="Hutchinson estimate of the Hessian trace")
        array("trace_se", result["trace_se"], [], long_name="standard error of the trace estimate")
    if "density" in result:
        d = result["density"]
        array("density_grid", d["grid"], ["density_grid"], long_name="eigenvalue")
        array("density", d["density"], ["density_grid"], sigma=d["sigma"], long_name="spectral density (SLQ)")
        array("density_nodes", d["nodes"], ["slq_run", "slq_node"], long_name="Lanczos quadrature nodes")
        array("density_weights", d["weights"], ["slq_run", "slq_node"], long_name="Lanczos quadrature weights")


def summary(result: dict) -> str:
    where = "θ*" if result["at"] is None else f"θ* + ({', '.join(map(str, result['at']))})·directions"
    parts = [
        f"hessian of the {result['split']} loss at {where} ({result['samples']} samples, "
        f"{result['parameters']} parameters, {result['actors']} actor(s))"
    ]
    if "eigenvalues" in result:
        for end in ("largest", "smallest"):
            vals = [v for v, e in zip(result["eigenvalues"], result["ends"]) if e == end]
            if vals:
                parts.append(f"{end} eigenvalues: " + ", ".join(f"{v:.6g}" for v in vals))
    if "trace" in result:
        parts.append(f"trace: {result['trace']:.6g} ± {result['trace_se']:.2g}")
    if "density" in result:
        d = result["density"]
        span = f"[{d['grid'][0]:.4g}, {d['grid'][-1]:.4g}]"
        parts.append(f"density: {np.isfinite(d['nodes']).sum()} Lanczos nodes, grid {span}")
    parts.append(
        f"{result['products']} Hessian-vector products in {result['wall_s']:.1f} s, "
        f"{result['actor_deaths']} actor death(s)"
    )
    return "\n".join(parts)


def parse_at(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(a) for a in text.split(","))
    except ValueError:
        raise SpecError(f"--at: expected coordinates like 0.5,-0.25, got {text!r}") from None
