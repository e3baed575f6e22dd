"""Nothing a user runs deletes, mixes or silently damages their data (issue 9).

Every check is made on real files, real processes and a real local Ray cluster;
the judge of "nothing changed" is a hash of every file under the test folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from landscape_ray.cli.main import main
from landscape_ray.job import run
from landscape_ray.store.tiles import Store

from .conftest import ROOT, make_spec, quiet, reference


def tree_hash(folder: Path) -> str:
    """Every path, link target and file content under `folder`."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(folder)):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(folder)).encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


def spec_file(tmp_path: Path, store, checkpoint, *overrides) -> Path:
    path = tmp_path / f"job-{len(list(tmp_path.glob('job-*')))}.yaml"
    path.write_text(yaml.safe_dump(make_spec(store, checkpoint, *overrides).model_dump(mode="json")))
    return path


def cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err


def one_line(err: str) -> None:
    assert err and "\n" not in err and "Traceback" not in err, err


def zarr_store_of_another_tool(path: Path) -> None:
    root = zarr.open_group(str(path), mode="w")
    root.create_array("temperature", data=np.arange(4.0))


# --- Ownership: --overwrite never deletes what this tool did not make ------------------------------------


def thesis(w: Path) -> Path:
    (w / "thesis").mkdir()
    (w / "thesis" / "chapter1.tex").write_text("years of work")
    return w / "thesis"


def parent_of_a_store(w: Path) -> Path:
    (w / "project" / "checkpoints").mkdir(parents=True)
    (w / "project" / "checkpoints" / "final.pt").write_bytes(b"weights")
    zarr_store_of_another_tool(w / "project" / "surface.zarr")
    return w / "project"


def another_tools_store(w: Path) -> Path:
    zarr_store_of_another_tool(w / "other.zarr")
    return w / "other.zarr"


def a_file(w: Path) -> Path:
    (w / "notes.txt").write_text("keep me")
    return w / "notes.txt"


def symlink_to_a_folder(w: Path) -> Path:
    thesis(w)
    (w / "link.zarr").symlink_to(w / "thesis")
    return w / "link.zarr"


TARGETS = {
    "thesis folder": (thesis, "not a landscape_ray store"),
    "working directory": (lambda w: Path("."), "working directory or one of its parents"),
    "parent of the working directory": (lambda w: Path(".."), "working directory or one of its parents"),
    "parent of a store": (parent_of_a_store, "not a landscape_ray store"),
    "zarr store of another tool": (another_tools_store, "not a landscape_ray store"),
    "a file": (a_file, "not a landscape_ray store"),
    "symlink": (symlink_to_a_folder, "symbolic link"),
}


@pytest.mark.parametrize("name", TARGETS)
def test_overwrite_refuses_what_is_not_a_store_and_deletes_nothing(tmp_path, checkpoint, capsys, monkeypatch, name):
    make, message = TARGETS[name]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "keep.txt").write_text("the working directory's own file")
    target = make(work)
    job = spec_file(tmp_path / "work", target, checkpoint)
    before = tree_hash(tmp_path)
    code, err = cli(capsys, "run", job, "--overwrite")
    assert code == 2 and message in err
    one_line(err)
    assert tree_hash(tmp_path) == before  # not even a lock file is left behind


@pytest.mark.slow
def test_a_store_holding_a_stray_file_is_not_deleted(tmp_path, checkpoint, capsys, ray_cluster):
    store = tmp_path / "s.zarr"
    run(make_spec(store, checkpoint), log=quiet)
    (store / "train_loss" / "my_notes.txt").write_text("written by hand into the store")
    before = tree_hash(store)
    code, err = cli(capsys, "run", spec_file(tmp_path, store, checkpoint), "--overwrite")
    assert code == 2 and "train_loss/my_notes.txt" in err
    assert tree_hash(store) == before


@pytest.mark.slow
def test_overwrite_replaces_a_store_and_leaves_no_partials(tmp_path, checkpoint, ray_cluster):
    store = tmp_path / "s.zarr"
    run(make_spec(store, checkpoint, "directions.seed=1"), log=quiet)
    (tmp_path / ".s.zarr.partial-deadhost-1").mkdir()  # a run killed before it wrote anything
    spec = make_spec(store, checkpoint, "directions.seed=2")
    run(spec, overwrite=True, log=quiet)
    assert Store(store, mode="r").spec.directions.seed == 2
    np.testing.assert_array_equal(Store(store, mode="r").read("train_loss"), reference(spec)["train_loss"])
    assert not list(tmp_path.glob(".s.zarr.partial-*"))


def test_an_old_store_moved_aside_by_an_interrupted_swap_is_put_back(tmp_path, checkpoint, ray_cluster):
    """Without renameat2 (macOS) `swap` renames the old store aside, then the new one in: a run killed between the
    two leaves `path` empty and the old store at `.NAME.partial-old-PID`, which the next claim puts back (it used to
    delete it with the other partials). A claim only renames: the dead run's partial store goes when the next run
    builds its own."""
    from landscape_ray.store.lock import claim
    from landscape_ray.store.ownership import clean_partials

    store = tmp_path / "s.zarr"
    spec = make_spec(store, checkpoint)
    run(spec, log=quiet)
    before = tree_hash(store)
    store.rename(tmp_path / ".s.zarr.partial-old-4242")  # the instant between the two renames
    (tmp_path / ".s.zarr.partial-deadhost-4242").mkdir()  # the new store, not yet moved in
    with claim(store, "test"):
        pass
    assert tree_hash(store) == before
    assert [p.name for p in tmp_path.glob(".s.zarr.partial-*")] == [".s.zarr.partial-deadhost-4242"]
    with claim(store, "test"):
        clean_partials(store)
    assert not list(tmp_path.glob(".s.zarr.partial-*"))


def test_an_old_store_moved_aside_by_an_interrupted_install_is_put_back(tmp_path):
    """`layout.install` keeps a whole old store by renaming it to `.NAME.previous`, then the new one in: a run killed
    between the two leaves `path` empty, and the next claim puts the old store back."""
    from landscape_ray.store.lock import claim

    store = tmp_path / "s.zarr"
    shutil.copytree(FORMAT1, tmp_path / ".s.zarr.previous")
    before = tree_hash(tmp_path / ".s.zarr.previous")
    with claim(store, "test"):
        pass
    assert tree_hash(store) == before and not (tmp_path / ".s.zarr.previous").exists()


@pytest.mark.slow
def test_a_kill_right_after_the_swap_keeps_the_old_result(tmp_path, checkpoint):
    """`--overwrite` of a whole store, killed (SIGKILL) as soon as its new store is in place: the old store is whole
    at `.NAME.previous` (it used to sit at a partial name that the next run, even a refused one, deleted); a refused
    run leaves it; `info` names it; the new store, completed with `--resume`, takes its place for good and the
    previous one goes."""
    store = tmp_path / "s.zarr"
    here = "compute.warmup=true"  # a small job: computed by the driver, no cluster to start
    assert start(spec_file(tmp_path, store, checkpoint, "compute.actors=1", here)).wait(240) == 0
    before, inode = tree_hash(store), store.stat().st_ino
    slow = [
        "model.arch=tests.helpers:slow_cnn",
        "model.kwargs={delay: 0.01}",  # 121 points of 3 batches: seconds of work after the swap, on one actor
        "grid.x.num=11",
        "grid.y.num=11",
        "compute.actors=1",
    ]
    proc = start(spec_file(tmp_path, store, checkpoint, *slow), "--overwrite")
    deadline = time.time() + 120
    while store.stat().st_ino == inode:  # until the new store is in place
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    previous = tmp_path / ".s.zarr.previous"
    assert tree_hash(previous) == before
    assert not Store(store, mode="r").done().all()
    refused = start(spec_file(tmp_path, store, checkpoint, *slow))  # neither flag: refused, it deletes nothing
    assert refused.wait(120) == 2 and "already exists" in refused.stderr.read()
    assert tree_hash(previous) == before
    done = subprocess.run(
        [sys.executable, "-m", "landscape_ray", "info", str(store)], cwd=ROOT, capture_output=True, text=True
    )
    assert f"previous: {previous} holds the whole store this one replaces" in done.stdout
    resumed = start(spec_file(tmp_path, store, checkpoint, *slow, here), "--resume")
    assert resumed.wait(240) == 0 and "a small job: computed in this process" in resumed.stdout.read()
    assert Store(store, mode="r").done().all() and not previous.exists()


# --- One writer ------------------------------------------------------------------------------------------


def start(job: Path, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "landscape_ray", "run", str(job), *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


@pytest.mark.slow
def test_two_drivers_on_one_new_store_one_is_refused(tmp_path, checkpoint):
    store = tmp_path / "race.zarr"
    jobs = [spec_file(tmp_path, store, checkpoint, f"directions.seed={seed}", "compute.actors=1") for seed in (0, 1)]
    procs = [start(job) for job in jobs]
    results = [(p.wait(240), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "is in use by pid" in refused and "Traceback" not in refused
    # The store holds one run, whole: its spec's seed and that seed's values, every point.
    s = Store(store, mode="r")
    want = reference(make_spec(store, checkpoint, f"directions.seed={s.spec.directions.seed}"))
    np.testing.assert_array_equal(s.read("train_loss"), want["train_loss"])
    assert len(s.root.attrs["runs"]) == 1


def slow_job(tmp_path, checkpoint, store):
    """A slow job whose forward passes wait while `tmp_path/hold` exists (tests.helpers.SlowCNN)."""
    return spec_file(
        tmp_path,
        store,
        checkpoint,
        "model.arch=tests.helpers:slow_cnn",
        f"model.kwargs={{delay: 0.05, hold: {tmp_path / 'hold'}}}",
        "data.batch_size=300",
        "grid.x={min: -1, max: 1, num: 9}",
        "grid.y={min: -1, max: 1, num: 9}",
        "grid.tile=[1, 3]",
        "compute.actors=1",
    )


def wait_for_points(store: Path, proc: subprocess.Popen, at_least: int = 3) -> None:
    deadline = time.time() + 120
    while not (store.exists() and Store(store, mode="r").done().sum() >= at_least):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.1)


@pytest.mark.slow
def test_live_store_refuses_resume_and_overwrite_and_a_dead_drivers_lock_is_taken_over(
    tmp_path, checkpoint, capsys, ray_cluster
):
    store = tmp_path / "s.zarr"
    job = slow_job(tmp_path, checkpoint, store)
    proc = start(job)
    try:
        wait_for_points(store, proc)
        (tmp_path / "hold").touch()  # the run stays mid-way while the second driver is refused
        for mode in ("--resume", "--overwrite"):
            before = tree_hash(store)
            code, err = cli(capsys, "run", job, mode)
            assert code == 2 and f"in use by pid {proc.pid}" in err, err
            one_line(err)
        assert store.exists()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies holding the lock
        proc.wait()
    assert 0 < Store(store, mode="r").done().sum() < 81 and before
    (tmp_path / "hold").unlink()
    code, err = cli(capsys, "run", job, "--resume")
    assert code == 0, err
    spec = make_spec(
        store, checkpoint, "data.batch_size=300", "grid.x={min: -1, max: 1, num: 9}", "grid.y={min: -1, max: 1, num: 9}"
    )
    np.testing.assert_array_equal(Store(store, mode="r").read("train_loss"), reference(spec)["train_loss"])


# --- Identity: --resume refuses when an input changed -----------------------------------------------------


@pytest.mark.slow
def test_resume_after_the_checkpoint_was_rewritten_is_refused(tmp_path, checkpoint, capsys, ray_cluster):
    ckpt = tmp_path / "final.pt"
    shutil.copy(checkpoint, ckpt)
    store = tmp_path / "s.zarr"
    job = spec_file(tmp_path, store, ckpt)
    run(make_spec(store, ckpt), log=quiet)
    Store(store).root["done"][0, 0] = False  # one point left to compute
    saved = torch.load(ckpt, weights_only=True)
    saved["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in saved["state_dict"].items()}
    torch.save(saved, ckpt)  # `train` reran and rewrote the file at the same path
    before = tree_hash(store)
    code, err = cli(capsys, "run", job, "--resume")
    assert code == 2 and "model.checkpoint" in err and "changed since the store was made" in err
    one_line(err)
    assert tree_hash(store) == before
    code, _ = cli(capsys, "info", store)
    assert code == 0


# --- Integrity: damaged chunks are found and repaired ------------------------------------------------------


def truncate(chunk: Path) -> None:
    chunk.write_bytes(chunk.read_bytes()[:7])


def flip_a_byte(chunk: Path) -> None:
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))


DAMAGE = {"truncated": truncate, "deleted": Path.unlink, "flipped byte": flip_a_byte}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.slow
def test_damaged_chunk_is_reported_and_resume_repairs_it(tmp_path, checkpoint, capsys, ray_cluster, damage):
    store = tmp_path / "s.zarr"
    # Tiles of 2 × 3 points are small: a chunk holds 10 × 3 of them (20 of the 40 rows), and its damage is theirs.
    spec = make_spec(store, checkpoint, "grid.y={min: -0.5, max: 1, num: 40}")
    run(spec, log=quiet)
    good = Store(store, mode="r").read("train_loss").copy()
    DAMAGE[damage](store / "train_loss" / "c" / "1" / "0")
    code, out = cli(capsys, "verify", store)
    assert code == 1
    capsys.readouterr()
    code = main(["verify", str(store)])
    out = capsys.readouterr().out
    assert code == 1 and "tile (10, 0)" in out and "tile (19, 2)" in out and "tile (9, 2)" not in out
    assert main(["info", str(store)]) == 0
    assert "30 damaged tiles (run verify)" in capsys.readouterr().out
    assert main(["render", str(store), "--out", str(tmp_path / "pictures"), "--kind", "heatmap"]) == 0
    assert "30 damaged tiles (run verify); drawn as missing" in capsys.readouterr().err
    summary = run(spec, resume=True, log=quiet)
    assert summary["tiles"] == 30
    assert main(["verify", str(store)]) == 0
    np.testing.assert_array_equal(Store(store, mode="r").read("train_loss"), good)


# --- Untrusted input files never run code ------------------------------------------------------------------


class Payload:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, proof: Path):
        self.proof = proof

    def __reduce__(self):
        return (Path.touch, (self.proof,))


def test_crafted_cifar_batch_runs_no_code(tmp_path, capsys):
    from landscape_ray.core.errors import SpecError
    from landscape_ray.inputs.data import load_split
    from landscape_ray.spec.schema import DataSpec

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    proof = tmp_path / "pwned"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": Payload(proof), "labels": [0]}))
    with pytest.raises(SpecError, match="refusing to load"):
        load_split(DataSpec(dataset="cifar10", root=str(tmp_path)), "test")
    assert not proof.exists()


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 str (BINSTRING opcodes), as CIFAR-10's own files were written."""

    def save_bytes(self, obj):
        n = len(obj)
        self.write(
            pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + obj
        )
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes, str: save_str}


@pytest.mark.parametrize("writer", ["python2", "python3 str keys", "python3 bytes keys"])
def test_cifar_batches_written_by_python_2_and_3_load_the_same(tmp_path, writer):
    from landscape_ray.inputs.data import load_split
    from landscape_ray.spec.schema import DataSpec

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data, labels = rng.integers(0, 256, (5, 3072), dtype=np.uint8), [3, 1, 4, 1, 5]
    key = (lambda k: k.encode()) if writer == "python3 bytes keys" else (lambda k: k)
    batch = {key("data"): data, key("labels"): labels, key("batch_label"): "testing batch 1 of 1"}
    buf = io.BytesIO()
    (Py2Pickler(buf, protocol=2).dump(batch) if writer == "python2" else pickle.dump(batch, buf, protocol=2))
    (folder / "test_batch").write_bytes(buf.getvalue())
    split = load_split(DataSpec(dataset="cifar10", root=str(tmp_path)), "test")
    np.testing.assert_array_equal(split.images, data.reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(split.labels, labels)


def test_crafted_npz_direction_file_runs_no_code(tmp_path, checkpoint, capsys):
    proof = tmp_path / "pwned"
    bad = tmp_path / "dirs.npz"
    np.savez(bad, **{"x/conv1.weight": np.array([Payload(proof)], dtype=object)})
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    for path in (bad, garbage):
        code, err = cli(
            capsys,
            "run",
            spec_file(tmp_path, tmp_path / "s.zarr", checkpoint, "directions.kind=file", f"directions.path={path}"),
        )
        assert code == 2 and "directions.path" in err, err
        one_line(err)
    assert not proof.exists() and not (tmp_path / "s.zarr").exists()


# --- Checks before side effects; one line, nothing left behind ---------------------------------------------

BAD = {
    "nan bound": (["grid.x.min=.nan"], 2, "grid.x.min"),
    "tile of the wrong rank": (["grid.tile=[8]"], 2, "tile must be"),
    "10^10 points": (["grid.x.num=100000", "grid.y.num=100000"], 2, "--force"),
    "cuda without a GPU": (["eval.device=cuda"], 1, "eval.device: cuda"),
    "actor no node can place": (["compute.cpus_per_actor=64"], 1, "compute.cpus_per_actor"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_input_one_line_and_no_store(tmp_path, checkpoint, capsys, ray_cluster, name):
    overrides, want_code, message = BAD[name]
    store = tmp_path / "s.zarr"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(make_spec(store, checkpoint).model_dump(mode="json")))
    code, err = cli(capsys, "run", job, *[a for o in overrides for a in ("--set", o)])
    assert code == want_code and message in err, err
    one_line(err)
    assert not store.exists()


@pytest.mark.slow
def test_unreachable_cluster_leaves_no_store(tmp_path, checkpoint):
    job = spec_file(tmp_path, tmp_path / "s.zarr", checkpoint)
    done = subprocess.run(
        [sys.executable, "-m", "landscape_ray", "run", str(job), "--address", "127.0.0.1:1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "cannot join that Ray cluster" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_render_and_info_of_another_tools_store_is_one_line(tmp_path, capsys):
    another_tools_store(tmp_path)
    for command in ("info", "render", "verify"):
        code, err = cli(capsys, command, tmp_path / "other.zarr")
        assert code == 2 and "not a landscape_ray store" in err, (command, err)
        one_line(err)


def test_debug_shows_the_traceback(tmp_path):
    from landscape_ray.core.errors import SpecError

    with pytest.raises(SpecError):
        main(["--debug", "info", str(tmp_path / "missing.zarr")])


@pytest.mark.slow
def test_spec_from_stdin_and_ctrl_c_keeps_finished_tiles(tmp_path, checkpoint, capsys, ray_cluster):
    store = tmp_path / "s.zarr"
    job = slow_job(tmp_path, checkpoint, store)
    proc = subprocess.Popen(
        [sys.executable, "-m", "landscape_ray", "run", "-"],
        cwd=ROOT,
        text=True,
        stdin=open(job),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    wait_for_points(store, proc)
    (tmp_path / "hold").touch()  # the run stays mid-way until the Ctrl-C
    try:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a driver that did not unwind, and any process it left
    assert proc.returncode == 130, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("interrupted: ") and "points are kept; --resume completes the store" in line, err
    assert "Traceback" not in err
    kept = int(line.split()[1].split("/")[0])
    assert kept == Store(store, mode="r").done().sum() > 0
    (tmp_path / "hold").unlink()
    code, err = cli(capsys, "run", job, "--resume")
    assert code == 0 and Store(store, mode="r").done().all()


def run_with_small_files(job: Path, limit: int, ray_cluster) -> subprocess.CompletedProcess:
    """`landscape-ray run JOB --overwrite` with its driver's file size limit (RLIMIT_FSIZE) at `limit` bytes: a write
    past it fails as on a full disk (EFBIG instead of ENOSPC; Python ignores SIGXFSZ). The limit is set in the new
    process before it execs the driver, and the driver joins this session's cluster, whose processes have none."""
    limited = (
        "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); "
        "os.execv(sys.executable, [sys.executable, '-m', 'landscape_ray', 'run', *sys.argv[2:]])"
    )
    return subprocess.run(
        [sys.executable, "-c", limited, str(limit), str(job), "--overwrite"],
        cwd=ROOT,
        env={**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_a_new_store_that_cannot_be_written_leaves_the_old_one(tmp_path, checkpoint, ray_cluster):
    """The disk is full while the new store is built (24 kB: less than one direction array of the digits CNN): one
    line naming the store, exit status 1, the old store as it was, no partial store left."""
    store = tmp_path / "s.zarr"
    run(make_spec(store, checkpoint, "directions.seed=1"), log=quiet)
    before = tree_hash(store)
    done = run_with_small_files(spec_file(tmp_path, store, checkpoint, "directions.seed=2"), 24_000, ray_cluster)
    assert done.returncode == 1, done.stderr
    # The last line: Ray may forward a line of its own from an actor stopped while it started.
    assert done.stderr.strip().splitlines()[-1] == f"run failed: {store}: File too large", done.stderr
    assert "Traceback" not in done.stderr
    assert tree_hash(store) == before
    assert [p.name for p in tmp_path.iterdir() if ".s.zarr" in p.name] == []


@pytest.mark.slow
def test_a_run_whose_summary_cannot_be_written_keeps_every_value(tmp_path, checkpoint, ray_cluster):
    """The disk fills up at the very end, when the run's summary goes into the root metadata: one line naming the
    store, exit status 1, and the store whole, every point done with the values of a plain evaluation.

    A linear model keeps every other file small. The limit sits between the new store's root metadata without a
    run summary and with one (about 560 bytes): the old store's, which holds one summary, less 250 bytes. One actor
    in both runs: the summary has an entry per actor, and with points this quick a second actor may load only after
    the first has done them all."""
    store = tmp_path / "s.zarr"
    tiny = ["model.arch=tests.helpers:linear", "model.kwargs={inputs: 64}", "compute.actors=1"]
    run(make_spec(store, None, *tiny, "directions.seed=1"), log=quiet)
    limit = (store / "zarr.json").stat().st_size - 250
    assert max(p.stat().st_size for p in store.rglob("*") if p.is_file() and p.name != "zarr.json") < limit - 1000
    spec = make_spec(store, None, *tiny, "directions.seed=2")
    done = run_with_small_files(spec_file(tmp_path, store, None, *tiny, "directions.seed=2"), limit, ray_cluster)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"run failed: {store}: File too large", done.stderr
    assert "Traceback" not in done.stderr
    s = Store(store, mode="r")  # the root metadata is the one written when the store was made (zarr writes atomically)
    assert s.spec.directions.seed == 2 and s.done().all() and not s.damaged()
    assert "runs" not in s.root.attrs
    np.testing.assert_array_equal(s.read("train_loss"), reference(spec)["train_loss"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "stop, status",
    [
        (lambda pid: os.killpg(pid, signal.SIGINT), 130),  # Ctrl-C reaches the whole foreground process group
        (lambda pid: os.kill(pid, signal.SIGTERM), 143),  # a scheduler's stop, to the driver; ray.init's handler is on
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_stopped_while_the_cluster_starts_keeps_the_old_store(stop, status, tmp_path, checkpoint, ray_cluster):
    """With the driver's warmup the new store is built beside the old one and the driver's first tiles are on disk
    there while the private cluster starts (job.py); Ctrl-C or SIGTERM in that window leaves the old store as it
    was and no partial store behind, with one line and the signal's exit status."""
    store = tmp_path / "s.zarr"
    sets = ("directions.seed=2", "grid.tile=[1, 1]", "compute.warmup=true", "compute.ray=always")
    job = spec_file(tmp_path, store, checkpoint, *sets)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private cluster, started by the run
    # The window is the cluster's start, minus loading and the driver's first point: on a loaded 2-core machine
    # the cluster can be up before the driver has written a tile. Such a run completes untouched and is tried again.
    for _attempt in range(4):
        run(make_spec(store, checkpoint, "directions.seed=1"), log=quiet, overwrite=True)
        before = tree_hash(store)
        proc = subprocess.Popen(
            [sys.executable, "-m", "landscape_ray", "run", str(job), "--overwrite"],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        if driver_tile_before_cluster(tmp_path, proc):
            break
        assert proc.wait(timeout=120) == 0, proc.communicate()
    else:
        pytest.fail("the cluster was up before the driver wrote a tile in every attempt")
    stop(proc.pid)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status and "tiles done" not in out, (out, err)  # interrupted before the store moved in
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err
    assert tree_hash(store) == before
    assert not list(tmp_path.glob(".s.zarr.partial-*"))


def driver_tile_before_cluster(tmp_path: Path, proc: subprocess.Popen) -> bool:
    """Wait until the driver's points are in the store being built beside (True), or the run has moved it in
    without any (False)."""
    deadline = time.time() + 120
    seen = False
    while proc.poll() is None:
        assert time.time() < deadline
        partials = list(tmp_path.glob(".s.zarr.partial-*"))
        seen = seen or bool(partials)
        if partials and (partials[0] / "zarr.json").exists():
            try:
                if Store(partials[0], mode="r").done().any():
                    return True
            except Exception:  # noqa: BLE001 - built or written this instant
                pass
        elif seen and not partials:
            return False  # moved in: the actors were up first
        time.sleep(0.02)
    return False


# --- A kill at any instant of an overwrite leaves the old or the new store, whole ---------------------------

REPLACER = """
import sys
from landscape_ray.spec.grid import Grid
from landscape_ray.store.lock import claim
from landscape_ray.spec.specfile import load_spec
from landscape_ray.store.layout import create
import numpy as np
path = sys.argv[1]
seed = 0
while True:
    seed += 1
    spec = load_spec(None, [f"output.store={path}", f"directions.seed={seed}", "grid.tile=[5]"])
    grid = Grid.from_spec(spec.grid)
    vectors = [{f"w{i}": np.full((64, 64), seed, np.float32) for i in range(40)} for _ in range(2)]
    with claim(path, "replacer"):
        create(path, spec, grid, ["train_loss"], vectors, overwrite=True)
    print(seed, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.9, 1.3, 1.7, 2.1, 2.5, 2.9, 3.3, 3.7])
def test_kill_during_overwrite_leaves_old_or_new_store(tmp_path, delay):
    path = tmp_path / "s.zarr"
    proc = subprocess.Popen([sys.executable, "-c", REPLACER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # one store exists from here on
    assert first.strip() == "1"
    time.sleep(delay - 0.8)
    proc.kill()
    proc.wait()
    store = Store(path, mode="r")  # complete: spec, directions and arrays all there, all of one seed
    seed = store.spec.directions.seed
    assert all(np.all(v == seed) for d in store.directions() for v in d.values())
    from landscape_ray.store.lock import claim
    from landscape_ray.store.ownership import check_ours, clean_partials

    check_ours(path)
    with claim(path, "test"):  # the next writer, as it builds, cleans what the killed one left
        clean_partials(path)
    assert not list(tmp_path.glob(".s.zarr.partial-*"))


BUILDER = """
import io, os, signal, sys, threading, traceback
import numpy as np
from landscape_ray.hessians import write_group
from landscape_ray.spec.grid import Grid
from landscape_ray.spec.specfile import load_spec
from landscape_ray.store import layout
from landscape_ray.store.lock import claim
path, how = sys.argv[1], sys.argv[2]
layout.COMPOSED_BYTES = 0 if how == "built" else 1 << 30  # built by zarr in place, or composed in memory
writes = 0

def kill_at_a_file_write(frame, event, arg):  # SIGKILL just before the kill_at-th file write, link or delete
    global writes
    to_file = getattr(arg, "__name__", "") == "write" and isinstance(getattr(arg, "__self__", None), io.BufferedWriter)
    if event == "c_call" and (to_file or arg is os.link or arg is os.remove):
        writes += 1
        if writes == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

def build(seed):
    spec = load_spec(None, [f"output.store={path}", f"directions.seed={seed}"])
    vectors = [{"w": np.full((8, 8), seed, np.float32), "b": np.full(8, seed, np.float32)} for _ in range(2)]
    hessian = {  # what hessians.compute returns, of values that tell one seed from another
        "split": "train", "samples": 10, "parameters": 72, "at": None, "seed": seed, "actors": 1, "products": 9,
        "wall_s": 0.1, "eigenvalues": [seed, -seed], "ends": ["largest", "smallest"], "layout": [("w", (8, 8)),
        ("b", (8,))], "eigenvectors": np.full((2, 72), seed, np.float64), "trace": seed, "trace_se": 0.0,
    }
    with claim(path, "builder"):
        if how == "amended" and not os.path.exists(path):
            layout.create(path, spec, Grid.from_spec(spec.grid), ["train_loss"], vectors)
        threading.setprofile(kill_at_a_file_write)  # zarr writes from its threads, started from here on
        sys.setprofile(kill_at_a_file_write)
        if how == "amended":  # `landscape-ray hessian` on an existing store: its group replaced
            layout.amend(path, lambda root: write_group(root, hessian, spec))
        else:
            layout.create(path, spec, Grid.from_spec(spec.grid), ["train_loss"], vectors, overwrite=True)
        sys.setprofile(None)

for line in sys.stdin:  # "SEED KILL_AT": one build in a forked child (the imports are made once), its end printed
    seed, kill_at = map(int, line.split())
    child = os.fork()
    if child == 0:
        try:
            build(seed)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    status = os.waitpid(child, 0)[1]
    print("killed" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["composed", "built", "amended"])
def test_a_kill_at_every_file_write_of_a_store_leaves_the_old_one_and_what_the_next_run_deletes(tmp_path, how):
    """The deterministic twin of the test above: a kill just before each file write, hard link or delete of a
    small store's build, or of a change to a whole store (`amend`), the old store's removal included. The CI once
    caught the random one killing inside a `zarr.json` written in place, which proved nothing."""
    path = tmp_path / "s.zarr"

    builder = subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(path), how],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def build(seed, kill_at) -> str:
        builder.stdin.write(f"{seed} {kill_at}\n")
        builder.stdin.flush()
        return builder.stdout.readline().strip()

    assert build(1, 0) == "exit 0"
    before = tree_hash(path)
    from landscape_ray.store.lock import claim
    from landscape_ray.store.ownership import clean_partials

    def the_new_one() -> bool:
        """Whether the store at `path` is the second build's, whole (directions, and the group `amend` wrote)."""
        store = Store(path, mode="r")
        seed = store.spec.directions.seed
        if seed != (1 if how == "amended" else 2) or not all(
            np.all(v == seed) for d in store.directions() for v in d.values()
        ):
            return False
        if how != "amended":
            return True
        hessian = store.root["hessian"]
        values = [
            hessian["eigenvalues"][...],
            hessian["trace"][...],
            *(hessian[f"eigenvectors/{k}/w"][...] for k in range(2)),
        ]
        return all(np.all(v == [2, -2] if i == 0 else v == 2) for i, v in enumerate(values))

    for kill_at in range(1, 300):
        end = build(2, kill_at)
        if end == "exit 0":
            break  # past the last write: the new store is in
        assert end == "killed", end
        old = tree_hash(path) == before
        assert old or the_new_one(), kill_at  # the kill fell before the swap, or while the old store was deleted
        assert list(tmp_path.glob(".s.zarr.partial-*")), kill_at  # the new store being built, or the old one
        with claim(path, "test"):
            clean_partials(path)
        assert not list(tmp_path.glob(".s.zarr.partial-*")), kill_at
        if not old:  # the old store back, for the next kill
            assert build(1, 0) == "exit 0"
            before = tree_hash(path)
    builder.stdin.close()
    assert builder.wait() == 0
    assert kill_at > 10  # every metadata file and chunk of the store was a point of death
    assert the_new_one()


KILLED_AT_FIRST_WRITE = """
import io, os, signal, sys
from landscape_ray.cli.main import main
out = os.path.realpath(sys.argv[1])

def kill_at_the_first_write_under_out(frame, event, arg):
    if event != "c_call" or arg.__name__ != "write" or not isinstance(getattr(arg, "__self__", None), io.IOBase):
        return  # (only a builtin's own attributes are read: a profiler must not run other objects' __getattr__)
    name = getattr(arg.__self__, "name", None)
    if isinstance(name, str) and os.path.realpath(name).startswith(out + os.sep):
        os.kill(os.getpid(), signal.SIGKILL)

sys.setprofile(kill_at_the_first_write_under_out)
main(sys.argv[2:])
"""


def visible_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


@pytest.mark.parametrize(
    "command",
    ["render png", "render pdf", "render html", "render vtp", "report", "directions npz"],
)
def test_a_render_killed_mid_write_leaves_the_old_files_whole(tmp_path, command):
    """Pictures, pages and direction files are results too: each is written beside and renamed
    (`core.paths.replace_file`), so a kill at the first byte leaves the old file, not the truncated one an in-place
    write leaves."""
    store, out = tmp_path / "s.zarr", tmp_path / "out"
    shutil.copytree(FORMAT1, store)
    out.mkdir()
    kind, *fmt = command.split()
    if kind == "directions":
        argv = [kind, str(store), "--out", str(out / f"d.{fmt[0]}")]
    else:
        argv = [kind, str(store), "--out", str(out), *(["--format", *fmt] if fmt else [])]
    assert main(argv) == 0
    before = visible_files(out)
    proc = subprocess.run([sys.executable, "-c", KILLED_AT_FIRST_WRITE, str(out), *argv], cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL  # the kill fell inside a write of the output
    assert visible_files(out) == before


# --- Stores of older formats --------------------------------------------------------------------------------

FORMAT1 = ROOT / "tests" / "fixtures" / "format1.zarr"  # written by main at 62ad528 (3 × 3, tiles 2 × 2, one left)


def fixture_values(done_only=True):
    x, y = np.meshgrid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))
    want = 1 + x**2 + 3 * y**2
    if done_only:
        want[2, 2] = np.nan  # the last tile was never computed
    return want


def test_a_store_written_by_format_1_opens_reads_and_upgrades(tmp_path, capsys):
    import landscape_ray

    store = tmp_path / "old.zarr"
    shutil.copytree(FORMAT1, store)
    s = Store(store, mode="r")
    assert s.format == 1 and s.variables == ["train_acc", "train_loss"]
    np.testing.assert_array_equal(s.read("train_loss"), fixture_values())
    np.testing.assert_array_equal(landscape_ray.open(store).train_loss.values, fixture_values())
    assert main(["info", str(store)]) == 0 and "8/9 points done" in capsys.readouterr().out
    assert main(["verify", str(store)]) == 0
    assert main(["upgrade", str(store)]) == 0 and "format 2" in capsys.readouterr().out
    new = Store(store, mode="r")
    assert new.format == 2 and new.spec == s.spec and new.root.attrs["upgraded_from"] == 1
    np.testing.assert_array_equal(new.read("train_loss"), fixture_values())
    np.testing.assert_array_equal(new.done(), ~np.isnan(fixture_values()))
    assert len(new.records()) == 3
    np.testing.assert_array_equal(new.directions()[1]["w"], [0.5, -1.0])
    flip_a_byte(store / "train_loss" / "c" / "0" / "0")  # now checksummed
    assert main(["verify", str(store)]) == 1


def test_a_store_of_a_newer_format_is_refused_in_one_line(tmp_path, capsys):
    store = tmp_path / "new.zarr"
    shutil.copytree(FORMAT1, store)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["landscape_ray_format"] = 99
    (store / "zarr.json").write_text(json.dumps(meta))
    code, err = cli(capsys, "info", store)
    assert code == 2 and "format 99; this version reads 1 to 2" in err


def test_info_of_a_1d_store_lists_only_evaluated_variables(tmp_path, capsys):
    """Bug on 62ad528: the coordinate `x` of a 1D store was listed among its variables."""
    from landscape_ray.spec.grid import Grid
    from landscape_ray.spec.specfile import load_spec
    from landscape_ray.store.layout import create
    from landscape_ray.store.lock import claim

    path = tmp_path / "1d.zarr"
    spec = load_spec(None, [f"output.store={path}", "grid.y=null", "grid.x.num=5", "grid.tile=[5]"])
    with claim(path, "test"):
        create(path, spec, Grid.from_spec(spec.grid), ["train_loss"], [{"w": np.zeros(2, np.float32)}])
    assert Store(path, mode="r").variables == ["train_loss"]
    assert main(["info", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = lines[lines.index("variables:") + 1 :]
    listed = listed[: next(i for i, line in enumerate(listed) if not line.startswith("  "))]
    assert listed == ["  train_loss: no values yet"]
