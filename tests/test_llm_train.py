"""`landscape-ray train` of a Hugging Face model on text: a save_pretrained folder per epoch, the trajectory PCA
takes. Checked against a plain transformers loop (the recorded losses), a rerun (resumed training gives the same
weights) and scikit-learn's PCA (the explained variance of the trajectory's plane)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import load_file
from sklearn.decomposition import PCA
from transformers import AutoModelForCausalLM

from landscape_ray.core.errors import SpecError
from landscape_ray.inputs.directions import direction_space
from landscape_ray.job import run
from landscape_ray.spec.specfile import load_spec
from landscape_ray.spec.training import TrainSpec
from landscape_ray.train import train

from . import hf_fixtures
from .conftest import quiet
from .test_llm import SEQ, SEQUENCES, by_hand

EPOCHS = 3


def config_folder(path, family="gpt2"):
    """A folder with a config and a tokenizer, no weights: what training starts from."""
    hf_fixtures.tiny_config(family).save_pretrained(path)
    hf_fixtures.make_tokenizer(path)
    return path


def train_spec(folder, out, epochs=EPOCHS) -> TrainSpec:
    return load_spec(
        None,
        [
            "model.arch=hf",
            f"model.path={folder}",
            "data.dataset=text",
            "data.splits=[train, test]",
            f"data.seq_len={SEQ}",
            f"data.sequences={SEQUENCES}",
            "data.batch_size=4",
            "batch_size=2",
            "optimizer={name: adamw, lr: 0.003, weight_decay: 0.01, milestones: []}",
            f"epochs={epochs}",
            "device=cpu",
            f"out={out}",
        ],
        model=TrainSpec,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_train")
    folder = config_folder(root / "config")
    out = root / "run"
    final = train(train_spec(folder, out), log=quiet)
    return folder, out, final


def test_a_folder_per_epoch_whose_recorded_loss_is_the_plain_loops(trained):
    folder, out, final = trained
    assert final == out / "final"
    assert sorted(p.name for p in out.iterdir()) == ["epoch_0", "epoch_1", "epoch_2", "epoch_3", "final"]
    losses = []
    for epoch in range(EPOCHS + 1):
        record = torch.load(out / f"epoch_{epoch}" / "training.pt", weights_only=True)
        assert record["epoch"] == epoch
        want = by_hand(out / f"epoch_{epoch}", [{}], [[0.0]])[0]  # from_pretrained of the folder, its tokenizer
        assert record["test_loss"] == pytest.approx(want, rel=1e-5)
        losses.append(record["train_loss"])
    assert losses[-1] < losses[0] - 0.5  # it learned
    final_weights = load_file(out / "final" / "model.safetensors")
    last = load_file(out / f"epoch_{EPOCHS}" / "model.safetensors")
    assert final_weights.keys() == last.keys() and all(torch.equal(final_weights[k], last[k]) for k in last)


def test_a_resumed_training_gives_the_same_weights(trained, tmp_path):
    folder, out, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / f"epoch_{EPOCHS}")
    shutil.rmtree(copy / "final")
    train(train_spec(folder, copy), log=quiet)
    want = load_file(out / f"epoch_{EPOCHS}" / "model.safetensors")
    got = load_file(copy / f"epoch_{EPOCHS}" / "model.safetensors")
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_pca_of_the_trained_folders_matches_scikit_learn(ray_cluster, trained, tmp_path):
    _, out, _ = trained
    spec = load_spec(
        None,
        [
            "model.arch=hf",
            f"model.path={out / 'final'}",
            "data.dataset=text",
            "data.splits=[test]",
            f"data.seq_len={SEQ}",
            f"data.sequences={SEQUENCES}",
            "eval.device=cpu",
            "directions.kind=pca",
            f"directions.checkpoints={out}/epoch_*",
            "grid.x={min: -1, max: 1, num: 3}",
            "grid.y={min: -1, max: 1, num: 3}",
            f"output.store={tmp_path / 'pca.zarr'}",
            "output.render=[]",
            "compute.warmup=false",
        ],
    )
    run(spec, log=quiet)
    ds = xr.open_zarr(tmp_path / "pca.zarr")
    assert list(ds.epoch.values) == list(range(EPOCHS + 1))
    assert ds.trajectory_x.values[-1] == pytest.approx(0, abs=1e-6)  # the last epoch is θ*
    # scikit-learn on the flattened θi − θ* of the moved entries (≥ 2 dims: biasbn leaves the others)
    model = AutoModelForCausalLM.from_pretrained(out / "final", local_files_only=True)
    names = [k for k, v in direction_space(model, "weights").items() if v.dim() > 1]
    rows = []
    for epoch in range(EPOCHS + 1):
        theta = AutoModelForCausalLM.from_pretrained(out / f"epoch_{epoch}", local_files_only=True).state_dict()
        rows.append(np.concatenate([(theta[k] - model.state_dict()[k]).double().ravel().numpy() for k in names]))
    pca = PCA(n_components=2).fit(np.stack(rows))
    got = [ds.x.attrs["explained_variance_ratio"], ds.y.attrs["explained_variance_ratio"]]
    np.testing.assert_allclose(got, pca.explained_variance_ratio_, rtol=1e-6)


def test_training_a_hf_folder_says_bad_input_in_one_line(tmp_path):
    folder = config_folder(tmp_path / "config")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(SpecError, match="has no tokenizer"):
        train(train_spec(folder, tmp_path / "run"), log=quiet)
    assert not (tmp_path / "run").exists()
