"""Joining a Ray cluster, and what it has room for: the run's first contact with Ray.

    connect(address)                 # join `address` (or RAY_ADDRESS), else start a private local cluster
    workers = preflight(spec, address)   # joins, and refuses what cannot run, before any store exists
    count, options = plan_actors(spec)   # actors the cluster has room for now, and each one's resources
    disconnect()                     # leave (a private cluster stops)

The entry point (cli/) makes a private cluster loopback-only before Ray is imported.
"""

from __future__ import annotations

import os
import signal
import socket
import threading

import ray

from landscape_ray.core.errors import RunError, unwind
from landscape_ray.spec.schema import Spec


def knock(address: str, timeout: float = 5.0) -> None:
    """Raise OSError unless something listens at `host:port` (ray.init would retry a dead address for minutes)."""
    host, sep, port = address.rpartition("://")[2].rpartition(":")
    if sep and port.isdigit():  # not "auto", which Ray resolves from the local session files
        socket.create_connection((host, int(port)), timeout=timeout).close()


def private(address: str | None) -> bool:
    """Whether `connect(address)` starts a private cluster on this machine (no address, no RAY_ADDRESS)."""
    return not (address or os.environ.get("RAY_ADDRESS"))


def connect(address: str | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS, as under `ray job submit`), else start a private one."""
    if ray.is_initialized():
        return
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        if not private(address):
            where = f"--address {address}" if address else f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
            try:
                knock(address or os.environ["RAY_ADDRESS"])
                ray.init(address=address, logging_level="WARNING", log_to_driver=True)
            except (ValueError, ConnectionError, OSError) as err:
                raise RunError(f"{where}: cannot join that Ray cluster ({str(err).splitlines()[0]})") from None
        else:  # the entry point (cli/main.py) has made it loopback-only and importable from the working directory
            try:
                ray.init(address="local", include_dashboard=False, logging_level="WARNING")
            except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception when its processes do not come up
                raise RunError(
                    f"cannot start a private Ray cluster on this machine ({str(err).splitlines()[0]}); its logs are "
                    "under /tmp/ray/session_latest/logs (a full disk or a file size limit stops its processes)"
                ) from err
    except SystemExit as err:  # ray.init's own SIGTERM handler is in place while it starts, and exits with 15
        if err.code != signal.SIGTERM:
            raise
        unwind(err.code)  # the run unwinds from here, as from the CLI's own SIGTERM handler
    if main:
        # ray.init has just installed its own process-wide SIGTERM handler, which aborts the process at exit: the
        # caller's is put back (the CLI's unwinds the run: actors stopped, finished tiles on disk).
        signal.signal(signal.SIGTERM, before)


def connected() -> bool:
    return ray.is_initialized()


def disconnect() -> None:
    """Leave the cluster (a private one stops)."""
    # Ray stops a private cluster's GCS before the autoscaler's monitor, which then spends a second failing to report
    # its own end to the gone GCS (`ray stop` stops the GCS last since ray-project/ray#30672, `ray.shutdown` does
    # not): the monitor goes first, and shutdown takes 0.2 s instead of 1.4 s. Where it started no monitor (a joined
    # cluster), this does nothing.
    kill_monitor = getattr(getattr(ray._private.worker, "_global_node", None), "kill_monitor", None)
    if kill_monitor is not None:
        kill_monitor(check_alive=False)
    ray.shutdown()


def usable_gpus(device: str, field: str) -> float:
    """The cluster's GPUs that a `device` setting (auto | cpu | cuda, the spec's `field`) lets work use."""
    gpus = ray.cluster_resources().get("GPU", 0) if device != "cpu" else 0
    if device == "cuda" and not gpus:
        raise RunError(f"{field}: cuda requested but the Ray cluster has no GPUs")
    return gpus


def run_task(fn, *args, device: str = "auto"):
    """Run `fn(*args)` as one Ray task (on a GPU when the cluster has one and `device` allows) and return its result."""
    gpus = 1 if usable_gpus(device, "device") >= 1 else 0
    return ray.get(ray.remote(num_cpus=1, num_gpus=gpus)(fn).remote(*args))


def plan_actors(spec: Spec) -> tuple[int, dict]:
    """How many actors the cluster has room for now, and the resources each asks for."""
    resources = ray.cluster_resources()
    gpus = usable_gpus(spec.eval.device, "eval.device")
    options = {"num_cpus": spec.compute.cpus_per_actor, "num_gpus": spec.compute.gpus_per_actor if gpus else 0}
    if gpus and spec.compute.actors == "auto":
        return max(1, int(gpus / spec.compute.gpus_per_actor)), options
    return cpu_actors(spec, resources.get("CPU", 1)), options


def cpu_actors(spec: Spec, cpus: float) -> int:
    """CPU actors for `cpus` CPUs: the spec's count, or with `actors: auto` one per `cpus_per_actor` CPUs."""
    if spec.compute.actors != "auto":
        return spec.compute.actors
    return max(1, int(cpus // spec.compute.cpus_per_actor))


def preflight(spec: Spec, address: str | None = None) -> int:
    """Join the cluster and check that the run's actors can start; the number of actors it will start.

    Runs before the store is created, so a cluster that cannot be reached, GPUs that are not there or an actor
    no node can place (Ray would wait for it forever) end the run with one line and leave nothing behind.
    """
    connect(address)
    count, options = plan_actors(spec)
    need = {"CPU": options["num_cpus"], "GPU": options["num_gpus"]}
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    if not any(all(r.get(k, 0) >= v for k, v in need.items()) for r in nodes):
        largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        fields = (("CPU", "cpus_per_actor"), ("GPU", "gpus_per_actor"))
        short = [
            f"compute.{field}: {need[k]:g}"
            for k, field in fields
            if need[k] and not any(r.get(k, 0) >= need[k] for r in nodes)
        ]
        short = short or ["compute.cpus_per_actor/gpus_per_actor"]  # each fits some node, never both together
        raise RunError(
            f"{', '.join(short)} per actor, but no node of the cluster has that much; the largest has "
            f"{largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs"
        )
    return count
