"""SelecSLS Net: "XNect: Real-time Multi-Person 3D Motion Capture with a Single RGB Camera" (Mehta et al., 2020),
the ImageNet classifiers of its official repository (mehtadushy/SelecSLS-Pytorch, ``models/selecsls.py``).

A 3x3 stride-2 convolution, then SelecSLS modules in levels that each start with a stride-2 module, a head of four
convolutions (two more stride-2 steps), global average pooling and one fully connected layer. A module runs five
convolutions in a chain (3x3, 1x1, 3x3 at half width, 1x1, 3x3 at half width) and concatenates three of their
outputs - the short-range skips - with the level's first module output - the long-range skip, carried through the
level - before a 1x1 convolution. Every convolution is followed by BatchNorm and ReLU.

Module names are the official code's (``stem.0``, ``features.{i}.conv1.0`` ... ``conv6.1``, ``head.{i}.0``,
``classifier.0``), so the released ``SelecSLS*_statedict.pth`` files load as they are. timm's ports name the
classifier ``fc`` (rename ``fc.*`` to ``classifier.0.*``), and timm's ``selecsls84`` (which has no weights) differs
from the official network: its last head convolution is 3x3 where the official one is 1x1, 10,485,760 more
parameters (50,954,600 against 40,468,840). The ``_B`` variants end in 1280 -> 1024 channels instead of 1024 -> 1280.

The official README prints timings and ImageNet errors, no parameter or operation counts, so the card has no
published figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlcli.core.images import Preprocess
from rlcli.models.cards import Paper, imagenet_classes
from rlcli.models.registry import register_model


@dataclass(frozen=True)
class Module:
    """One SelecSLS module, as a row of the official ``selecSLS_config``."""

    in_channels: int
    skip: int  # channels of the long-range skip it concatenates (0 for a level's first module)
    k: int  # width of the convolution chain (half of it for conv3 and conv5)
    out_channels: int
    first: bool  # starts a level: it produces the long-range skip instead of taking one
    stride: int


@dataclass(frozen=True)
class Config:
    modules: tuple[Module, ...]
    head: tuple[tuple[int, int, int], ...]  # (out channels, kernel, stride) of the head convolutions

    @property
    def num_features(self) -> int:
        return self.head[-1][0]


def _level(in_channels: int, width: int, out_channels: int, depth: int) -> tuple[Module, ...]:
    """A level of ``depth`` modules: the first strided, all of width ``width``, the last widening to
    ``out_channels`` (the official tables, row for row)."""
    first = Module(in_channels, 0, width, width, True, 2)
    rest = [Module(width, width, width, width, False, 1) for _ in range(depth - 2)]
    last = Module(width, width, width, out_channels, False, 1)
    return (first, *rest, last)


# The official head: two 3x3 convolutions per stride-2 step, then a 1x1 convolution.
HEAD = ((960, 3, 2), (1024, 3, 1), (1024, 3, 2), (1280, 1, 1))
HEAD_B = ((960, 3, 2), (1024, 3, 1), (1280, 3, 2), (1024, 1, 1))  # the "_B" variants swap the last two widths
HEAD_60 = ((756, 3, 2), (1024, 3, 1), (1024, 3, 2), (1280, 1, 1))
HEAD_60_B = ((756, 3, 2), (1024, 3, 1), (1280, 3, 2), (1024, 1, 1))

LEVELS_42 = (*_level(32, 64, 128, 2), *_level(128, 144, 288, 2), *_level(288, 304, 480, 2))
LEVELS_60 = (*_level(32, 64, 128, 2), *_level(128, 128, 288, 3), *_level(288, 288, 416, 4))
LEVELS_84 = (*_level(32, 64, 144, 2), *_level(144, 144, 304, 5), *_level(304, 304, 512, 6))

# Registered name -> the official config name and its layout; these four are the ones with released weights.
CONFIGS: dict[str, tuple[str, Config]] = {
    "selecsls42b": ("SelecSLS42_B", Config(LEVELS_42, HEAD_B)),
    "selecsls60": ("SelecSLS60", Config(LEVELS_60, HEAD_60)),
    "selecsls60b": ("SelecSLS60_B", Config(LEVELS_60, HEAD_60_B)),
    "selecsls84": ("SelecSLS84", Config(LEVELS_84, HEAD)),
}

STEM_CHANNELS = 32

PAPER = Paper(
    title="XNect: Real-time Multi-Person 3D Motion Capture with a Single RGB Camera",
    authors="Dushyant Mehta, Oleksandr Sotnychenko, Franziska Mueller, Weipeng Xu, Mohamed Elgharib, Pascal Fua, "
    "Hans-Peter Seidel, Helge Rhodin, Gerard Pons-Moll, Christian Theobalt",
    year=2020,
    url="https://arxiv.org/abs/1907.00837",
    arxiv="1907.00837",
)

# The official evaluation (evaluate_imagenet.py through util/imagenet_data_loader.py): resize 256, centre crop 224,
# torchvision's default bilinear resize, ImageNet mean/std. (The README notes that the newer weights were trained
# with bicubic resizing, so bicubic evaluation scores them marginally better.)
PREPROCESS = Preprocess(resize=256, crop=224, interpolation="bilinear")


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Convolution without bias -> BatchNorm -> ReLU, "same" padding: the official ``conv_bn``/``conv_1x1_bn``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SelecSLSBlock(nn.Module):
    """One module: a chain of five convolutions whose 1st, 3rd and 5th outputs are concatenated (short-range skips)
    with the level's long-range skip, then fused by a 1x1 convolution."""

    def __init__(self, spec: Module) -> None:
        super().__init__()
        k = spec.k
        self.first = spec.first
        self.conv1 = conv_bn(spec.in_channels, k, 3, spec.stride)
        self.conv2 = conv_bn(k, k, 1)
        self.conv3 = conv_bn(k, k // 2, 3)
        self.conv4 = conv_bn(k // 2, k, 1)
        self.conv5 = conv_bn(k, k // 2, 3)
        self.conv6 = conv_bn(2 * k + (0 if spec.first else spec.skip), spec.out_channels, 1)

    def forward(self, x: Tensor, skip: Tensor | None) -> tuple[Tensor, Tensor]:
        """The module's output and the long-range skip for the modules after it."""
        d1 = self.conv1(x)
        d2 = self.conv3(self.conv2(d1))
        d3 = self.conv5(self.conv4(d2))
        if self.first:
            out = self.conv6(torch.cat([d1, d2, d3], 1))
            return out, out
        return self.conv6(torch.cat([d1, d2, d3, skip], 1)), skip


class SelecSLS(nn.Module):
    def __init__(self, config: Config, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = conv_bn(3, STEM_CHANNELS, 3, 2)
        self.features = nn.ModuleList(SelecSLSBlock(spec) for spec in config.modules)
        head, channels = [], config.modules[-1].out_channels
        for out_channels, kernel, stride in config.head:
            head.append(conv_bn(channels, out_channels, kernel, stride))
            channels = out_channels
        self.head = nn.Sequential(*head)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(config.num_features, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x, skip = self.stem(x), None
        for block in self.features:
            x, skip = block(x, skip)
        return self.classifier(self.global_pool(self.head(x)).flatten(1))


def _register(name: str, config: Config) -> None:
    def build(input_size: tuple[int, ...], num_classes: int = 1000) -> SelecSLS:
        return SelecSLS(config, num_classes=num_classes)

    register_model(
        name,
        family="selecsls",
        task="image-classification",
        default_input=(3, 224, 224),
        preprocess=PREPROCESS,
        classes=imagenet_classes(),
        paper=PAPER,
        published=None,  # the official README prints no parameter or operation counts
    )(build)


for _name, (_official, _config) in CONFIGS.items():
    _register(_name, _config)
