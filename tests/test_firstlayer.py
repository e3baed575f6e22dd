"""The first layer's stored responses (compute/firstlayer.py): where they apply, a point's values equal a plain
float64 forward at θ* + αδ + βη built here; where they must not (a parameter read before the layer, the layer
called twice, a narrow layer, a user's metric, bf16), the evaluator computes the layer as usual, and the values
still equal the plain forward."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape_ray.compute.evaluator import Evaluator, Options, classification
from landscape_ray.compute.prepare import probe
from landscape_ray.core.errors import SpecError
from landscape_ray.inputs.data import ImageSplit

MEAN, STD = (0.5,), (0.25,)
POINTS = np.array([[0.0, 0.0], [0.5, -0.25], [0.0, 0.0], [1.0, 1.0], [-0.7, 0.3]])  # θ* twice: nothing kept dirty


class ReadBefore(nn.Module):
    """Scales its input by a parameter of a later layer before its first layer (a parameter read in a forward)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 48), nn.Linear(48, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1) * self.fc2.bias.mean())))


class Twice(nn.Module):
    """Its first layer runs twice, the second time on its own output."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.relu(self.fc(x.flatten(1))))))


class Tied(nn.Module):
    """Its first layer's weight is a later layer's, registered first: the directions hold it under that name."""

    def __init__(self):
        super().__init__()
        self.head, self.inp, self.out = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 10)
        self.inp.weight = self.head.weight

    def forward(self, x):
        return self.out(torch.relu(self.head(torch.relu(self.inp(x.flatten(1))))))


MODELS = {  # name: (model, whether the stored responses apply)
    "mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(inplace=True), nn.Linear(48, 10)), True),
    "conv": (lambda: nn.Sequential(nn.Conv2d(1, 16, 6, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(400, 10)), True),
    "read before": (ReadBefore, False),
    "twice": (Twice, False),
    "narrow": (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10)), False),
    "tied": (Tied, True),
    # a buffer before the first layer, which the directions move (as `dir_type: states` does): no parameter in sight
    "buffer before": (
        lambda: nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64, affine=False), nn.Linear(64, 10)).eval(),
        False,
    ),
}


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(0)
    return ImageSplit(rng.integers(0, 256, (300, 1, 8, 8), dtype=np.uint8), rng.integers(0, 10, 300))


def setup(make, unmoved=()):
    """The model, θ*, and two directions over its float entries, each tensor once (a tied weight under its first
    name, as direction_space keeps it), none along the entries `unmoved`."""
    torch.manual_seed(0)
    model = make().eval()
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    once = {v.data_ptr(): k for k, v in reversed(list(model.state_dict().items()))}.values()
    rng = np.random.default_rng(1)
    moved = [k for k in state if k in once and state[k].dtype == np.float32 and k not in unmoved]
    directions = [{k: rng.standard_normal(state[k].shape).astype(np.float32) * 0.3 for k in moved} for _ in "xy"]
    return model, state, directions


def plain(make, state, directions, split, coord) -> float:
    """The mean cross-entropy of a fresh float64 model at θ* + Σ c_k d_k, on the whole split in one batch."""
    model = make().double().eval()
    moved = {k: torch.tensor(v, dtype=torch.float64) for k, v in state.items()}
    for c, d in zip(coord, directions):
        moved = {k: v + float(c) * torch.tensor(d[k], dtype=torch.float64) if k in d else v for k, v in moved.items()}
    once = {t.data_ptr(): k for k, t in reversed(list(model.state_dict().items()))}.values()  # a tied tensor once
    model.load_state_dict({k: v for k, v in moved.items() if k in once}, strict=False)
    x = (torch.tensor(split.images, dtype=torch.float64) / 255 - MEAN[0]) / STD[0]
    with torch.no_grad():
        return F.cross_entropy(model(x), torch.tensor(split.labels)).item()


def evaluator(model, state, directions, split, **options):
    o = Options(metric=options.pop("metric", classification()), batch_size=128, first_layer=True, **options)
    return Evaluator(model, state, directions, {"train": split}, MEAN, STD, o)


@pytest.mark.parametrize("name", MODELS)
def test_values_equal_a_plain_float64_forward_where_it_applies_and_where_it_must_not(name, split):
    make, applies = MODELS[name]
    model, state, directions = setup(make)
    ev = evaluator(model, state, directions, split)
    assert (ev.first is not None) == applies
    losses = ev.evaluate(POINTS)["train_loss"]
    expected = [plain(make, state, directions, split, c) for c in POINTS]
    np.testing.assert_allclose(losses, expected, rtol=2e-6)
    if applies:  # 3 batches, each computed once at θ* and along x and y
        assert len(ev.first.cache) == 3 and all(len(r) == 3 for r in ev.first.cache.values())


@pytest.mark.parametrize(
    "options",
    [{"metric": lambda model, batch: classification()(model, batch)}, {"precision": "bf16"}, {"compile": True}],
    ids=["user metric", "bf16", "compile"],
)
def test_it_stays_off_where_the_forward_is_not_the_plain_fp32_one(options, split):
    model, state, directions = setup(MODELS["mlp"][0])
    assert evaluator(model, state, directions, split, **options).first is None


def test_a_first_layer_no_direction_moves_is_kept_once_and_still_right(split):
    make = MODELS["mlp"][0]
    model, state, directions = setup(make, unmoved=("1.weight", "1.bias"))
    ev = evaluator(model, state, directions, split)
    assert ev.first is not None and ev.first.moves == [None, None]
    expected = [plain(make, state, directions, split, c) for c in POINTS]
    np.testing.assert_allclose(ev.evaluate(POINTS)["train_loss"], expected, rtol=2e-6)
    assert all(len(r) == 1 for r in ev.first.cache.values())  # only the layer's output at θ*


def test_eval_first_layer_false_turns_it_off_and_agrees_within_rounding(split):
    make = MODELS["mlp"][0]
    on = evaluator(*setup(make), split).evaluate(POINTS)["train_loss"]
    model, state, directions = setup(make)  # a fresh model: the one above has its first layer answered for
    off = Evaluator(model, state, directions, {"train": split}, MEAN, STD, Options(batch_size=128, first_layer=False))
    assert off.first is None
    np.testing.assert_allclose(on, off.evaluate(POINTS)["train_loss"], rtol=1e-6)


def test_a_model_that_fails_on_its_data_is_left_to_the_probe_to_report(split):
    make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(63, 10))  # noqa: E731 - 64 features arrive
    model, state, directions = setup(make)
    ev = evaluator(model, state, directions, split)
    assert ev.first is None
    with pytest.raises(SpecError, match="one batch at θ\\* failed .*RuntimeError"):
        probe(ev)
