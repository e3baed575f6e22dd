"""Hessian-vector products, eigenvalues, trace and density against exact answers and against PyHessian.

The reference Hessian is `torch.autograd.functional.hessian` of the mean loss written here in plain float64 PyTorch
(normalization, eval-mode BN and cross-entropy as the evaluator defines the loss), on nets of a few hundred
parameters and a digits subset of two batches.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from torch import nn
from torch.func import functional_call

from landscape_ray import hessians
from landscape_ray.cluster.shards import ShardedOperator
from landscape_ray.compute import spectrum
from landscape_ray.compute.curvature import Curvature
from landscape_ray.compute.prepare import prepare
from landscape_ray.compute.spectrum import extremes
from landscape_ray.core.errors import SpecError
from landscape_ray.hessians import eigen_directions, parse_at, write_group
from landscape_ray.inputs.data import load_split
from landscape_ray.inputs.models import load_model
from landscape_ray.spec.grid import Grid
from landscape_ray.spec.specfile import load_spec
from landscape_ray.store.layout import amend, create
from landscape_ray.store.lock import claim
from landscape_ray.store.tiles import Store


def tiny_mlp():
    """64 → 6 → 10 with tanh: 460 parameters, an indefinite Hessian at its initialization."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 10))


def tiny_bn_cnn():
    """A strided conv, BN (eval mode, non-trivial running statistics), tanh and a linear head: 313 parameters."""
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2, bias=False), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(27, 10)
    )
    with torch.no_grad():
        model[1].running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
        model[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.3]))
        model[1].weight.copy_(torch.tensor([1.5, 0.7, -1.1]))
    return model


def accuracy_only(model, batch):
    """A metric whose 'loss' is a count: no derivative."""
    x, y = batch
    return (model(x).argmax(1) == y).sum().double(), len(y)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as an actor has: products of these tiny nets are dominated by thread hand-offs otherwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ARCHS = ["tests.test_curvature:tiny_mlp", "tests.test_curvature:tiny_bn_cnn"]


def compute(spec, **request):
    """`hessians.compute` on the spec's inputs (directions only where the products are taken away from θ*)."""
    return hessians.compute(spec, prepare(spec, vectors=None if request.get("at") else []), **request)


def hessian_scan(store, h: float = 0.01):
    """(h, spec) of a 1D scan over [-h, h] along the top Hessian eigenvector (`directions.kind: hessian`) into
    `store`: its second difference at 0 is the top eigenvalue, up to O(h²)."""
    return h, spec_for(
        ARCHS[0],
        "directions.kind=hessian",
        "grid.y=null",
        f"grid.x={{min: {-h}, max: {h}, num: 3}}",
        "data.splits=[train]",
        f"output.store={store}",
        "output.render=[]",
    )


def spec_for(arch: str, *extra: str):
    return load_spec(
        None,
        [
            f"model.arch={arch}",
            "model.checkpoint=null",
            "data.subset=100",
            "data.batch_size=64",
            "eval.device=cpu",
            "grid.x.num=3",
            "grid.y={num: 3}",
            "compute.actors=1",
            *extra,
        ],
    )


def exact_hessian(spec, at=None):
    """(H, ordered parameter names) of the mean loss over the train subset, float64, from scratch."""
    model = load_model(spec).double().eval()
    split = load_split(spec.data, "train")
    x = (torch.from_numpy(split.images).double() / 255 - 0.305) / 0.376  # the digits normalization
    y = torch.from_numpy(split.labels)
    names = [n for n, _ in model.named_parameters()]
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    if at is not None:
        for c, d in zip(at, prepare(spec).directions.vectors):
            for n in names:
                theta[n] += c * torch.from_numpy(d[n]).double()
    flat = torch.cat([theta[n].reshape(-1) for n in names])

    def loss(v):
        params, offset = {}, 0
        for n in names:
            params[n] = v[offset : offset + theta[n].numel()].reshape(theta[n].shape)
            offset += theta[n].numel()
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat).numpy(), loss, flat


@pytest.fixture(scope="module", params=ARCHS)
def case(request):
    spec = spec_for(request.param)
    hessian, loss, flat = exact_hessian(spec)
    curvature = Curvature.from_payload(spec, prepare(spec, vectors=[]), "train", "cpu")
    return spec, hessian, curvature, loss, flat


def test_hvp_matches_exact_hessian(case):
    _, hessian, curvature, _, _ = case
    assert curvature.dim == len(hessian)
    for seed in range(3):
        v = np.random.default_rng(seed).standard_normal(curvature.dim)
        expected = hessian @ v
        assert np.linalg.norm(curvature.matvec(v) - expected) <= 1e-5 * np.linalg.norm(expected)


def test_double_backward_gives_the_same_products(case):
    _, hessian, curvature, _, _ = case
    v = np.random.default_rng(7).standard_normal(curvature.dim)
    forward = curvature.matvec(v)
    curvature.mode = "reverse"
    try:
        np.testing.assert_allclose(curvature.matvec(v), forward, rtol=0, atol=1e-6 * np.abs(forward).max())
    finally:
        curvature.mode = "forward"


def test_second_derivative_along_a_direction_matches_finite_differences(case):
    _, _, curvature, loss, flat = case
    d = np.random.default_rng(3).standard_normal(curvature.dim)
    d /= np.linalg.norm(d)
    h = 1e-3
    step = torch.from_numpy(d) * h
    with torch.no_grad():  # float64 central difference: O(h²) truncation, ~1e-10 rounding
        fd = (loss(flat + step) - 2 * loss(flat) + loss(flat - step)).item() / h**2
    assert d @ curvature.matvec(d) == pytest.approx(fd, rel=1e-4)


def test_eigenpairs_at_both_ends_match_exact(case):
    _, hessian, curvature, _, _ = case
    exact, vectors = np.linalg.eigh(hessian)
    values, found, ends = spectrum.eigenpairs(curvature.matvec, curvature.dim, 2, "both", tol=1e-7)
    assert ends == ["largest", "largest", "smallest", "smallest"]
    expected = np.concatenate([exact[::-1][:2], exact[:2]])
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    assert expected[2] < 0  # the bottom end is a real negative curvature, not the near-zero bulk
    for vec, index in zip(found, [-1, -2, 0, 1]):
        gap = np.delete(np.abs(exact - exact[index]), index).min()
        if gap > 1e-2 * np.abs(exact).max():  # an eigenvector is defined (up to sign) only when its eigenvalue is apart
            np.testing.assert_allclose(abs(vec @ vectors[:, index]), 1.0, atol=1e-4)


def test_trace_exact_and_hutchinson_within_its_standard_error(case):
    _, hessian, curvature, _, _ = case
    exact = np.trace(hessian)
    trace, se, _ = spectrum.hutchinson(curvature.matvec, curvature.dim, probes=curvature.dim)
    assert se == 0 and trace == pytest.approx(exact, rel=1e-5)
    trace, se, samples = spectrum.hutchinson(curvature.matvec, curvature.dim, probes=100, seed=1)
    assert len(samples) == 100 and 0 < se and abs(trace - exact) < 3 * se


def test_density_integrates_to_one_with_its_mass_at_the_eigenvalues(case):
    _, hessian, curvature, _, _ = case
    exact = np.linalg.eigvalsh(hessian)
    slq = spectrum.density(curvature.matvec, curvature.dim, steps=25, runs=6, seed=2)
    assert np.trapezoid(slq["density"], slq["grid"]) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(np.nansum(slq["weights"], axis=1), 1.0, atol=1e-9)
    # Each run's quadrature has vᵀHv/‖v‖² as its mean; over runs it estimates tr(H)/dim.
    means = np.nansum(slq["weights"] * slq["nodes"], axis=1)
    assert abs(means.mean() - exact.mean()) < 4 * means.std(ddof=1) / np.sqrt(len(means))
    # The extreme nodes converge first: they are the extreme eigenvalues.
    assert np.nanmax(slq["nodes"]) == pytest.approx(exact[-1], rel=1e-4)
    assert np.nanmin(slq["nodes"]) == pytest.approx(exact[0], rel=1e-4)
    full = spectrum.density(curvature.matvec, curvature.dim, steps=curvature.dim, seed=2)  # a complete Lanczos run
    nodes = full["nodes"][0][full["weights"][0] > 1e-6]
    assert np.abs(nodes[:, None] - exact[None]).min(axis=1).max() < 1e-4 * np.abs(exact).max()


def test_pyhessian_agrees(case):
    pyhessian = pytest.importorskip("pyhessian")
    spec, hessian, curvature, _, _ = case
    model = load_model(spec).eval()
    split = load_split(spec.data, "train")
    x = (torch.from_numpy(split.images).float() / 255 - 0.305) / 0.376
    y = torch.from_numpy(split.labels)
    loader = [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(y), 64)]
    torch.manual_seed(0)
    theirs = pyhessian.hessian(model, nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
    [top], _ = theirs.eigenvalues(maxIter=1000, tol=1e-7)  # power iteration: the largest |λ|
    values, _, _ = spectrum.eigenpairs(curvature.matvec, curvature.dim, 1, "both", tol=1e-7)
    assert top == pytest.approx(values[np.abs(values).argmax()], rel=1e-3)
    their_samples = np.array(theirs.trace(maxIter=100, tol=0.0))
    trace, se, _ = spectrum.hutchinson(curvature.matvec, curvature.dim, probes=100)
    their_se = their_samples.std(ddof=1) / np.sqrt(len(their_samples))
    assert abs(trace - their_samples.mean()) < 3 * np.hypot(se, their_se)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS[:1])
def test_one_two_three_actors_give_the_same_eigenvalues(ray_cluster, arch):
    spec = spec_for(arch)
    runs = [compute(spec, top=2, which="both", actors=n, tol=1e-7, log=lambda *_: None) for n in (1, 2, 3)]
    assert [r["actors"] for r in runs] == [1, 2, 3]
    exact = np.linalg.eigvalsh(exact_hessian(spec)[0])
    np.testing.assert_allclose(runs[0]["eigenvalues"], [exact[-1], exact[-2], exact[0], exact[1]], rtol=1e-5)
    for other in runs[1:]:
        np.testing.assert_allclose(other["eigenvalues"], runs[0]["eigenvalues"], rtol=1e-6)


@pytest.mark.slow
def test_hessian_at_a_grid_point(ray_cluster):
    spec = spec_for(ARCHS[1], "directions.ignore=none")
    result = compute(spec, top=1, which="both", at=(0.5, -0.3), actors=2, tol=1e-7, log=lambda *_: None)
    exact = np.linalg.eigvalsh(exact_hessian(spec, at=(0.5, -0.3))[0])
    np.testing.assert_allclose(result["eigenvalues"], [exact[-1], exact[0]], rtol=1e-5)


def test_write_into_a_store_replaces_its_group(ray_cluster, tmp_path):
    spec = spec_for(ARCHS[0])
    result = compute(spec, top=2, trace=True, density=True, probes=20, steps=10, actors=2, log=lambda *_: None)
    path = tmp_path / "h.zarr"
    payload = prepare(spec)
    with claim(path, "test"):
        create(path, spec, Grid.from_spec(spec.grid), payload.variables, payload.directions)
        before = Store(path, mode="r").directions()[0]
        for _ in range(2):  # the second replaces the group
            amend(path, lambda root: write_group(root, result, spec))
    root = zarr.open_group(str(path), mode="r")
    group = root["hessian"]
    after = Store(path, mode="r").directions()[0]
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)
    np.testing.assert_array_equal(group["eigenvalues"][...], result["eigenvalues"])
    assert group["eigenvalues"].metadata.dimension_names == ("eigen",)
    assert np.isnan(group["eigenvalues"].metadata.fill_value)
    assert group["trace"][...] == result["trace"] and group["trace_se"][...] == result["trace_se"]
    assert group["density"].shape == group["density_grid"].shape
    model = load_model(spec)
    for k in range(2):
        vec = np.concatenate([group[f"eigenvectors/{k}/{n}"][...].ravel() for n, _ in model.named_parameters()])
        assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-6)
        assert tuple(group[f"eigenvectors/{k}/1.weight"].shape) == (6, 64)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top": 0}, "--top: must be >= 1, got 0"),
        ({"top": 460}, "--top: 460 eigenvalues asked of a Hessian of 460 parameters; at most 459"),
        ({"at": (0.5,)}, "--at: the spec's directions span 2 axes, got 1 coordinate(s) 0.5"),
        ({"which": "middle"}, "--which: expected one of largest, smallest, both, got 'middle'"),
        ({"trace": True, "probes": 1}, "--probes: must be >= 2, got 1"),
    ],
)
def test_bad_requests_are_one_line(kwargs, message):
    with pytest.raises(SpecError) as err:
        compute(spec_for(ARCHS[0]), **kwargs)
    assert str(err.value) == message


def test_bad_inputs_are_one_line():
    with pytest.raises(SpecError, match="^--at: expected coordinates like 0.5,-0.25, got '1,b'$"):
        parse_at("1,b")
    with pytest.raises(SpecError, match="^eval.metric: its loss is not differentiable") as err:
        compute(spec_for(ARCHS[0], "eval.metric=tests.test_curvature:accuracy_only"))
    assert "\n" not in str(err.value)
    with pytest.raises(SpecError, match="^eval.bn: the Hessian is taken with fixed BN statistics; use eval.bn: eval$"):
        compute(spec_for(ARCHS[1], "eval.bn=recompute"))


@pytest.mark.slow
def test_an_actor_killed_mid_product_is_replaced(ray_cluster):
    spec = spec_for(ARCHS[1], "data.subset=null", "data.batch_size=4")  # ~90 batches per shard: a product takes a while
    payload = prepare(spec, vectors=[])
    v = np.random.default_rng(0).standard_normal(313)
    with ShardedOperator(spec, payload, "train", actors=2, log=lambda *_: None) as op:
        op.matvec(v)  # the actors start
        start = time.perf_counter()
        undisturbed = op.matvec(v)
        took = time.perf_counter() - start  # the kill lands a third of the way into the next product, on any machine
        victim = op.actors[0]
        killer = threading.Timer(took / 3, lambda: ray_cluster.kill(victim, no_restart=True))
        killer.start()
        disturbed = op.matvec(v)
        killer.join()
        assert op.deaths == 1 and op.actors[0] is not victim
    np.testing.assert_array_equal(disturbed, undisturbed)  # the same shard, the same code: the same bits


def test_extremes_for_a_grid_point(case):
    _, hessian, curvature, _, _ = case
    exact = np.linalg.eigvalsh(hessian)
    top, bottom = extremes(curvature)
    scale = np.abs(exact).max()
    assert abs(top - exact[-1]) < 1e-4 * scale and abs(bottom - exact[0]) < 1e-4 * scale


@pytest.mark.slow
def test_eigen_directions_are_the_top_eigenvectors(ray_cluster):
    spec = spec_for(ARCHS[0], "directions.norm=none")
    model = load_model(spec)
    exact, vectors = np.linalg.eigh(exact_hessian(spec)[0])
    found = eigen_directions(spec, prepare(spec, vectors=[]))
    assert [a["eigenvalue"] for a in found.axis_attrs] == pytest.approx(exact[::-1][:2], rel=1e-4)
    for k, direction in enumerate(found.vectors):
        assert list(direction) == [n for n, _ in model.named_parameters()]
        flat = np.concatenate([direction[n].ravel() for n in direction])
        assert abs(flat @ vectors[:, -1 - k]) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_a_surface_along_hessian_directions_curves_by_the_top_eigenvalue(ray_cluster, tmp_path, capsys):
    """`directions.kind: hessian` end to end: the second difference of the stored 1D scan along the top unit
    eigenvector is its eigenvalue (exact Hessian); `hessian` then writes its group into that store and `info`
    shows it."""
    from landscape_ray.cli.main import main
    from landscape_ray.job import run

    from .conftest import quiet

    store = tmp_path / "h.zarr"
    h, spec = hessian_scan(store)
    run(spec, log=quiet)
    f = zarr.open_group(str(store), mode="r")["train_loss"][...]
    top = np.linalg.eigvalsh(exact_hessian(spec)[0])[-1]
    assert (f[0] - 2 * f[1] + f[2]) / h**2 == pytest.approx(top, rel=5e-3)  # O(h²) error; fp32 forward
    job = tmp_path / "job.yaml"
    job.write_text(__import__("yaml").safe_dump(spec.model_dump(mode="json")))
    assert main(["hessian", str(job), "--top", "1", "--actors", "1"]) == 0
    capsys.readouterr()
    assert main(["info", str(store)]) == 0
    assert f"eigenvalues {top:.6g}"[:18] in capsys.readouterr().out


@pytest.mark.slow
def test_eval_curvature_stores_the_extreme_eigenvalues_at_every_point(ray_cluster, tmp_path):
    """`eval.curvature: true`: every point's train_lambda_max/min equal the exact Hessian's extremes there, and
    `render --vars curvature` draws |λmin/λmax| (0 where the surface is locally convex)."""
    from landscape_ray.job import run
    from landscape_ray.pictures.draw import values
    from landscape_ray.pictures.render import render
    from landscape_ray.store.reader import dataset

    from .conftest import quiet

    store = tmp_path / "c.zarr"
    spec = spec_for(
        ARCHS[0],
        "eval.curvature=true",
        "data.splits=[train]",
        "grid.x={min: -0.5, max: 0.5, num: 2}",
        "grid.y={min: -0.5, max: 0.5, num: 2}",
        "compute.actors=2",
        f"output.store={store}",
        "output.render=[]",
    )
    run(spec, log=quiet)
    ds = dataset(store)
    for j, b in enumerate(ds.y.values):
        for i, a in enumerate(ds.x.values):
            exact = np.linalg.eigvalsh(exact_hessian(spec, at=(a, b))[0])
            scale = np.abs(exact).max()
            assert abs(float(ds.train_lambda_max[j, i]) - exact[-1]) < 1e-3 * scale
            assert abs(float(ds.train_lambda_min[j, i]) - exact[0]) < 1e-3 * scale
    z, label = values(ds, "curvature")
    lmax, lmin = ds.train_lambda_max.values, ds.train_lambda_min.values
    np.testing.assert_allclose(z, np.where(lmin < 0, -lmin / lmax, 0.0))
    assert label == "|λmin/λmax|"
    assert [p.name for p in render(store, out=tmp_path, kinds=["heatmap"], variables=["curvature"])] == [
        "curvature_heatmap.png"
    ]


def test_eval_curvature_needs_the_train_split():
    with pytest.raises(SpecError, match="eval.curvature: needs the train split"):
        spec_for(ARCHS[0], "eval.curvature=true", "data.splits=[test]")


@pytest.mark.slow
def test_hessian_directions_from_the_command_line_in_fresh_processes(tmp_path):
    """`run --set directions.kind=hessian` with no cluster running, twice, each a fresh process starting its own
    private cluster: the eigenvectors are computed on the run's cluster once it is up (they used to start a second
    Ray from the loading thread, and died with a Ray traceback), and the stored scan curves by the top eigenvalue."""
    store = tmp_path / "h.zarr"
    h, spec = hessian_scan(store)
    job = tmp_path / "job.yaml"
    job.write_text(__import__("yaml").safe_dump(spec.model_dump(mode="json")))
    top = np.linalg.eigvalsh(exact_hessian(spec)[0])[-1]
    root = Path(__file__).resolve().parents[1]
    for attempt in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "landscape_ray", "run", str(job), "--overwrite"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"attempt {attempt}: {done.stderr}"
        assert "Traceback" not in done.stderr
        f = zarr.open_group(str(store), mode="r")["train_loss"][...]
        assert (f[0] - 2 * f[1] + f[2]) / h**2 == pytest.approx(top, rel=5e-3)


def test_hessian_into_a_new_store_and_a_busy_one(ray_cluster, tmp_path, capsys):
    """`hessian` with an `output.store` that does not exist writes a store of its own (marked ours, the spec in it):
    the stored eigenvalues are the printed ones and `info` shows them; while another process holds the store, a
    second `hessian` is refused in one line."""
    from landscape_ray.cli.main import main
    from landscape_ray.store.lock import claim
    from landscape_ray.store.tiles import Store

    store = tmp_path / "new.zarr"
    spec = spec_for(ARCHS[0], f"output.store={store}", "output.render=[]")
    job = tmp_path / "job.yaml"
    job.write_text(__import__("yaml").safe_dump(spec.model_dump(mode="json")))
    assert main(["hessian", str(job), "--top", "2", "--actors", "1"]) == 0
    out = capsys.readouterr().out
    printed = [float(v) for v in out.split("largest eigenvalues: ")[1].splitlines()[0].split(", ")]
    stored = zarr.open_group(str(store), mode="r")["hessian/eigenvalues"][...]
    assert [f"{v:.6g}" for v in stored] == [f"{v:.6g}" for v in printed]
    exact = np.linalg.eigvalsh(exact_hessian(spec)[0])
    np.testing.assert_allclose(stored, exact[::-1][:2], rtol=1e-4)
    assert Store(store).spec.result_fields() == spec.result_fields()  # a store of ours: it opens, its spec is in it
    assert main(["info", str(store)]) == 0
    assert "eigenvalues " + ", ".join(f"{v:.6g}" for v in stored) in capsys.readouterr().out
    with claim(store, "another landscape-ray hessian"):
        assert main(["hessian", str(job), "--top", "1"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "is in use by" in line and "another landscape-ray hessian" in line
