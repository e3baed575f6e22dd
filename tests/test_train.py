"""Training writes a weights-only checkpoint per epoch, resumes where it stopped, and feeds `run`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import xarray as xr

from landscape_ray.inputs.models import DigitsCNN
from landscape_ray.spec.training import TrainSpec
from landscape_ray.train import lr_at, train

from .conftest import ROOT, quiet


def spec(out, epochs):
    return TrainSpec.model_validate(
        {
            "epochs": epochs,
            "batch_size": 128,
            "device": "cpu",
            "out": str(out),
            "data": {"subset": 400, "splits": ["train", "test"]},
            "optimizer": {"lr": 0.05, "milestones": [2]},
        }
    )


def test_per_epoch_checkpoints_and_exact_resume(tmp_path):
    full = train(spec(tmp_path / "full", 3), log=lambda *_: None)
    names = sorted(p.name for p in (tmp_path / "full").glob("*.pt"))
    assert names == ["final.pt", "model_0.pt", "model_1.pt", "model_2.pt", "model_3.pt"]
    ckpt = torch.load(full, weights_only=True)
    assert ckpt["epoch"] == 3 and {"train_loss", "train_acc", "test_loss", "test_acc", "spec"} <= set(ckpt)
    assert 0 <= ckpt["test_acc"] <= 1 and ckpt["test_loss"] > 0

    # "Killed" after epoch 2, then rerun with the same spec: continues at epoch 3 and ends where the full run did.
    train(spec(tmp_path / "cut", 2), log=lambda *_: None)
    lines = []
    resumed = torch.load(train(spec(tmp_path / "cut", 3), log=lines.append), weights_only=True)
    assert lines[0].startswith("resuming from") and "(epoch 2)" in lines[0] and len(lines) == 2
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k


def test_learning_rate_schedule():
    opt = TrainSpec().optimizer
    assert [lr_at(opt, e) for e in (0, 149, 150, 225, 299)] == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.0001])


@pytest.mark.slow
def test_shipped_quickstart_specs_run_end_to_end(tmp_path):
    """The demo's two specs, unchanged but for size, through the real CLI: train, then surface + pictures."""
    ckpts, store = tmp_path / "ckpts", tmp_path / "demo" / "surface.zarr"
    cli = [sys.executable, "-m", "landscape_ray"]
    subprocess.run(
        cli + ["train", "jobs/quickstart-train.yaml", "--set", "epochs=2", "--set", f"out={ckpts}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        cli
        + [
            "run",
            "jobs/quickstart.yaml",
            "--set",
            f"model.checkpoint={ckpts / 'final.pt'}",
            "--set",
            "grid.x.num=5",
            "--set",
            "grid.y.num=4",
            "--set",
            "grid.tile=5",
            "--set",
            f"output.store={store}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "20/20 points" in proc.stdout and "pictures:" in proc.stdout
    assert xr.open_zarr(store).done.values.all()
    assert sorted(p.name for p in store.parent.glob("*.png")) == sorted(
        f"{s}_loss_{k}.png" for s in ("train", "test") for k in ("contour", "contourf", "heatmap", "surface")
    )


def test_paper_recipe_job_trains_a_zoo_net_on_cifar_files_as_a_ray_task(ray_cluster, tmp_path, capsys):
    """jobs/paper/resnet20-train.yaml, unchanged but for size and paths, on a CIFAR-10 folder made here,
    via --address."""
    from landscape_ray.cli.main import main

    from .test_data import write_cifar

    root = write_cifar(tmp_path / "data", per_batch=8, test=8)
    address = ray_cluster.get_runtime_context().gcs_address
    argv = [
        "train",
        str(ROOT / "jobs/paper/resnet20-train.yaml"),
        "--address",
        address,
        "--set",
        "epochs=1",
        "--set",
        f"data.root={root}",
        "--set",
        f"out={tmp_path / 'ck'}",
        "--set",
        "batch_size=16",
    ]
    assert main(argv) == 0
    assert f"final checkpoint: {tmp_path / 'ck' / 'final.pt'}" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "ck" / "final.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["spec"]["model"]["arch"] == "resnet20" and ckpt["spec"]["augment"] is True
    assert "layer3.2.bn2.running_var" in ckpt["state_dict"]


def test_recorded_metrics_are_eval_mode_and_leave_bn_statistics_alone(tmp_path):
    """The metrics stored in a checkpoint are what `run` measures at (0, 0) for that checkpoint."""
    from landscape_ray.compute.evaluator import Evaluator
    from landscape_ray.compute.prepare import prepare
    from landscape_ray.spec.specfile import load_spec

    final = train(spec(tmp_path / "ck", 1), log=lambda *_: None)
    ckpt = torch.load(final, weights_only=True)
    run_spec = load_spec(
        None,
        [
            f"model.checkpoint={final}",
            "data.subset=400",
            "data.splits=[train, test]",
            "grid.y=null",
            "grid.x.num=3",
            "grid.tile=3",
            "eval.channels_last=false",
        ],
    )
    out = Evaluator.from_payload(run_spec, prepare(run_spec), "cpu").evaluate([[0.0]])
    for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert out[k][0] == pytest.approx(ckpt[k], rel=1e-6), k


def test_weight_norms_by_epoch_and_by_iteration_match_the_saved_weights(tmp_path):
    """The recorded norms are ‖θ‖₂ over the model's parameters, computed here from each checkpoint's tensors."""
    train(spec(tmp_path, 2), log=lambda *_: None)
    params = [name for name, _ in DigitsCNN().named_parameters()]
    steps_per_epoch = -(-400 // 128)
    for epoch in range(3):
        ckpt = torch.load(tmp_path / f"model_{epoch}.pt", weights_only=True)
        direct = torch.cat([ckpt["state_dict"][k].double().ravel() for k in params]).norm().item()
        assert ckpt["weight_norm"] == pytest.approx(direct, rel=1e-6)  # per-tensor norms are taken in float32
        assert ckpt["steps"] == epoch * steps_per_epoch
        norms = ckpt["step_weight_norms"]
        assert norms.dtype == torch.float64 and len(norms) == (steps_per_epoch if epoch else 0)
        if epoch:  # the last step's norm is the end-of-epoch weights' norm
            assert norms[-1].item() == pytest.approx(direct, rel=1e-6)
            assert len(set(norms.tolist())) == len(norms), "every step moves the weights"


def test_seed_draws_the_initial_weights(tmp_path):
    """model_0.pt is DigitsCNN's initialisation under the training `seed`: two seeds, two different starts."""
    for seed in (0, 1):
        out = tmp_path / str(seed)
        spec = TrainSpec.model_validate(
            {
                "epochs": 1,
                "batch_size": 256,
                "device": "cpu",
                "out": str(out),
                "seed": seed,
                "data": {"subset": 64, "splits": ["train"]},
            }
        )
        train(spec, log=quiet)
        torch.manual_seed(seed)
        want = DigitsCNN().state_dict()
        got = torch.load(out / "model_0.pt", weights_only=True)["state_dict"]
        for k, v in want.items():
            assert torch.equal(got[k], v), (seed, k)
