"""Every figure of the paper (Li et al., ICLR 2018, Figs. 1-22), from one command, with an index page.

    landscape-ray paper --quick --out runs/paper      # digits, small nets, coarse grids: minutes on 2 CPU cores
    landscape-ray paper --out runs/paper-full         # the jobs/paper/ specs: CIFAR-10, 300 epochs, GPUs

    index = paper("runs/paper", size="quick")

`FIGURES` lists each figure's number, caption and how it is made from a `plan.Plan` (which trains and computes
on demand, once each); `paper` draws them in the paper's order into `DIR/figNN*.png` and writes `DIR/index.html`
with the captions and the specs used.
"""

from __future__ import annotations

import html
from pathlib import Path

import yaml

from landscape_ray.core.errors import SpecError
from landscape_ray.core.paths import replace_file
from landscape_ray.paper.plan import (
    SIZES,
    Plan,
    compare,
    curves,
    fig9,
    histograms,
    interpolations,
    nets,
    norms,
    opt_runs,
    overlay,
    pca,
    repeat_2d,
    scans,
)
from landscape_ray.pictures.draw import save
from landscape_ray.pictures.report import page

SHORT = [("shallow", True), ("deep", True), ("shallow", False), ("deep", False)]
WIDE = [("shallow", True), ("wide", True), ("shallow", False), ("wide", False)]
FIGURES = [  # (number, caption, make: Plan -> [(file suffix, Figure)])
    (
        1,
        "Loss surfaces (log scale) of a ResNet with and without skip connections, filter-normalized directions.",
        lambda p: [("", compare(*nets(p, [("deep", True), ("deep", False)]), kind="surface", log=True))],
    ),
    (
        2,
        (
            "1D linear interpolation from the small-batch (0) to the large-batch (1) solution; loss blue, accuracy "
            "red, train solid, test dashed. Rows: WD 0, WD 5e-4."
        ),
        lambda p: [
            ("", interpolations(p, [tuple(opt_runs(p, wd, (o,))) for wd in (0, 5e-4) for o in ("sgd", "adam")]))
        ],
    ),
    (
        3,
        "Histogram of weights of small- and large-batch SGD solutions, without and with weight decay.",
        lambda p: [("", histograms(p))],
    ),
    (
        4,
        (
            "1D filter-normalized plots of solutions of SGD/Adam, small/large batch; rows WD 0 and WD 5e-4. "
            "Titles: optimizer, batch size, WD, test error."
        ),
        lambda p: [("", scans(p, opt_runs(p, 0) + opt_runs(p, 5e-4)))],
    ),
    (
        5,
        "2D filter-normalized contours of small- and large-batch SGD solutions; rows WD 0 and WD 5e-4.",
        lambda p: [
            (
                "",
                compare(
                    [p.surface(r) for r in opt_runs(p, 0, ("sgd",)) + opt_runs(p, 5e-4, ("sgd",))],
                    [p.title(r) for r in opt_runs(p, 0, ("sgd",)) + opt_runs(p, 5e-4, ("sgd",))],
                    kind="contour",
                    cols=2,
                ),
            )
        ],
    ),
    (
        6,
        "3D surfaces of a deep net without skip connections and of the widest net (DenseNet-121 at full scale).",
        lambda p: [("", compare(*nets(p, [("deep", False), ("dense", True)]), kind="surface"))],
    ),
    (
        7,
        "2D contours of nets of two depths, with (top) and without (bottom) skip connections.",
        lambda p: [("", compare(*nets(p, SHORT), kind="contour", cols=2))],
    ),
    (
        8,
        "Width: k = 1 and k = 2 times the filters, with (top) and without (bottom) skip connections.",
        lambda p: [("", compare(*nets(p, WIDE), kind="contour", cols=2))],
    ),
    (
        9,
        (
            "Trajectories on random directions fail: (a) two random directions, (b) x = init → solution with a random "
            "y, (c) enlarged (b). Axis labels give each direction's share of the path's variance."
        ),
        fig9,
    ),
    (
        10,
        "Training paths projected on their PCA directions (explained variance on the axes), small and large batch.",
        lambda p: [
            (
                "",
                compare(
                    [pca(p, r) for r in opt_runs(p, 5e-4, ("sgd",))],
                    [p.title(r) for r in opt_runs(p, 5e-4, ("sgd",))],
                    kind="contour",
                ),
            )
        ],
    ),
    (
        11,
        "Weight norm during training, by epoch (left) and by iteration (right), small/large batch, WD 0 and 5e-4.",
        lambda p: [("", norms(p))],
    ),
    (
        12,
        "1D plots without normalization (SGD, small/large batch; WD 0 and 5e-4).",
        lambda p: [("", scans(p, opt_runs(p, 0, ("sgd",)) + opt_runs(p, 5e-4, ("sgd",)), norm="none"))],
    ),
    (
        13,
        "Figure 12 enlarged: x in [-0.2, 0.2]; sharpness without normalization does not track test error.",
        lambda p: [("", scans(p, opt_runs(p, 0, ("sgd",)) + opt_runs(p, 5e-4, ("sgd",)), norm="none", x=(-0.2, 0.2)))],
    ),
    (
        14,
        "1D plots with layer normalization (SGD, small/large batch; WD 0 and 5e-4).",
        lambda p: [("", scans(p, opt_runs(p, 0, ("sgd",)) + opt_runs(p, 5e-4, ("sgd",)), norm="layer"))],
    ),
    (
        15,
        "1D interpolation between small- and large-batch solutions of a ResNet.",
        lambda p: [("", interpolations(p, [(p.net("shallow")[0], p.net("shallow", large=True)[0])]))],
    ),
    (
        16,
        "1D filter-normalized plots of small- and large-batch ResNet solutions.",
        lambda p: [("", scans(p, [p.net("shallow")[0], p.net("shallow", large=True)[0]]))],
    ),
    (
        17,
        "2D filter-normalized contours of small- and large-batch ResNet solutions.",
        lambda p: [
            (
                "",
                compare(
                    [p.surface(p.net("shallow", large=b)[0]) for b in (False, True)],
                    [p.title(p.net("shallow", large=b)[0]) for b in (False, True)],
                    kind="contour",
                ),
            )
        ],
    ),
    (
        18,
        "Repeatability: 1D filter-normalized plots of one solution along several random directions.",
        lambda p: [("", overlay(p))],
    ),
    (
        19,
        "Repeatability: 2D contours of a net without skip connections along several random direction pairs.",
        lambda p: [("", repeat_2d(p))],
    ),
    (
        20,
        "Loss landscape of DenseNet-121 (at quick scale the widest digits ResNet stands in), surface and contour.",
        lambda p: [(f"_{k}", compare(*nets(p, [("dense", True)]), kind=k)) for k in ("surface", "contour")],
    ),
    (
        21,
        (
            "Training loss (left) and error (right) per epoch of SGD/Adam, small/large batch; "
            "train solid, test dashed. "
            "(a) WD 0, (b) WD 5e-4."
        ),
        lambda p: [
            (s, curves(p, opt_runs(p, wd), [p.title(r) for r in opt_runs(p, wd)])) for s, wd in (("a", 0), ("b", 5e-4))
        ],
    ),
    (
        22,
        "Convergence of the nets of Figs. 7-8: training and test loss and error per epoch.",
        lambda p: [
            (
                "",
                curves(
                    p, [p.net(r, s)[0] for r, s in SHORT + WIDE[1::2]], [p.net(r, s)[1] for r, s in SHORT + WIDE[1::2]]
                ),
            )
        ],
    ),
]


STYLE = (  # figures at full width, specs in small print
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:auto}img{max-width:100%;"
    "border:1px solid #ddd}pre{background:#f6f6f6;font-size:11px;overflow:auto}"
)


def write_index(out: Path, entries: list, size: str) -> Path:
    parts = []
    for number, caption, files, specs in entries:
        parts.append(f'<section id="fig{number}"><h2>Figure {number}</h2><p>{html.escape(caption)}</p>')
        parts += [f'<img src="{f.name}" alt="Figure {number}">' for f in files]
        dumped = "\n---\n".join(yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False) for s in specs)
        parts.append(
            f"<details><summary>specs ({len(specs)})</summary><pre>{html.escape(dumped)}</pre></details></section>"
        )
    heading = f"Li et al., Visualizing the Loss Landscape of Neural Nets — every figure ({size} scale)"
    text = page(f"Visualizing the loss landscape ({size})", heading, parts, STYLE)
    return replace_file(out / "index.html", lambda temporary: temporary.write_text(text, encoding="utf-8"))


def paper(out, size: str = "quick", log=print) -> Path:
    """Make every figure into `out` and return the path of its index.html."""
    if size not in SIZES:
        raise SpecError(f"size: unknown {size!r}; choose from {', '.join(SIZES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan, entries = Plan(out, size, log), []
    for number, caption, make in FIGURES:
        plan.used = []
        files = [save(fig, out / f"fig{number:02d}{suffix}.png") for suffix, fig in make(plan)]
        unique = list({s.model_dump_json(): s for s in plan.used}.values())
        entries.append((number, caption, files, unique))
        log(f"figure {number}: {', '.join(f.name for f in files)}")
    return write_index(out, entries, size)
