"""The cluster path with real Ray processes: balance, shared memory, remote stores, SIGTERM, `ray job submit`,
node loss."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from landscape_ray.job import run
from landscape_ray.store.tiles import Store

from .conftest import ROOT, as_digits, make_spec, quiet, reference
from .test_curvature import exact_hessian, hessian_scan
from .test_run import slow_spec

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_slow_actor_does_not_hold_the_job_back(ray_cluster, checkpoint, tmp_path):
    spec = make_spec(
        tmp_path / "s.zarr",
        checkpoint,
        "model.arch=tests.helpers:rendezvous_cnn",
        f"model.kwargs={{folder: {tmp_path / 'up'}, delay: 0, slow: 0.3}}",
        "grid.tile=[1, 1]",
        "data.batch_size=300",
        "eval.fold_bn=false",  # no test forwards at load: the slow actor is ready about when the fast one is
    )
    summary = run(spec, log=quiet)
    speeds = sorted(a["points_per_s"] for a in summary["actors"].values())
    points = sorted(a["points"] for a in summary["actors"].values())
    assert len(points) == 2 and speeds[1] > 3 * speeds[0], summary["actors"]
    assert points[1] > 3 * points[0], summary["actors"]  # tiles went to whichever actor was free
    np.testing.assert_array_equal(
        xr.open_zarr(tmp_path / "s.zarr").train_loss.values, reference(as_digits(spec))["train_loss"]
    )


def test_actors_of_a_node_share_one_copy_of_the_data(ray_cluster, tmp_path):
    """Object-store accounting: the payload is stored once, and neither actor's private memory holds the images."""
    from ray._private.internal_api import memory_summary

    def job(size, name):
        spec = make_spec(
            tmp_path / f"{name}.zarr",
            None,
            "data.dataset=synthetic",
            f"data.kwargs={{size: {size}}}",
            "data.subset=null",
            "model.arch=tests.helpers:linear",
            "data.batch_size=8192",
            "grid.y=null",
            "grid.x.num=2",
            "grid.tile=1",
        )
        summary = run(spec, log=quiet)
        return summary, memory_summary(address=ray_cluster.get_runtime_context().gcs_address, stats_only=True)

    small, _ = job(1_000, "small")
    big, stats = job(40_000, "big")  # 40,000 × 3 × 32 × 32 bytes = 117 MiB of images
    images_mib = 40_000 * 3072 / 2**20
    plasma = float(re.search(r"Plasma memory usage (\d+) MiB", stats).group(1))
    assert plasma < 1.5 * images_mib, stats  # one copy for two actors, not two
    for name, actor in big["actors"].items():
        grown = actor["uss_mb"] - min(a["uss_mb"] for a in small["actors"].values())
        assert grown < 0.3 * images_mib, (name, actor, small["actors"])


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """A real S3-compatible server (moto) on loopback; credentials and endpoint from the environment."""
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a cached filesystem would still point at an earlier test's server
    deadline = time.time() + 30
    while True:
        try:
            s3fs.S3FileSystem(skip_instance_cache=True).mkdir("landscapes")
            break
        except Exception:  # noqa: BLE001 - whatever a server that is not up yet makes s3fs/botocore raise
            assert time.time() < deadline, "moto server did not start"
            time.sleep(0.3)
    yield "s3://landscapes"
    server.terminate()
    server.wait()


def test_remote_store_round_trip_resume_and_info(ray_cluster, checkpoint, tmp_path, s3, capsys, monkeypatch):
    from landscape_ray.cli.main import main

    url = f"{s3}/surface.zarr"
    monkeypatch.chdir(tmp_path)  # pictures of a remote store go to runs/<name>/ here
    spec = make_spec(url, checkpoint, "output.render=[heatmap]")
    summary = run(spec, log=quiet)
    assert [Path(p).name for p in summary["pictures"]] == ["train_loss_heatmap.png"]
    want = reference(spec)
    ds = xr.open_zarr(url, consolidated=True)
    np.testing.assert_array_equal(ds.train_loss.values, want["train_loss"])
    # Lose three tiles as a crash would (values and done flags), then --resume computes exactly those.
    store = Store(url)
    lost = store.grid.tiles()[2:5]
    for tile in lost:
        where = store.grid.slices(tile)
        store.root["train_loss"][where] = np.nan
        store.root["done"][where] = False
    capsys.readouterr()
    assert main(["info", url]) == 0
    left = 35 - sum(int(np.prod(store.grid.tile_shape(t))) for t in lost)
    assert f"progress: {left}/35 points done" in capsys.readouterr().out
    assert run(spec, resume=True, log=quiet)["tiles"] == 3
    np.testing.assert_array_equal(xr.open_zarr(url, consolidated=True).train_loss.values, want["train_loss"])
    with pytest.raises(Exception, match="already exists"):
        run(spec, log=quiet)
    # render of a remote store without --out: pictures in runs/<store name>/ here (was a local folder "s3:")
    from landscape_ray.pictures.render import render

    assert render(url, kinds=["heatmap"]) == [Path("runs") / "surface" / "train_loss_heatmap.png"]
    assert (tmp_path / "runs" / "surface" / "train_loss_heatmap.png").exists() and not (tmp_path / "s3:").exists()


def done_tiles(path) -> int:
    """Finished [1, 3] tiles of a 9 × 9 store (tile records are written in batches; `done` at once)."""
    return int(Store(path, mode="r").done().reshape(-1, 3).all(axis=1).sum())


def wait_for_tiles(path, at_least, proc=None, timeout=120):
    deadline = time.time() + timeout
    while True:
        assert time.time() < deadline, "no progress"
        assert proc is None or proc.poll() is None, "the run ended before it could be stopped"
        if Path(path).exists() and done_tiles(path) >= at_least:
            return
        time.sleep(0.2)


def test_sigterm_unwinds_and_resume_completes(ray_cluster, checkpoint, tmp_path):
    spec = slow_spec(tmp_path, checkpoint)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    proc = subprocess.Popen(
        [sys.executable, "-m", "landscape_ray", "run", str(spec_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_tiles(tmp_path / "s.zarr", 3, proc)
    (tmp_path / "hold").touch()  # the run stays mid-way until the SIGTERM
    try:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a driver that did not unwind
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert out.strip().splitlines()[-1].startswith("interrupted: ") and "Traceback" not in out, out
    left = 27 - done_tiles(tmp_path / "s.zarr")
    assert 0 < left < 27
    (tmp_path / "hold").unlink()
    assert run(spec, resume=True, log=quiet)["tiles"] == left
    np.testing.assert_array_equal(
        xr.open_zarr(tmp_path / "s.zarr").train_loss.values, reference(as_digits(spec))["train_loss"]
    )


@pytest.fixture
def head(tmp_path):
    """A real Ray head node on loopback, started and stopped with the `ray` CLI, as users do."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    port, dash = free_port(), free_port()
    # Every port of its own: the test session's Ray already holds the default agent and metrics ports.
    ports = [
        f"--{name}={free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "ray-client-server-port",
        )
    ]
    temp = Path("/tmp") / f"lr-head-{os.getpid()}"  # Ray's socket paths must stay short
    # A session of its own: its processes form one group, stopped together without `ray stop`, which would also
    # stop the test session's own Ray (and with it this process).
    start = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            *ports,
            "--num-cpus=2",
            "--include-dashboard=true",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out, _ = start.communicate(timeout=180)
    assert start.returncode == 0, out
    env["RAY_AUTH_MODE"] = "token"  # Ray >= 2.59: the `ray job` CLI needs it against a local head
    try:
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        try:
            os.killpg(start.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def job_cli(env, address, *args, check=True):
    command, *rest = args
    done = subprocess.run(
        [str(BIN / "ray"), "job", command, "--address", address, *rest],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 or not check, f"ray job {command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def output(done: subprocess.CompletedProcess) -> str:
    return done.stdout + done.stderr  # the `ray job` CLI logs to both


def test_ray_job_submit_then_stop_then_resume(head, checkpoint, tmp_path):
    """`ray job submit` of a shipped spec, `ray job stop` mid-run (SIGTERM, then SIGKILL), resubmitted with --resume."""
    env, address = head
    store, hold = tmp_path / "s.zarr", tmp_path / "hold"
    entry = [
        "python",
        "-m",
        "landscape_ray",
        "run",
        "jobs/quickstart.yaml",
        "--set",
        f"model.checkpoint={checkpoint}",
        "--set",
        "model.arch=tests.helpers:slow_cnn",
        "--set",
        "model.kwargs={delay: 0.03, hold: %s}" % hold,
        "--set",
        "data.splits=[train]",
        "--set",
        "data.subset=300",
        "--set",
        "data.batch_size=300",
        "--set",
        "grid.x.num=9",
        "--set",
        "grid.y.num=9",
        "--set",
        "grid.tile=[1, 3]",
        "--set",
        "compute.actors=auto",
        "--set",
        f"output.store={store}",
        "--set",
        "output.render=[]",
    ]
    deadline = time.time() + 90
    while True:  # a fresh head's job agent may still be starting: Ray answers "No available agent … try again later"
        submitted = job_cli(env, address, "submit", "--no-wait", "--working-dir", ".", "--", *entry, check=False)
        if submitted.returncode == 0 or "No available agent" not in submitted.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    job_id = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr).group(0)
    wait_for_tiles(store, 3)
    hold.touch()  # every forward now waits: the stop lands mid-run however fast the machine is
    job_cli(env, address, "stop", job_id)
    deadline = time.time() + 60
    while "stopped" not in (status := output(job_cli(env, address, "status", job_id, check=False))).lower():
        assert time.time() < deadline, status
        time.sleep(1)
    left = 27 - done_tiles(store)
    assert 0 < left < 27
    logs = output(job_cli(env, address, "logs", job_id))
    assert re.search(r"actor-\d ready", logs) and "27 to compute" in logs, logs  # one may still be starting, held
    assert f"interrupted: {81 - 3 * left}/81 points are kept" in logs, logs  # SIGTERM unwound the run
    hold.unlink()
    out = output(job_cli(env, address, "submit", "--working-dir", ".", "--", *entry, "--resume"))
    assert f"{left} to compute" in out and "done:" in out, out
    want = reference(as_digits(slow_spec(tmp_path, checkpoint)))
    np.testing.assert_array_equal(xr.open_zarr(store).train_loss.values, want["train_loss"])


def test_node_loss_and_node_join_keep_the_surface_identical(checkpoint, tmp_path):
    """ray.cluster_utils.Cluster in its own process: one node removed mid-run, another added; same values."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.cluster_scenario", str(checkpoint), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["identical"], result
    assert result["actor_deaths"] >= 1 and result["retried_tiles"] >= 1, result
    assert result["points_on_new_node"] > 0, result


def test_remote_store_lease_one_writer_and_stale_takeover(s3):
    """Object stores have no file locks: a lease object, created with an exclusive put, names the live writer."""
    import s3fs

    from landscape_ray.core.errors import StoreBusy
    from landscape_ray.store.lock import claim

    url = f"{s3}/leased.zarr"
    with claim(url, "first"):
        with pytest.raises(StoreBusy, match=rf"in use by pid {os.getpid()} .*first"):
            with claim(url, "second"):
                pass
    with claim(url, "again"):  # released on exit
        pass
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    lease = "landscapes/.leased.zarr.lease"
    fs.pipe_file(lease, json.dumps({"pid": 1, "host": "gone", "command": "dead", "heartbeat": 0}).encode())
    with claim(url, "takeover"):  # the dead driver's heartbeat is old: taken over
        assert json.loads(fs.cat_file(lease))["command"] == "takeover"
    assert not fs.exists(lease)


def test_hessian_directions_on_a_cluster_the_run_joins(head, tmp_path):
    """`directions.kind: hessian` submitted with `ray job submit` to a separately started head: the run joins that
    cluster (RAY_ADDRESS), computes the eigenvectors there once it is connected, then the scan; the stored scan
    curves by the exact top eigenvalue."""
    env, address = head
    store = tmp_path / "h.zarr"
    h, spec = hessian_scan(store)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    entry = ["python", "-m", "landscape_ray", "run", str(job)]
    deadline = time.time() + 90
    while True:  # a fresh head's job agent may still be starting: Ray answers "No available agent … try again later"
        done = job_cli(env, address, "submit", "--working-dir", ".", "--", *entry, check=False)
        if done.returncode == 0 or "No available agent" not in done.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert done.returncode == 0 and "Traceback" not in output(done), output(done)[-2000:]
    f = xr.open_zarr(store).train_loss.values
    top = np.linalg.eigvalsh(exact_hessian(spec)[0])[-1]
    assert (f[0] - 2 * f[1] + f[2]) / h**2 == pytest.approx(top, rel=5e-3)
