"""MobileNet v1: "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications"
(Howard et al., 2017).

A 3x3 stride-2 convolution, then thirteen depthwise-separable blocks (a 3x3 depthwise convolution and a 1x1
pointwise one, each followed by BatchNorm and ReLU), global average pooling and one fully connected layer
(Table 1). The width multiplier alpha thins every layer's channels (Section 4.2).

There is no official PyTorch checkpoint (the released weights are TF-slim's, with 1001 classes: a background
class first). Module names follow timm's ``mobilenetv1_100`` (``conv_stem``, ``blocks.{stage}.{i}.conv_dw`` ...),
so its PyTorch weights load as they are.
"""

from __future__ import annotations

from torch import Tensor, nn

from rlcli.core.images import Preprocess
from rlcli.models.cards import Paper, Published, imagenet_classes
from rlcli.models.registry import register_model

# Table 1, grouped into stages that each start with the stride-2 block: (output channels, stride) per block.
STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1)),
    ((1024, 2), (1024, 1)),  # Table 1 prints s2 for the last depthwise layer; every implementation uses s1 (7x7 map)
)
STEM_CHANNELS = 32

PAPER = Paper(
    title="MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
    authors="Andrew G. Howard, Menglong Zhu, Bo Chen, Dmitry Kalenichenko, Weijun Wang, Tobias Weyand, "
    "Marco Andreetto, Hartwig Adam",
    year=2017,
    url="https://arxiv.org/abs/1704.04861",
    arxiv="1704.04861",
)

# Table 6 (width multiplier at 224 px): million mult-adds and million parameters, 1000 ImageNet classes.
WIDTHS = {"mobilenet_v1": (1.0, "569M", "4.2M"), "mobilenet_v1_075": (0.75, "325M", "2.6M"),
          "mobilenet_v1_050": (0.5, "149M", "1.3M"), "mobilenet_v1_025": (0.25, "41M", "0.5M")}  # fmt: skip

# timm's evaluation of its mobilenetv1_100 weights (pretrained_cfg): bicubic, crop 0.875, mean/std 0.5.
PREPROCESS = Preprocess(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")


def scaled(channels: int, width: float) -> int:
    """Channels at width multiplier ``width``, rounded to a multiple of 8 as TF-slim and timm do (at least 8)."""
    rounded = max(8, int(channels * width + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * channels * width else rounded


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv -> BN -> ReLU -> 1x1 pointwise conv -> BN -> ReLU (Figure 3, right)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv_dw(x)))
        return self.relu(self.bn2(self.conv_pw(x)))


class MobileNetV1(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 1000, dropout: float = 0.0) -> None:
        super().__init__()
        channels = scaled(STEM_CHANNELS, width)
        self.conv_stem = nn.Conv2d(3, channels, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        stages = []
        for stage in STAGES:
            blocks = []
            for out_channels, stride in stage:
                blocks.append(DepthwiseSeparable(channels, scaled(out_channels, width), stride))
                channels = scaled(out_channels, width)
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = channels
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.relu(self.bn1(self.conv_stem(x))))
        return self.classifier(self.dropout(self.global_pool(x).flatten(1)))


def _register(name: str, width: float, macs: str, params: str) -> None:
    def build(input_size: tuple[int, ...], num_classes: int = 1000, dropout: float = 0.0) -> MobileNetV1:
        return MobileNetV1(width=width, num_classes=num_classes, dropout=dropout)

    published = Published(
        input_size=(3, 224, 224),
        source="Table 6",
        params=params,
        macs=macs,
        convention="the paper's 'Mult-Adds' are multiply-accumulates",
    )
    register_model(
        name,
        family="mobilenet_v1",
        task="image-classification",
        default_input=(3, 224, 224),
        preprocess=PREPROCESS,
        classes=imagenet_classes(),
        paper=PAPER,
        published=published,
    )(build)


for _name, (_width, _macs, _params) in WIDTHS.items():
    _register(_name, _width, _macs, _params)
