"""The command line's arguments: one subcommand per command, each naming the function that runs it.

Each subcommand's `func` is a 'module:function' in `run_commands` (those that compute: torch and Ray) or
`store_commands` (those that read or draw a store), loaded by name once chosen, so reading a store never imports
torch, Ray or SciPy.
"""

from __future__ import annotations

import argparse

from landscape_ray.spec.schema import RENDER_KINDS

ENDS = ["largest", "smallest", "both"]  # compute.spectrum.ENDS, which imports SciPy


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
    q.set_defaults(func="landscape_ray.cli.run_commands:run")

    q = sub.add_parser("train", help="train a model, writing a checkpoint per epoch")
    spec_args(q)
    q.add_argument(
        "--address",
        default=None,
        help="run as a task on this Ray cluster (default: here); "
        "`out` must be a folder that node can write and you can read",
    )
    q.set_defaults(func="landscape_ray.cli.run_commands:train")

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
    q.set_defaults(func="landscape_ray.cli.store_commands:render")

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
    q.set_defaults(func="landscape_ray.cli.store_commands:compare")

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
    q.add_argument(
        "--spec",
        default=None,
        help="trajectory: your spec of the store's model, for θ* when the store has no checkpoint "
        "(a store's own model is never imported)",
    )
    q.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="trajectory: allow checkpoints that need full unpickling (default: weights only)",
    )
    q.set_defaults(func="landscape_ray.cli.run_commands:figure")

    q = sub.add_parser("report", help="one self-contained HTML page of stores (pictures, plotly, spec, runs)")
    q.add_argument("stores", nargs="+", help="the stores, in page order")
    q.add_argument("--out", required=True, help="folder for report.html")
    q.add_argument("--title", default="Loss landscapes", help="the page's heading")
    q.set_defaults(func="landscape_ray.cli.store_commands:report")

    q = sub.add_parser("paper", help="every figure of the paper (Figs. 1-22) and an index.html")
    q.add_argument("--out", required=True, help="folder for the figures, index.html, runs/ and stores/")
    q.add_argument("--quick", action="store_true", help="digits data, small nets, coarse grids (minutes on a laptop)")
    q.add_argument(
        "--size", default=None, help="tiny | quick | full (default: quick with --quick, else full: CIFAR-10 and GPUs)"
    )
    q.set_defaults(func="landscape_ray.cli.run_commands:paper")

    q = sub.add_parser("info", help="progress, value ranges and spec of a store")
    q.add_argument("store")
    q.add_argument("--json", action="store_true", help="print the run summaries as JSON only, for machines")
    q.set_defaults(func="landscape_ray.cli.store_commands:info")

    q = sub.add_parser("verify", help="check every chunk of a store against its checksum; exit 1 if any is damaged")
    q.add_argument("store")
    q.set_defaults(func="landscape_ray.cli.store_commands:verify")

    q = sub.add_parser("upgrade", help="rewrite a store of an older format in today's (checksums), whole")
    q.add_argument("store")
    q.set_defaults(func="landscape_ray.cli.store_commands:upgrade")

    q = sub.add_parser("directions", help="export a store's directions for directions.kind: file (or the paper's code)")
    q.add_argument("store")
    q.add_argument(
        "--out",
        required=True,
        help="FILE.npz or FILE.safetensors (this service), or FILE.h5 (the paper's layout; h5py)",
    )
    q.add_argument(
        "--spec",
        default=None,
        help="for .h5: your spec of the store's model, whose entry order the file follows "
        "(a store's own model is never imported)",
    )
    q.set_defaults(func="landscape_ray.cli.run_commands:directions")

    hessian_args(
        sub.add_parser("hessian", help="Hessian eigenvalues, trace and spectral density of the loss"), spec_args
    )

    q = sub.add_parser("schema", help="print the JSON Schema of the spec")
    q.add_argument("--train", action="store_true", help="the training spec's schema instead")
    q.set_defaults(func="landscape_ray.cli.store_commands:schema")
    return p


def hessian_args(q, spec_args) -> None:
    """The `hessian` subcommand's arguments; `spec_args` adds the spec, --set and --trust-checkpoint ones."""
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
        choices=ENDS,
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
    q.set_defaults(func="landscape_ray.cli.run_commands:hessian")
