"""Actors that hold a language model once: `directions.regenerate` draws each entry's direction where it is used.

Checked against a plain transformers loop (test_llm.by_hand) with θ* + αδ + βη built from the directions that
`landscape-ray directions` materialises from the store's recipe, and against the same plane with kept directions;
memory against the model's own bytes, measured in the actors of a real run.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

from landscape_ray.cluster.shards import ShardedOperator
from landscape_ray.compute.curvature import Curvature
from landscape_ray.compute.evaluator import Evaluator
from landscape_ray.compute.prepare import prepare
from landscape_ray.inputs.data import BFloat16, as_tensor
from landscape_ray.job import run
from landscape_ray.store.tiles import Store

from . import hf_fixtures
from .conftest import ROOT, quiet
from .test_llm import by_hand, spec_of

make_hf = hf_fixtures.make_hf
pytestmark = pytest.mark.usefixtures("ray_cluster")


def exported(store, out) -> list[dict]:
    """The store's directions as `landscape-ray directions STORE --out F.safetensors` writes them."""
    done = subprocess.run(
        [sys.executable, "-m", "landscape_ray", "directions", str(store), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    flat = load_file(out)
    return [{k[2:]: v for k, v in flat.items() if k.startswith(f"{a}/")} for a in "xy"]


def coords_of(ds) -> np.ndarray:
    beta, alpha = np.meshgrid(ds.y.values, ds.x.values, indexing="ij")
    return np.stack([alpha.ravel(), beta.ravel()], axis=1)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_regenerated_plane_equals_the_plain_loop_and_the_kept_one(make_hf, tmp_path, family):
    folder = make_hf(family)
    spec = spec_of(folder, tmp_path / "r.zarr", "directions.regenerate=true", "compute.actors=2")
    run(spec, log=quiet)
    assert Store(tmp_path / "r.zarr", mode="r").directions() == []  # the recipe (its spec), not 2 × N floats
    ds = xr.open_zarr(tmp_path / "r.zarr")
    directions = exported(tmp_path / "r.zarr", tmp_path / "d.safetensors")
    want = by_hand(folder, directions, coords_of(ds))
    np.testing.assert_allclose(ds["test_loss"].values.ravel(), want, rtol=1e-5)
    # Kept directions, drawn with the same per-entry seeds and stored whole: the same plane.
    run(spec_of(folder, tmp_path / "k.zarr", "compute.actors=1"), log=quiet)
    kept = Store(tmp_path / "k.zarr", mode="r").directions()
    for axis in range(2):
        assert kept[axis].keys() == directions[axis].keys()
        for name, v in kept[axis].items():
            np.testing.assert_array_equal(v, directions[axis][name], err_msg=name)
    np.testing.assert_allclose(xr.open_zarr(tmp_path / "k.zarr")["test_loss"].values, ds["test_loss"].values, 1e-6)


def test_a_resumed_regenerated_run_draws_the_same_directions(make_hf, tmp_path):
    folder = make_hf("qwen2")
    whole = tmp_path / "whole.zarr"
    run(spec_of(folder, whole, "directions.regenerate=true"), log=quiet)
    cut = tmp_path / "cut.zarr"
    spec = spec_of(folder, cut, "directions.regenerate=true")
    run(spec, log=quiet)
    store = Store(cut)
    for tile in store.grid.tiles()[1:]:  # as a kill leaves it: the first tile written, the rest not
        where = store.grid.slices(tile)
        store.root["test_loss"][where] = np.nan
        store.root["done"][where] = False
    assert run(spec, resume=True, log=quiet)["points"] == 4
    np.testing.assert_array_equal(xr.open_zarr(cut)["test_loss"].values, xr.open_zarr(whole)["test_loss"].values)


def test_a_bf16_model_travels_and_is_shared_in_its_own_two_bytes(make_hf, tmp_path):
    """θ* of a bf16 model (and kept directions) go to the actors as their bits (NumPy has no bfloat16), θ* bit for
    bit the folder's weights, and a CPU evaluator works on those shared bytes rather than on copies of its own."""
    folder = make_hf("llama")
    reference = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.bfloat16)
    at = np.array([[0.3, -0.2]])
    losses = []
    for regenerate in (True, False):
        spec = spec_of(folder, tmp_path / "s.zarr", "model.dtype=bfloat16", f"directions.regenerate={regenerate}")
        payload = prepare(spec)
        for name, theta in reference.state_dict().items():
            arr = payload.state[name]
            assert isinstance(arr, BFloat16) and arr.bits.itemsize == 2, name
            assert torch.equal(as_tensor(arr), theta), name
        shared = {as_tensor(a).data_ptr() for a in payload.state.values()}
        shared |= {as_tensor(a).data_ptr() for d in payload.directions.vectors for a in d.values()}
        assert all(isinstance(a, BFloat16) for d in payload.directions.vectors for a in d.values())
        ev = Evaluator.from_payload(spec, payload, "cpu")
        assert {t.data_ptr() for t in ev.base + [t for d in ev.directions for t in d]} <= shared
        losses.append(ev.evaluate(at)["test_loss"])
        assert np.array_equal(ev.evaluate(at)["test_loss"], losses[-1])  # θ* intact after a point
    # The same directions; regenerated ones add in fp32 and round once, kept ones are rounded to bf16 first.
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-2)


def test_hessian_vector_products_at_a_point_of_regenerated_directions(make_hf, tmp_path):
    """The sharded Hessian's actors (and eval.curvature) take the recipe as the evaluator does: the same products at
    a point off θ* as with the kept directions it draws."""
    folder = make_hf("qwen2")
    products = []
    for regenerate in (True, False):
        spec = spec_of(folder, tmp_path / "s.zarr", f"directions.regenerate={regenerate}")
        payload = prepare(spec)
        with ShardedOperator(spec, payload, "test", at=(0.3, -0.2), actors=2) as op:
            v = np.random.default_rng(0).standard_normal(op_dim(spec, payload)).astype(np.float32)
            products.append(op.matvec(v))
    np.testing.assert_allclose(products[0], products[1], rtol=1e-4, atol=1e-6)


def op_dim(spec, payload) -> int:
    return Curvature.from_payload(spec, payload, "test", "cpu").dim


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_an_evaluators_model_is_the_folders_in_every_tensor(make_hf, tmp_path, family):
    """An evaluator builds its network without drawing initial weights (its state comes from the payload): every
    parameter and buffer, the ones outside the state_dict (rotary frequencies) too, is the folder's model's."""
    folder = make_hf(family)
    ev = Evaluator.from_payload(spec_of(folder, tmp_path / "s.zarr"), prepare(spec_of(folder, tmp_path / "s.zarr")))
    reference = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, attn_implementation="eager")
    mine = dict(ev.model.named_parameters()) | dict(ev.model.named_buffers())
    theirs = dict(reference.named_parameters()) | dict(reference.named_buffers())
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.equal(mine[name], tensor), name


@pytest.mark.slow
def test_an_actor_holds_a_100m_model_once_with_regenerated_directions(tmp_path):
    """Peak resident memory of the actor of a real run, less that of the same run on a tiny model (Python, torch,
    transformers, Ray): with regenerated directions the model, its shared θ* and one entry's draws (≤ 2.5 × the
    model's bytes); with kept ones two directions more (≤ 4.5 ×)."""
    big = hf_fixtures.make_model(tmp_path / "big", "gpt2", n_embd=768, n_layer=14, n_head=12)
    tiny = hf_fixtures.make_model(tmp_path / "tiny", "gpt2")
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(big, local_files_only=True).parameters())
    assert params > 95_000_000
    model_bytes = 4 * params

    def peak(folder, *extra) -> float:
        store = tmp_path / f"{len(list(tmp_path.iterdir()))}.zarr"
        run(spec_of(folder, store, "compute.actors=1", "data.sequences=2", "grid.tile=6", *extra), log=quiet)
        [actor] = [a for n, a in Store(store, mode="r").root.attrs["runs"][-1]["actors"].items() if n != "driver"]
        return actor["peak_rss_mb"] * 2**20

    base = peak(tiny)
    regenerated = peak(big, "directions.regenerate=true") - base
    kept = peak(big) - base
    assert regenerated <= 2.5 * model_bytes, (regenerated / model_bytes, kept / model_bytes)
    assert kept <= 4.5 * model_bytes, (regenerated / model_bytes, kept / model_bytes)
    assert kept - regenerated >= 1.5 * model_bytes  # the two directions really are not held
