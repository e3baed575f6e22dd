"""The commands that read or draw a store: `render`, `compare`, `report`, `info`, `verify`, `upgrade`, `schema`.

None of them imports torch, Ray or SciPy (tests/test_house.py checks `info`, `verify` and `schema`).
"""

from __future__ import annotations

import json

import numpy as np
import yaml

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import is_remote
from landscape_ray.core.progress import fmt_seconds
from landscape_ray.pictures.render import compare as compare_stores
from landscape_ray.pictures.render import render as render_store
from landscape_ray.pictures.report import report as write_report
from landscape_ray.spec.passes import Passes
from landscape_ray.spec.schema import Spec
from landscape_ray.spec.specfile import schema_json
from landscape_ray.spec.training import TrainSpec
from landscape_ray.store.layout import upgrade as upgrade_store
from landscape_ray.store.ownership import previous_path
from landscape_ray.store.refine import complete
from landscape_ray.store.tiles import Store
from landscape_ray.store.transaction import claimed


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


def render(args) -> None:
    kinds = [k for k in args.kind.split(",") if k]
    variables = [v for v in args.vars.split(",") if v] if args.vars else None
    for path in render_store(args.store, args.out, kinds, variables, fmt=args.format, **_style(args)):
        print(path)


def compare(args) -> None:
    print(compare_stores(args.stores, args.out, args.var, args.kind, titles=args.title, cols=args.cols, **_style(args)))


def report(args) -> None:
    print(write_report(args.stores, args.out, args.title))


RUN_COLUMNS = (  # heading, how to read it from a run summary (job.run's)
    ("run", None),
    ("points", lambda r: r["points"]),
    ("wall s", lambda r: r["wall_s"]),
    ("points/s", lambda r: r["points_per_s"]),
    ("actors", lambda r: len([a for a in r.get("actors", {}) if a != "driver"])),
    ("by driver", lambda r: r.get("actors", {}).get("driver", {}).get("points", 0)),
    ("deaths", lambda r: r.get("actor_deaths", 0)),
    ("retried", lambda r: r.get("retried_tiles", 0)),
    ("cluster s", lambda r: r.get("startup", {}).get("cluster_s")),
    ("first tile s", lambda r: r.get("startup", {}).get("first_tile_s")),
    # the slowest actor's warm-up before its first tile: compilation (eval.compile), a GPU's batch fitted
    (
        "warm s",
        lambda r: max((a.get("warm_s", 0.0) for n, a in r.get("actors", {}).items() if n != "driver"), default=None),
    ),
    # the largest actor's peak resident memory (shared θ* pages it read included)
    (
        "peak MB",
        lambda r: (
            max((a.get("peak_rss_mb") or 0 for n, a in r.get("actors", {}).items() if n != "driver"), default=0) or None
        ),
    ),
)


def runs_table(runs: list[dict]) -> str:
    """The run summaries as an aligned table, one run a row (`info --json` gives them whole)."""
    rows = [[h for h, _ in RUN_COLUMNS]]
    for i, run in enumerate(runs):
        cells = [str(i + 1)]
        for _, read in RUN_COLUMNS[1:]:
            try:
                value = read(run)
            except (KeyError, TypeError, AttributeError):  # a summary of an older version, without the field
                value = None
            cells.append("-" if value is None else f"{value:g}" if isinstance(value, float) else str(value))
        rows.append(cells)
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return "runs:\n" + "\n".join("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def info(args) -> None:
    store = Store(args.store, mode="r")
    runs = store.root.attrs.get("runs", [])
    if args.json:  # for machines: the run summaries alone
        print(json.dumps(runs))
        return
    done = store.done()
    print(f"store: {store.path} (format {store.format})")
    print(f"progress: {int(done.sum())}/{done.size} points done ({100 * done.mean():.1f}%)")
    passes = Passes(store.grid, store.spec.grid.mode)
    finished = complete(store)
    if passes.count > 1:  # progressive: pass 1 is a picture of the whole grid, each further pass sharpens it
        print(f"passes ({store.spec.grid.mode}, coarse to fine; render draws the passes done, interpolated between):")
        for level, (n, total) in enumerate(passes.progress(done)):
            spacing = passes.spacing(level)
            print(f"  pass {level + 1}: {n}/{total} points (lattice every {spacing} step{'s' * (spacing > 1)})")
        if passes.adaptive:
            state = "complete" if finished else "still computing"
            print(
                f"adaptive ({state}, tolerance {store.spec.grid.tolerance}): {int(done.sum())} points evaluated, "
                f"{done.mean():.1%} of a uniform run's work; the rest are interpolated"
            )
    for line in store.sample_lines():  # eval.samples: adaptive
        print(line)
    previous = None if is_remote(store.path) else previous_path(store.path)
    if previous is not None and previous.exists():
        print(f"previous: {previous} holds the whole store this one replaces, kept until this one is complete")
    damaged = store.damaged()
    if damaged:
        print(f"{len(damaged)} damaged tiles (run verify); --resume recomputes them")
    speed = store.speed()
    if speed is not None and not finished:
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
    if runs:
        print(runs_table(runs))
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


def verify(args) -> int:
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


def upgrade(args) -> None:
    with claimed(args.store, "landscape-ray upgrade", replace=True, field="store"):
        store = upgrade_store(args.store)
    print(f"{store.path}: format {store.format}")


def schema(args) -> None:
    print(schema_json(TrainSpec if args.train else Spec))
