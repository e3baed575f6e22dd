"""The Python API (landscape_ray/api.py) on a real Ray cluster and real stores: a model whose class lives only in a
script's `__main__` (the actors get it by value), its values against a plain PyTorch loop, a DataLoader against a
tensor pair, Ctrl-C then resume=True, and the store it writes read by the command line.

Each scenario runs as a script in a subprocess (its `__main__` is not importable by the workers) that joins the
session's cluster and prints one JSON line; the test asserts on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import landscape_ray
from landscape_ray.cli.main import main
from landscape_ray.store.tiles import Store

from . import hf_fixtures
from .conftest import ROOT, quiet
from .hf_fixtures import windows

make_hf = hf_fixtures.make_hf  # the fixture, made visible to this module's tests

PRELUDE = """
import json, os, signal, sys, threading, time
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import landscape_ray
from landscape_ray.store.tiles import Store

ADDRESS, OUT = sys.argv[1], sys.argv[2]


class MLP(nn.Module):  # defined here, in __main__: the workers cannot import it
    def __init__(self, delay=0.0):
        super().__init__()
        self.delay = delay
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        time.sleep(self.delay)
        return self.net(x)


torch.manual_seed(0)
model = MLP(delay=0.02)  # a point takes a few hundredths of a second: both actors get tiles
x, y = torch.randn(300, 8), torch.randint(0, 3, (300,))
SMALL = dict(x=(-1, 1, 5), y=(-0.5, 1, 4), actors=2, address=ADDRESS, log=lambda *_: None)
SMALL.update({"data.batch_size": 100, "grid.tile": [1, 2]})
"""

VALUES = """
a = landscape_ray.plane(model, (x, y), store=f"{OUT}/pair.zarr", **SMALL)
b = landscape_ray.plane(model, DataLoader(TensorDataset(x, y), batch_size=100), store=f"{OUT}/loader.zarr", **SMALL)

# The plain loop: θ* + αδ + βη with the store's own directions, the mean cross-entropy over all the data.
dx, dy = Store(f"{OUT}/pair.zarr", mode="r").directions()
theta = {k: v.clone() for k, v in model.state_dict().items()}
loop = np.zeros((len(a.y), len(a.x)))
with torch.no_grad():
    for i, beta in enumerate(a.y.values):
        for j, alpha in enumerate(a.x.values):
            model.load_state_dict({k: v + alpha * torch.from_numpy(dx[k]) + beta * torch.from_numpy(dy[k])
                                   for k, v in theta.items()})
            loop[i, j] = F.cross_entropy(model(x), y).item()
model.load_state_dict(theta)
print(json.dumps({"module": MLP.__module__, "pair": a.train_loss.values.tolist(), "loop": loop.tolist(),
                  "loader": b.train_loss.values.tolist()}))
"""

INTERRUPTED = """
slow = MLP(delay=0.05)
slow.load_state_dict(model.state_dict())
path = f"{OUT}/cut.zarr"


def interrupt():  # Ctrl-C once a few tiles are in the store
    while not (os.path.exists(path) and landscape_ray.open(path).done.values.sum() >= 4):
        time.sleep(0.1)
    os.kill(os.getpid(), signal.SIGINT)


threading.Thread(target=interrupt, daemon=True).start()
cut = landscape_ray.plane(slow, (x, y), store=path, **SMALL)
kept = int(cut.done.values.sum())
whole = landscape_ray.plane(slow, (x, y), store=path, resume=True, **SMALL)
plain = landscape_ray.plane(slow, (x, y), store=f"{OUT}/plain.zarr", **SMALL)
print(json.dumps({"kept": kept, "resumed": whole.train_loss.values.tolist(), "plain": plain.train_loss.values.tolist(),
                  "done": int(whole.done.values.sum())}))
"""

HERE_INTERRUPTED = """
HERE = {k: v for k, v in SMALL.items() if k != "address"}  # no cluster to join: a small job is computed here


class Interrupting(MLP):  # Ctrl-C from inside the model at its AT-th forward pass (0: never)
    calls, at = 0, 0

    def forward(self, x):
        Interrupting.calls += 1
        if Interrupting.calls == Interrupting.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().forward(x)


slow = Interrupting(delay=0.05)  # 3 batches a point, 20 points: 3 s of points, a small job (under 5 s)
slow.load_state_dict(model.state_dict())
path = f"{OUT}/cut.zarr"
Interrupting.at = 32  # about half of the 60 forward passes of the grid, which come after 2 (the fit check, the probe)
cut = landscape_ray.plane(slow, (x, y), store=path, **HERE)
kept, calls, Interrupting.at = int(cut.done.values.sum()), Interrupting.calls, 0
whole = landscape_ray.plane(slow, (x, y), store=path, resume=True, **HERE)
plain = landscape_ray.plane(slow, (x, y), store=f"{OUT}/plain.zarr", **HERE)
actors = [list(run["actors"]) for p in (path, f"{OUT}/plain.zarr") for run in Store(p, mode="r").root.attrs["runs"]]
print(json.dumps({"kept": kept, "calls": calls, "resumed": whole.train_loss.values.tolist(),
                  "plain": plain.train_loss.values.tolist(), "done": int(whole.done.values.sum()), "actors": actors}))
"""


def run_script(body: str, address: str, tmp_path, private: bool = False) -> dict:
    """`body` after PRELUDE as a script; `private`: with no cluster to join (RAY_ADDRESS unset)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if not (private and k == "RAY_ADDRESS")}
    done = subprocess.run(
        [sys.executable, str(script), address, str(tmp_path)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},  # the package, not the script's folder
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def address(ray_cluster) -> str:
    return ray_cluster.get_runtime_context().gcs_address


def test_a_main_module_class_on_two_actors_equals_a_plain_loop(address, tmp_path):
    out = run_script(VALUES, address, tmp_path)
    assert out["module"] == "__main__"
    pair, loop = np.array(out["pair"]), np.array(out["loop"])
    assert pair.shape == (4, 5) and np.isfinite(pair).all()
    np.testing.assert_allclose(pair, loop, rtol=1e-6)  # every point, the origin and those off it
    assert np.ptp(pair) > 0.05  # the points off the origin really moved
    assert np.array_equal(pair, np.array(out["loader"]))  # a DataLoader and a tensor pair: the same store
    store = Store(tmp_path / "pair.zarr", mode="r")
    assert store.spec.model.arch == "object" and store.spec.data.dataset == "object"
    assert store.inputs["model.object"] == store.spec.model.object and "data.train" in store.inputs
    assert len(store.root.attrs["runs"][0]["actors"]) == 2, store.root.attrs["runs"][0]["actors"]


SMALL_ADAPTIVE = """
quick = MLP(delay=0.0)
quick.load_state_dict(model.state_dict())
ds = landscape_ray.plane(quick, (x, y), x=(-1, 1, 33), y=(-1, 1, 33), grid={"mode": "adaptive"}, log=print,
                         store=f"{OUT}/adaptive.zarr")
dx, dy = Store(f"{OUT}/adaptive.zarr", mode="r").directions()
theta = {k: v.clone() for k, v in quick.state_dict().items()}
loop = np.zeros((len(ds.y), len(ds.x)))
with torch.no_grad():
    for i, beta in enumerate(ds.y.values):
        for j, alpha in enumerate(ds.x.values):
            quick.load_state_dict({k: v + alpha * torch.from_numpy(dx[k]) + beta * torch.from_numpy(dy[k])
                                   for k, v in theta.items()})
            loop[i, j] = F.cross_entropy(quick(x), y).item()
run = Store(f"{OUT}/adaptive.zarr", mode="r").root.attrs["runs"][-1]
print(json.dumps({"filled": ds.train_loss.values.tolist(), "done": ds.done.values.tolist(), "loop": loop.tolist(),
                  "startup": run["startup"], "actors": list(run["actors"])}))
"""


def test_a_small_adaptive_plane_from_python_runs_without_a_cluster(address, tmp_path):
    """No cluster to join and a small job: the call computes it in its own process (no cluster started); an
    adaptive grid through the spec's keywords; the Dataset is the filled field: the plain loop's values at the points
    computed (`done`), and within 3 % + 0.003 of them everywhere."""
    out = run_script(SMALL_ADAPTIVE, address, tmp_path, private=True)
    assert "cluster_s" not in out["startup"] and out["actors"] == ["driver"], out
    filled, done, loop = (np.array(out[k]) for k in ("filled", "done", "loop"))
    assert 0 < done.mean() < 1
    np.testing.assert_allclose(filled[done], loop[done], rtol=1e-6)
    np.testing.assert_allclose(filled, loop, rtol=0.03, atol=0.003)


def test_ctrl_c_keeps_a_store_that_resume_completes(address, tmp_path):
    out = run_script(INTERRUPTED, address, tmp_path)
    assert 4 <= out["kept"] < 20, out
    assert out["done"] == 20
    assert np.array_equal(np.array(out["resumed"]), np.array(out["plain"]))


def test_ctrl_c_during_a_small_job_computed_here_keeps_its_finished_tiles(address, tmp_path):
    """No cluster to join: the small job's points are computed in the calling process before its store is built
    (job.built_after). Ctrl-C halfway: the store is built with every finished tile and the call returns it; then
    resume=True completes it, equal to an undisturbed run, and neither started a cluster."""
    out = run_script(HERE_INTERRUPTED, address, tmp_path, private=True)
    assert out["calls"] < 62 and 0 < out["kept"] < 20, out  # interrupted: some points kept, not all
    assert out["done"] == 20 and out["actors"] == [["driver"], ["driver"]], out
    assert np.array_equal(np.array(out["resumed"]), np.array(out["plain"]))


def test_the_store_opens_with_the_cli_and_run_resume_refuses_in_one_line(address, tmp_path, capsys):
    run_script(VALUES, address, tmp_path)
    store = tmp_path / "pair.zarr"
    assert main(["info", str(store)]) == 0
    assert "progress: 20/20 points done" in capsys.readouterr().out
    assert main(["render", str(store), "--out", str(tmp_path / "pictures")]) == 0
    assert any(p.suffix == ".png" for p in (tmp_path / "pictures").iterdir())
    assert main(["report", str(store), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.html").exists()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(Store(store, mode="r").spec.model_dump(mode="json")))
    capsys.readouterr()
    assert main(["run", str(spec), "--resume", "--address", address]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("model.arch: object sha256:"), err
    assert "resume=True" in err[0]


def test_a_hugging_face_model_object_with_token_ids(ray_cluster, make_hf, tmp_path, monkeypatch):
    """A transformers model object and a tensor of token windows: the next-token loss, at θ* that of transformers."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("LANDSCAPE_RAY_CACHE", str(tmp_path / "cache"))  # the tokenizer's windows, not ~/.cache
    folder = make_hf("gpt2")
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, attn_implementation="eager").eval()
    ids = windows(folder)
    ds = landscape_ray.plane(
        model, ids, x=(-1, 1, 3), y=(-1, 1, 3), actors=2, store=str(tmp_path / "lm.zarr"), log=quiet, **{"grid.tile": 3}
    )
    with torch.no_grad():
        ref = float(model(input_ids=ids, labels=ids).loss)
    assert float(ds.train_loss.sel(x=0, y=0)) == pytest.approx(ref, rel=1e-6)
    assert np.isfinite(ds.train_ppl.values).all() and np.ptp(ds.train_loss.values) > 0
    assert Store(tmp_path / "lm.zarr", mode="r").spec.eval.metric == "landscape_ray.compute.language:causal_lm"


def test_scan_interpolate_and_the_default_store(ray_cluster, tmp_path, monkeypatch):
    """interpolate runs from θ_a (α = 0) to θ_b (α = 1); store=None names the store by what decides its values, so
    the same call again reads it back and a different one writes another."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    line = landscape_ray.interpolate(a, b, (x, y), x=(0, 1, 3), actors=1, log=quiet)
    with torch.no_grad():
        ends = [torch.nn.functional.cross_entropy(m(x), y).item() for m in (a, b)]
    np.testing.assert_allclose(line.train_loss.values[[0, -1]], ends, rtol=1e-6)
    lines, second = [], []
    first = landscape_ray.scan(a, (x, y), x=(-1, 1, 5), actors=1, log=lines.append)
    again = landscape_ray.scan(a, (x, y), x=(-1, 1, 5), actors=1, log=second.append)
    other = landscape_ray.scan(a, (x, y), x=(-1, 1, 5), seed=1, actors=1, log=lines.append)
    assert first.train_loss.dims == ("x",) and np.array_equal(first.train_loss.values, again.train_loss.values)
    stores = [line.split()[1].rstrip(":") for line in lines + second if line.startswith("store ")]
    assert stores[0] == stores[2] != stores[1] and stores[0].startswith("runs/api/Linear-"), (lines, second)
    assert not any(line.startswith(("done:", "pass ")) for line in second), second  # the second call computed nothing
    assert not np.array_equal(first.train_loss.values, other.train_loss.values)
    with pytest.raises(ValueError, match="already exists; pass resume=True to complete it or overwrite=True"):
        landscape_ray.scan(a, (x, y), x=(-1, 1, 5), store=stores[0], log=quiet)  # a store named: no reading back


def test_bad_arguments_name_themselves(tmp_path):
    model = nn.Linear(4, 2)
    pair = (torch.randn(10, 4), torch.randint(0, 2, (10,)))
    cases = [
        (dict(model="resnet", data=pair), "model: a torch.nn.Module"),
        (dict(model=model, data="digits"), "data['train']: a DataLoader, a Dataset"),
        (dict(model=model, data=pair, x=(1, -1, 5)), "grid.x: min (1.0) must be < max (-1.0)"),
        (dict(model=model, data=pair, x=5), "x: (min, max, num) or (min, max)"),
        (dict(model=model, data=pair, colour="red"), "colour: unknown key"),
        (dict(model=model, data=(torch.randn(10, 5), pair[1])), "model: fails on the first batch of data['train']"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as err:
            landscape_ray.plane(**kwargs, store=str(tmp_path / "s.zarr"), log=lambda *_: None)
        assert message in str(err.value), (message, str(err.value))
    assert isinstance(err.value.__cause__, RuntimeError)  # the model's own error, with its traceback
    assert not (tmp_path / "s.zarr").exists()


def test_hessian_of_a_model_object_equals_the_exact_hessian(ray_cluster, tmp_path):
    """landscape_ray.hessian against torch.autograd.functional.hessian of the same mean loss (float32 operator, so
    to 1e-4); the result also lands in the store's hessian group, beside a plane of the same call."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(200, 4), torch.randint(0, 3, (200,))
    store = tmp_path / "s.zarr"
    batches = {"data.batch_size": 50}  # four batches: two shards
    got = landscape_ray.hessian(model, (x, y), top=2, which="both", trace=True, actors=2, store=store, **batches)
    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()

    def loss(vector):
        params, at = {}, 0
        for name, p in model.named_parameters():
            params[name] = vector[at : at + p.numel()].view(p.shape)
            at += p.numel()
        out = torch.func.functional_call(model.double(), params, (x.double(),))
        return torch.nn.functional.cross_entropy(out, y)

    exact = np.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat).numpy())
    want = np.sort(np.concatenate([exact[:2], exact[-2:]]))
    np.testing.assert_allclose(np.sort(got["eigenvalues"]), want, rtol=1e-4, atol=1e-6)
    assert abs(got["trace"] - exact.sum()) <= 4 * got["trace_se"] + 1e-5 * abs(exact.sum())
    assert got["actors"] == 2 and sorted(got["eigenvectors"][0]) == sorted(names)
    assert "hessian" in Store(store, mode="r").root


def test_a_narrow_models_pair_is_collated_in_wide_batches():
    """(x, y) with no batch size: a 64-wide MLP's largest activation is 64 floats (256 bytes), so the CPU rule's
    2 MiB holds 8,192 samples and 3,000 are one batch; a conv net's 16 × 32 × 32 floats (64 KiB) stay at the
    1,024 floor, as do a custom metric's data (None: no model to look at) and a DataLoader's own batches."""
    from torch.utils.data import DataLoader, TensorDataset

    from landscape_ray.api import split_of

    x, y = torch.randn(3000, 64), torch.randint(0, 10, (3000,))
    mlp = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Flatten(), nn.Linear(16 * 32 * 32, 10)).eval()
    images = torch.randn(2100, 3, 32, 32)
    sizes = lambda split: [len(b[1]) for b in split.batches]  # noqa: E731
    assert sizes(split_of((x, y), None, "data", mlp)) == [3000]
    assert sizes(split_of((images, y[:2100]), None, "data", conv)) == [1024, 1024, 52]
    assert sizes(split_of((x, y), None, "data", None)) == [1024, 1024, 952]
    assert sizes(split_of(DataLoader(TensorDataset(x, y), batch_size=700), None, "data", mlp)) == [700] * 4 + [200]
    assert sizes(split_of((x, y), 500, "data", mlp)) == [500] * 6
