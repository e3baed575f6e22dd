"""`eval.samples: adaptive` against a run on all the data (conftest.reference, in this process without Ray), and its
standard error against the spread of many random samples. Real local Ray, real Zarr stores, a trained digits CNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import landscape_ray
from landscape_ray.cli.main import main
from landscape_ray.compute import sampling
from landscape_ray.core.errors import Interrupted
from landscape_ray.job import run
from landscape_ray.store.tiles import Store

from .conftest import make_spec, quiet, reference

# The whole digits train split (1,437) in batches of 32: 45 shards to stop between.
WHOLE = [
    "data.subset=null",
    "data.batch_size=32",
    "grid.x={min: -1, max: 1, num: 7}",
    "grid.y={min: -1, max: 1, num: 5}",
]
CEILING = 4.0


def sampled(store: Path, checkpoint: Path, *overrides: str):
    return make_spec(store, checkpoint, *WHOLE, "eval.samples=adaptive", *overrides)


@pytest.fixture(scope="module")
def whole(checkpoint) -> dict[str, np.ndarray]:
    return reference(make_spec(Path("unused.zarr"), checkpoint, *WHOLE))


@pytest.mark.usefixtures("ray_cluster")
def test_sampled_points_are_within_the_bound_and_whole_ones_equal_a_full_data_run(whole, checkpoint, tmp_path, capsys):
    """Points on every sample equal the full-data run bit for bit; points on fewer are within 3 % + 0.003 of it, or
    (stopped by the ceiling) above the ceiling; 1 and 2 actors give the same store."""
    stores = {}
    for actors in (2, 1):
        stores[actors] = tmp_path / f"a{actors}.zarr"
        spec = sampled(stores[actors], checkpoint, f"compute.actors={actors}", f"eval.sample_ceiling={CEILING}")
        run(spec, log=quiet)
    got, other = (Store(stores[a], mode="r") for a in (2, 1))
    for name in [*got.variables, "done"]:
        np.testing.assert_array_equal(got.read(name), other.read(name), err_msg=name)
    n, loss, want = got.read("train_samples"), got.read("train_loss"), whole["train_loss"]
    assert n.dtype == np.int64 and got.inputs["data.train size"] == "1437"
    exact, part = n == 1437, (n > 0) & (n < 1437)
    assert (exact | part).all() and exact.any() and part.any(), n
    np.testing.assert_array_equal(loss[exact], want[exact])
    np.testing.assert_array_equal(got.read("train_acc")[exact], whole["train_acc"][exact])
    assert (got.read("train_loss_se")[exact] == 0).all() and (got.read("train_loss_se")[part] > 0).all()
    placed = np.abs(loss - want) <= 0.03 * np.abs(want) + 0.003
    above = part & (loss > CEILING) & (want > CEILING * 0.97)  # stopped there: known to lie above the top level
    assert (placed | above).all(), (loss[~placed], want[~placed])
    assert n.sum() < 0.9 * n.size * 1437  # less than the full run's work
    # The filled view leaves the counts as they are; info says how much of the work was done.
    ds = landscape_ray.open(stores[2], filled=True)
    np.testing.assert_array_equal(ds.train_samples.values, n)
    assert main(["info", str(stores[2])]) == 0
    assert f"{n.sum() / (n.size * 1437):.1%} of a uniform full-data run's work" in capsys.readouterr().out


def test_without_a_ceiling_the_default_tolerance_places_every_point(whole, checkpoint, tmp_path):
    """The relative rule alone, in this process (no Ray): within 3 % + 0.003 everywhere."""
    got = reference(sampled(tmp_path / "unused.zarr", checkpoint))
    np.testing.assert_allclose(got["train_loss"], whole["train_loss"], rtol=0.03, atol=0.003)
    exact = got["train_samples"] == 1437
    np.testing.assert_array_equal(got["train_loss"][exact], whole["train_loss"][exact])


def test_the_standard_error_is_the_spread_of_random_samples_of_shards():
    """The rule's standard error against a Monte Carlo one: k of K unequal shards drawn without replacement, many
    times; the ratio estimate's spread over the draws against the mean of the formula's values."""
    rng = np.random.default_rng(0)
    shards, k = 60, 15
    counts = np.full(shards, 32)
    counts[-1] = 9  # a short last batch
    losses = counts * rng.gamma(2.0, 0.5, shards) * np.linspace(0.5, 2.0, shards)  # ordered: shards differ
    rule = sampling.Rule(tolerance=1e-9)
    estimates, errors = [], []
    for _ in range(20000):
        pick = rng.choice(shards, k, replace=False)
        estimates.append(losses[pick].sum() / counts[pick].sum())
        errors.append(rule.enough(list(losses[pick]), list(counts[pick]), shards)[1])
    assert np.std(estimates) == pytest.approx(np.mean(errors), rel=0.08)
    assert rule.enough(list(losses), list(counts), shards) == (True, 0.0)  # the whole split: exact


def test_the_order_of_the_shards_is_fixed_per_split_and_covers_each_once():
    a, b = sampling.order(45, "train"), sampling.order(45, "test")
    np.testing.assert_array_equal(np.sort(a), np.arange(45))
    assert not np.array_equal(a, b) and np.array_equal(a, sampling.order(45, "train"))
    assert sampling.cap(512, 1437) == 32 and sampling.cap(512, 20) == 512


@pytest.mark.usefixtures("ray_cluster")
def test_interrupted_then_resumed_equals_an_undisturbed_run(checkpoint, tmp_path):
    """Ctrl-C after the first pass of a progressive grid with adaptive samples, then resume: the same store."""
    whole, path = tmp_path / "whole.zarr", tmp_path / "p.zarr"
    passes = ["grid.mode=progressive", "grid.x={min: -1, max: 1, num: 17}"]  # two passes: every 2nd point, the rest
    run(sampled(whole, checkpoint, *passes), log=quiet)

    def stop(line: str) -> None:
        if line.startswith("pass 1/"):
            raise KeyboardInterrupt

    spec = sampled(path, checkpoint, *passes)
    with pytest.raises(Interrupted):
        run(spec, log=stop)
    assert not Store(path, mode="r").done().all()
    run(spec, resume=True, log=quiet)
    got, want = Store(path, mode="r"), Store(whole, mode="r")
    for name in [*want.variables, "done"]:
        np.testing.assert_array_equal(got.read(name), want.read(name), err_msg=name)
