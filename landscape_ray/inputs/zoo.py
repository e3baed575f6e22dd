"""The CIFAR-10 networks of the paper's code (Li et al., ICLR 2018), by the paper's names.

The 29 models of `cifar10/model_loader.py` in tomgoldstein/loss-landscape (ResNets with and
without shortcuts, wide ResNets, VGG-9, DenseNet-121), rewritten as a few parametrised
building blocks. Each one has the reference implementation's exact state_dict (same key names,
same order, same shapes) and the same forward pass, so the paper's checkpoints
(`{'state_dict': ..., 'acc': ..., 'epoch': ...}` .t7 files) load with `strict=True` and give
the same outputs:

    from landscape_ray.inputs.zoo import ZOO
    net = ZOO["resnet56_noshort"]()                        # 3×32×32 in, 10 logits out
    ckpt = torch.load("model_300.t7", map_location="cpu", weights_only=True)
    net.load_state_dict(ckpt["state_dict"])

Every factory takes `num_classes` (default 10); the others keep their architecture knobs
(`depth`, `width`, `shortcut`, `blocks`, `growth_rate`, ...) as keyword arguments too.

Families:
  * resnet{20,56,110}[_noshort], resnet{32,44}_noshort, resnet50_16_noshort: the CIFAR ResNets
    of He et al. (3 stages of 16/32/64 channels, depth = 6n + 2 basic blocks, 1×1-conv + BN
    projection shortcuts where shape changes); `_noshort` drops every shortcut.
  * wrn56_{2,4,8}[_noshort], wrn110_{2,4}_noshort: the same with every width multiplied by k.
  * resnet{18,34,50,101,152}[_noshort]: the ImageNet ResNets on 32×32 inputs (3×3 stem, no
    max-pool, 4 stages of 64..512 channels; basic blocks up to 34, bottlenecks from 50).
  * vgg9: VGG-16's first 7 conv layers (conv-BN-ReLU, 3 max-pools), then FC-BN-ReLU and FC.
  * densenet121: DenseNet-BC on CIFAR (growth 32, blocks 6/12/24/16, compression 0.5).

Quirk kept from the reference so that outputs match: a bottleneck block *without* shortcut
ends at its last BN, with no ReLU (a basic block without shortcut ends with a ReLU).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)


class ResidualBlock(nn.Module):
    """A basic (3×3, 3×3) or bottleneck (1×1, 3×3, 1×1 ×4) block, with or without shortcut.

    State: conv1, bn1, conv2, bn2[, conv3, bn3][, shortcut.0 (1×1 conv), shortcut.1 (BN)];
    the projection exists only where the shortcut changes stride or channels.
    """

    def __init__(self, cin: int, planes: int, stride: int = 1, bottleneck: bool = False, shortcut: bool = True):
        super().__init__()
        self.expansion = 4 if bottleneck else 1
        cout = planes * self.expansion
        if bottleneck:
            layers = [(cin, planes, 1, 1), (planes, planes, 3, stride), (planes, cout, 1, 1)]
        else:
            layers = [(cin, planes, 3, stride), (planes, cout, 3, 1)]
        self.depth = len(layers)
        for i, spec in enumerate(layers, 1):
            conv, bn = conv_bn(*spec)
            self.add_module(f"conv{i}", conv)
            self.add_module(f"bn{i}", bn)
        self.shortcut: nn.Module | None = None
        if shortcut:
            projects = stride != 1 or cin != cout
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if projects else nn.Identity()
        self.final_relu = shortcut or not bottleneck  # the reference's quirk, see the module docstring

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i in range(1, self.depth + 1):
            out = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out))
            if i < self.depth:
                out = F.relu(out)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out) if self.final_relu else out


class ResNet(nn.Module):
    """A 3×3 conv-BN-ReLU stem, stages `layer1..` of residual blocks, average pooling, `linear`.

    Stage i has `blocks[i]` blocks of `widths[i]` planes; every stage but the first starts with
    stride 2. `pool` is the average-pooling kernel (the final feature map's size on 32×32 input).
    """

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        pool: int,
        bottleneck: bool = False,
        shortcut: bool = True,
        num_classes: int = 10,
    ):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, widths[0])
        cin = widths[0]
        for i, (planes, n) in enumerate(zip(widths, blocks), 1):
            stage = []
            for j in range(n):
                stage.append(ResidualBlock(cin, planes, 2 if i > 1 and j == 0 else 1, bottleneck, shortcut))
                cin = stage[-1].expansion * planes
            self.add_module(f"layer{i}", nn.Sequential(*stage))
        self.stages = len(widths)
        self.pool = pool
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.stages + 1):
            out = getattr(self, f"layer{i}")(out)
        return self.linear(torch.flatten(F.avg_pool2d(out, self.pool), 1))


def cifar_resnet(depth: int = 20, width: int = 1, shortcut: bool = True, num_classes: int = 10) -> ResNet:
    """He et al.'s CIFAR ResNet-`depth` (depth = 6n + 2), widths 16/32/64 × `width` (a WRN for width > 1)."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    n = (depth - 2) // 6
    return ResNet([16 * width, 32 * width, 64 * width], [n] * 3, pool=8, shortcut=shortcut, num_classes=num_classes)


def resnet(
    blocks: Sequence[int] = (2, 2, 2, 2), bottleneck: bool = False, shortcut: bool = True, num_classes: int = 10
) -> ResNet:
    """The ImageNet ResNet layout (64..512 planes) on 32×32 inputs: 3×3 stem, no max-pool."""
    return ResNet(
        [64, 128, 256, 512], blocks, pool=4, bottleneck=bottleneck, shortcut=shortcut, num_classes=num_classes
    )


class VGG(nn.Module):
    """`features` (conv-BN-ReLU per number in `cfg`, 2×2 max-pool per 'M'), `fc` (FC-BN-ReLU), `classifier`."""

    def __init__(self, cfg: Sequence[int | str], num_classes: int = 10, input_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                input_size //= 2
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Linear(cin * input_size**2, cin), nn.BatchNorm1d(cin), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(torch.flatten(self.features(x), 1)))


def vgg9(num_classes: int = 10) -> VGG:
    """VGG-9: VGG-16's first seven conv layers and two FC layers (BN after each but the last)."""
    return VGG([64, 64, "M", 128, 128, "M", 256, 256, 256, "M"], num_classes)


class DenseLayer(nn.Module):
    """Pre-activation BN-ReLU-1×1 conv (4·growth) then BN-ReLU-3×3 conv (growth); new maps go first."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    """BN-ReLU-1×1 conv, then 2×2 average pooling."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """`conv1`, then dense blocks `dense1..` joined by transitions `trans1..`, then BN-ReLU, avg-pool 4, `linear`."""

    def __init__(
        self,
        blocks: Sequence[int] = (6, 12, 24, 16),
        growth_rate: int = 32,
        reduction: float = 0.5,
        num_classes: int = 10,
    ):
        super().__init__()
        channels = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.stages = len(blocks)
        for i, n in enumerate(blocks, 1):
            layers = [DenseLayer(channels + j * growth_rate, growth_rate) for j in range(n)]
            self.add_module(f"dense{i}", nn.Sequential(*layers))
            channels += n * growth_rate
            if i < self.stages:
                out = int(math.floor(channels * reduction))
                self.add_module(f"trans{i}", Transition(channels, out))
                channels = out
        self.bn = nn.BatchNorm2d(channels)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for i in range(1, self.stages + 1):
            out = getattr(self, f"dense{i}")(out)
            if i < self.stages:
                out = getattr(self, f"trans{i}")(out)
        out = F.avg_pool2d(F.relu(self.bn(out)), 4)
        return self.linear(torch.flatten(out, 1))


def densenet121(num_classes: int = 10) -> DenseNet:
    """DenseNet-121 for CIFAR: growth rate 32, dense blocks of 6, 12, 24 and 16 layers."""
    return DenseNet((6, 12, 24, 16), growth_rate=32, num_classes=num_classes)


_IMAGENET_RESNETS = {  # depth: (blocks per stage, bottleneck)
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
_CIFAR_RESNETS = {  # name: (depth, width multiplier, shortcut)
    "resnet20": (20, 1, True),
    "resnet20_noshort": (20, 1, False),
    "resnet32_noshort": (32, 1, False),
    "resnet44_noshort": (44, 1, False),
    "resnet50_16_noshort": (50, 1, False),
    "resnet56": (56, 1, True),
    "resnet56_noshort": (56, 1, False),
    "resnet110": (110, 1, True),
    "resnet110_noshort": (110, 1, False),
    "wrn56_2": (56, 2, True),
    "wrn56_2_noshort": (56, 2, False),
    "wrn56_4": (56, 4, True),
    "wrn56_4_noshort": (56, 4, False),
    "wrn56_8": (56, 8, True),
    "wrn56_8_noshort": (56, 8, False),
    "wrn110_2_noshort": (110, 2, False),
    "wrn110_4_noshort": (110, 4, False),
}


def _registry() -> dict[str, Callable[..., nn.Module]]:
    zoo: dict[str, Callable[..., nn.Module]] = {"vgg9": vgg9, "densenet121": densenet121}
    for depth, (blocks, bottleneck) in _IMAGENET_RESNETS.items():
        for shortcut, suffix in ((True, ""), (False, "_noshort")):
            zoo[f"resnet{depth}{suffix}"] = partial(resnet, blocks=blocks, bottleneck=bottleneck, shortcut=shortcut)
    for name, (depth, width, shortcut) in _CIFAR_RESNETS.items():
        zoo[name] = partial(cifar_resnet, depth=depth, width=width, shortcut=shortcut)
    return zoo


#: The paper's model names, in the order of its model_loader.py → factories taking keyword arguments.
ZOO: dict[str, Callable[..., nn.Module]] = _registry()

__all__ = [
    "ZOO",
    "ResNet",
    "ResidualBlock",
    "VGG",
    "DenseNet",
    "DenseLayer",
    "Transition",
    "cifar_resnet",
    "resnet",
    "vgg9",
    "densenet121",
]
