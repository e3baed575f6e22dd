"""An independent oracle: the service's values off the origin against a plain PyTorch loop.

For every direction kind and both BN modes, a small job runs end to end (spec → prepare → Ray actors → store).
Then, for every grid point but the origin, this file rebuilds θ = θ* + a·d1 + b·d2 by itself — θ* read with
torch.load(weights_only=True), d1 and d2 read from the store with zarr, the digits read from scikit-learn and
normalised with their own statistics — and evaluates it the obvious way: load_state_dict, eval mode, a forward
over the split, F.cross_entropy. No project code is on that path but the network's class (the checkpoint's
architecture). With eval.bn: recompute the BN statistics are re-estimated by torch's own
`torch.optim.swa_utils.update_bn` on the train split first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from sklearn.datasets import load_digits
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from landscape_ray.inputs.models import DigitsCNN
from landscape_ray.job import run

from .conftest import make_spec

pytestmark = pytest.mark.slow  # twelve Ray jobs: about a minute on 2 CPUs

SUBSET, BATCH = 200, 64
X, Y = (-1.0, 1.0), (-0.5, 0.5)  # 3 points per axis, the origin in the middle (and skipped)


def npz_directions(checkpoint, tmp_path):
    """A direction file written here: seeded Gaussian x and y over the weights, small enough to stay finite."""
    state = torch.load(checkpoint, weights_only=True)
    state = state.get("state_dict", state)
    names = [n for n, _ in DigitsCNN().named_parameters()]
    rng = np.random.default_rng(3)
    path = tmp_path / "dirs.npz"
    np.savez(
        path, **{f"{a}/{n}": 0.05 * rng.standard_normal(state[n].shape).astype(np.float32) for a in "xy" for n in names}
    )
    return path


KINDS = {  # name: (grid dimensions, spec overrides given the checkpoint's folder and a scratch folder)
    "random-1d": (1, lambda ckpt, tmp: []),
    "random-2d": (2, lambda ckpt, tmp: ["directions.seed=4"]),
    "interpolate": (
        1,
        lambda ckpt, tmp: [
            "directions.kind=interpolate",
            f"directions.target={ckpt.parent}/model_0.pt",
            "directions.dir_type=states",
        ],
    ),
    "plane": (
        2,
        lambda ckpt, tmp: [
            "directions.kind=plane",
            f"directions.targets=[{ckpt.parent}/model_0.pt, {ckpt.parent}/model_1.pt]",
        ],
    ),
    "pca": (2, lambda ckpt, tmp: ["directions.kind=pca", f"directions.checkpoints={ckpt.parent}/model_*.pt"]),
    "file": (2, lambda ckpt, tmp: ["directions.kind=file", f"directions.path={npz_directions(ckpt, tmp)}"]),
}


def digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The service's digits convention, rebuilt from scikit-learn: 8-bit pixels, a fixed 1437/360 permutation
    split, a subset drawn with the seed [subset_seed, split index]; normalised by the data set's own mean and
    std (three decimals, as the service's default)."""
    bunch = load_digits()
    pixels = bunch.images / 16
    mean, std = round(pixels.mean(), 3), round(pixels.std(), 3)
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    index = np.sort(order[:1437] if split == "train" else order[1437:])
    pick = np.sort(np.random.default_rng([0, ["train", "test"].index(split)]).choice(len(index), SUBSET, replace=False))
    index = index[pick]
    x = (torch.from_numpy(images[index]).float() / 255 - mean) / std
    return x, torch.from_numpy(bunch.target[index]).long()


def plain_values(model: torch.nn.Module, data: dict, recompute_bn: bool) -> dict[str, float]:
    if recompute_bn:  # exact re-estimate on the train split, batch by batch as the job's batches
        update_bn(DataLoader(data["train"][0], batch_size=BATCH), model)
    model.eval()
    out = {}
    with torch.no_grad():
        for split, (x, y) in data.items():
            logits = torch.cat([model(x[i : i + BATCH]) for i in range(0, len(y), BATCH)])
            out[f"{split}_loss"] = F.cross_entropy(logits.double(), y).item()
            out[f"{split}_acc"] = (logits.argmax(1) == y).double().mean().item()
    return out


@pytest.fixture(scope="module")
def data():
    return {split: digits(split) for split in ("train", "test")}


@pytest.mark.parametrize("bn", ["eval", "recompute"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_service_matches_a_plain_pytorch_loop_off_the_origin(ray_cluster, checkpoint, tmp_path, data, kind, bn):
    ndim, overrides = KINDS[kind]
    grid = [f"grid.x={{min: {X[0]}, max: {X[1]}, num: 3}}"]
    grid += (
        [f"grid.y={{min: {Y[0]}, max: {Y[1]}, num: 3}}", "grid.tile=[2, 2]"]
        if ndim == 2
        else ["grid.y=null", "grid.tile=2"]
    )
    store = tmp_path / "s.zarr"
    spec = make_spec(
        store,
        checkpoint,
        f"data.subset={SUBSET}",
        f"data.batch_size={BATCH}",
        "data.splits=[train, test]",
        f"eval.bn={bn}",
        "compute.actors=1",
        *grid,
        *overrides(checkpoint, tmp_path),
    )
    run(spec, log=lambda *_: None)

    root = zarr.open_group(str(store), mode="r")
    directions = [{n: torch.from_numpy(a[...]) for n, a in root[f"directions/{axis}"].arrays()} for axis in "xy"[:ndim]]
    theta = torch.load(checkpoint, weights_only=True)
    theta = theta.get("state_dict", theta)
    xs, ys = np.linspace(*X, 3), np.linspace(*Y, 3) if ndim == 2 else [0.0]
    np.testing.assert_array_equal(root["x"][...], xs)
    checked = 0
    for j, b in enumerate(ys):
        for i, a in enumerate(xs):
            if a == 0 and b == 0:
                continue
            state = dict(theta)
            for coef, d in zip((a, b), directions):
                for n, v in d.items():
                    state[n] = (state[n].double() + coef * v.double()).to(theta[n].dtype)
            model = DigitsCNN()
            model.load_state_dict(state)
            want = plain_values(model, data, bn == "recompute")
            where = (j, i) if ndim == 2 else (i,)
            for name, value in want.items():
                got = root[name][where]
                np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-5, err_msg=f"{name} at ({a}, {b})")
            checked += 1
    assert checked == (8 if ndim == 2 else 2)
