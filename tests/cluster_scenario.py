"""A multi-node fault scenario on ray.cluster_utils.Cluster, run by tests/test_cluster.py in a process of its own.

    python -m tests.cluster_scenario CHECKPOINT WORKDIR     # prints one JSON line of results

Two worker nodes of one CPU each (the head has none, so actors live on workers). Mid-run one
worker is removed — its actor dies with tiles queued — and a new worker joins; the run must finish
with values identical to a plain evaluation, and the new node must get work. The run is held still
(tests.helpers.SlowCNN `hold`) from the removal until the driver has seen the death and the
newcomer's actor is up, so the scenario does not race the points left to compute.
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node on 127.0.0.1

import numpy as np  # noqa: E402
import ray  # noqa: E402
import xarray as xr  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.state import list_actors  # noqa: E402

from landscape_ray.job import run  # noqa: E402
from landscape_ray.store.tiles import Store  # noqa: E402
from tests.conftest import as_digits, make_spec, reference  # noqa: E402


def main(checkpoint: str, workdir: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=1)
    doomed = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR")
    store, hold = Path(workdir) / "nodes.zarr", Path(workdir) / "hold"
    spec = make_spec(
        store,
        Path(checkpoint),
        "model.arch=tests.helpers:slow_cnn",
        f"model.kwargs={{delay: 0.15, hold: {hold}}}",
        "data.batch_size=300",
        "grid.x={min: -1, max: 1, num: 9}",
        "grid.y={min: -1, max: 1, num: 9}",
        "grid.tile=[1, 3]",
        "compute.actors=auto",
    )
    lines, result = [], {}
    worker = threading.Thread(target=lambda: result.update(run(spec, log=lines.append)))
    worker.start()
    while not store.exists() or Store(store, mode="r").done().sum() < 12:  # 4 tiles of 3
        time.sleep(0.1)
    hold.touch()
    try:
        cluster.remove_node(doomed)
        newcomer = cluster.add_node(num_cpus=1)
        new_node = newcomer.node_id[:12]
        deadline = time.time() + 120
        while not any(" died " in line for line in lines) and time.time() < deadline:
            time.sleep(0.1)
        alive = [("node_id", "=", newcomer.node_id), ("state", "=", "ALIVE")]
        while not list_actors(filters=alive) and time.time() < deadline:
            time.sleep(0.3)  # the newcomer's actor is up (torch imported); loading the payload runs forwards
    finally:
        hold.unlink()
    worker.join(300)
    points_on_new = sum(a["points"] for a in result["actors"].values() if a["node"] == new_node)
    identical = np.array_equal(xr.open_zarr(store).train_loss.values, reference(as_digits(spec))["train_loss"])
    ray.shutdown()
    cluster.shutdown()
    print(
        json.dumps(
            {
                "identical": bool(identical),
                "actor_deaths": result["actor_deaths"],
                "retried_tiles": result["retried_tiles"],
                "points_on_new_node": points_on_new,
                "actors": result["actors"],
                "log": lines[-6:],
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
