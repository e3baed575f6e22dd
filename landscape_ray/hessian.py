"""Hessian of the mean loss over a split, its shards on Ray actors: eigenvalues, trace, spectral density.

    landscape-ray hessian jobs/quickstart.yaml --top 5 --which both --trace --density --actors 2
    landscape-ray hessian jobs/quickstart.yaml --at 0.5,-0.25        # at θ* + 0.5δ − 0.25η

    result = compute(spec, top=5, which="both", trace=True, density=True, actors=2)
    write(spec.output.store, result, spec)

The split (the spec's first, `train` by default) is cut into one contiguous
shard per actor; each actor holds the model and its shard (θ*, directions and
data travel once through the object store as NumPy arrays) and returns the
float64 *sum* of its samples' Hessian-vector products with their count; the
driver adds the shards in shard order and divides by the total, so any number
of actors gives the same operator up to float rounding. SciPy's eigensolver
(`spectrum.py`) sees only that operator. An actor that dies mid-product is
replaced and its shard recomputed with the same vector, so the numbers are those
of an undisturbed run; a shard that kills `compute.max_tile_failures` actors ends
the job with one line. Ray is imported inside the functions that use a cluster,
so the CLI can set Ray's options (loopback-only) before its first import.

The store gets a `hessian` group (replaced on every call): `eigenvalues` (with
each one's end, largest/smallest), `eigenvectors/<k>/<name>` (unit vectors over
the parameters, by state_dict name), `trace` and `trace_se`, `density_grid` and
`density` (with the Lanczos `density_nodes` and `density_weights`).
"""

from __future__ import annotations

import time

import numpy as np

from . import spectrum
from .errors import RunError, SpecError
from .ownership import check_ours, claim
from .paths import exists
from .spec import Spec


class ShardWorker:
    """One shard's Hessian-vector products (the body of a Ray actor; plain Python, importable without a cluster)."""

    def __init__(self, spec: dict, state: dict, directions: list, shard, split: str, at, device: str, threads: int):
        import torch

        from .curvature import Curvature
        from .directions import Directions
        from .payload import Payload

        torch.set_num_threads(threads)
        payload = Payload(state, Directions(directions, []), {split: shard})
        self.curvature = Curvature.from_payload(Spec.model_validate(spec), payload, split, device, at)

    def hvp(self, v: np.ndarray) -> tuple[np.ndarray, int]:
        return self.curvature.hvp_sum(v)


class ShardedOperator:
    """v ↦ H v of the mean loss over `split`, one shard per actor. Use as a context manager (actors are stopped)."""

    def __init__(self, spec: Spec, payload, split: str, at=None, actors: int | None = None, log=print):
        import ray

        from .curvature import shards
        from .scheduler import plan_actors

        planned, self.options = plan_actors(spec)
        self.actor_class = ray.remote(max_restarts=0)(ShardWorker)
        self.spec, self.split, self.at, self.log = spec, split, at, log
        self.spec_json = spec.model_dump(mode="json")
        self.state = ray.put(payload.state)
        self.directions = ray.put(payload.directions.vectors)
        self.shards = [ray.put(s) for s in shards(payload.splits[split], actors or planned)]
        if not self.options["num_gpus"]:  # more CPU actors than CPUs share them rather than wait forever for one
            share = ray.cluster_resources().get("CPU", 1) / len(self.shards)
            self.options = {**self.options, "num_cpus": min(self.options["num_cpus"], share)}
        self.actors = [self._spawn(i) for i in range(len(self.shards))]
        self.failures = [0] * len(self.shards)
        self.products = 0
        self.deaths = 0

    def _spawn(self, i: int):
        """An actor for shard i (again, after a death: the shard and θ* are still in the object store)."""
        device = "cuda" if self.options["num_gpus"] else "cpu"
        return self.actor_class.options(**self.options).remote(
            self.spec_json,
            self.state,
            self.directions,
            self.shards[i],
            self.split,
            self.at,
            device,
            self.spec.compute.cpus_per_actor,
        )

    def matvec(self, v: np.ndarray) -> np.ndarray:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        ref = ray.put(np.asarray(v, dtype=np.float32))
        calls = {actor.hvp.remote(ref): i for i, actor in enumerate(self.actors)}
        results = [None] * len(self.actors)
        while calls:
            [done], _ = ray.wait(list(calls), num_returns=1)
            i = calls.pop(done)
            try:
                results[i] = ray.get(done)
            except RayTaskError as err:  # an exception in the model or metric: not a crash, so no retry
                raise RunError(f"hessian: shard {i} failed: {err.cause!r}") from None
            except RayActorError:
                self.failures[i] += 1
                self.deaths += 1
                if self.failures[i] >= self.spec.compute.max_tile_failures:
                    raise RunError(
                        f"hessian: shard {i} killed {self.failures[i]} actors; giving up "
                        f"(compute.max_tile_failures={self.spec.compute.max_tile_failures})"
                    ) from None
                self.log(f"hessian: the actor of shard {i} died; a new one recomputes the shard")
                self.actors[i] = self._spawn(i)
                calls[self.actors[i].hvp.remote(ref)] = i
        self.products += 1
        total = np.zeros_like(results[0][0])
        for partial, _ in results:  # in shard order, so reruns round identically
            total += partial
        return total / sum(count for _, count in results)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)

    def __enter__(self) -> "ShardedOperator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    address: str | None = None,
    log=print,
) -> dict:
    """Eigenpairs (`top` per end; None: none), trace and density of the Hessian of the first split's mean loss."""
    from scipy.sparse.linalg import ArpackNoConvergence

    from .curvature import Curvature
    from .payload import prepare
    from .scheduler import connect

    check_request(top, which, probes, steps, actors, tol)
    split = spec.data.splits[0]
    payload = prepare(spec, vectors=[] if at is None else None)  # no directions computed when none are needed
    if at is not None and len(at) != len(payload.directions.vectors):
        raise SpecError(
            f"--at: the spec's directions span {len(payload.directions.vectors)} axes, got {len(at)} "
            f"coordinate(s) {','.join(map(str, at))}"
        )
    local = Curvature.from_payload(spec, payload, split, "cpu")  # zero-copy views of the payload: a cheap check
    local.check()
    dim, layout = local.dim, local.layout
    if top is not None and top >= dim:
        raise SpecError(f"--top: {top} eigenvalues asked of a Hessian of {dim} parameters; at most {dim - 1}")
    connect(address)
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


def vectors_of(result: dict) -> list[dict[str, np.ndarray]]:
    """The eigenvectors as {state_dict name: array} dicts, in parameter order (the form directions take)."""
    from .curvature import unflatten

    layout = result["layout"]
    return [{k: v.astype(np.float32) for k, v in unflatten(vec, layout).items()} for vec in result["eigenvectors"]]


def eigen_directions(model, spec: Spec, ndim: int):
    """`Directions` along the top `ndim` eigenvectors at θ* (for `directions.kind: hessian`), eigenvalues attached.

    Entries outside the parameters (BN statistics with `dir_type: states`) get zero; `norm: filter` rescales as for
    random directions.
    """
    import torch

    from .directions import Directions, direction_space, normalize

    result = compute(spec, top=ndim, which="largest", log=lambda *_: None)
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


def extremes(curvature, seed: int = 0, tol: float = 1e-3) -> tuple[float, float]:
    """(λmax, λmin) at the curvature's current point, in this process (for `eval.curvature` inside an actor)."""
    values, _, _ = spectrum.eigenpairs(curvature.matvec, curvature.dim, 1, "both", seed, tol)
    return float(values[0]), float(values[1])


def write(store_path, result: dict, spec: Spec) -> None:
    """Put `result` into the `hessian` group of the landscape store at `store_path` (replaced if there).

    The caller holds `ownership.claim(store_path)` and has checked the store is ours.
    """
    import zarr

    from .layout import consolidate, versions
    from .paths import zarr_store

    root = zarr.open_group(zarr_store(store_path, "a"), mode="a", zarr_format=3)
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
        for k, vector in enumerate(vectors_of(result)):
            for name, values in vector.items():
                group.create_array(f"eigenvectors/{k}/{name}", data=values, fill_value=np.nan)
    if "trace" in result:
        array("trace", result["trace"], [], long_name="Hutchinson estimate of the Hessian trace")
        array("trace_se", result["trace_se"], [], long_name="standard error of the trace estimate")
    if "density" in result:
        d = result["density"]
        array("density_grid", d["grid"], ["density_grid"], long_name="eigenvalue")
        array("density", d["density"], ["density_grid"], sigma=d["sigma"], long_name="spectral density (SLQ)")
        array("density_nodes", d["nodes"], ["slq_run", "slq_node"], long_name="Lanczos quadrature nodes")
        array("density_weights", d["weights"], ["slq_run", "slq_node"], long_name="Lanczos quadrature weights")
    consolidate(store_path)


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


def add_parser(subparsers, spec_args) -> None:
    """The `hessian` subcommand; `spec_args` adds the spec, --set and --trust-checkpoint arguments (cli.py's)."""
    q = subparsers.add_parser("hessian", help="Hessian eigenvalues, trace and spectral density of the loss")
    spec_args(q)
    q.add_argument(
        "--top",
        type=int,
        default=None,
        help="K eigenvalues and eigenvectors per end (default: 1, unless only --trace/--density are asked)",
    )
    q.add_argument(
        "--which",
        default="largest",
        choices=list(spectrum.ENDS),
        help="largest algebraic, smallest (most negative) or both (default: largest)",
    )
    q.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="eigensolver residual tolerance, relative to the spectral norm (default: 1e-4)",
    )
    q.add_argument("--trace", action="store_true", help="Hutchinson estimate of the trace, with its standard error")
    q.add_argument("--probes", type=int, default=100, help="Rademacher probes of the trace (default: 100)")
    q.add_argument("--density", action="store_true", help="spectral density by stochastic Lanczos quadrature")
    q.add_argument("--steps", type=int, default=80, help="Lanczos steps of the density (default: 80)")
    q.add_argument(
        "--at", default=None, metavar="A[,B]", help="at θ* + A·δ + B·η of the spec's directions (default: θ*)"
    )
    q.add_argument("--actors", type=int, default=None, help="shards and actors (default: compute.actors)")
    q.add_argument(
        "--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a private local cluster)"
    )
    q.set_defaults(func=main)


def main(args) -> None:
    from .cli import private_ray_on_loopback
    from .spec import load_spec
    from .store import naming

    private_ray_on_loopback(args.address)  # before anything imports Ray

    overrides = list(args.set) + (["model.trust_checkpoint=true"] if args.trust_checkpoint else [])
    spec = load_spec(args.spec, overrides)
    top = args.top if args.top is not None or args.trace or args.density else 1
    check_request(top, args.which, args.probes, args.steps, args.actors, args.tol)  # before the (slow) inputs load
    result = compute(
        spec,
        top=top,
        trace=args.trace,
        density=args.density,
        which=args.which,
        at=parse_at(args.at),
        actors=args.actors,
        probes=args.probes,
        steps=args.steps,
        tol=args.tol,
        address=args.address,
    )
    print(summary(result))
    path = spec.output.store
    if not exists(path):
        print(f"output.store {path} does not exist: the results are printed, not stored (run the surface first)")
        return
    with claim(path, "landscape-ray hessian"), naming(path):  # one writer, only into a store of ours
        check_ours(path)
        write(path, result, spec)
    print(f"written to {path} (group hessian)")
