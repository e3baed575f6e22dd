"""The report page and the paper's index open in a real headless Chromium: every plot draws, every image loads,
no JavaScript error, no network request. Chromium is Debian's `chromium` (make test installs it); without it these
tests fail rather than skip, so a green run always means the pages were really opened."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.image import imread

from landscape_ray.core.errors import SpecError
from landscape_ray.pictures.report import report

from .test_render import make_store, scan

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]  # WebGL (plotly's 3D surface) in software


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium package (make test does: apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, path: Path):
    """The page at `path` fully loaded, with the console errors and the non-local requests it made."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors, remote = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: remote.append(r.url) if not r.url.startswith(("file:", "data:", "blob:")) else None)
    page.goto(path.as_uri(), wait_until="load")
    return page, errors, remote


def broken_images(page) -> list[str]:
    return page.eval_on_selector_all(
        "img",
        "imgs => imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src').slice(0, 60))",
    )


def not_blank(png: bytes, keep: float = 1.0) -> bool:
    """Coloured pixels (a surface, curves) in the left `keep` of the picture, not just grey axes on white."""
    rgb = imread(io.BytesIO(png))[..., :3]
    rgb = rgb[:, : int(keep * rgb.shape[1])]
    return ((rgb.max(axis=2) - rgb.min(axis=2)) > 0.2).mean() > 0.005


def painted(page, plot, seconds: float = 10) -> bool:
    """Whether `plot` shows coloured pixels (left of its colour bar) within `seconds`: software WebGL paints a
    surface some time after the plot exists, longer on a loaded machine."""
    for _ in range(int(seconds / 0.25)):
        if not_blank(plot.screenshot(), keep=0.85):
            return True
        page.wait_for_timeout(250)
    return False


@pytest.fixture
def page_file(tmp_path):
    stores = [
        make_store(tmp_path / "pca.zarr", pca=True),
        scan(tmp_path / "scan.zarr"),
        make_store(tmp_path / "partial.zarr", skip_last=True),
    ]
    return report(stores, tmp_path / "out", "A test experiment"), stores


def test_report_is_one_self_contained_page(page_file):
    path, stores = page_file
    text = path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]
    assert text.count("Plotly.newPlot(") == len(stores) and len(re.findall(r"plotly\.js v\d", text)) == 1
    markup = re.sub(r"<script.*?</script>", "", text, flags=re.DOTALL)  # plotly.js itself mentions URLs in strings
    assert not re.search(r"""(src|href)=["']https?:""", markup), "nothing is fetched from the network"
    assert markup.count('src="data:image/png;base64,') == 2 + 1 + 2  # contour + contourf per 2D store, curves for 1D
    assert "PC1 (62.3%)" in text and "output:" in text and "store: " in text  # axis labels and the spec


@pytest.mark.slow
def test_report_opens_in_chromium_and_every_plot_draws(browser, page_file):
    path, stores = page_file
    page, errors, remote = open_page(browser, path)
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length === {len(stores)}", timeout=20000)
    assert errors == [] and remote == []
    assert broken_images(page) == []
    plots = page.query_selector_all(".js-plotly-plot")
    assert page.evaluate(
        "document.querySelectorAll('.js-plotly-plot .gl-container canvas, .js-plotly-plot .main-svg').length"
    ) >= len(stores)
    for plot in plots:
        plot.scroll_into_view_if_needed()
        assert painted(page, plot), "a plotly plot rendered blank"
    page.close()


def test_report_needs_stores(tmp_path):
    with pytest.raises(SpecError, match="report: no stores given"):
        report([], tmp_path)


@pytest.mark.slow
def test_paper_tiny_writes_every_figure_and_its_index_opens(browser, tmp_path, ray_cluster):
    """`paper` at its smallest size, end to end on local Ray: every figure 1-22 is in the index and loads."""
    from landscape_ray.paper.catalogue import paper

    index = paper(tmp_path / "paper", "tiny", log=lambda *_: None)
    text = index.read_text()
    numbers = [int(n) for n in re.findall(r'<section id="fig(\d+)">', text)]
    assert numbers == list(range(1, 23))
    images = re.findall(r'<img src="([^"]+)"', text)
    assert len(images) >= 22 and all((index.parent / name).stat().st_size > 1000 for name in images)
    stores = {p.name: xr.open_zarr(p) for p in (index.parent / "stores").glob("*.zarr")}
    assert all(ds.done.values.all() for ds in stores.values())
    assert {tuple(ds.sizes[d] for d in ds.done.dims) for ds in stores.values()} == {(5, 5), (7,)}  # the tiny grids
    interpolation = next(ds for name, ds in stores.items() if "-to-" in name)
    assert (interpolation.x.values[0], interpolation.x.values[-1]) == (-0.5, 1.5)
    page, errors, remote = open_page(browser, index)
    assert errors == [] and remote == [] and broken_images(page) == []
    assert page.evaluate("document.images.length") == len(images)
    assert np.all([not_blank((index.parent / name).read_bytes()) for name in images])
    page.close()


def test_cli_report(page_file, tmp_path, capsys):
    from landscape_ray.cli.main import main

    _, stores = page_file
    assert main(["report", *map(str, stores[:2]), "--out", str(tmp_path / "cli"), "--title", "CLI"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "report.html")
    assert "<h1>CLI</h1>" in (tmp_path / "cli" / "report.html").read_text()
