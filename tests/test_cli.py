"""The command line: bad input gets one clear line and leaves no store; info and resume checks."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch
import yaml

from landscape_ray.cli.main import main
from landscape_ray.inputs.models import build

from .conftest import ROOT, make_spec


@pytest.fixture
def job(tmp_path, checkpoint):
    spec = make_spec(tmp_path / "out" / "s.zarr", checkpoint)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return path


def error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def bad_checkpoints(tmp_path):
    small = tmp_path / "small.pt"
    torch.save(build("digits_cnn", width=8).state_dict(), small)
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": build("digits_cnn").state_dict(), "args": argparse.Namespace(lr=0.1)}, pickled)
    return small, pickled


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.colour=red"], "model.colour: unknown key"),
        (["grid.x.min=2"], "grid.x: min (2.0) must be < max (1.0)"),
        (["grid.y.num=0"], "grid.y.num: Input should be greater than or equal to 1"),
        (["model.checkpoint=/no/such.pt"], "model.checkpoint: file not found: /no/such.pt"),
        (
            ["data.dataset=cifar10", "data.root=/no/such/folder"],
            "data.root: /no/such/folder/cifar-10-batches-py not found",
        ),
        (["model.checkpoint=SMALL"], "shapes differ: features.0.0.weight (8, 1, 3, 3) vs model (16, 1, 3, 3)"),
        (["model.checkpoint=PICKLED"], "needs full unpickling"),
        (["model.arch=resnet9000"], "model.arch: unknown model 'resnet9000'"),
        (["model.arch=no_such_pkg.nets:make"], "model.arch: cannot import module 'no_such_pkg.nets'"),
        (
            ["model.arch=tests.helpers:not_a_module"],
            "model.arch: tests.helpers:not_a_module returned int, not a torch.nn.Module",
        ),
        (["model.kwargs={depth: 3}"], "model.kwargs: digits_cnn rejects them"),
        (["data.dataset=imagenet"], "data.dataset: unknown data set 'imagenet'"),
        (
            ["data.normalize={mean: [0.5, 0.5], std: [0.2, 0.2]}"],
            "data.normalize: 2 channel means for 1-channel images",
        ),
    ],
)
def test_bad_input_one_line_and_no_store(capsys, tmp_path, job, overrides, message):
    small, pickled = bad_checkpoints(tmp_path)
    overrides = [o.replace("SMALL", str(small)).replace("PICKLED", str(pickled)) for o in overrides]
    line = error_line(capsys, ["run", str(job)] + [a for o in overrides for a in ("--set", o)])
    assert message in line
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


@pytest.mark.slow
def test_trusted_pickled_checkpoint_loads(ray_cluster, capsys, tmp_path, job):
    _, pickled = bad_checkpoints(tmp_path)
    assert "--trust-checkpoint" in error_line(capsys, ["run", str(job), "--set", f"model.checkpoint={pickled}"])
    assert main(["run", str(job), "--set", f"model.checkpoint={pickled}", "--trust-checkpoint"]) == 0
    assert (tmp_path / "out" / "s.zarr" / "zarr.json").exists()


@pytest.mark.slow
def test_existing_store_is_untouched_without_resume_or_overwrite(ray_cluster, capsys, tmp_path, job):
    assert main(["run", str(job)]) == 0
    store = tmp_path / "out" / "s.zarr"
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    assert "already exists; pass --resume" in error_line(capsys, ["run", str(job)])
    line = error_line(capsys, ["run", str(job), "--resume", "--set", "grid.x.num=9", "--set", "data.subset=200"])
    assert (
        line == "--resume: the spec differs from the store's in data.subset (store: 300, now: 200); "
        "grid.x.num (store: 7, now: 9)"
    )
    assert before == {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    # --resume with the same spec (and other compute settings) finds nothing left to do; --overwrite recomputes.
    assert main(["run", str(job), "--resume", "--set", "compute.actors=1"]) == 0
    assert before == {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    assert main(["run", str(job), "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "progress: 35/35 points done (100.0%)" in out and "train_loss: min" in out
    # The run summaries: a table (a header, then one row a run with its points), and whole as JSON with --json.
    table = out[out.index("runs:\n") :].splitlines()
    assert table[1].split()[:3] == ["run", "points", "wall"] and table[2].split()[:2] == ["1", "35"]
    assert main(["info", str(store), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert len(runs) == 1 and runs[0]["points"] == 35 and "startup" in runs[0]


def test_cli_process_exit_status_and_single_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  x: {min: 1, max: -1, num: 3}\n  colour: red\n")
    proc = subprocess.run(
        [sys.executable, "-m", "landscape_ray", "run", str(bad)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["grid.x: min (1.0) must be < max (-1.0)", "grid.colour: unknown key"]
