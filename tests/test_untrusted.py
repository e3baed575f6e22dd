"""Files from someone else (issue 21): specs, stores and lock files handled as data. Each case ends in one line and
a non-zero exit, runs no code, and leaves every file it was pointed at as it was. No cluster: each is refused before
one would start."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from landscape_ray.cli.main import main
from landscape_ray.core.errors import SpecError, StoreBusy
from landscape_ray.core.progress import Progress
from landscape_ray.store.lock import claim
from landscape_ray.store.ownership import check_ours, is_marked
from landscape_ray.store.tiles import Store

from .conftest import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "format1.zarr"
QUICKSTART = str(ROOT / "jobs" / "quickstart.yaml")  # validated before its checkpoint is read


def one_line(capsys, argv, code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- Specs -------------------------------------------------------------------------------------------------------


def refuse(spec: Path, cwd: Path) -> tuple[subprocess.CompletedProcess, float, int]:
    """`landscape-ray run SPEC` in a fresh process: what it did, its seconds, and its own peak resident bytes."""
    code = (  # the command line's main, then this process's own peak resident memory (kB on Linux)
        "import resource, sys\n"
        "from landscape_ray.cli.main import main\n"
        f"code = main(['run', {str(spec)!r}])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    return done, time.perf_counter() - start, int(done.stdout.split()[-1]) * 1024


def test_an_alias_bomb_is_refused_at_once_in_bounded_memory(tmp_path):
    """Seven levels of YAML aliases in 500 bytes expand to ~10^8 nodes (120 s and 2.9 GB before, and a 197 MB
    zarr.json): refused in one line, as fast and in as much memory as a plain bad spec (the same command's
    imports), side by side."""
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    bomb, plain = tmp_path / "bomb.yaml", tmp_path / "plain.yaml"
    bomb.write_text("data:\n  kwargs:\n" + "".join(f"    {line}\n" for line in levels))
    plain.write_text("grid:\n  x: {min: 1, max: -1}\n")
    assert len(bomb.read_bytes()) < 600
    baseline, base_s, base_peak = refuse(plain, tmp_path)
    assert baseline.returncode == 2, baseline.stderr
    done, took, peak = refuse(bomb, tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == f"{bomb}: not valid YAML (line 4: a YAML alias (*name); write the value out instead)"
    assert took < base_s + 10, (took, base_s)
    assert peak < base_peak + (64 << 20), f"{peak / 2**20:.0f} MiB against {base_peak / 2**20:.0f} MiB"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml", "plain.yaml"]


def test_a_spec_that_is_not_utf8_is_one_line(tmp_path, capsys):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert one_line(capsys, ["run", str(spec)]) == f"{spec}: not UTF-8 text (byte 9 is 0xe9)"


def test_an_alias_in_a_set_value_is_one_line(capsys):
    line = one_line(capsys, ["run", QUICKSTART, "--set", "data.kwargs={a: &x 1, b: *x}"])
    assert "a YAML alias" in line


@pytest.mark.parametrize(
    "override, message",
    [
        ("grid.x={min: -1e308, max: 1e308, num: 3}", "grid.x: max - min overflows (-1e+308 to 1e+308)"),
        ("grid.x.num=100000000000000000000000000000", "grid.x.num: Input should be less than or equal to 100000000"),
        ("grid.x={min: 1.0, max: 1.0000000000000002, num: 5}", "grid.x.num: 5 points between 1.0 and"),
        (
            "grid.y={min: 1e15, max: 1.0000000000000002e15, num: 3}",
            "grid.y.num: 3 points between 1000000000000000.0 and",
        ),
    ],
)
def test_grids_are_checked_before_any_arithmetic(tmp_path, capsys, override, message):
    """Bounds whose span overflows, an axis of 10^29 points, points closer than float64 tells apart: one line each
    at validation (they overflowed in the actors and left a partial store, or raised from NumPy)."""
    store = tmp_path / "s.zarr"
    line = one_line(capsys, ["run", QUICKSTART, "--set", override, "--set", f"output.store={store}"])
    assert line.startswith(message), line
    assert not store.exists() and list(tmp_path.iterdir()) == []


# --- Stores ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("marker", [True, "2", [2], 0, 2.0])
def test_a_format_marker_that_is_not_a_format_number_is_not_ours(tmp_path, capsys, marker):
    """`landscape_ray_format: true` used to read as format 1 (Python's True == 1), which skips the fingerprints; a
    store so marked is neither read nor deleted."""
    store = tmp_path / "s.zarr"
    shutil.copytree(FIXTURE, store)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["landscape_ray_format"] = marker
    (store / "zarr.json").write_text(json.dumps(meta))
    before = {p: digest(p) for p in store.rglob("*") if p.is_file()}
    assert not is_marked(store)
    assert "is not a landscape_ray store" in one_line(capsys, ["info", str(store)])
    line = one_line(capsys, ["run", QUICKSTART, "--set", f"output.store={store}", "--overwrite"])
    assert "is not a landscape_ray store" in line and "refusing to delete it" in line
    assert before == {p: digest(p) for p in store.rglob("*") if p.is_file()}


# --- Lock and owner files ----------------------------------------------------------------------------------------


@pytest.fixture
def precious(tmp_path):
    path = tmp_path / "thesis.tex"
    path.write_text("\\chapter{Results} years of work\n")
    return path


@pytest.mark.parametrize("which", ["owner", "lock"])
@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_lock_or_owner_file_that_is_a_link_is_refused_and_its_target_kept(tmp_path, precious, which, link):
    """A `.NAME.owner` or `.NAME.lock` that links to another file: the claim is refused in one line naming it, and
    the linked file is not opened for writing (the owner record overwrote it; filelock truncates a lock file)."""
    store = tmp_path / "s.zarr"
    planted = tmp_path / f".s.zarr.{which}"
    (os.symlink if link == "symlink" else os.link)(precious, planted)
    before = digest(precious)
    with pytest.raises(SpecError) as err:
        with claim(store, "landscape-ray run"):
            pass
    kind = "a symbolic link" if link == "symlink" else "a hard link"
    assert str(err.value) == f"output.store: {planted} is {kind}, not a lock or owner file of ours; remove it to go on"
    assert digest(precious) == before
    assert not (tmp_path / ".s.zarr.lock").exists() or which == "lock"  # nothing of ours is left behind


def test_an_owner_path_that_is_a_folder_leaves_no_lock_behind(tmp_path, capsys):
    (tmp_path / ".s.zarr.owner").mkdir()
    line = one_line(capsys, ["run", QUICKSTART, "--set", f"output.store={tmp_path / 's.zarr'}"])
    assert line.endswith("is a folder, not a lock or owner file of ours; remove it to go on")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.zarr.owner"]  # the lock file went with the refusal


def test_the_owner_record_of_another_process_is_printed_escaped(tmp_path):
    """The busy message quotes the holder's owner file, which anyone could have written: a newline or a terminal
    escape in it is printed as visible text, so the message stays one line."""
    import filelock

    store = tmp_path / "s.zarr"
    held = filelock.FileLock(tmp_path / ".s.zarr.lock", timeout=0)
    held.acquire()
    try:
        record = {"pid": 7, "host": "evil\nhost", "command": "\x1b[2Jrm -rf", "started": "now"}
        (tmp_path / ".s.zarr.owner").write_text(json.dumps(record))
        with pytest.raises(StoreBusy) as err:
            with claim(store, "landscape-ray run"):
                pass
    finally:
        held.release()
    message = str(err.value)
    assert "\n" not in message and "\x1b" not in message
    assert "pid 7 on evil\\nhost (\\x1b[2Jrm -rf, since now)" in message


# --- A store is data ---------------------------------------------------------------------------------------------


@pytest.fixture
def hostile(tmp_path):
    """A store whose recorded spec names `os:system` as its model, data set and metric, with a command that would
    leave a marker file: a store is a folder people share, and its spec is only text."""
    store, marker = tmp_path / "shared.zarr", tmp_path / "ran"
    shutil.copytree(FIXTURE, store)
    meta = json.loads((store / "zarr.json").read_text())
    spec = meta["attributes"]["spec"]
    spec["model"] = {"arch": "os:system", "kwargs": {"command": f"touch {marker}"}, "trust_checkpoint": True}
    spec["data"]["dataset"] = "os:system"
    spec["eval"]["metric"] = "os:system"
    (store / "zarr.json").write_text(json.dumps(meta))
    return store, marker


@pytest.mark.parametrize(
    "argv, code, says",
    [
        (["info", "{store}"], 0, None),
        (["verify", "{store}"], 0, None),
        (["render", "{store}", "--out", "{tmp}/pictures"], 0, None),
        (["compare", "{store}", "{store}", "--out", "{tmp}/c.png"], 0, None),
        (["report", "{store}", "--out", "{tmp}/report"], 0, None),
        (["directions", "{store}", "--out", "{tmp}/d.npz"], 0, None),
        (["directions", "{store}", "--out", "{tmp}/d.h5"], 2, "a store's model is not imported"),
        (["figure", "trajectory", "{store}", "{tmp}/model_*.pt", "--out", "{tmp}/t.png"], 2, "give --spec"),
        (["upgrade", "{store}"], 0, None),
    ],
)
def test_no_command_runs_what_a_store_names(hostile, tmp_path, capsys, argv, code, says):
    store, marker = hostile
    argv = [a.format(store=store, tmp=tmp_path) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert not marker.exists(), f"{argv[0]} ran the store's model"
    assert "Traceback" not in err
    if says:
        assert len(err.strip().splitlines()) == 1 and says in err, err


@pytest.mark.parametrize(
    "plant",
    [
        {"results/zarr.json": '{"chapter": 3}'},  # named like Zarr metadata, someone else's content
        {"results/zarr.json": '{"zarr_format": 3, "node_type": "group"}', "results/notes.txt": "mine"},
        {"train_loss/c/2024/12": "data"},  # named like a chunk, outside the array's chunk grid
        {"done/c/0/7/1": "data"},  # a chunk key of the wrong rank
        {"directions/x/c/0/0": "data"},  # a chunk of a group
    ],
)
def test_files_named_like_zarr_ones_are_not_deleted(tmp_path, capsys, plant):
    """`--overwrite` deletes a store's files only when their content proves them Zarr's (metadata of the store's
    groups and arrays, chunk keys the metadata implies): by name alone it deleted these."""
    store = tmp_path / "s.zarr"
    shutil.copytree(FIXTURE, store)
    for rel, text in plant.items():
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        (store / rel).write_text(text)
    before = {p: digest(p) for p in store.rglob("*") if p.is_file()}
    line = one_line(capsys, ["run", QUICKSTART, "--set", f"output.store={store}", "--overwrite"])
    assert "which no landscape_ray store has; refusing to delete it" in line, line
    assert before == {p: digest(p) for p in store.rglob("*") if p.is_file()}


def test_a_store_with_zero_dimensional_arrays_is_provably_ours(tmp_path):
    """A store holding the `hessian` group's 0-d arrays (`trace`: its one chunk is the file `trace/c`) is ours to
    replace (by name it was a stray file)."""
    store = tmp_path / "s.zarr"
    shutil.copytree(FIXTURE, store)
    group = zarr.open_group(str(store), mode="a").create_group("hessian")
    group.create_array("trace", data=np.asarray(3.0), fill_value=np.nan)
    assert (store / "hessian" / "trace" / "c").is_file()
    check_ours(store)


# --- Training folders ----------------------------------------------------------------------------------------


class Payload:
    """Unpickled, it would run a command (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def planted_run(tmp_path, content: str):
    """A training folder whose model_1.pt is not what training writes."""
    run, marker = tmp_path / "run", tmp_path / "ran"
    run.mkdir()
    path = run / "model_1.pt"
    if content == "truncated":
        path.write_bytes(b"PK\x03\x04 not a whole zip")
    elif content == "pickle":
        torch.save({"state_dict": {}, "epoch": 1, "evil": Payload(marker)}, path)
    else:  # a record of the right shape whose fields are not what training writes
        torch.save({"state_dict": {}, "epoch": "one", "weight_norm": "big"}, path)
    return run, marker


@pytest.mark.parametrize("content", ["truncated", "pickle", "fields"])
@pytest.mark.parametrize("kind", ["norms", "curves"])
def test_a_planted_checkpoint_in_a_run_folder_is_one_line(tmp_path, capsys, kind, content):
    run, marker = planted_run(tmp_path, content)
    line = one_line(capsys, ["figure", kind, str(run), "--out", str(tmp_path / "f.png")])
    assert f"{run / 'model_1.pt'}" in line
    assert not marker.exists() and not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("content", ["truncated", "pickle"])
def test_a_planted_checkpoint_in_a_training_folder_stops_a_rerun_in_one_line(tmp_path, capsys, content):
    run, marker = planted_run(tmp_path, content)
    job = str(ROOT / "jobs" / "quickstart-train.yaml")
    line = one_line(capsys, ["train", job, "--set", f"out={run}", "--set", "epochs=2"])
    assert line.startswith(f"out: {run / 'model_1.pt'}") or f"out: cannot read {run / 'model_1.pt'}" in line, line
    assert not marker.exists() and sorted(p.name for p in run.iterdir()) == ["model_1.pt"]


@pytest.mark.slow
def test_a_run_whose_reader_goes_away_completes(tmp_path):
    """`landscape-ray run … | head -1`: once the reader has its line and goes, the run used to die on its next log
    line (exit 141, no word, no run summary); it goes on quietly and completes the store."""
    store = tmp_path / "s.zarr"
    sets = ["model.checkpoint=null", "grid.x.num=15", "grid.y.num=15", f"output.store={store}", "output.render=[]"]
    command = [sys.executable, "-m", "landscape_ray", "run", QUICKSTART, *(a for s in sets for a in ("--set", s))]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith(f"store {store}")
    proc.stdout.close()  # as `head -1` does
    assert proc.wait(300) == 0, proc.stderr.read()
    assert Store(store, mode="r").done().all()
    assert len(Store(store, mode="r").root.attrs["runs"]) == 1


def test_progress_lines_to_a_reader_that_has_gone_do_not_stop_the_run():
    """CI caught `run … | head -1` exiting 141 when a long run's periodic progress line (not its log lines) met the
    closed pipe: every line a run writes goes the same quiet way."""
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "w") as stream:
        progress = Progress(total=4, interval=0.0, stream=stream)
        progress.update(2)
        assert progress.tick()  # the write meets EPIPE: no exception, the stream now goes to /dev/null
        progress.update(2)
        progress.close()
        assert os.path.samefile(f"/proc/self/fd/{stream.fileno()}", os.devnull)


# --- Tampered store metadata -------------------------------------------------------------------------------------


def tamper_array(store, name: str, change, consolidated_only: bool = False) -> None:
    """Apply `change(meta)` to array `name`'s metadata, in its zarr.json and in the root's consolidated copy."""
    root = json.loads((store / "zarr.json").read_text())
    change(root["consolidated_metadata"]["metadata"][name])
    (store / "zarr.json").write_text(json.dumps(root))
    if not consolidated_only:
        meta = json.loads((store / name / "zarr.json").read_text())
        change(meta)
        (store / name / "zarr.json").write_text(json.dumps(meta))


def tamper_attrs(store, change) -> None:
    root = json.loads((store / "zarr.json").read_text())
    change(root["attributes"])
    (store / "zarr.json").write_text(json.dumps(root))


TAMPERED = {
    "runs": (lambda s: tamper_attrs(s, lambda a: a.update(runs="every run")), "runs is not a list of run summaries"),
    "inputs": (lambda s: tamper_attrs(s, lambda a: a.update(inputs=[1, 2])), "inputs is not a table"),
    "spec value": (
        lambda s: tamper_attrs(s, lambda a: a["spec"]["grid"]["x"].update(num=-5)),
        "has a spec this version cannot read",
    ),
    "shape": (lambda s: tamper_array(s, "train_loss", lambda m: m.update(shape=[9, 9])), "train_loss has shape"),
    "chunks": (
        lambda s: tamper_array(s, "train_loss", lambda m: m["chunk_grid"]["configuration"].update(chunk_shape=[1, 3])),
        "train_loss has shape",
    ),
    "dtype": (
        lambda s: tamper_array(s, "train_loss", lambda m: m.update(data_type="int8")),  # NaN fill: zarr refuses
        "its Zarr metadata cannot be read (TypeError)",
    ),
    "codec": (
        lambda s: tamper_array(s, "train_loss", lambda m: m.update(codecs=[{"name": "no_such_codec"}])),
        "its Zarr metadata cannot be read (UnknownCodecError)",
    ),
    "consolidated": (
        lambda s: tamper_array(s, "done", lambda m: m.update(shape=[30, 30]), consolidated_only=True),
        "done has shape",
    ),
    "done dtype": (lambda s: tamper_array(s, "done", lambda m: m.update(data_type="float64")), "done holds float64"),
}


@pytest.mark.parametrize("what", list(TAMPERED))
@pytest.mark.parametrize("command", ["info", "verify", "render", "report", "resume"])
def test_tampered_store_metadata_is_one_line(tmp_path, capsys, what, command):
    """Each part of a store's metadata changed by hand: every command that reads a store answers in one line naming
    the store (and the part, where it can) instead of a traceback from deep inside Zarr, NumPy or matplotlib."""
    store = tmp_path / "s.zarr"
    shutil.copytree(FIXTURE, store)
    tamper, says = TAMPERED[what]
    tamper(store)
    argv = {
        "info": ["info", str(store)],
        "verify": ["verify", str(store)],
        "render": ["render", str(store), "--out", str(tmp_path / "pictures")],
        "report": ["report", str(store), "--out", str(tmp_path / "report")],
        "resume": ["run", QUICKSTART, "--set", f"output.store={store}", "--resume"],
    }[command]
    line = one_line(capsys, argv)
    # --resume first proves the store ours to write (output.store): chunks off the grid are not provably Zarr's.
    proof = command == "resume" and what == "chunks"
    says = "holds train_loss/c/0/1, which no landscape_ray store has" if proof else says
    assert line.startswith(f"{'output.store' if proof else 'store'}: {store}") and says in line, line


@pytest.mark.slow
def test_ray_that_cannot_start_is_one_line(tmp_path):
    """Under a 64 KiB file size limit Ray's own processes cannot start (they write logs and session files): the run
    ends in one line saying so, exit 1 (it was Ray's traceback), and leaves no store."""
    store = tmp_path / "s.zarr"
    sets = ["model.checkpoint=null", "grid.x.num=5", "grid.y.num=5", f"output.store={store}", "output.render=[]"]
    sets.append("compute.ray=always")  # so small a job would otherwise run without Ray
    args = " ".join(f"--set '{s}'" for s in sets)
    command = f"ulimit -f 64; exec {sys.executable} -m landscape_ray run {QUICKSTART} {args}"
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("run failed: cannot start a private Ray cluster on this machine")
    assert not store.exists()
