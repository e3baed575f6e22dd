"""Command line: `landscape-ray run | render | info | schema | train` (also `python -m landscape_ray`).

    landscape-ray run jobs/quickstart.yaml --set grid.x.num=21 --overwrite
    landscape-ray render runs/demo/surface.zarr --kind contour,heatmap --log
    landscape-ray info runs/demo/surface.zarr
    landscape-ray schema > spec.schema.json
    landscape-ray train jobs/quickstart-train.yaml

Bad input prints one `field: message` line per problem and exits with status 2;
a run that cannot finish exits with status 1. Neither prints a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import yaml

from .spec import RENDER_KINDS, RunError, SpecError, load_spec, schema_json


def cmd_run(args) -> None:
    from .job import run

    overrides = list(args.set) + (["model.trust_checkpoint=true"] if args.trust_checkpoint else [])
    run(load_spec(args.spec, overrides), resume=args.resume, overwrite=args.overwrite, address=args.address)


def cmd_train(args) -> None:
    from .train import TrainSpec, train

    overrides = list(args.set) + (["model.trust_checkpoint=true"] if args.trust_checkpoint else [])
    spec = load_spec(args.spec, overrides, model=TrainSpec)
    if args.address:
        from . import scheduler

        scheduler.connect(args.address)
        final = scheduler.run_task(train, spec, device=spec.device)
    else:
        final = train(spec)
    print(f"final checkpoint: {final}")


def cmd_render(args) -> None:
    from .render import render

    kinds = [k for k in args.kind.split(",") if k]
    bad = [k for k in kinds if k not in RENDER_KINDS]
    if bad:
        raise SpecError(f"--kind: unknown {', '.join(bad)}; choose from {', '.join(RENDER_KINDS)}")
    variables = [v for v in args.vars.split(",") if v] if args.vars else None
    style = {k: getattr(args, k) for k in ("vmin", "vmax", "levels")}
    for path in render(args.store, args.out, kinds, variables, log=args.log, fmt=args.format, **style):
        print(path)


def cmd_info(args) -> None:
    from .store import Store

    store = Store(args.store, mode="r")
    done = store.done()
    print(f"store: {store.path}")
    print(f"progress: {int(done.sum())}/{done.size} points done ({100 * done.mean():.1f}%)")
    print("variables:")
    for name in store.variables:
        if name == "done":
            continue
        v = store.root[name][...]
        finite = v[np.isfinite(v)]
        span = f"min {finite.min():.6g}, max {finite.max():.6g}" if finite.size else "no values yet"
        print(f"  {name}: {span}" + (f" ({np.isnan(v[done]).sum() + np.isinf(v[done]).sum()} non-finite)" if (~np.isfinite(v[done])).any() else ""))
    for i, summary in enumerate(store.root.attrs.get("runs", [])):
        print(f"run {i + 1}: {json.dumps(summary)}")
    print("spec:")
    print(yaml.safe_dump(store.spec.model_dump(mode="json"), sort_keys=False).rstrip())


def cmd_schema(args) -> None:
    from .train import TrainSpec
    from .spec import Spec

    print(schema_json(TrainSpec if args.train else Spec))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="landscape-ray", description="Loss landscapes of neural nets (Li et al., 2018) on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    def spec_args(q):
        q.add_argument("spec", help="YAML spec file")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec field, e.g. grid.x.num=21 (repeatable)")
        q.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints that need full unpickling (default: weights only)")

    q = sub.add_parser("run", help="compute a loss landscape into a Zarr store")
    spec_args(q)
    mode = q.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="complete an existing store made from the same spec")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing store")
    q.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a private local cluster)")
    q.set_defaults(func=cmd_run)

    q = sub.add_parser("train", help="train a model, writing a checkpoint per epoch")
    spec_args(q)
    q.add_argument("--address", default=None,
                   help="run as a task on this Ray cluster (default: here); `out` must be a folder that node can write and you can read")
    q.set_defaults(func=cmd_train)

    q = sub.add_parser("render", help="draw pictures from a store (complete or partial)")
    q.add_argument("store")
    q.add_argument("--out", default=None, help="output folder (default: the store's folder)")
    q.add_argument("--kind", default=",".join(RENDER_KINDS), help=f"comma-separated kinds (default: {','.join(RENDER_KINDS)})")
    q.add_argument("--vars", default=None, help="comma-separated variables (default: every *_loss)")
    q.add_argument("--log", action="store_true", help="plot log10 of the values (default: linear)")
    q.add_argument("--format", default="png", choices=["png", "pdf"], help="file format (default: png)")
    q.add_argument("--levels", type=int, default=30, help="contour levels (default: 30)")
    q.add_argument("--vmin", type=float, default=None, help="lower end of the colour scale (default: data min)")
    q.add_argument("--vmax", type=float, default=None, help="upper end of the colour scale (default: data max)")
    q.set_defaults(func=cmd_render)

    q = sub.add_parser("info", help="progress, value ranges and spec of a store")
    q.add_argument("store")
    q.set_defaults(func=cmd_info)

    q = sub.add_parser("schema", help="print the JSON Schema of the spec")
    q.add_argument("--train", action="store_true", help="the training spec's schema instead")
    q.set_defaults(func=cmd_schema)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except SpecError as err:
        print(str(err), file=sys.stderr)
        return 2
    except RunError as err:
        print(f"run failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
