"""The paper's CIFAR-10 zoo: every name has the reference's size and state_dict layout, and builds and runs.

Sizes and layouts are read from nets built on the meta device (shapes only, instantly); building and running
nets of more than 5 M parameters takes seconds each, so those run with the slow tests (`make test`).

PARAMS holds the parameter counts taken from the reference implementation
(tomgoldstein/loss-landscape, `cifar10/model_loader.py` and `cifar10/models/`), each model built
there and counted with `sum(p.numel() for p in model.parameters())`. Against that code the zoo was
also checked name by name, outside this suite: identical state_dict keys (same order), shapes, and
bit-identical outputs (eval and train mode) after loading the reference model's state_dict.
"""

from __future__ import annotations

import pytest
import torch

from landscape_ray.inputs.directions import make_directions
from landscape_ray.inputs.zoo import ZOO, ResidualBlock
from landscape_ray.spec.schema import DirectionsSpec

PARAMS = {
    "vgg9": 2_789_706,
    "densenet121": 6_956_298,
    "resnet18": 11_173_962,
    "resnet18_noshort": 11_000_138,
    "resnet34": 21_282_122,
    "resnet34_noshort": 21_108_298,
    "resnet50": 23_520_842,
    "resnet50_noshort": 20_744_266,
    "resnet101": 42_512_970,
    "resnet101_noshort": 39_736_394,
    "resnet152": 58_156_618,
    "resnet152_noshort": 55_380_042,
    "resnet20": 272_474,
    "resnet20_noshort": 269_722,
    "resnet32_noshort": 464_154,
    "resnet44_noshort": 658_586,
    "resnet50_16_noshort": 755_802,
    "resnet56": 855_770,
    "resnet56_noshort": 853_018,
    "resnet110": 1_730_714,
    "resnet110_noshort": 1_727_962,
    "wrn56_2": 3_412_394,
    "wrn56_2_noshort": 3_401_770,
    "wrn56_4": 13_628_234,
    "wrn56_4_noshort": 13_586_506,
    "wrn56_8": 54_470_282,
    "wrn56_8_noshort": 54_304_906,
    "wrn110_2_noshort": 6_893_482,
    "wrn110_4_noshort": 27_537_226,
}
BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
BIG = 5_000_000  # parameters: building and running a larger net takes seconds, so it runs with the slow tests


def shapes(name: str, **kwargs) -> dict[str, torch.Tensor]:
    """The state_dict of a zoo net built on the meta device: names and shapes, no memory, no initialisation."""
    with torch.device("meta"):
        return ZOO[name](**kwargs).state_dict()


def keys(name: str, **kwargs) -> list[str]:
    return list(shapes(name, **kwargs))


def test_names_are_the_papers():
    assert list(ZOO) == list(PARAMS) and len(ZOO) == 29


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count_matches_the_reference(name):
    with torch.device("meta"):
        model = ZOO[name](num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if p > BIG else n for n, p in PARAMS.items()])
def test_builds_runs_and_filter_normalization_reaches_every_weight(name):
    torch.manual_seed(0)
    model = ZOO[name](num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # Filter normalization reaches every conv and linear weight; biases and BN stay put.
    direction = make_directions(model, DirectionsSpec(), ndim=1)[0]
    for key, theta in model.named_parameters():
        d = torch.from_numpy(direction[key])
        if theta.dim() > 1:
            torch.testing.assert_close(
                d.flatten(1).norm(dim=1), theta.detach().flatten(1).norm(dim=1), rtol=1e-4, atol=1e-6
            )
        else:
            assert not d.any(), key


def test_resnet20_keys_are_the_papers():
    def conv_bn(prefix, i):
        return [f"{prefix}conv{i}.weight", *(f"{prefix}bn{i}.{b}" for b in BN)]

    expected = conv_bn("", 1)
    for stage in (1, 2, 3):
        for i in range(3):
            expected += conv_bn(f"layer{stage}.{i}.", 1) + conv_bn(f"layer{stage}.{i}.", 2)
            if stage > 1 and i == 0:  # projection shortcut where width and stride change
                expected += [f"layer{stage}.0.shortcut.0.weight", *(f"layer{stage}.0.shortcut.1.{b}" for b in BN)]
    expected += ["linear.weight", "linear.bias"]
    sd = shapes("resnet20")
    assert list(sd) == expected
    assert sd["layer2.0.shortcut.0.weight"].shape == (32, 16, 1, 1)
    assert sd["linear.weight"].shape == (10, 64)


def test_noshort_has_no_shortcut_keys():
    k = keys("resnet56_noshort")
    assert len(k) == 332 and not any("shortcut" in x for x in k)
    assert k[:7] == ["conv1.weight", *(f"bn1.{b}" for b in BN), "layer1.0.conv1.weight"]
    assert k[-3:] == ["layer3.8.bn2.num_batches_tracked", "linear.weight", "linear.bias"]
    assert not any("shortcut" in x for x in keys("resnet50_noshort"))


def test_bottleneck_resnet_projects_first_block():
    sd = shapes("resnet50")
    assert sd["layer1.0.shortcut.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert "layer1.1.shortcut.0.weight" not in sd and sd["linear.weight"].shape == (10, 2048)


def test_vgg9_keys():
    sd = shapes("vgg9")
    k = list(sd)
    assert len(k) == 58
    assert k[:8] == ["features.0.weight", "features.0.bias", *(f"features.1.{b}" for b in BN), "features.3.weight"]
    assert k[-8:] == ["fc.0.bias", *(f"fc.1.{b}" for b in BN), "classifier.weight", "classifier.bias"]
    convs = [x for x in k if x.startswith("features") and sd[x].dim() == 4]
    assert convs == [f"features.{i}.weight" for i in (0, 3, 7, 10, 14, 17, 20)]
    assert sd["fc.0.weight"].shape == (256, 4096)


def test_densenet121_keys():
    sd = shapes("densenet121")
    k = list(sd)
    assert len(k) == 722
    assert k[:7] == ["conv1.weight", *(f"dense1.0.bn1.{b}" for b in BN), "dense1.0.conv1.weight"]
    assert k[-8:] == ["dense4.15.conv2.weight", *(f"bn.{b}" for b in BN), "linear.weight", "linear.bias"]
    transitions = [tuple(sd[f"trans{i}.conv.weight"].shape) for i in (1, 2, 3)]
    assert transitions == [(128, 256, 1, 1), (256, 512, 1, 1), (512, 1024, 1, 1)]


def test_num_classes():
    with torch.no_grad():
        assert ZOO["resnet20"](num_classes=100).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 100)
        assert ZOO["vgg9"](num_classes=7).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_bottleneck_without_shortcut_ends_at_bn_like_the_reference():
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        assert (ResidualBlock(64, 16, bottleneck=True, shortcut=False).eval()(x) < 0).any()
        assert (ResidualBlock(64, 64, bottleneck=False, shortcut=False).eval()(x) >= 0).all()
