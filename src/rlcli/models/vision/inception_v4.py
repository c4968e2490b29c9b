"""Inception-v4 and Inception-ResNet-v2: "Inception-v4, Inception-ResNet and the Impact of Residual Connections on
Learning" (Szegedy et al., 2016).

Inception-v4 (Figure 9): the stem of Figure 3, four Inception-A blocks (Figure 4), Reduction-A (Figure 7, with
k, l, m, n = 192, 224, 256, 384 from Table 1), seven Inception-B (Figure 5), Reduction-B (Figure 8), three
Inception-C (Figure 6), average pooling, dropout (keep 0.8) and one fully connected layer. Every convolution is
followed by BatchNorm (eps 0.001, TF-slim's) and ReLU. Inception-ResNet-v2 (Figure 15) puts Inception blocks on
residual branches, each closed by a linear 1x1 convolution (with bias, no BatchNorm) whose output is scaled down
before the addition (Section 3.3).

The released network is TF-slim's, and for Inception-ResNet-v2 it is not the one the paper draws: its stem is
Inception-v3's (3x3 convolutions, 80 and 192 channels, then an Inception-v3-style 35x35 block as ``mixed_5b``:
320 channels, not Figure 3's 384), its residual blocks work at 320, 1088 and 2080 channels (the paper's
Inception-ResNet-v2 blocks print 384, 1154 and 2048), and it stacks 10, 20 and 10 of them (Figure 15 draws 5, 10 and
5). This file builds the released network, whose weights exist.

Module names follow Cadene's ``pretrainedmodels`` port (``features.{i}.branch0.conv`` for Inception-v4,
``conv2d_1a.conv`` ... ``repeat_1.{i}.branch1.0.conv`` for Inception-ResNet-v2, ``last_linear``), so its PyTorch
files load as they are; timm's ``inception_v4`` has the same names, and timm's ``inception_resnet_v2`` too except
that it calls the classifier ``classif`` (rename ``classif.*`` to ``last_linear.*``). The TF-slim weights have 1001
outputs, a background class first: Cadene's ``.pth`` files keep all 1001 (its ``pretrained='imagenet'`` drops row 0
of ``last_linear`` when loading), timm's have 1000. A 1001-class file loads with ``num_classes=1001`` (output 0 is
the background), or as the usual 1000 ImageNet classes after dropping row 0 of ``last_linear.weight`` and
``last_linear.bias``.

The paper prints no parameter or operation counts, only that Inception-ResNet-v2 matches Inception-v4's raw cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlcli.core.images import Preprocess
from rlcli.models.cards import Paper, imagenet_classes
from rlcli.models.registry import register_model


@dataclass(frozen=True)
class InceptionV4Layout:
    """How many blocks of each kind Figure 9 stacks."""

    blocks_a: int = 4  # Inception-A at 35x35
    blocks_b: int = 7  # Inception-B at 17x17
    blocks_c: int = 3  # Inception-C at 8x8


@dataclass(frozen=True)
class InceptionResNetV2Layout:
    """The released network's residual blocks: how many of each, and the scale of their residual (Section 3.3
    allows 0.1 to 0.3). The last 8x8 block (``block8``) comes after ``repeat_2`` and has no ReLU."""

    repeats: tuple[int, int, int] = (10, 20, 9)  # Block35 (35x35), Block17 (17x17), Block8 (8x8) before block8
    scales: tuple[float, float, float] = (0.17, 0.10, 0.20)


INCEPTION_V4 = InceptionV4Layout()
INCEPTION_RESNET_V2 = InceptionResNetV2Layout()
NUM_FEATURES = 1536  # channels before pooling, in both networks
BN_EPS = 0.001  # TF-slim's BatchNorm epsilon, kept by the ports

PAPER = Paper(
    title="Inception-v4, Inception-ResNet and the Impact of Residual Connections on Learning",
    authors="Christian Szegedy, Sergey Ioffe, Vincent Vanhoucke, Alex Alemi",
    year=2016,
    url="https://arxiv.org/abs/1602.07261",
    arxiv="1602.07261",
)

# Cadene's evaluation of these ports (pretrainedmodels.utils.TransformImage with scale 0.875, as in
# examples/imagenet_eval.py): resize the shorter side to floor(299 / 0.875) = 341, centre crop 299, bilinear,
# mean/std 0.5 (pretrained_settings: inputs in [-1, 1], as TF-slim's Inception models take).
PREPROCESS = Preprocess(resize=341, crop=299, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")


class BasicConv2d(nn.Module):
    """Convolution without bias -> BatchNorm -> ReLU: every unlabelled box of the paper's figures."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


def conv_1x7(in_channels: int, out_channels: int) -> BasicConv2d:
    return BasicConv2d(in_channels, out_channels, (1, 7), padding=(0, 3))


def conv_7x1(in_channels: int, out_channels: int) -> BasicConv2d:
    return BasicConv2d(in_channels, out_channels, (7, 1), padding=(3, 0))


def conv_1x3(in_channels: int, out_channels: int) -> BasicConv2d:
    return BasicConv2d(in_channels, out_channels, (1, 3), padding=(0, 1))


def conv_3x1(in_channels: int, out_channels: int) -> BasicConv2d:
    return BasicConv2d(in_channels, out_channels, (3, 1), padding=(1, 0))


def avg_pool_3x3() -> nn.AvgPool2d:
    """The 'Avg Pooling' boxes of the blocks: 3x3, stride 1, averaging only the pixels inside the image."""
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


# --- Inception-v4 (Figures 3-9) ---------------------------------------------------------------------------------------


class Mixed_3a(nn.Module):
    """Stem, 147x147 -> 73x73: 3x3 max pool (stride 2) beside a 3x3 stride-2 convolution to 96 (Figure 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, stride=2)
        self.conv = BasicConv2d(64, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.maxpool(x), self.conv(x)], 1)


class Mixed_4a(nn.Module):
    """Stem, 73x73 -> 71x71: two towers ending in valid 3x3 convolutions to 96, one with factorised 7x7 (Figure 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(160, 64, 1), BasicConv2d(64, 96, 3))
        self.branch1 = nn.Sequential(
            BasicConv2d(160, 64, 1), conv_1x7(64, 64), conv_7x1(64, 64), BasicConv2d(64, 96, 3)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x)], 1)


class Mixed_5a(nn.Module):
    """Stem, 71x71 -> 35x35: a 3x3 stride-2 convolution to 192 beside a max pool (Figure 3), 384 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = BasicConv2d(192, 192, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.maxpool(x)], 1)


class Inception_A(nn.Module):
    """35x35 block (Figure 4): 384 channels in and out."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(384, 96, 1)
        self.branch1 = nn.Sequential(BasicConv2d(384, 64, 1), BasicConv2d(64, 96, 3, padding=1))
        self.branch2 = nn.Sequential(
            BasicConv2d(384, 64, 1), BasicConv2d(64, 96, 3, padding=1), BasicConv2d(96, 96, 3, padding=1)
        )
        self.branch3 = nn.Sequential(avg_pool_3x3(), BasicConv2d(384, 96, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class Reduction_A(nn.Module):
    """35x35 -> 17x17 (Figure 7, Table 1's k=192, l=224, m=256, n=384): 1024 channels out."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(384, 384, 3, stride=2)
        self.branch1 = nn.Sequential(
            BasicConv2d(384, 192, 1), BasicConv2d(192, 224, 3, padding=1), BasicConv2d(224, 256, 3, stride=2)
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class Inception_B(nn.Module):
    """17x17 block (Figure 5): 1024 channels in and out, 7x7 convolutions factorised into 1x7 and 7x1."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(1024, 384, 1)
        self.branch1 = nn.Sequential(BasicConv2d(1024, 192, 1), conv_1x7(192, 224), conv_7x1(224, 256))
        self.branch2 = nn.Sequential(
            BasicConv2d(1024, 192, 1), conv_7x1(192, 192), conv_1x7(192, 224), conv_7x1(224, 224), conv_1x7(224, 256)
        )
        self.branch3 = nn.Sequential(avg_pool_3x3(), BasicConv2d(1024, 128, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class Reduction_B(nn.Module):
    """17x17 -> 8x8 (Figure 8): 1536 channels out."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(1024, 192, 1), BasicConv2d(192, 192, 3, stride=2))
        self.branch1 = nn.Sequential(
            BasicConv2d(1024, 256, 1), conv_1x7(256, 256), conv_7x1(256, 320), BasicConv2d(320, 320, 3, stride=2)
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class Inception_C(nn.Module):
    """8x8 block (Figure 6): 1536 channels in and out; two towers end in parallel 1x3 and 3x1 convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(1536, 256, 1)
        self.branch1_0 = BasicConv2d(1536, 384, 1)
        self.branch1_1a = conv_1x3(384, 256)
        self.branch1_1b = conv_3x1(384, 256)
        self.branch2_0 = BasicConv2d(1536, 384, 1)
        self.branch2_1 = conv_3x1(384, 448)
        self.branch2_2 = conv_1x3(448, 512)
        self.branch2_3a = conv_1x3(512, 256)
        self.branch2_3b = conv_3x1(512, 256)
        self.branch3 = nn.Sequential(avg_pool_3x3(), BasicConv2d(1536, 256, 1))

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.branch1_0(x)
        x2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat(
            [
                self.branch0(x),
                self.branch1_1a(x1),
                self.branch1_1b(x1),
                self.branch2_3a(x2),
                self.branch2_3b(x2),
                self.branch3(x),
            ],
            1,
        )


class InceptionV4(nn.Module):
    def __init__(self, layout: InceptionV4Layout = INCEPTION_V4, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        stem = [
            BasicConv2d(3, 32, 3, stride=2),
            BasicConv2d(32, 32, 3),
            BasicConv2d(32, 64, 3, padding=1),
            Mixed_3a(),
            Mixed_4a(),
            Mixed_5a(),
        ]
        self.features = nn.Sequential(
            *stem,
            *(Inception_A() for _ in range(layout.blocks_a)),
            Reduction_A(),  # TF-slim's Mixed_6a
            *(Inception_B() for _ in range(layout.blocks_b)),
            Reduction_B(),  # TF-slim's Mixed_7a
            *(Inception_C() for _ in range(layout.blocks_c)),
        )
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.last_linear = nn.Linear(NUM_FEATURES, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.global_pool(self.features(x)).flatten(1)
        return self.last_linear(self.dropout(x))


# --- Inception-ResNet-v2 (Figure 15, as released) ---------------------------------------------------------------------


class Mixed_5b(nn.Module):
    """The released stem's last block, an Inception-v3-style 35x35 module: 192 -> 320 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(192, 96, 1)
        self.branch1 = nn.Sequential(BasicConv2d(192, 48, 1), BasicConv2d(48, 64, 5, padding=2))
        self.branch2 = nn.Sequential(
            BasicConv2d(192, 64, 1), BasicConv2d(64, 96, 3, padding=1), BasicConv2d(96, 96, 3, padding=1)
        )
        self.branch3 = nn.Sequential(avg_pool_3x3(), BasicConv2d(192, 64, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class Block35(nn.Module):
    """Inception-ResNet-A at 320 channels: three towers, a linear 1x1 back to 320, scaled residual."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(320, 32, 1)
        self.branch1 = nn.Sequential(BasicConv2d(320, 32, 1), BasicConv2d(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(
            BasicConv2d(320, 32, 1), BasicConv2d(32, 48, 3, padding=1), BasicConv2d(48, 64, 3, padding=1)
        )
        self.conv2d = nn.Conv2d(128, 320, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.conv2d(torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1))
        return self.relu(x + self.scale * residual)


class Mixed_6a(nn.Module):
    """Reduction-A (Figure 7) with Table 1's Inception-ResNet-v2 row, k=256, l=256, m=384, n=384: 320 -> 1088."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(320, 384, 3, stride=2)
        self.branch1 = nn.Sequential(
            BasicConv2d(320, 256, 1), BasicConv2d(256, 256, 3, padding=1), BasicConv2d(256, 384, 3, stride=2)
        )
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class Block17(nn.Module):
    """Inception-ResNet-B at 1088 channels: a 1x1 tower beside a factorised 7x7, scaled residual."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(1088, 192, 1)
        self.branch1 = nn.Sequential(BasicConv2d(1088, 128, 1), conv_1x7(128, 160), conv_7x1(160, 192))
        self.conv2d = nn.Conv2d(384, 1088, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.conv2d(torch.cat([self.branch0(x), self.branch1(x)], 1))
        return self.relu(x + self.scale * residual)


class Mixed_7a(nn.Module):
    """Reduction-B of Inception-ResNet-v2: 1088 -> 2080 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 288, 3, stride=2))
        self.branch2 = nn.Sequential(
            BasicConv2d(1088, 256, 1), BasicConv2d(256, 288, 3, padding=1), BasicConv2d(288, 320, 3, stride=2)
        )
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class Block8(nn.Module):
    """Inception-ResNet-C at 2080 channels: a 1x1 tower beside a factorised 3x3, scaled residual; the
    network's last block has no ReLU after the addition."""

    def __init__(self, scale: float = 1.0, no_relu: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(2080, 192, 1)
        self.branch1 = nn.Sequential(BasicConv2d(2080, 192, 1), conv_1x3(192, 224), conv_3x1(224, 256))
        self.conv2d = nn.Conv2d(448, 2080, 1)
        self.relu = nn.Identity() if no_relu else nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        residual = self.conv2d(torch.cat([self.branch0(x), self.branch1(x)], 1))
        return self.relu(x + self.scale * residual)


class InceptionResNetV2(nn.Module):
    def __init__(
        self, layout: InceptionResNetV2Layout = INCEPTION_RESNET_V2, num_classes: int = 1000, dropout: float = 0.2
    ) -> None:
        super().__init__()
        (n35, n17, n8), (s35, s17, s8) = layout.repeats, layout.scales
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed_5b()
        self.repeat = nn.Sequential(*(Block35(s35) for _ in range(n35)))
        self.mixed_6a = Mixed_6a()
        self.repeat_1 = nn.Sequential(*(Block17(s17) for _ in range(n17)))
        self.mixed_7a = Mixed_7a()
        self.repeat_2 = nn.Sequential(*(Block8(s8) for _ in range(n8)))
        self.block8 = Block8(no_relu=True)
        self.conv2d_7b = BasicConv2d(2080, NUM_FEATURES, 1)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.last_linear = nn.Linear(NUM_FEATURES, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x)))
        x = self.repeat(self.mixed_5b(self.maxpool_5a(x)))
        x = self.repeat_2(self.mixed_7a(self.repeat_1(self.mixed_6a(x))))
        x = self.conv2d_7b(self.block8(x))
        return self.last_linear(self.dropout(self.global_pool(x).flatten(1)))


# --- registration -----------------------------------------------------------------------------------------------------


def _register(name: str, network: type[nn.Module]) -> None:
    # Dropout 0.2 is Figures 9 and 15's "keep 0.8"; it acts in training only.
    def build(input_size: tuple[int, ...], num_classes: int = 1000, dropout: float = 0.2) -> nn.Module:
        return network(num_classes=num_classes, dropout=dropout)

    register_model(
        name,
        family="inception",
        task="image-classification",
        default_input=(3, 299, 299),
        preprocess=PREPROCESS,
        classes=imagenet_classes(),
        paper=PAPER,
        published=None,  # the paper prints no parameter or operation counts
    )(build)


_register("inception_v4", InceptionV4)
_register("inception_resnet_v2", InceptionResNetV2)
