"""The notebooks in notebooks/ run here, cell by cell in a real kernel, on small stores made by real jobs.

Each notebook reads its store paths from LANDSCAPE_* environment variables in its first code cell; the
tests point them at stores made below. watch_job.ipynb watches a job that is really running: the job
starts in a thread of this process just before the notebook's watch cell (tagged "watch") executes.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from landscape_ray.job import run

from .conftest import ROOT, make_spec, quiet

NOTEBOOKS = ROOT / "notebooks"
TESTED = {"api.ipynb", "explore_surface.ipynb", "trajectory.ipynb", "watch_job.ipynb"}


@pytest.fixture(scope="module")
def python_kernel(tmp_path_factory):
    """A JUPYTER_PATH whose 'python3' kernel is this interpreter, whatever kernels the machine has installed."""
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name="python3", prefix=str(prefix))
    path = str(prefix / "share" / "jupyter")
    before = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [path, before]))  # searched before every other place
    try:
        assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
        yield path
    finally:
        if before is None:
            os.environ.pop("JUPYTER_PATH")
        else:
            os.environ["JUPYTER_PATH"] = before


@pytest.fixture(scope="module")
def stores(ray_cluster, checkpoint, tmp_path_factory) -> dict[str, Path]:
    """Two small surfaces (directions seeds 0 and 1, train and test splits) and a PCA store over the checkpoints
    whose grid covers the training path (θ₀ lies about 5 units from θ* along PC1)."""
    out = tmp_path_factory.mktemp("nbstores")
    surface = ("data.splits=[train, test]", "grid.y={min: -1, max: 1, num: 5}")
    specs = {
        "a": make_spec(out / "a.zarr", checkpoint, *surface),
        "b": make_spec(out / "b.zarr", checkpoint, *surface, "directions.seed=1"),
        "pca": make_spec(
            out / "pca.zarr",
            checkpoint,
            "directions.kind=pca",
            f"directions.checkpoints={checkpoint.parent}/model_*.pt",
            "grid.x={min: -7, max: 1, num: 9}",
            "grid.y={min: -1, max: 2, num: 5}",
            "grid.tile=[5, 9]",
        ),
    }
    for spec in specs.values():
        run(spec, log=quiet)
    return {k: Path(s.output.store) for k, s in specs.items()}


def execute(name: str, env: dict[str, str], **hooks) -> nbformat.NotebookNode:
    """Run every cell of notebooks/<name> in a fresh kernel (cwd notebooks/) with `env` added; raises if a cell does."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    kernel_env = dict(os.environ, **env)
    kernel_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}, **hooks
    )
    client.execute(env=kernel_env)
    return nb


def outputs(nb, kind: str | None = None) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind is None or o.output_type == kind]


def text(nb) -> str:
    return "".join(o.get("text", "") for o in outputs(nb, "stream"))


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs(nb))


def test_every_notebook_is_tested_and_committed_without_outputs():
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == TESTED, "add a test for the new notebook below"
    for name in TESTED:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: strip the outputs"
        assert "os.environ" in code[0].source, f"{name}: the first code cell reads the store paths"


@pytest.mark.slow
def test_explore_surface(stores, python_kernel):
    nb = execute("explore_surface.ipynb", {"LANDSCAPE_STORE": str(stores["a"]), "LANDSCAPE_OTHER": str(stores["b"])})
    out = text(nb)
    assert "35/35 points done (100%)" in out
    assert "'seed': 0" in out and "filter-normalized" in out
    assert any("text/html" in o.get("data", {}) for o in outputs(nb, "execute_result"))  # the Dataset
    assert images(nb) == 3  # the 1D cut, the contour, the comparison


def test_trajectory(stores, python_kernel):
    nb = execute("trajectory.ipynb", {"LANDSCAPE_STORE": str(stores["pca"])})
    out = text(nb)
    ratios = [float(r) for r in re.findall(r"[xy]: explained variance ratio (\d\.\d+)", out)]
    assert len(ratios) == 2 and ratios[0] >= ratios[1] > 0 and "% of the variance" in out
    assert "the grid covers the path" in out
    assert "marked epochs: [0, 1, 2]" in out
    table = next(o for o in outputs(nb, "execute_result") if "trajectory_x" in o["data"]["text/plain"])
    assert "epoch" in table["data"]["text/plain"]
    assert images(nb) == 1


@pytest.mark.slow
def test_watch_job_sees_a_running_job_through_to_the_end(ray_cluster, checkpoint, python_kernel, tmp_path):
    spec = make_spec(
        tmp_path / "s.zarr",
        checkpoint,
        "model.arch=tests.helpers:slow_cnn",
        "model.kwargs={delay: 0.1}",
        "data.batch_size=300",
        "grid.x={min: -1, max: 1, num: 9}",
        "grid.y={min: -1, max: 1, num: 9}",
        "grid.tile=[1, 3]",
    )
    result, errors = {}, []

    def job():
        try:
            result.update(run(spec, log=quiet))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    worker = threading.Thread(target=job, daemon=True)

    def start_job(cell, cell_index):
        if "watch" in cell.metadata.get("tags", []):
            worker.start()

    try:
        nb = execute(
            "watch_job.ipynb",
            {"LANDSCAPE_STORE": str(spec.output.store), "LANDSCAPE_REFRESH_S": "0.5", "LANDSCAPE_TIMEOUT_S": "90"},
            on_cell_execute=start_job,
        )
    finally:
        if worker.ident is not None:
            worker.join(120)
    assert worker.ident is not None, "no cell of watch_job.ipynb is tagged 'watch'"
    assert not errors and result["points"] == 81, (errors, result)
    out = text(nb)
    readings = [tuple(map(int, r.split("/"))) for r in re.search(r"readings: (.*)", out).group(1).split()]
    assert all(total == 81 for _, total in readings)
    assert any(0 < done < 81 for done, _ in readings), readings  # a partial picture was drawn mid-run
    assert readings[-1] == (81, 81) and "progress: 81/81 points" in out and "81/81 points done" in out
    assert [d for d, _ in readings] == sorted(d for d, _ in readings)  # done only grows
    assert images(nb) == 2  # the last refresh (earlier ones were cleared) and the final contour


def test_api(ray_cluster, python_kernel, tmp_path):
    """The notebook's own model class (its kernel's __main__) on the session's cluster, trained and drawn."""
    address = ray_cluster.get_runtime_context().gcs_address
    nb = execute("api.ipynb", {"LANDSCAPE_STORE": str(tmp_path / "plane.zarr"), "LANDSCAPE_ADDRESS": address})
    out = text(nb)
    assert "441/441 points" in out and "trained: loss" in out
    at_theta0, at_theta = map(float, re.search(r"loss at θ₀ (\S+), at θ\* (\S+)", out).groups())
    assert at_theta < at_theta0
    assert images(nb) == 2  # the contour, the interpolation
