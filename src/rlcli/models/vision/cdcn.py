"""CDCN and CDCN++: "Searching Central Difference Convolutional Networks for Face Anti-Spoofing" (Yu et al., CVPR 2020).

A central difference convolution (CDC) mixes a vanilla convolution with one over the differences between each
neighbour and the window's centre: ``y = sum w * x - theta * x_centre * sum w`` with theta = 0.7. The official
code computes the second term as a 1x1 convolution whose kernel is the 3x3 kernel summed over its window, so a CDC
layer costs its 3x3 convolution plus that 1x1 one (rl counts both: one ninth more MACs than vanilla layers).

CDCN stacks three blocks of three CDC layers, each ending in a stride-2 max pool; their outputs,
resized to 32x32 and concatenated, go through three CDC layers to a 1x32x32 depth map (a live face's depth, zero
for a spoof). CDCN++ has the NAS-searched blocks and the Multiscale Attention Fusion Module: each block's
output is weighted by a spatial attention map (kernels 7, 5 and 3, low to high level) before the fusion.

Module names are the official code's (``CVPR2020_paper_codes/models/CDCNs.py``: ``conv1``, ``Block1`` ...
``lastconv1``, ``sa1``). The official forward returns six tensors (the map, the concatenated features, the blocks'
outputs or attention maps, and the input); here ``forward`` returns the depth map alone, (B, 32, 32), the official
first output. No trained weights are released.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlcli.core.images import Preprocess
from rlcli.models.cards import Paper
from rlcli.models.registry import register_model

THETA = 0.7  # the weight of the central difference term (the paper's choice and the official default)
MAP_SIZE = 32  # the depth map's side; the fused features are resized to it

# Output channels of the CDC layers in each block: CDCN's hand-designed ones, CDCN++'s searched ones (the
# official int(128 * 1.6) = 204, int(128 * 1.2) = 153, int(128 * 1.4) = 179).
CDCN_BLOCKS = ((128, 196, 128), (128, 196, 128), (128, 196, 128))
CDCN_PP_BLOCKS = ((128, 204, 128), (153, 128, 179, 128), (128, 153, 128))
ATTENTION_KERNELS = (7, 5, 3)  # CDCN++'s spatial attention per block, low-, mid- and high-level features

PAPER = Paper(
    title="Searching Central Difference Convolutional Networks for Face Anti-Spoofing",
    authors="Zitong Yu, Chenxu Zhao, Zezheng Wang, Yunxiao Qin, Zhuo Su, Xiaobai Li, Feng Zhou, Guoying Zhao",
    year=2020,
    url="https://arxiv.org/abs/2003.04092",
    arxiv="2003.04092",
)

# The official evaluation (Load_OULUNPU_valtest.py): the face box enlarged 1.3 times and cropped (a step before
# this one: rl sees the crop), resized to 256x256 ignoring the aspect ratio (cv2.resize, bilinear), BGR turned to
# RGB, then (x - 127.5) / 128 on 0-255 values: mean 0.5 and std 128/255 on [0, 1] values.
PREPROCESS = Preprocess(
    resize=256, crop=256, mean=(0.5, 0.5, 0.5), std=(128 / 255,) * 3, interpolation="bilinear", square=True
)


class CentralDifferenceConv2d(nn.Module):
    """``Conv2d_cd`` in the official code: conv(x) - theta * conv_{1x1}(x, kernel summed over its window)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
        bias: bool = False, theta: float = THETA,
    ) -> None:  # fmt: skip
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.theta = theta

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        if math.fabs(self.theta) < 1e-8:  # theta = 0 is a vanilla convolution (the official shortcut)
            return out
        kernel_sum = self.conv.weight.sum(dim=(2, 3), keepdim=True)
        centre = F.conv2d(x, kernel_sum, self.conv.bias, stride=self.conv.stride, groups=self.conv.groups)
        return out - self.theta * centre


class SpatialAttention(nn.Module):
    """Channel mean and max -> a KxK convolution -> sigmoid: one weight per position (CDCN++'s attention fusion)."""

    def __init__(self, kernel: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size=kernel, padding=kernel // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.sigmoid(self.conv1(pooled))


def cdc_bn_relu(in_channels: int, out_channels: int, theta: float) -> list[nn.Module]:
    return [CentralDifferenceConv2d(in_channels, out_channels, theta=theta), nn.BatchNorm2d(out_channels), nn.ReLU()]


def cdc_block(in_channels: int, widths: tuple[int, ...], theta: float) -> nn.Sequential:
    """CDC-BN-ReLU layers of the given widths, then a 3x3 stride-2 max pool."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += cdc_bn_relu(in_channels, width, theta)
        in_channels = width
    return nn.Sequential(*layers, nn.MaxPool2d(kernel_size=3, stride=2, padding=1))


class CDCN(nn.Module):
    """Stem, three blocks, multi-level fusion at 32x32, three CDC layers to a 1-channel depth map."""

    def __init__(self, theta: float = THETA, blocks: tuple[tuple[int, ...], ...] = CDCN_BLOCKS) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*cdc_bn_relu(3, 64, theta))
        self.Block1 = cdc_block(64, blocks[0], theta)
        self.Block2 = cdc_block(blocks[0][-1], blocks[1], theta)
        self.Block3 = cdc_block(blocks[1][-1], blocks[2], theta)
        fused = blocks[0][-1] + blocks[1][-1] + blocks[2][-1]
        self.lastconv1 = nn.Sequential(*cdc_bn_relu(fused, 128, theta))
        self.lastconv2 = nn.Sequential(*cdc_bn_relu(128, 64, theta))
        self.lastconv3 = nn.Sequential(CentralDifferenceConv2d(64, 1, theta=theta), nn.ReLU())
        self.downsample32x32 = nn.Upsample(size=(MAP_SIZE, MAP_SIZE), mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        block1 = self.Block1(self.conv1(x))
        block2 = self.Block2(block1)
        block3 = self.Block3(block2)
        levels = [self.downsample32x32(level) for level in (block1, block2, block3)]
        x = self.lastconv3(self.lastconv2(self.lastconv1(torch.cat(levels, dim=1))))
        return x.squeeze(1)


class CDCNpp(nn.Module):
    """CDCN++: the searched blocks, each output weighted by spatial attention before the fusion."""

    def __init__(self, theta: float = THETA, blocks: tuple[tuple[int, ...], ...] = CDCN_PP_BLOCKS) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*cdc_bn_relu(3, 64, theta))
        self.Block1 = cdc_block(64, blocks[0], theta)
        self.Block2 = cdc_block(blocks[0][-1], blocks[1], theta)
        self.Block3 = cdc_block(blocks[1][-1], blocks[2], theta)
        fused = blocks[0][-1] + blocks[1][-1] + blocks[2][-1]
        self.lastconv1 = nn.Sequential(
            *cdc_bn_relu(fused, 128, theta), CentralDifferenceConv2d(128, 1, theta=theta), nn.ReLU()
        )
        self.sa1, self.sa2, self.sa3 = (SpatialAttention(kernel) for kernel in ATTENTION_KERNELS)
        self.downsample32x32 = nn.Upsample(size=(MAP_SIZE, MAP_SIZE), mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        block1 = self.Block1(self.conv1(x))
        block2 = self.Block2(block1)
        block3 = self.Block3(block2)
        levels = [
            self.downsample32x32(attention(level) * level)
            for attention, level in ((self.sa1, block1), (self.sa2, block2), (self.sa3, block3))
        ]
        return self.lastconv1(torch.cat(levels, dim=1)).squeeze(1)


@register_model(
    "cdcn",
    family="cdcn",
    task="face-anti-spoofing",
    default_input=(3, 256, 256),
    preprocess=PREPROCESS,
    paper=PAPER,
)
def cdcn(input_size: tuple[int, ...], theta: float = THETA) -> CDCN:
    """CDCN: a 3x256x256 face crop to a 32x32 depth map."""
    return CDCN(theta=theta)


@register_model(
    "cdcn_pp",
    family="cdcn",
    task="face-anti-spoofing",
    default_input=(3, 256, 256),
    preprocess=PREPROCESS,
    paper=PAPER,
)
def cdcn_pp(input_size: tuple[int, ...], theta: float = THETA) -> CDCNpp:
    """CDCN++ (CDCNpp in the official code): searched backbone and multiscale attention fusion."""
    return CDCNpp(theta=theta)
