"""The evaluator without Ray: exactness at θ*, independence of point order, 1D = a row of 2D; BN folding."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape_ray.compute.evaluator import Evaluator, Options, cross_entropy
from landscape_ray.compute.prepare import prepare
from landscape_ray.compute.speedups import FoldedConv, fold_bn
from landscape_ray.inputs.data import ImageSplit, load_splits, normalization
from landscape_ray.inputs.models import load_model

from .conftest import make_spec


@pytest.fixture(scope="module")
def spec(checkpoint, tmp_path_factory):
    return make_spec(tmp_path_factory.mktemp("ev") / "s.zarr", checkpoint, "data.splits=[train, test]")


@pytest.fixture(scope="module")
def evaluator(spec):
    return Evaluator.from_payload(spec, prepare(spec), "cpu")


def plain_loss(spec, batch_size=None):
    """The checkpoint evaluated the obvious way (in the spec's memory layout): eval mode, batches, float64 sums."""
    batch_size = batch_size or spec.data.batch_size
    fmt = torch.channels_last if spec.eval.channels_last else torch.contiguous_format
    model = load_model(spec).to(memory_format=fmt)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in normalization(spec.data))
    out = {}
    for name, split in load_splits(spec.data).items():
        images, labels = torch.from_numpy(split.images), torch.from_numpy(split.labels)
        total, correct, losses = torch.zeros((), dtype=torch.float64), 0, []
        with torch.no_grad():
            for i in range(0, len(labels), batch_size):
                x = images[i : i + batch_size].float().div(255).sub(mean).div(std)
                x = x.contiguous(memory_format=fmt)
                logits = model(x)
                per = F.cross_entropy(logits, labels[i : i + batch_size], reduction="none")
                total += per.double().sum()
                losses.append(per.double())
                correct += (logits.argmax(1) == labels[i : i + batch_size]).sum().item()
        out[f"{name}_loss"], out[f"{name}_acc"] = total.item() / len(labels), correct / len(labels)
        out[f"{name}_loss_se"] = torch.cat(losses).std().item() / len(labels) ** 0.5
    return out


@pytest.mark.parametrize("fold_bn", [False, "auto"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_origin_reproduces_the_checkpoint_exactly(spec, channels_last, fold_bn):
    """Bit for bit unfolded; with the default `fold_bn: auto` (BN folded here) within its promised 1e-6 relative."""
    update = {"channels_last": channels_last, "fold_bn": fold_bn}
    spec = spec.model_copy(update={"eval": spec.eval.model_copy(update=update)})
    evaluator = Evaluator.from_payload(spec, prepare(spec), "cpu")
    assert evaluator.folded == (fold_bn == "auto")
    got = evaluator.evaluate(np.array([[0.0, 0.0]]))
    want = plain_loss(spec, evaluator.batch_size)
    assert set(got) == set(want) == {f"{s}_{v}" for s in ("train", "test") for v in ("loss", "acc", "loss_se")}
    for k, v in want.items():
        if k.endswith("_se"):  # a spread: summed as Σl² − n·mean², so equal to rounding
            assert got[k][0] == pytest.approx(v, rel=1e-9 if not fold_bn else 1e-6) and v > 0, k
        elif fold_bn and k.endswith("_loss"):
            assert got[k][0] == pytest.approx(v, rel=1e-6, abs=0), k
        else:
            assert got[k][0] == v, k
    assert 0.0 <= got["train_acc"][0] <= 1.0 and got["train_acc"][0] > 0.5


@pytest.mark.parametrize("which", ["model", "one BN layer"])
def test_a_model_handed_in_train_mode_is_evaluated_in_eval_mode(spec, which):
    """A training loop hands its live model over in train mode, or a user sets one layer so: every point is still
    evaluated in eval mode (BN on its running statistics, left unchanged), equal to the plain loop bit for bit."""
    spec = spec.model_copy(update={"eval": spec.eval.model_copy(update={"fold_bn": False})})
    evaluator = Evaluator.from_payload(spec, prepare(spec), "cpu")
    bn = [m for m in evaluator.model.modules() if isinstance(m, nn.BatchNorm2d)]
    stats = [m.running_mean.clone() for m in bn]
    (evaluator.model if which == "model" else bn[-1]).train()
    got = evaluator.evaluate(np.array([[0.0, 0.0]]))
    want = plain_loss(spec, evaluator.batch_size)
    assert got["train_loss"][0] == want["train_loss"] and got["test_acc"][0] == want["test_acc"]
    assert all(torch.equal(m.running_mean, s) for m, s in zip(bn, stats)) and not evaluator.model.training


def test_values_do_not_depend_on_point_order_and_theta_is_restored(evaluator):
    coords = np.array([[0.5, -0.25], [0.0, 0.0], [-1.0, 1.0]])
    forward = evaluator.evaluate(coords)
    backward = evaluator.evaluate(coords[::-1])
    for k in forward:
        np.testing.assert_array_equal(forward[k], backward[k][::-1])
    base = [t.clone() for t in evaluator.targets]
    evaluator.evaluate(np.array([[3.0, 3.0]]))
    assert all(torch.equal(a, b) for a, b in zip(base, evaluator.targets))


def test_perturbation_raises_the_loss(evaluator):
    out = evaluator.evaluate(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert out["train_loss"][1] > out["train_loss"][0] and out["train_loss"][2] > out["train_loss"][0]


def test_1d_scan_equals_y0_row_of_surface(checkpoint, tmp_path):
    two = make_spec(tmp_path / "a.zarr", checkpoint, "grid.y={min: -1, max: 1, num: 3}")
    one = make_spec(tmp_path / "b.zarr", checkpoint, "grid.y=null", "grid.tile=4")
    ev2 = Evaluator.from_payload(two, prepare(two), "cpu")
    ev1 = Evaluator.from_payload(one, prepare(one), "cpu")
    xs = np.linspace(-1, 1, 7)
    row = ev2.evaluate(np.stack([xs, np.zeros_like(xs)], axis=1))
    scan = ev1.evaluate(xs[:, None])
    for k in scan:
        np.testing.assert_array_equal(scan[k], row[k])


@pytest.mark.parametrize("classes", [1, 2, 4, 9, 10, 12, 15, 16, 100])
@pytest.mark.parametrize("samples", [1, 5, 8, 31, 45, 3000])
def test_cross_entropy_equals_torchs_to_rounding(classes, samples):
    """The few-classes path (the transposed log-softmax) gives torch's per-sample cross-entropy to a unit in the last
    place, for logits of mixed scales; labels torch treats its own way (uint8, ignore_index) go to torch."""
    g = torch.Generator().manual_seed(classes * samples)
    logits = torch.randn(samples, classes, generator=g) * torch.logspace(-2, 2, samples)[:, None]
    y = torch.randint(0, classes, (samples,), generator=g)
    want = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(cross_entropy(logits, y), want, rtol=3e-7, atol=1e-7)
    assert torch.equal(
        cross_entropy(logits, y.to(torch.uint8)), F.cross_entropy(logits, y.to(torch.uint8), reduction="none")
    )
    y[0] = -100
    assert torch.equal(cross_entropy(logits, y), F.cross_entropy(logits, y, reduction="none"))


def test_mse_loss_is_bounded_and_positive(checkpoint, tmp_path):
    spec = make_spec(tmp_path / "m.zarr", checkpoint, "eval.loss=mse")
    out = Evaluator.from_payload(spec, prepare(spec), "cpu").evaluate(np.array([[0.0, 0.0], [1.0, 1.0]]))
    assert ((out["train_loss"] > 0) & (out["train_loss"] < 2 / 10)).all()


def test_nan_loss_is_returned_as_is(checkpoint, tmp_path):
    spec = make_spec(tmp_path / "n.zarr", checkpoint)
    ev = Evaluator.from_payload(spec, prepare(spec), "cpu")
    ev.base[0].fill_(float("nan"))
    assert np.isnan(ev.evaluate(np.array([[0.0, 0.0]]))["train_loss"][0])


def lm_spec(tmp_path, *extra):
    return make_spec(
        tmp_path / "lm.zarr",
        None,
        "model.arch=jobs.tiny_lm:make_model",
        "data.dataset=jobs.tiny_lm:make_dataset",
        "data.kwargs={size: 96, length: 8}",
        "data.batch_size=32",
        "data.subset=null",
        "eval.metric=jobs.tiny_lm:next_token",
        *extra,
    )


@pytest.mark.parametrize("bn_matters", [True, False])
def test_bn_recompute_changes_results_exactly_where_bn_matters(checkpoint, tmp_path, bn_matters):
    def values(mode):
        spec = (
            make_spec(tmp_path / "d.zarr", checkpoint, f"eval.bn={mode}")
            if bn_matters
            else lm_spec(tmp_path, f"eval.bn={mode}")
        )
        ev = Evaluator.from_payload(spec, prepare(spec), "cpu")
        return ev, ev.evaluate(np.array([[0.0, 0.0], [0.6, -0.4], [0.0, 0.0]]))

    (ev, kept), (ev_re, fresh) = values("eval"), values("recompute")
    if bn_matters:
        assert np.all(kept["train_loss"] != fresh["train_loss"])
        assert fresh["train_loss"][0] == fresh["train_loss"][2]  # re-estimated from scratch at every point
        # θ*'s own statistics come back afterwards.
        assert all(torch.equal(m.running_var, v) for m, (_, v) in zip(ev_re.bn_modules, ev_re.bn_saved))
    else:
        assert not ev.bn_modules
        for k in kept:
            np.testing.assert_array_equal(kept[k], fresh[k])


def test_recomputing_bn_leaves_the_models_bn_momentum_as_it_was(checkpoint, tmp_path):
    """eval.bn: recompute averages the statistics with momentum=None; afterwards the model has its own again."""
    spec = make_spec(tmp_path / "r.zarr", checkpoint, "eval.bn=recompute")
    ev = Evaluator.from_payload(spec, prepare(spec), "cpu")
    ev.evaluate(np.array([[0.5, -0.5]]))
    assert [m.momentum for m in ev.bn_modules] == [nn.BatchNorm2d(1).momentum] * 3  # torch's default: DigitsCNN's


def test_custom_metric_defines_the_variables(tmp_path):
    spec = lm_spec(tmp_path, "data.subset=64", "data.splits=[test]")
    payload = prepare(spec)
    assert payload.variables == ["test_loss", "test_acc", "test_loss_se"]
    out = Evaluator.from_payload(spec, payload, "cpu").evaluate(np.array([[0.0, 0.0]]))
    assert 0 < out["test_loss"][0] < 10 and 0 <= out["test_acc"][0] <= 1 and out["test_loss_se"][0] > 0


@pytest.mark.parametrize(
    "mode, rel",
    [
        ({"precision": "bf16"}, 0.03),
        ({"compile": True}, 1e-5),
        ({"fold_bn": True}, 1e-5),
        ({"precision": "bf16", "fold_bn": True}, 0.03),
    ],
)
def test_fast_paths_agree_with_fp32_within_the_documented_tolerance(checkpoint, tmp_path, mode, rel):
    """README / benchmarks/RESULTS.md: bf16 within 3 % of fp32 on a trained net; torch.compile to float rounding."""
    coords = np.array([[0.0, 0.0], [0.5, -0.5], [-1.0, 1.0]])
    fp32 = make_spec(tmp_path / "a.zarr", checkpoint, "data.splits=[train, test]")
    fast = fp32.model_copy(update={"eval": fp32.eval.model_copy(update=mode)})
    want = Evaluator.from_payload(fp32, prepare(fp32), "cpu").evaluate(coords)
    got = Evaluator.from_payload(fast, prepare(fast), "cpu").evaluate(coords)
    for k in ("train_loss", "test_loss"):
        np.testing.assert_allclose(got[k], want[k], rtol=rel, err_msg=k)
    for k in ("train_acc", "test_acc"):
        assert np.abs(got[k] - want[k]).max() <= 0.02, k


def test_bn_is_folded_only_where_no_direction_moves_it(checkpoint, tmp_path):
    folded = make_spec(tmp_path / "a.zarr", checkpoint, "eval.fold_bn=true")
    moved = make_spec(
        tmp_path / "b.zarr", checkpoint, "eval.fold_bn=true", "directions.dir_type=states", "directions.ignore=none"
    )
    count = [
        sum(isinstance(m, FoldedConv) for m in Evaluator.from_payload(s, prepare(s), "cpu").runner.modules())
        for s in (folded, moved)
    ]
    assert count == [3, 0]  # digits_cnn has three conv → BN pairs


def conv_bn_net(affine: bool, track: bool = True) -> nn.Module:
    """conv → BN → ReLU, conv (no bias) → BN, linear; in eval mode, BN statistics and γ, β away from their init."""
    torch.manual_seed(0)
    bn = {"affine": affine, "track_running_stats": track}
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4, **bn),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, bias=False),
        nn.BatchNorm2d(3, **bn),
        nn.Flatten(),
        nn.Linear(3 * 6 * 6, 10),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                if track:
                    m.running_mean.uniform_(-1, 1)
                    m.running_var.uniform_(0.5, 2)
                if affine:
                    m.weight.uniform_(0.5, 2)
                    m.bias.uniform_(-1, 1)
    return net.eval()


@pytest.mark.parametrize("affine", [True, False])
def test_folded_bn_equals_the_unfolded_model(affine):
    net = conv_bn_net(affine)
    x = torch.randn(16, 1, 8, 8)
    folded = fold_bn(net, moved=set())
    assert sum(isinstance(m, FoldedConv) for m in folded.modules()) == 2
    torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)


def test_evaluator_folds_affine_free_bn_like_the_unfolded_model():
    """BatchNorm2d(affine=False) has no γ, β: folding must use 1 and 0, not fail the one-batch probe."""
    rng = np.random.default_rng(0)
    split = ImageSplit(rng.integers(0, 256, (64, 1, 8, 8), dtype=np.uint8), rng.integers(0, 10, 64))
    state = {k: v.numpy() for k, v in conv_bn_net(affine=False).state_dict().items()}
    direction = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in state.items() if k.endswith("weight")}
    coords = np.array([[0.0], [0.3], [-0.5]])
    values = [
        Evaluator(
            conv_bn_net(affine=False),
            state,
            [direction],
            {"train": split},
            [0.5],
            [0.25],
            Options(batch_size=16, fold=fold),
        ).evaluate(coords)
        for fold in (False, True)
    ]
    for k in values[0]:
        np.testing.assert_allclose(values[1][k], values[0][k], rtol=1e-5, err_msg=k)


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


@pytest.mark.parametrize(
    "net, why",
    [(Branchy(), "torch.fx cannot trace Branchy"), (conv_bn_net(True, track=False), "keeps no running statistics")],
)
def test_skipped_folding_warns_why_and_keeps_the_values(net, why):
    x = torch.randn(4, 1, 8, 8)
    with pytest.warns(UserWarning, match=f"eval.fold_bn: .*{why}"):
        folded = fold_bn(net.eval(), moved=set())
    assert not any(isinstance(m, FoldedConv) for m in folded.modules())
    torch.testing.assert_close(folded(x), net(x))


def test_folding_requested_with_recomputed_bn_warns(checkpoint, tmp_path):
    spec = make_spec(tmp_path / "r.zarr", checkpoint, "eval.fold_bn=true", "eval.bn=recompute")
    with pytest.warns(UserWarning, match="eval.fold_bn: BN not folded, eval.bn: recompute"):
        prepare(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # folding that happens says nothing
        prepare(make_spec(tmp_path / "f.zarr", checkpoint, "eval.fold_bn=true"))


def offset_net() -> nn.Module:
    """conv with a bias of 1000 → BN subtracting it again: unfolded, the BN sees 1000 + x rounded to fp32 (an error
    of ~3e-5 in x); folded, the offset cancels exactly. The two disagree far beyond `fold_bn: auto`'s 1e-6."""
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(1000.0)
        net[1].running_mean.fill_(1000.0)
        torch.manual_seed(0)
        net[3].weight.normal_(0, 3)
    return net.eval()


@pytest.mark.parametrize(
    "make, fold, folded", [(conv_bn_net, "auto", True), (offset_net, "auto", False), (offset_net, True, True)]
)
def test_fold_auto_folds_only_where_it_agrees_with_the_plain_forward(make, fold, folded):
    rng = np.random.default_rng(0)
    split = ImageSplit(rng.integers(0, 256, (64, 1, 8, 8), dtype=np.uint8), rng.integers(0, 10, 64))
    net = make(True) if make is conv_bn_net else make()
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    # conv and linear weights only: a direction that moves a BN keeps that BN unfolded
    direction = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in state.items() if v.ndim > 1}

    def evaluator(fold):
        fresh = make(True) if make is conv_bn_net else make()
        return Evaluator(fresh, state, [direction], {"train": split}, [0.5], [0.25], Options(batch_size=16, fold=fold))

    ev, plain = evaluator(fold), evaluator(False)
    assert ev.folded is folded and not plain.folded
    coords = np.array([[0.0], [0.01]])
    got, want = ev.evaluate(coords), plain.evaluate(coords)
    if not folded:  # declined: the plain forward, bit for bit
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    else:
        np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-3 if fold is True else 1e-6)


@pytest.mark.parametrize(
    "channels, size, device, want",
    [(16, 32, "cpu", 32), (16, 8, "cpu", 512), (64, 32, "cpu", 16), (1, 2, "cpu", 8192)],
)
def test_auto_batch_size_fits_the_largest_activation_into_2_mib(channels, size, device, want):
    """The largest activation of one sample is channels × size² × 4 bytes: the batch is the power of two that fits
    2 MiB (CPU, clamped to 16..8192)."""
    from landscape_ray.compute.speedups import auto_batch_size

    net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(channels * size**2, 2))
    got = auto_batch_size(net, torch.zeros(1, 3, size, size), torch.device(device))
    assert got == want  # e.g. 16 × 32² × 4 B = 64 KiB per sample: 32 of them fill 2 MiB


@pytest.mark.parametrize("free_gib", [0.001, 1, 16, 80, 141])
@pytest.mark.parametrize("samples", [360, 50_000])
def test_gpu_batch_is_the_largest_power_of_two_whose_activations_fit_half_the_free_memory(free_gib, samples):
    """The GPU rule with a fake memory budget, against a brute-force search: the largest activation of one sample
    (measured with hooks, here 16 × 32 × 32 × 4 B) times PEAK_ACTIVATIONS times the batch fits GPU_MEMORY_SHARE of
    the free bytes; never above GPU_BATCH_MAX nor the split rounded up to a power of two."""
    from landscape_ray.compute import speedups

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 32 * 32, 2))
    per_sample = speedups.largest_activation(net, torch.zeros(1, 3, 32, 32))
    assert per_sample == 16 * 32 * 32 * 4
    free = int(free_gib * 2**30)
    fits = [2**k for k in range(0, 20) if 2**k * per_sample * speedups.PEAK_ACTIVATIONS <= free / 2]
    whole = next(2**k for k in range(20) if 2**k >= samples)
    want = min([max(fits or [1]), speedups.GPU_BATCH_MAX, whole])
    assert speedups.device_batch(per_sample, free, samples) == want
