"""MicroNets: "MicroNets: Neural Network Architectures for Deploying TinyML Applications on Commodity
Microcontrollers" (Banbury et al., MLSys 2021).

Networks found by differentiable architecture search under microcontroller memory and latency limits (Section 5),
for two TinyMLPerf tasks:

- keyword spotting (``micronet_kws_s/m/l``) on 49x10 MFCC features of one second of speech (Section 4.2), 12
  classes: a 10x4 convolution, depthwise-separable blocks (3x3 depthwise, 1x1 pointwise, each with ReLU6), average
  pooling over the whole map and one fully connected layer (Appendix A, Table 5);
- visual wake words (``micronet_vww_2/3/4``) on grayscale images (50x50 for VWW-2, 128x128 for VWW-3 and VWW-4), 2
  classes: a MobileNetV2 backbone of inverted bottleneck (IBN) blocks whose widths the search chose (Section 5.2.1).
  A block's residual connection adds input and output even when their widths differ: the narrower one is
  zero-padded along channels (TFLite PAD + ADD).

The released models are int8 TFLite files in ARM's ML-zoo (``kws_micronet_*.tflite``, ``vww*_INT8.tflite``); no
PyTorch checkpoint exists. This is their float graph as deployed: batch normalisation folded into each
convolution's bias, ReLU6 activations, TensorFlow's SAME padding (asymmetric for even kernels and strided layers).
The KWS widths are Table 5's (the released ``kws_micronet_m.tflite`` has exactly these layers). The paper prints no
VWW layer table (VWW-2 is only drawn, Figure 6b) and ML-zoo's VWW files are Git LFS objects that could not be read
here: the VWW widths are those of the MicroNets recreations in harvard-edge/Wake_Vision
(``experiments/comprehensive_model_architecture_experiments/visual_wake_words/micronets_vww*_INT8.py``), whose
op counts match Table 4 within 0.2 % for VWW-3 and VWW-4 (not for VWW-2: see its card).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from rlcli.models.cards import Paper, Published
from rlcli.models.registry import register_model

PAPER = Paper(
    title="MicroNets: Neural Network Architectures for Deploying TinyML Applications on Commodity Microcontrollers",
    authors="Colby Banbury, Chuteng Zhou, Igor Fedorov, Ramon Matas Navarro, Urmish Thakker, Dibakar Gope, "
    "Vijay Janapa Reddi, Matthew Mattina, Paul N. Whatmough",
    year=2021,
    url="https://arxiv.org/abs/2010.11267",
    arxiv="2010.11267",
)

# Table 4's "Mops" count a multiply-accumulate as two operations (footnote 2 of Section 3.2).
OPS = "Table 4's 'Mops' are operations with a multiply-accumulate counted as two (Section 3.2, footnote 2)"

# Table 5: the stem's output channels, then (output channels, stride) of each depthwise-separable block.
KWS: dict[str, tuple[int, tuple[tuple[int, int], ...], str]] = {
    "micronet_kws_s": (84, ((112, 2), (84, 1), (84, 1), (84, 1), (196, 1)), "16.4M"),
    "micronet_kws_m": (140, ((140, 2), (140, 1), (140, 1), (112, 1), (196, 1)), "30.6M"),
    "micronet_kws_l": (276, ((248, 2), (276, 1), (276, 1), (248, 1), (248, 1), (248, 1), (248, 1)), "129M"),
}
KWS_INPUT = (1, 49, 10)  # 49 frames x 10 MFCC coefficients (Section 4.2; ML-zoo input (1, 49, 10, 1))
KWS_CLASSES = 12

# IBN blocks as (expansion, output) channels, grouped into MobileNetV2's seven stages with their strides; the first
# block of a stage has no residual connection, the others do (as in MobileNetV2 and the released graphs' ADDs).
Stage = tuple[int, tuple[tuple[int, int], ...]]
VWW: dict[str, tuple[int, tuple[Stage, ...], tuple[int, int, int], str, str]] = {
    "micronet_vww_2": (12, (
        (1, ((4, 8),)),
        (2, ((28, 24), (28, 20))),
        (2, ((128, 28), (152, 16), (152, 28))),
        (2, ((152, 24), (112, 24), (112, 12), (76, 32))),
        (1, ((76, 16), (56, 28), (56, 28))),
        (2, ((56, 16), (96, 16), (96, 16))),
        (1, ((96, 32),)),
    ), (1, 50, 50), "5.3M",
        "these widths (the Wake Vision recreation; the ML-zoo file could not be read) count 6.29 Mops, not the "
        "paper's 5.3; the paper's VWW-2 layers are only drawn (Figure 6b), so the difference is unresolved"),
    "micronet_vww_3": (9, (
        (1, ((3, 6),)),
        (2, ((9, 14), (28, 16))),
        (2, ((28, 32), (115, 25), (115, 32))),
        (2, ((172, 51), (307, 51), (307, 44), (307, 57))),
        (1, ((230, 48), (288, 48), (288, 76))),
        (2, ((115, 16), (96, 16), (96, 16))),
        (1, ((96, 32),)),
    ), (1, 128, 128), "45.2M", ""),
    "micronet_vww_4": (8, (
        (1, ((4, 4),)),
        (2, ((8, 12), (14, 16))),
        (2, ((28, 32), (96, 28), (96, 28))),
        (2, ((152, 44), (268, 40), (268, 52), (268, 44))),
        (1, ((192, 68), (172, 68), (172, 48))),
        (2, ((288, 16), (96, 16), (96, 32))),
        (1, ((96, 32),)),
    ), (1, 128, 128), "37.7M", ""),
}  # fmt: skip
VWW_LAST_CHANNELS = 128  # the 1x1 convolution after the IBN blocks
VWW_CLASSES = 2


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's SAME padding: output size ceil(input / stride), the odd pixel at the end."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, kernel, stride in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def conv_relu6(in_channels: int, out_channels: int, kernel: int | tuple[int, int], stride: int = 1,
               groups: int = 1) -> nn.Sequential:  # fmt: skip
    """Convolution (BN folded into its bias) -> ReLU6, as each layer of the released graphs."""
    return nn.Sequential(Conv2dSame(in_channels, out_channels, kernel, stride, groups=groups), nn.ReLU6(inplace=True))


class DepthwiseSeparable(nn.Module):
    """Table 5's "Depthwise Separable Block": 3x3 depthwise conv -> ReLU6 -> 1x1 pointwise conv -> ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = conv_relu6(in_channels, in_channels, 3, stride, groups=in_channels)
        self.pointwise = conv_relu6(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class MicroNetKWS(nn.Module):
    def __init__(self, stem: int, blocks: tuple[tuple[int, int], ...], num_classes: int = KWS_CLASSES) -> None:
        super().__init__()
        self.conv = conv_relu6(KWS_INPUT[0], stem, (10, 4))
        layers, channels = [], stem
        for out_channels, stride in blocks:
            layers.append(DepthwiseSeparable(channels, out_channels, stride))
            channels = out_channels
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # Table 5's AvgPool(25x5): the whole map at the 49x10 input
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.blocks(self.conv(x))).flatten(1))


def pad_channels(x: Tensor, channels: int) -> Tensor:
    """Zero-pad ``x`` to ``channels`` channels, the extra one of an odd count in front (the recreation's PAD)."""
    missing = channels - x.shape[1]
    return F.pad(x, (0, 0, 0, 0, (missing + 1) // 2, missing // 2))


class InvertedBottleneck(nn.Module):
    """IBN block: 1x1 expansion -> ReLU6 -> 3x3 depthwise -> ReLU6 -> 1x1 linear projection (+ residual)."""

    def __init__(self, in_channels: int, expansion: int, out_channels: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.expand = conv_relu6(in_channels, expansion, 1)
        self.depthwise = conv_relu6(expansion, expansion, 3, stride, groups=expansion)
        self.project = Conv2dSame(expansion, out_channels, 1)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        if not self.residual:
            return y
        channels = max(x.shape[1], y.shape[1])
        return pad_channels(y, channels) + pad_channels(x, channels)


class MicroNetVWW(nn.Module):
    def __init__(self, stem: int, stages: tuple[Stage, ...], num_classes: int = VWW_CLASSES) -> None:
        super().__init__()
        self.conv = conv_relu6(1, stem, 3, 2)
        layers, channels = [], stem
        for stride, blocks in stages:
            for i, (expansion, out_channels) in enumerate(blocks):
                first = i == 0
                layers.append(InvertedBottleneck(channels, expansion, out_channels, stride if first else 1, not first))
                channels = out_channels if first else max(channels, out_channels)  # the wider side of the sum
        self.blocks = nn.Sequential(*layers)
        self.conv_last = conv_relu6(channels, VWW_LAST_CHANNELS, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(VWW_LAST_CHANNELS, num_classes)  # a 1x1 convolution on the pooled map in the TFLite graph

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.conv_last(self.blocks(self.conv(x)))).flatten(1))


def _register_kws(name: str, stem: int, blocks: tuple[tuple[int, int], ...], ops: str) -> None:
    def build(input_size: tuple[int, ...], num_classes: int = KWS_CLASSES) -> MicroNetKWS:
        return MicroNetKWS(stem, blocks, num_classes=num_classes)

    published = Published(input_size=KWS_INPUT, source="Table 4", flops=ops, convention=OPS)
    register_model(
        name, family="micronet_kws", task="keyword-spotting", default_input=KWS_INPUT, paper=PAPER, published=published
    )(build)


def _register_vww(name: str, stem: int, stages: tuple[Stage, ...], size: tuple[int, int, int], ops: str,
                  note: str) -> None:  # fmt: skip
    def build(input_size: tuple[int, ...], num_classes: int = VWW_CLASSES) -> MicroNetVWW:
        return MicroNetVWW(stem, stages, num_classes=num_classes)

    published = Published(input_size=size, source="Table 4", flops=ops, convention=OPS, note=note)
    register_model(
        name, family="micronet_vww", task="visual-wake-words", default_input=size, paper=PAPER, published=published
    )(build)


for _name, (_stem, _blocks, _ops) in KWS.items():
    _register_kws(_name, _stem, _blocks, _ops)
for _name, (_stem, _stages, _size, _ops, _note) in VWW.items():
    _register_vww(_name, _stem, _stages, _size, _ops, _note)
