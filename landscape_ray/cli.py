"""Command line: `landscape-ray run | render | compare | info | schema | train` (also `python -m landscape_ray`).

    landscape-ray run jobs/quickstart.yaml --set grid.x.num=21 --overwrite
    landscape-ray render runs/demo/surface.zarr --kind contour,heatmap --log
    landscape-ray compare runs/a.zarr runs/b.zarr --out ab.pdf --vmin 0.1 --vmax 10 --level-step 0.5
    landscape-ray info runs/demo/surface.zarr
    landscape-ray verify runs/demo/surface.zarr     # exit 1 if a chunk is damaged; --resume repairs it
    landscape-ray schema > spec.schema.json
    landscape-ray train jobs/quickstart-train.yaml

Bad input prints one `field: message` line per problem and exits with status 2;
a run that cannot finish exits with status 1, Ctrl-C with 130 and SIGTERM with
143 (what was computed is kept). None prints a traceback unless `--debug` comes
before the command. A spec file `-` is stdin.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

import numpy as np
import yaml

from .errors import EXIT_CODES, Interrupted, RunError, SpecError, unwind_on_sigterm
from .hessian import add_parser as add_hessian_parser  # numpy/scipy only; Ray and torch load when it runs
from .spec import RENDER_KINDS, load_spec, schema_json


def private_ray_on_loopback(address) -> None:
    """Process-wide settings for a private local Ray cluster, made here at the entry point before Ray is imported:
    it listens on 127.0.0.1 only, and its workers import the user's modules from the working directory. Ray's
    notice that such a cluster uses token authentication (its default) is not logged into every run's output
    and a bad input's one line. (Setting RAY_AUTH_MODE=token would say it too, but only before Ray is imported:
    Ray reads it once per process.)"""
    if not (address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))


def cmd_run(args) -> None:
    private_ray_on_loopback(args.address)
    unwind_on_sigterm()  # from the start: a SIGTERM while the inputs load cleans up too (ray.init sets it again)
    from .job import run
    from .scheduler import connected, disconnect

    overrides = list(args.set) + (["model.trust_checkpoint=true"] if args.trust_checkpoint else [])
    joined = connected()  # a caller's Ray (main() called in a process that has one) stays up
    try:
        run(
            load_spec(args.spec, overrides),
            resume=args.resume,
            overwrite=args.overwrite,
            address=args.address,
            force=args.force,
        )
    finally:  # the command is done with Ray (a private cluster stops here rather than in Ray's slower exit hook)
        if not joined:
            disconnect()


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


def _style(args) -> dict:
    """The scale options `render` and `compare` share, as keyword arguments."""
    try:
        marks = [int(e) for e in args.mark_epochs.split(",") if e] if args.mark_epochs else None
    except ValueError:
        raise SpecError(f"--mark-epochs: expected epochs like 150,225, got {args.mark_epochs!r}") from None
    return {
        "log": args.log,
        "vmin": args.vmin,
        "vmax": args.vmax,
        "levels": args.levels,
        "level_step": args.level_step,
        "mark_epochs": marks,
    }


def cmd_render(args) -> None:
    from .render import render

    kinds = [k for k in args.kind.split(",") if k]
    variables = [v for v in args.vars.split(",") if v] if args.vars else None
    for path in render(args.store, args.out, kinds, variables, fmt=args.format, **_style(args)):
        print(path)


def cmd_compare(args) -> None:
    from .render import compare

    print(compare(args.stores, args.out, args.var, args.kind, titles=args.title, cols=args.cols, **_style(args)))


def cmd_figure(args) -> None:
    from .figures import main as figure

    figure(args)


def cmd_report(args) -> None:
    from .report import main as report

    report(args)


def cmd_paper(args) -> None:
    from .paper import main as paper

    paper(args)


def cmd_info(args) -> None:
    from .progress import fmt_seconds
    from .store import Store

    store = Store(args.store, mode="r")
    done = store.done()
    print(f"store: {store.path} (format {store.format})")
    print(f"progress: {int(done.sum())}/{done.size} points done ({100 * done.mean():.1f}%)")
    damaged = store.damaged()
    if damaged:
        print(f"{len(damaged)} damaged tiles (run verify); --resume recomputes them")
    speed = store.speed()
    if speed is not None and not done.all():
        print(f"speed: {speed[0]:.2f} points/s over the last tiles; ETA {fmt_seconds(speed[1])}")
    recs = store.records()
    if len(recs):
        print(
            f"tiles: {len(recs)} finished, {int((recs[:, 2] > 0).sum())} retried, "
            f"{recs[:, 1].mean():.2f} s each on average, by {len(np.unique(recs[:, 3]))} actor(s)"
        )
    print("variables:")
    for name in store.variables:
        v = store.read(name)
        finite = v[np.isfinite(v)]
        span = f"min {finite.min():.6g}, max {finite.max():.6g}" if finite.size else "no values yet"
        print(
            f"  {name}: {span}"
            + (
                f" ({np.isnan(v[done]).sum() + np.isinf(v[done]).sum()} non-finite)"
                if (~np.isfinite(v[done])).any()
                else ""
            )
        )
    if store.inputs:
        print("inputs:")
        for name, digest in store.inputs.items():
            print(f"  {name}: {digest}")
    for i, summary in enumerate(store.root.attrs.get("runs", [])):
        print(f"run {i + 1}: {json.dumps(summary)}")
    if "hessian" in store.root:
        h = store.root["hessian"]
        line = f"hessian ({h.attrs['split']}, at {h.attrs['at'] or 'θ*'}, {h.attrs['products']} products)"
        if "eigenvalues" in h:
            line += ": eigenvalues " + ", ".join(f"{v:.6g}" for v in h["eigenvalues"][...])
        if "trace" in h:
            line += f"; trace {float(h['trace'][...]):.6g} ± {float(h['trace_se'][...]):.2g}"
        print(line)
    print("spec:")
    print(yaml.safe_dump(store.spec.model_dump(mode="json"), sort_keys=False).rstrip())


def cmd_verify(args) -> int:
    from .store import Store

    store = Store(args.store, mode="r")
    damaged = store.damaged()
    for tile, why in damaged.items():
        print(f"tile {tile} (points {store.grid.slices(tile)}): {why}")
    done = store.done()
    print(
        f"{store.path}: {len(damaged)} damaged tile(s) of {len(store.grid.tiles())}; "
        f"{int(done.sum())}/{done.size} points done" + ("; --resume recomputes them" if damaged else "")
    )
    return 1 if damaged else 0


def cmd_upgrade(args) -> None:
    from .layout import upgrade
    from .ownership import claim

    with claim(args.store, "landscape-ray upgrade"):
        store = upgrade(args.store)
    print(f"{store.path}: format {store.format}")


def cmd_directions(args) -> None:
    from .directions import write_directions
    from .models import build
    from .store import Store

    store = Store(args.store, mode="r")
    model = build(store.spec.model.arch, **store.spec.model.kwargs)  # names and shapes, for the paper's .h5 order
    print(write_directions(store.directions(), args.out, model, store.spec.directions.dir_type))


def cmd_schema(args) -> None:
    from .spec import Spec
    from .train import TrainSpec

    print(schema_json(TrainSpec if args.train else Spec))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="landscape-ray", description="Loss landscapes of neural nets (Li et al., 2018) on Ray."
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    def spec_args(q):
        q.add_argument("spec", help="YAML spec file")
        q.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a spec field, e.g. grid.x.num=21 (repeatable)",
        )
        q.add_argument(
            "--trust-checkpoint",
            action="store_true",
            help="allow checkpoints that need full unpickling (default: weights only)",
        )

    q = sub.add_parser("run", help="compute a loss landscape into a Zarr store")
    spec_args(q)
    mode = q.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="complete an existing store made from the same spec")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing store")
    q.add_argument(
        "--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a private local cluster)"
    )
    q.add_argument("--force", action="store_true", help="allow grids of more than 10,000,000 points")
    q.set_defaults(func=cmd_run)

    q = sub.add_parser("train", help="train a model, writing a checkpoint per epoch")
    spec_args(q)
    q.add_argument(
        "--address",
        default=None,
        help="run as a task on this Ray cluster (default: here); "
        "`out` must be a folder that node can write and you can read",
    )
    q.set_defaults(func=cmd_train)

    def style_args(q):
        q.add_argument(
            "--log", action="store_true", help="log10 of the values; for 1D curves a log loss axis (default: linear)"
        )
        q.add_argument(
            "--vmin", type=float, default=None, help="lower end of the colour scale and contours (default: data min)"
        )
        q.add_argument(
            "--vmax", type=float, default=None, help="upper end of the colour scale and contours (default: data max)"
        )
        levels = q.add_mutually_exclusive_group()
        levels.add_argument(
            "--levels",
            type=int,
            default=None,
            help="at most this many contour levels, at round values from vmin to vmax "
            "(default: even steps plus rings around a deep minimum, as the paper draws them)",
        )
        levels.add_argument(
            "--level-step",
            type=float,
            default=None,
            help="contour level spacing instead, in decades with --log "
            "(the paper: --vmin 0.1 --vmax 10 --level-step 0.5)",
        )
        q.add_argument(
            "--mark-epochs",
            default=None,
            metavar="E,E",
            help="PCA stores: epochs marked red on the training path, e.g. the lr drops 150,225 (default: none)",
        )

    q = sub.add_parser("render", help="draw pictures from a store (complete or partial)")
    q.add_argument("store")
    q.add_argument("--out", default=None, help="output folder (default: the store's folder)")
    q.add_argument(
        "--kind",
        default=",".join(RENDER_KINDS),
        help=f"comma-separated kinds for 2D stores (default: {','.join(RENDER_KINDS)}); "
        "1D stores give one curves picture",
    )
    q.add_argument(
        "--vars", default=None, help="comma-separated variables (default: every *_loss; 1D: every *_loss and *_acc)"
    )
    q.add_argument(
        "--format",
        default="png",
        choices=["png", "pdf", "html", "vtp"],
        help="png | pdf pictures, html (interactive surface, needs plotly) or vtp (ParaView mesh) (default: png)",
    )
    style_args(q)
    q.set_defaults(func=cmd_render)

    q = sub.add_parser(
        "compare", help="stores side by side on one colour scale, levels and axes (the paper's Fig. 4/5/7)"
    )
    q.add_argument("stores", nargs="+", help="the stores, in panel order; all 2D or all 1D")
    q.add_argument("--out", required=True, help="picture file, .png or .pdf")
    q.add_argument(
        "--var",
        default="train_loss",
        help="2D: the variable drawn (default: train_loss); 1D stores show every loss and accuracy",
    )
    q.add_argument("--kind", default="contour", choices=RENDER_KINDS, help="2D: how it is drawn (default: contour)")
    q.add_argument("--cols", type=int, default=None, help="panels per row (default: all in one row)")
    q.add_argument(
        "--title",
        action="append",
        default=None,
        help="a panel title, once per store in order (default: model arch and test error at the centre)",
    )
    style_args(q)
    q.set_defaults(func=cmd_compare)

    q = sub.add_parser(
        "figure",
        help="weight histograms, trajectories on a store, weight norms, training "
        "curves, 1D overlays (the paper's Figs. 3, 9, 11, 18, 21-22)",
    )
    q.add_argument(
        "kind",
        choices=("weights", "trajectory", "norms", "curves", "overlay"),
        help="weights: CHECKPOINTS | trajectory: STORE CHECKPOINTS… | norms, curves: RUN folders | overlay: 1D STOREs",
    )
    q.add_argument("inputs", nargs="+", help="paths or globs, as the kind needs")
    q.add_argument("--out", required=True, help="picture file, .png or .pdf")
    q.add_argument("--label", action="append", default=None, help="a legend label per input, in order")
    q.add_argument("--var", default="train_loss", help="trajectory: the store's variable under the path")
    q.add_argument("--log", action="store_true", help="log10 of the values (trajectory) or a log loss axis (overlay)")
    q.add_argument("--fit-path", action="store_true", help="trajectory: zoom onto the path (the paper's Fig. 9c)")
    q.set_defaults(func=cmd_figure)

    q = sub.add_parser("report", help="one self-contained HTML page of stores (pictures, plotly, spec, runs)")
    q.add_argument("stores", nargs="+", help="the stores, in page order")
    q.add_argument("--out", required=True, help="folder for report.html")
    q.add_argument("--title", default="Loss landscapes", help="the page's heading")
    q.set_defaults(func=cmd_report)

    q = sub.add_parser("paper", help="every figure of the paper (Figs. 1-22) and an index.html")
    q.add_argument("--out", required=True, help="folder for the figures, index.html, runs/ and stores/")
    q.add_argument("--quick", action="store_true", help="digits data, small nets, coarse grids (minutes on a laptop)")
    q.add_argument(
        "--size", default=None, help="tiny | quick | full (default: quick with --quick, else full: CIFAR-10 and GPUs)"
    )
    q.set_defaults(func=cmd_paper)

    q = sub.add_parser("info", help="progress, value ranges and spec of a store")
    q.add_argument("store")
    q.set_defaults(func=cmd_info)

    q = sub.add_parser("verify", help="check every chunk of a store against its checksum; exit 1 if any is damaged")
    q.add_argument("store")
    q.set_defaults(func=cmd_verify)

    q = sub.add_parser("upgrade", help="rewrite a store of an older format in today's (checksums), whole")
    q.add_argument("store")
    q.set_defaults(func=cmd_upgrade)

    q = sub.add_parser("directions", help="export a store's directions for directions.kind: file (or the paper's code)")
    q.add_argument("store")
    q.add_argument(
        "--out", required=True, help="FILE.npz (this service) or FILE.h5 (the paper's code's layout; needs h5py)"
    )
    q.set_defaults(func=cmd_directions)

    add_hessian_parser(sub, spec_args)

    q = sub.add_parser("schema", help="print the JSON Schema of the spec")
    q.add_argument("--train", action="store_true", help="the training spec's schema instead")
    q.set_defaults(func=cmd_schema)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    Interrupted.by = signal.SIGINT  # until a SIGTERM says otherwise (main may be called again in one process)
    try:
        return args.func(args) or 0
    except (SpecError, RunError) as err:
        if args.debug:
            raise
        code = next(code for kind, code in EXIT_CODES if isinstance(err, kind))
        print(f"run failed: {err}" if code == 1 else str(err), file=sys.stderr)
        return code
    except (Interrupted, KeyboardInterrupt) as err:  # a run reports what it kept; elsewhere, just that
        if args.debug:
            raise
        print(str(err) if isinstance(err, Interrupted) else "interrupted", file=sys.stderr)
        return 128 + Interrupted.by
    except BrokenPipeError:  # `landscape-ray info … | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:  # disk full, permissions, a folder where a file should be: one line, the file named
        if args.debug:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"run failed: {where}{err.strerror or err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
