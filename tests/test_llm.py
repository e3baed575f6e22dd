"""Language models end to end: a Hugging Face folder and text, through the service, against a plain transformers loop.

The oracle is what a user would write by hand: `AutoModelForCausalLM.from_pretrained`, θ* + αδ + βη set from the
store's own directions, `model(ids, labels=ids).loss` per window, weighted by its predicted tokens.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from landscape_ray.compute.evaluator import Evaluator
from landscape_ray.compute.prepare import prepare
from landscape_ray.core.errors import SpecError
from landscape_ray.inputs.text import bundled_text
from landscape_ray.job import run
from landscape_ray.pictures.draw import title
from landscape_ray.spec.specfile import load_spec
from landscape_ray.store.tiles import Store

from . import hf_fixtures
from .conftest import ROOT, quiet
from .hf_fixtures import TIED, cut

make_hf = hf_fixtures.make_hf
pytestmark = pytest.mark.usefixtures("ray_cluster")
SEQ, SEQUENCES = 32, 6


def spec_of(folder, store, *extra):
    return load_spec(
        None,
        [
            "model.arch=hf",
            f"model.path={folder}",
            "data.dataset=text",
            "data.splits=[test]",
            f"data.seq_len={SEQ}",
            f"data.sequences={SEQUENCES}",
            "data.batch_size=4",  # two batches of 4 and 2: token weighting across batches matters
            "eval.device=cpu",
            "grid.x={min: -0.4, max: 0.4, num: 3}",
            "grid.y={min: -0.2, max: 0.3, num: 2}",
            "grid.tile=2",
            f"output.store={store}",
            "output.render=[]",
            "compute.warmup=false",
            *extra,
        ],
    )


def by_hand(folder, directions: list[dict], coords) -> np.ndarray:
    """Token-weighted next-token loss at each coordinate: a plain transformers loop on hand-cut windows."""
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = torch.from_numpy(cut(tokenizer(bundled_text("test"))["input_ids"], SEQ)[:SEQUENCES])
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, attn_implementation="eager").eval()
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    out = []
    for coord in coords:
        with torch.no_grad():
            live = model.state_dict()
            for name in theta:
                live[name].copy_(theta[name])  # tied entries share a tensor: set to θ*, then moved once below
            for c, d in zip(coord, directions):
                for name, v in d.items():
                    live[name].add_(torch.from_numpy(np.asarray(v)), alpha=float(c))
            total = sum(float(model(w[None], labels=w[None]).loss) * (SEQ - 1) for w in ids)
        out.append(total / (len(ids) * (SEQ - 1)))
    return np.array(out)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("norm", ["filter", "layer"])
def test_a_plane_of_a_hf_model_equals_a_plain_transformers_loop(make_hf, tmp_path, family, norm):
    folder = make_hf(family)
    spec = spec_of(folder, tmp_path / "s.zarr", f"directions.norm={norm}", "compute.actors=2")
    run(spec, log=quiet)
    ds = xr.open_zarr(tmp_path / "s.zarr")
    directions = Store(tmp_path / "s.zarr", mode="r").directions()
    beta, alpha = np.meshgrid(ds.y.values, ds.x.values, indexing="ij")
    coords = np.stack([alpha.ravel(), beta.ravel()], axis=1)
    want = by_hand(folder, directions, coords)
    np.testing.assert_allclose(ds["test_loss"].values.ravel(), want, rtol=1e-5)
    np.testing.assert_allclose(ds["test_ppl"].values, np.exp(ds["test_loss"].values), rtol=1e-12)
    assert not set(TIED[family]) & set(directions[0])  # a tied entry moves once, with the one it is tied to


def test_one_and_two_actors_give_the_same_values(make_hf, tmp_path):
    folder = make_hf("gpt2")
    stores = []
    for actors in (1, 2):
        spec = spec_of(folder, tmp_path / f"{actors}.zarr", f"compute.actors={actors}")
        run(spec, log=quiet)
        stores.append(xr.open_zarr(tmp_path / f"{actors}.zarr"))
    for name in ("test_loss", "test_acc"):
        np.testing.assert_array_equal(stores[0][name].values, stores[1][name].values, err_msg=name)


def test_filter_normalization_follows_each_layer_type(make_hf, tmp_path):
    """By hand: each output unit's direction has the norm of θ*'s (rows of Linear and Embedding weights, columns of
    GPT-2's Conv1D (in, out) weights); biases and LayerNorm/RMSNorm gains get none."""
    for family in ("gpt2", "llama"):
        folder = make_hf(family)
        run(spec_of(folder, tmp_path / f"{family}.zarr"), log=quiet)
        delta = Store(tmp_path / f"{family}.zarr", mode="r").directions()[0]
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        conv1d = {f"{n}.weight" for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
        assert conv1d if family == "gpt2" else not conv1d
        for name, theta in model.state_dict().items():
            if name not in delta:
                continue
            d = torch.from_numpy(np.asarray(delta[name]))
            if theta.dim() <= 1:
                assert not d.any(), name  # biases and normalisation gains stay
                continue
            axis = 0 if name in conv1d else 1  # reduce over the inputs of each output unit
            np.testing.assert_allclose(d.norm(dim=axis), theta.norm(dim=axis), rtol=1e-4, atol=1e-6, err_msg=name)


def test_interpolation_between_two_hf_folders_equals_the_plain_loop(make_hf, tmp_path):
    start, end = make_hf("llama", 0), make_hf("llama", 1)
    spec = spec_of(start, tmp_path / "i.zarr", "directions.kind=interpolate", f"directions.target={end}", "grid.y=null")
    run(spec, log=quiet)
    ds = xr.open_zarr(tmp_path / "i.zarr")
    directions = Store(tmp_path / "i.zarr", mode="r").directions()
    np.testing.assert_allclose(ds["test_loss"].values, by_hand(start, directions, ds.x.values[:, None]), rtol=1e-5)
    # α = 1 is the other folder's own model
    other = by_hand(end, [{}], [[0.0]])[0]
    assert abs(by_hand(start, directions, [[1.0]])[0] - other) < 1e-5 * other
    # pictures name a language model by its folder, with its perplexity at θ*
    assert title(ds) == f"{start.name} — test perplexity {np.exp(by_hand(start, [{}], [[0.0]])[0]):.4g}"


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.seq_len=200", "data.seq_len: 200 tokens, the model takes at most 128"),
        ("data.sequences=100000", "data.sequences: 100000 sequences"),
        ("model.checkpoint=x.pt", "no checkpoint or kwargs"),
    ],
)
def test_bad_llm_input_is_one_line_and_leaves_nothing(make_hf, tmp_path, override, message):
    with pytest.raises((SpecError, ValueError)) as info:
        run(spec_of(make_hf("gpt2"), tmp_path / "s.zarr", override), log=quiet)
    assert message in str(info.value)
    assert not (tmp_path / "s.zarr").exists()


def test_on_the_cpu_an_evaluator_resets_from_the_payloads_own_theta(make_hf, tmp_path):
    """θ* is held once per node: the evaluator's reset copies read the payload's arrays (Ray's object store in an
    actor) instead of a clone of their own, and the values do not change for it."""
    spec = spec_of(make_hf("llama"), tmp_path / "s.zarr")
    payload = prepare(spec)
    ev = Evaluator.from_payload(spec, payload, "cpu")
    shared = {b.data_ptr() for b in ev.base}
    moved = [n for n, v in payload.directions.vectors[0].items() if np.any(v)]
    assert len(moved) == len(ev.base) > 10 and all(payload.state[n].ctypes.data in shared for n in moved)
    before = ev.evaluate(np.array([[0.3, -0.2]]))["test_loss"]
    assert np.array_equal(ev.evaluate(np.array([[0.3, -0.2]]))["test_loss"], before)  # θ* intact after a point


def test_the_cli_says_a_bad_llm_input_in_one_line(make_hf, tmp_path):
    spec = spec_of(make_hf("gpt2"), tmp_path / "s.zarr")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    done = subprocess.run(
        [sys.executable, "-m", "landscape_ray", "run", str(job), "--set", "data.files={test: [nowhere.txt]}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stderr.splitlines() if "WARNING" not in line]  # Ray's token-auth notice
    assert done.returncode == 2 and lines == ["data.files.test[0]: file not found: nowhere.txt"], done.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_directions_exported_as_safetensors_give_the_same_plane(make_hf, tmp_path):
    """`landscape-ray directions STORE --out d.safetensors`, keyed by the model's own names, then `kind: file`."""
    folder = make_hf("qwen2")
    run(spec_of(folder, tmp_path / "a.zarr"), log=quiet)
    out = tmp_path / "d.safetensors"
    done = subprocess.run(
        [sys.executable, "-m", "landscape_ray", "directions", str(tmp_path / "a.zarr"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    run(spec_of(folder, tmp_path / "b.zarr", "directions.kind=file", f"directions.path={out}"), log=quiet)
    a, b = xr.open_zarr(tmp_path / "a.zarr"), xr.open_zarr(tmp_path / "b.zarr")
    np.testing.assert_array_equal(a["test_loss"].values, b["test_loss"].values)


def test_the_standard_error_is_over_windows(make_hf, tmp_path):
    """`test_loss_se`: the sample standard error of the windows' mean losses, as a plain loop computes them."""
    folder = make_hf("llama")
    spec = spec_of(folder, tmp_path / "s.zarr")
    got = Evaluator.from_payload(spec, prepare(spec), "cpu").evaluate(np.zeros((1, 2)))
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = torch.from_numpy(cut(tokenizer(bundled_text("test"))["input_ids"], SEQ)[:SEQUENCES])
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, attn_implementation="eager").eval()
    with torch.no_grad():
        windows = np.array([float(model(w[None], labels=w[None]).loss) for w in ids])
    assert got["test_loss"][0] == pytest.approx(windows.mean(), rel=1e-5)
    assert got["test_loss_se"][0] == pytest.approx(windows.std(ddof=1) / np.sqrt(len(windows)), rel=1e-4)
