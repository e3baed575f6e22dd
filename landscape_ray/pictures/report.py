"""One self-contained HTML page for an experiment: every store's pictures, interactive plot, spec and summaries.

    landscape-ray report runs/demo/surface.zarr runs/demo/scan.zarr --out runs/demo/report
    report(["runs/demo/surface.zarr"], "runs/demo/report")        # → runs/demo/report/report.html

Per store: contour and filled-contour pictures of every loss (1D: the loss/accuracy curves) as inline PNGs, an
interactive plotly surface (1D: curves), the progress and value ranges, the run summaries, any further results
the store records (e.g. curvature), and the resolved spec. plotly.js is inlined once, images are data: URIs,
so the page opens offline, from a mail attachment or a file share, and fetches nothing.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import yaml

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import replace_file
from landscape_ray.pictures.draw import is_2d, title, values
from landscape_ray.pictures.export import surface_figure
from landscape_ray.pictures.render import figure
from landscape_ray.store.reader import dataset

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}
img{max-width:49%;border:1px solid #ddd;margin:2px}pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:12px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"""
SKIP_ATTRS = {"spec", "runs", "versions", "created", "complete", "landscape_ray_format"}  # shown elsewhere, or noise


def png(fig) -> str:
    """An <img> holding `fig` as a base64 PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return (
        f'<img alt="{html.escape(fig.axes[0].get_title() or "figure")}" '
        f'src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
    )


def interactive(ds, first: bool) -> str:
    """A plotly div (the surface of a 2D store, the curves of a 1D one); plotly.js inlined on the `first` only."""
    import plotly.graph_objects as go

    losses = [v for v in ds.data_vars if v.endswith("_loss")]
    if is_2d(ds):
        fig = surface_figure(ds, losses[0])
    else:
        fig = go.Figure(
            [
                go.Scatter(
                    x=ds["x"].values.tolist(),
                    y=np.ma.filled(values(ds, v)[0], np.nan).tolist(),
                    name=v,
                    yaxis="y2" if v.endswith("_acc") else "y",
                )
                for v in ds.data_vars
                if v.endswith(("_loss", "_acc"))
            ]
        )
        fig.update_layout(
            title={"text": title(ds)},
            xaxis_title=ds["x"].attrs.get("long_name", "x"),
            yaxis={"title": "loss"},
            yaxis2={"title": "accuracy", "overlaying": "y", "side": "right"},
        )
    return fig.to_html(full_html=False, include_plotlyjs=first)


def summary(ds) -> str:
    """Progress and the range of every variable, as a table."""
    done = ds["done"].values
    rows = [
        f"<p>{int(done.sum())}/{done.size} points computed</p>",
        "<table><tr><th>variable</th><th>min</th><th>max</th></tr>",
    ]
    for v in ds.data_vars:
        if ds[v].dims == ds["done"].dims and v != "done":
            finite = ds[v].values[np.isfinite(ds[v].values)]
            span = (f"{finite.min():.6g}", f"{finite.max():.6g}") if finite.size else ("–", "–")
            rows.append(f"<tr><th>{html.escape(v)}</th><td>{span[0]}</td><td>{span[1]}</td></tr>")
    return "".join(rows) + "</table>"


def section(store, first: bool) -> tuple[str, bool]:
    """The HTML of one store, and whether plotly.js is still to be inlined."""
    ds = dataset(store)
    drawn = dataset(store, filled=True)  # a running progressive job's pictures: interpolated between (render.py)
    parts = [f"<section><h2>{html.escape(title(ds))}</h2><p><code>{html.escape(str(store))}</code></p>"]
    try:
        if is_2d(ds):
            parts += [
                png(figure([drawn], v, kind))
                for v in ds.data_vars
                if v.endswith("_loss")
                for kind in ("contour", "contourf")
            ]
        else:
            parts.append(png(figure([drawn])))
        parts.append(interactive(drawn, first))
        first = False
    except SpecError as err:  # a store with nothing computed yet still gets its spec and progress
        parts.append(f"<p>No pictures: {html.escape(str(err))}</p>")
    parts.append(summary(ds))
    for i, run in enumerate(ds.attrs.get("runs", [])):
        parts.append(f"<h3>Run {i + 1}</h3><pre>{html.escape(json.dumps(run, indent=1))}</pre>")
    extra = {k: v for k, v in ds.attrs.items() if k not in SKIP_ATTRS}
    if extra:
        parts.append(f"<h3>Further results</h3><pre>{html.escape(json.dumps(extra, indent=1, default=str))}</pre>")
    spec = yaml.safe_dump(ds.attrs.get("spec", {}), sort_keys=False)
    parts.append(f"<details open><summary>Spec</summary><pre>{html.escape(spec)}</pre></details></section>")
    return "\n".join(parts), first


def report(stores, out, heading: str = "Loss landscapes") -> Path:
    """Write `out`/report.html for `stores` (paths or Datasets) and return its path."""
    if not stores:
        raise SpecError("report: no stores given")
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise SpecError("report: needs plotly (pip install 'landscape-ray[html]')") from None
    body, first = [], True
    for store in stores:
        part, first = section(store, first)
        body.append(part)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = page(heading, heading, body)
    return replace_file(out / "report.html", lambda temporary: temporary.write_text(text, encoding="utf-8"))


def page(title: str, heading: str, body: list[str], style: str = STYLE) -> str:
    """A self-contained HTML page: this report, or the paper's index (catalogue.py)."""
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body><h1>{html.escape(heading)}</h1>\n" + "\n".join(body) + "</body></html>"
    )
