"""The commands that compute: `run`, `train`, `hessian`, `paper`, `figure`, `directions` (torch, and Ray for
those that use a cluster).
"""

from __future__ import annotations

from landscape_ray import hessians as curvature
from landscape_ray.cluster.connect import connect, connected, disconnect, run_task
from landscape_ray.compute.speedups import keep_freed_memory
from landscape_ray.core.errors import SpecError
from landscape_ray.core.progress import say
from landscape_ray.inputs.directions import make_directions, write_directions
from landscape_ray.inputs.models import build_model, load_model
from landscape_ray.job import run as run_job
from landscape_ray.paper.catalogue import SIZES
from landscape_ray.paper.catalogue import paper as make_paper
from landscape_ray.pictures.draw import save
from landscape_ray.pictures.figures import (
    overlay_1d,
    training_curves,
    trajectory_figure,
    weight_histograms,
    weight_norm_figure,
)
from landscape_ray.spec.specfile import load_spec
from landscape_ray.spec.training import TrainSpec
from landscape_ray.store.fingerprint import changed, fingerprints
from landscape_ray.store.tiles import Store
from landscape_ray.train import train as train_model


def overrides(args) -> list[str]:
    """The `--set` overrides, and `--trust-checkpoint` as one."""
    return list(args.set) + (["model.trust_checkpoint=true"] if args.trust_checkpoint else [])


def run(args) -> None:
    keep_freed_memory()  # the driver evaluates grid points while the cluster starts, as an actor does (pool.py)
    joined = connected()  # a caller's Ray (main() called in a process that has one) stays up
    try:
        run_job(
            load_spec(args.spec, overrides(args)),
            resume=args.resume,
            overwrite=args.overwrite,
            address=args.address,
            force=args.force,
            log=say,
        )
    finally:  # the command is done with Ray (a private cluster stops here rather than in Ray's slower exit hook)
        if not joined:
            disconnect()


def train(args) -> None:
    spec = load_spec(args.spec, overrides(args), model=TrainSpec)
    if args.address:
        connect(args.address)
        final = run_task(train_model, spec, device=spec.device)
    else:
        final = train_model(spec, log=say)
    print(f"final checkpoint: {final}")


def figure(args) -> None:
    if not str(args.out).endswith((".png", ".pdf")):
        raise SpecError(f"out: {args.out} must end in .png or .pdf")
    if args.kind == "weights":
        fig = weight_histograms([args.inputs], args.label)
    elif args.kind == "trajectory":
        if len(args.inputs) < 2:
            raise SpecError("trajectory: give a store and its checkpoints")
        spec = load_spec(args.spec) if args.spec else None
        fig = trajectory_figure(
            args.inputs[0],
            args.inputs[1:],
            args.var,
            log=args.log,
            fit_path=args.fit_path,
            spec=spec,
            trust_checkpoint=args.trust_checkpoint,
        )
    elif args.kind == "norms":
        fig = weight_norm_figure(args.inputs, args.label)
    elif args.kind == "curves":
        fig = training_curves(args.inputs, args.label)
    else:
        fig = overlay_1d(args.inputs, args.label, log=args.log)
    print(save(fig, args.out))


def paper(args) -> None:
    size = args.size or ("quick" if args.quick else "full")
    if size not in SIZES:
        raise SpecError(f"--size: expected one of {', '.join(SIZES)}, got {size!r}")
    print(make_paper(args.out, size))


def directions(args) -> None:
    store = Store(args.store, mode="r")
    model = None
    if str(args.out).endswith((".h5", ".hdf5")):  # the paper's .h5 lists the model's entries in its own order
        if not args.spec:
            raise SpecError(
                f"--spec: {args.out} lists the entries in the model's order, and a store's model is not imported; "
                "give --spec with your spec of that model (or write a .npz)"
            )
        spec = load_spec(args.spec)
        model = build_model(spec.model)
    vectors = store.directions() or drawn_directions(store)
    print(write_directions(vectors, args.out, model, store.spec.directions.dir_type))


def drawn_directions(store: Store) -> list[dict]:
    """A `directions.regenerate` store keeps the recipe (its spec), not the arrays: they are drawn here against θ*,
    whose files must still be those the store was computed with."""
    spec = store.spec
    if not spec.directions.regenerate:
        raise SpecError(f"store: {store.path} holds no directions")
    now = {k: v for k, v in fingerprints(spec, {}).items() if k.startswith("model.")}
    diff = changed({k: v for k, v in store.inputs.items() if k.startswith("model.")}, now)
    if diff:
        raise SpecError("store: " + "; ".join(diff))
    return make_directions(load_model(spec), spec.directions, 1 if spec.grid.y is None else 2)


def hessian(args) -> None:
    spec = load_spec(args.spec, overrides(args))
    top = args.top if args.top is not None or args.trace or args.density else 1
    at = curvature.parse_at(args.at)
    curvature.check_request(top, args.which, args.probes, args.steps, args.actors, args.tol)  # before inputs load
    result, there = curvature.run(
        spec,
        args.address,
        top=top,
        trace=args.trace,
        density=args.density,
        which=args.which,
        at=at,
        actors=args.actors,
        probes=args.probes,
        steps=args.steps,
        tol=args.tol,
    )
    print(curvature.summary(result))
    where = "" if there else ", in a new store: run --resume computes its surface"
    print(f"written to {spec.output.store} (group hessian{where})")
