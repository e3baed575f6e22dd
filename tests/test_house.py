"""House rules of the package as a whole: its modules import one another without cycles and only at module level,
reading a store (and the light commands of the CLI) loads neither torch nor Ray nor SciPy, and a run in this process
hands back the caller's torch threads and random number generators as they were."""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import make_spec, quiet

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "landscape_ray"
FORMAT1 = ROOT / "tests" / "fixtures" / "format1.zarr"
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


# --- The package's imports, read from its source ------------------------------------------------------------


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name; a package is its `__init__.py`."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def nearest(name: str, known: dict[str, Path]) -> str:
    """`name`, or for a name that is no module (an attribute, a path not there), its nearest ancestor that is one."""
    while name not in known and "." in name:
        name = name.rpartition(".")[0]
    return name


def imported(node: ast.Import | ast.ImportFrom, module: str, known: dict[str, Path]) -> list[str]:
    """The package modules that the statement `node` of `module` imports: `from landscape_ray.store import ownership`
    imports the module landscape_ray.store.ownership, `from landscape_ray.store.tiles import Store` the module
    landscape_ray.store.tiles, and a relative import is resolved against the package of `module`."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        source = node.module or ""
        if node.level:
            base = module if known[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = f"{base}.{source}" if source else base
        names = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
    return sorted({nearest(n, known) for n in names if n == "landscape_ray" or n.startswith("landscape_ray.")})


def sources() -> tuple[dict[str, Path], dict[str, ast.Module]]:
    known = modules()
    return known, {name: ast.parse(path.read_text(), str(path)) for name, path in known.items()}


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def import_graph() -> dict[str, dict[str, str]]:
    """module -> {module it imports: where, as file:line}, from every import statement of the package: at module
    level, under `if TYPE_CHECKING:`, in a function. An edge into an empty `__init__.py` (no code, at most a
    docstring) is left out: importing such a package runs nothing."""
    known, trees = sources()

    def hollow(tree: ast.Module) -> bool:
        return all(
            (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
            or (isinstance(s, ast.ImportFrom) and s.module == "__future__")
            for s in tree.body
        )

    empty = {name for name, path in known.items() if path.name == "__init__.py" and hollow(trees[name])}
    graph: dict[str, dict[str, str]] = {name: {} for name in known}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported(node, name, known):
                    if target not in empty:
                        graph[name].setdefault(target, where(known[name], node))
    return graph


def strongly_connected(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of `graph`."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def cycle_through(start: str, members: set[str], graph: dict[str, dict[str, str]]) -> list[str]:
    """The shortest chain start -> … -> start within `members` (breadth first)."""
    paths = {start: [start]}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if w == start:
                return paths[v] + [start]
            if w in members and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"{start} is on no cycle of {sorted(members)}")


def test_no_import_cycle_among_the_package_modules():
    """The modules form layers: no module imports, directly or through others, a module that imports it back. A
    cycle makes the import order decide whether a name exists yet, and a layer can no longer be used (or tested)
    without the ones above it. Every import counts, `if TYPE_CHECKING:` ones too: they still tie the layers."""
    graph = import_graph()
    found = []
    for component in strongly_connected(graph):
        if len(component) > 1 or component[0] in graph[component[0]]:
            chain = cycle_through(component[0], set(component), graph)
            sites = "\n".join(f"    {graph[a][b]} imports {b}" for a, b in zip(chain, chain[1:]))
            found.append(f"  {' -> '.join(chain)}\n{sites}")
    assert not found, "import cycles among the package's modules:\n" + "\n".join(found)


def test_no_package_import_inside_a_function():
    """A module of the package imports the package's modules at its top only, so that the import graph (the test
    above) is the whole truth about which layer needs which. Third-party imports inside a function stay allowed:
    that is how the light commands keep torch, Ray and SciPy out of the process. The one exception is the package
    root's `open`: every process that imports any module of the package (each Ray actor too) runs the root's
    `__init__`, and only a notebook reading a store needs Zarr and xarray."""
    known, trees = sources()
    found = []
    for name, tree in trees.items():
        if name == "landscape_ray":
            continue
        inside = {id(n) for fn in ast.walk(tree) if isinstance(fn, FUNCTIONS) for n in ast.walk(fn)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) in inside and imported(node, name, known):
                found.append((known[name], node.lineno, f"  {where(known[name], node)}: {ast.unparse(node)}"))
    assert not found, "imports of the package inside a function:\n" + "\n".join(line for *_, line in sorted(found))


# --- What reading a store loads ----------------------------------------------------------------------------

OPEN = """
import landscape_ray
ds = landscape_ray.open(PATH)
print("variables:", sorted(ds.data_vars))
code = 0
"""
CLI = "from landscape_ray.cli.main import main\n"
NOT_FOR_THE_CLI = {"torch", "ray", "scipy"}
NOT_FOR_OPEN = NOT_FOR_THE_CLI | {"matplotlib"}
REPORT = """
heavy = ["torch", "ray", "scipy", "matplotlib"]
print("MODULES:" + json.dumps({"code": code, "loaded": sorted(m for m in heavy if m in sys.modules)}))
sys.exit(code)
"""


@pytest.mark.parametrize(
    "snippet, banned, codes, expect",
    [
        pytest.param(OPEN, NOT_FOR_OPEN, {0}, "train_loss", id="open"),
        pytest.param(CLI + 'code = main(["info", PATH])', NOT_FOR_THE_CLI, {0}, "progress:", id="info"),
        pytest.param(CLI + 'code = main(["verify", PATH])', NOT_FOR_THE_CLI, {0, 1}, "points done", id="verify"),
        pytest.param(
            CLI + 'code = max(main(["schema"]), main(["schema", "--train"]))',
            NOT_FOR_THE_CLI,
            {0},
            '"properties"',
            id="schema",
        ),
    ],
)
def test_reading_a_store_imports_neither_torch_nor_ray_nor_scipy(tmp_path, snippet, banned, codes, expect):
    """`landscape_ray.open` in a notebook, and `info`, `verify`, `schema` at a prompt, answer in a fraction of a
    second only if they leave torch (seconds to import), Ray and SciPy alone; open leaves matplotlib too. Each runs
    in a fresh interpreter, on a copy of the format-1 fixture store, so nothing this test process loaded counts; the
    interpreter exits with what the command returned."""
    store = tmp_path / "old.zarr"
    shutil.copytree(FORMAT1, store)
    program = "import json, sys\nPATH = sys.argv[1]\n" + snippet + REPORT
    done = subprocess.run(
        [sys.executable, "-c", program, str(store)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stdout.splitlines()
    assert lines and lines[-1].startswith("MODULES:"), f"no report (exit {done.returncode}):\n{done.stderr}"
    report = json.loads(lines[-1].removeprefix("MODULES:"))
    output = "\n".join(lines[:-1])
    assert done.returncode == report["code"] and report["code"] in codes, f"exit {done.returncode}:\n{output}"
    assert expect in output, output
    assert not banned & set(report["loaded"]), f"loaded {sorted(banned & set(report['loaded']))}:\n{output}"


# --- A run in the caller's process -------------------------------------------------------------------------


def test_job_run_in_process_leaves_threads_and_rng_as_they_were(ray_cluster, tmp_path):
    """`landscape_ray.job.run` called from a notebook or a script: the driver's warmup evaluates with
    `cpus_per_actor` torch threads and the inputs may draw random numbers, but the caller gets its process back as
    it was: the same torch thread count (2 here, not the actor's 1) and the same torch, NumPy and Python RNG states,
    so its own next random draw does not depend on whether it ran a landscape in between."""
    from landscape_ray.job import run

    original = torch.get_num_threads()
    if (os.cpu_count() or 1) >= 2:
        torch.set_num_threads(2)
    try:
        threads = torch.get_num_threads()
        torch_rng, numpy_rng, python_rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
        spec = make_spec(
            tmp_path / "s.zarr",
            None,
            "compute.warmup=true",
            "compute.cpus_per_actor=1",
            "grid.x={min: -1, max: 1, num: 5}",
            "grid.y={min: -1, max: 1, num: 5}",
        )
        assert spec.compute.warmup and spec.compute.cpus_per_actor == 1
        summary = run(spec, log=quiet)
        assert summary["points"] == 25, summary
        assert torch.get_num_threads() == threads
        assert torch.equal(torch.get_rng_state(), torch_rng), "the torch RNG state changed"
        after = np.random.get_state()
        assert after[0] == numpy_rng[0] and np.array_equal(after[1], numpy_rng[1]) and after[2:] == numpy_rng[2:], (
            "the NumPy RNG state changed"
        )
        assert random.getstate() == python_rng, "the Python RNG state changed"
    finally:
        torch.set_num_threads(original)
