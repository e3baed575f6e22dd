"""Filter/layer normalization, ignored biases and BN, seeds, and the direction space (paper §4, app. 9.2)."""

import numpy as np
import pytest
import torch

from landscape_ray.inputs.directions import Recipe, direction_space, make_directions
from landscape_ray.inputs.models import build
from landscape_ray.spec.schema import DirectionsSpec


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    m = build("digits_cnn")
    with torch.no_grad():  # non-trivial BN statistics, so `states` directions have something to span
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    return m


def directions(model, **kw):
    return make_directions(model, DirectionsSpec(**kw), ndim=2)


def test_filter_norm_matches_every_filter_of_theta(model):
    theta = direction_space(model, "weights")
    for d in directions(model, norm="filter"):
        multi = [k for k in d if d[k].ndim > 1]
        assert multi, "conv and linear weights must be in the direction"
        for k in multi:
            want = theta[k].flatten(1).norm(dim=1).numpy()
            got = np.linalg.norm(d[k].reshape(len(d[k]), -1), axis=1)
            np.testing.assert_allclose(got, want, rtol=1e-5)


def test_layer_norm_matches_whole_tensor(model):
    theta = direction_space(model, "weights")
    d = directions(model, norm="layer")[0]
    for k in (k for k in d if d[k].ndim > 1):
        np.testing.assert_allclose(np.linalg.norm(d[k]), theta[k].norm().item(), rtol=1e-5)
        per_filter = np.linalg.norm(d[k].reshape(len(d[k]), -1), axis=1)
        assert not np.allclose(per_filter, theta[k].flatten(1).norm(dim=1).numpy(), rtol=1e-3)


@pytest.mark.parametrize("dir_type", ["weights", "states"])
def test_biasbn_entries_are_zero_and_others_are_not(model, dir_type):
    for d in directions(model, dir_type=dir_type, ignore="biasbn"):
        for k, v in d.items():
            assert (not v.any()) == (v.ndim <= 1), k


def test_ignore_none_moves_biases_with_theta_itself(model):
    theta = direction_space(model, "states")
    d = directions(model, dir_type="states", ignore="none")[0]
    for k in (k for k in d if d[k].ndim <= 1):
        np.testing.assert_array_equal(d[k], theta[k].numpy())


def test_states_span_running_statistics_but_weights_do_not(model):
    weights, states = (set(directions(model, dir_type=t)[0]) for t in ("weights", "states"))
    assert {k for k in states - weights} == {k for k in model.state_dict() if "running_" in k}
    assert not any("num_batches_tracked" in k for k in states)


def test_seed_determines_direction_and_axes_are_independent(model):
    a, b, c = directions(model, seed=3), directions(model, seed=3), directions(model, seed=4)
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k])
        np.testing.assert_array_equal(a[1][k], b[1][k])
    k = "features.0.0.weight"
    assert not np.allclose(a[0][k], c[0][k])
    assert not np.allclose(a[0][k], a[1][k])
    cos = np.dot(a[0][k].ravel(), a[1][k].ravel()) / np.linalg.norm(a[0][k]) / np.linalg.norm(a[1][k])
    assert abs(cos) < 0.5


def test_1d_direction_is_the_x_direction_of_2d(model):
    one = make_directions(model, DirectionsSpec(seed=5), ndim=1)
    two = make_directions(model, DirectionsSpec(seed=5), ndim=2)
    assert len(one) == 1
    for k in one[0]:
        np.testing.assert_array_equal(one[0][k], two[0][k])


def test_none_norm_leaves_gaussian_unscaled(model):
    d = directions(model, norm="none", seed=0)[0]["features.1.0.weight"]
    assert abs(d.std() - 1.0) < 0.05


@pytest.mark.parametrize(
    "shape, dtype, dims",
    [
        ((300, 48), torch.float32, 0),  # a Linear weight or an embedding: rows of 48 floats, cut into blocks
        ((257, 32), torch.bfloat16, 0),  # a bf16 model's: normalized against θ* in fp32, as the whole draw is
        ((64, 3, 3, 3), torch.float32, 0),  # conv filters of 27 floats: not a multiple of 16, one piece
        ((48, 40), torch.float32, 1),  # GPT-2's Conv1D: filters along dim 1, one piece
        ((40,), torch.float32, 0),  # a bias moved along θ* itself (ignore: none)
        ((), torch.float32, 0),  # a 0-d parameter (a learned temperature, say), moved along θ* itself
    ],
)
@pytest.mark.parametrize("norm", ["filter", "layer"])
def test_a_point_drawn_block_by_block_equals_the_whole_entry_drawn_at_once(shape, dtype, dims, norm):
    """`Recipe.moved` (what an actor with regenerated directions writes, a block of rows at a time) against θ* + Σ c
    · `Recipe.entry` (the whole entry's draw, what `landscape-ray directions` exports): bit for bit."""
    theta = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    recipe = Recipe(seed=3, norm=norm, ignore="none", seeding="entry", ndim=2, names=("w",), dims={"w": dims})
    moves = [(0, 0.75), (1, -0.5)]
    want = theta.to(torch.float32, copy=True)  # as the evaluator summed before it cut entries into blocks
    for axis, c in moves:
        want.add_(recipe.entry(axis, "w", theta), alpha=c)
    pieces = list(recipe.moved("w", theta, moves, "cpu", block=1000))
    rowwise = norm == "filter" and dims == 0 and len(shape) > 1 and shape[1] % 16 == 0
    assert (len(pieces) > 1) == rowwise
    if rowwise:
        assert [r.start for r, _ in pieces] == list(range(0, len(theta), len(pieces[0][1])))
    else:
        assert pieces[0][0] is Ellipsis  # the whole entry
    got = torch.cat([point for _, point in pieces]) if rowwise else pieces[0][1]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    written = torch.zeros(shape)  # as the evaluator writes the pieces into the live tensor
    for rows, point in pieces:
        written[rows].copy_(point)
    torch.testing.assert_close(written, want, rtol=0, atol=0)
