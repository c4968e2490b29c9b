"""Squeeze-and-Excitation networks: "Squeeze-and-Excitation Networks" (Hu et al., 2017; arXiv v4, TPAMI 2019).

An SE block squeezes each channel of a residual branch to one number (global average pooling), excites them through
two fully connected layers with a bottleneck of ratio r = 16 (ReLU, then a sigmoid) and rescales the channels by the
result before the residual addition (Section 3, Fig. 3). SE-ResNet-50 and SE-ResNeXt-50 (32x4d) put one in every
bottleneck of ResNet-50 / ResNeXt-50 (Table 1).

The layout is the paper's Caffe one, as the official (Caffe) weights were trained and as Cadene's PyTorch port of
them (pretrainedmodels ``senet.py``; timm's ``legacy_seresnet50``) builds it, with the port's module names
(``layer0.conv1``, ``layer1.0.se_module.fc1`` ...), so its weights load as they are:

- SE-ResNet bottlenecks put the stride-2 on the first 1x1 convolution (torchvision's ResNet puts it on the 3x3);
  SE-ResNeXt bottlenecks keep it on the grouped 3x3, as the port does.
- the SE's fully connected layers are 1x1 convolutions with biases (``fc1``, ``fc2``);
- the stem's max pooling has no padding but rounds up (``ceil_mode``, Caffe's rounding): at 224 px the same 56x56.
- global pooling is adaptive where the port has a fixed 7x7 average pool: equal at 224 px, and other sizes run.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

from rlcli.core.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from rlcli.models.cards import Paper, Published, imagenet_classes
from rlcli.models.registry import register_model

REDUCTION = 16  # r, the SE bottleneck ratio of every model in the paper (Section 6.1, Table 10)
STAGE_PLANES = (64, 128, 256, 512)  # bottleneck widths of ResNet-50's four stages; outputs are 4x these


@dataclass(frozen=True)
class Variant:
    layers: tuple[int, int, int, int]  # bottlenecks per stage
    groups: int  # cardinality of the 3x3 convolution
    base_width: int | None  # ResNeXt's width of one group at 64 planes (None: a ResNet bottleneck)
    params: str | None  # as printed (Table 10: SE-ResNet-50 at r = 16)
    gflops: str  # Table 2, the SENet column: multiply-adds at 224 px
    note: str


# Table 1 (layouts) and Table 2 (GFLOPs at 224x224, "SENet" column).
VARIANTS = {
    "se_resnet50": Variant(
        layers=(3, 4, 6, 3),
        groups=1,
        base_width=None,
        params="28.1M",
        gflops="3.87G",
        note="the paper's ~3.87 G adds to ResNet-50's 3.86 G (rl: 3.858 G for this layout) the SE blocks' FCs, pooling "
        "and channel scaling (Section 4); rl counts only the FCs (2.5 M MACs) and equals torch's FlopCounterMode on "
        "the official port",
    ),
    "se_resnext50_32x4d": Variant(
        layers=(3, 4, 6, 3),
        groups=32,
        base_width=4,
        params=None,
        gflops="4.25G",
        note="Table 2 prints the ResNeXt-50 baseline at 4.24 G where rl counts that layout (torchvision's "
        "resnext50_32x4d) at 4.230 G, and its SE cost includes pooling and channel scaling (Section 4); rl counts "
        "only the SE FCs (2.5 M MACs) and equals torch's FlopCounterMode on the official port",
    ),
}

PAPER = Paper(
    title="Squeeze-and-Excitation Networks",
    authors="Jie Hu, Li Shen, Samuel Albanie, Gang Sun, Enhua Wu",
    year=2017,
    url="https://arxiv.org/abs/1709.01507",
    arxiv="1709.01507",
)

# Cadene's evaluation of the ported weights (pretrainedmodels utils.TransformImage, scale 0.875, and its
# pretrained_settings): shorter side floor(224 / 0.875) = 256, torchvision's default bilinear, centre 224,
# RGB in [0, 1], ImageNet mean/std. timm's legacy_seresnet50 card says the same.
PREPROCESS = Preprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")


class SEModule(nn.Module):
    """Squeeze (global average pool) -> excitation (FC, ReLU, FC, sigmoid) -> channel-wise scale (Eqs. 2-4)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * scale


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 with BatchNorm and ReLU, the SE block on the branch, then the residual addition."""

    expansion = 4

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d, out_channels: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = conv1
        self.bn1 = nn.BatchNorm2d(conv1.out_channels)
        self.conv2 = conv2
        self.bn2 = nn.BatchNorm2d(conv2.out_channels)
        self.conv3 = nn.Conv2d(conv2.out_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SEModule(out_channels, REDUCTION)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.se_module(out) + residual)


class SEResNetBottleneck(Bottleneck):
    """ResNet's bottleneck with the stride on the first 1x1 convolution (the Caffe layout)."""

    def __init__(self, in_channels: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        conv1 = nn.Conv2d(in_channels, planes, 1, stride=stride, bias=False)
        conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        super().__init__(conv1, conv2, planes * self.expansion, downsample)


class SEResNeXtBottleneck(Bottleneck):
    """ResNeXt's bottleneck (type C: a grouped 3x3 convolution), strided on the 3x3."""

    def __init__(
        self, in_channels: int, planes: int, stride: int, downsample: nn.Module | None, groups: int, base_width: int
    ) -> None:
        width = planes * base_width // 64 * groups
        conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        super().__init__(conv1, conv2, planes * self.expansion, downsample)


class SENet(nn.Module):
    def __init__(self, variant: Variant, num_classes: int = 1000) -> None:
        super().__init__()
        stem = 64
        self.layer0 = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False),
                bn1=nn.BatchNorm2d(stem),
                relu1=nn.ReLU(inplace=True),
                pool=nn.MaxPool2d(3, stride=2, ceil_mode=True),
            )
        )
        channels = stem
        for index, (planes, blocks) in enumerate(zip(STAGE_PLANES, variant.layers, strict=True), start=1):
            stage = self._stage(variant, channels, planes, blocks, stride=1 if index == 1 else 2)
            self.add_module(f"layer{index}", stage)
            channels = planes * Bottleneck.expansion
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(channels, num_classes)

    @staticmethod
    def _stage(variant: Variant, in_channels: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_channels = planes * Bottleneck.expansion
        layers = []
        for i in range(blocks):
            downsample = None
            if i == 0 and (stride != 1 or in_channels != out_channels):
                downsample = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
                )
            block_stride = stride if i == 0 else 1
            if variant.base_width is None:
                layers.append(SEResNetBottleneck(in_channels, planes, block_stride, downsample))
            else:
                layers.append(
                    SEResNeXtBottleneck(
                        in_channels, planes, block_stride, downsample, variant.groups, variant.base_width
                    )
                )
            in_channels = out_channels
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        x = self.layer0(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def logits(self, x: Tensor) -> Tensor:
        return self.last_linear(self.avg_pool(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.features(x))


def _register(name: str, variant: Variant) -> None:
    def build(input_size: tuple[int, ...], num_classes: int = 1000) -> SENet:
        return SENet(variant, num_classes=num_classes)

    published = Published(
        input_size=(3, 224, 224),
        source="Table 2 (GFLOPs), Table 10 (params)" if variant.params else "Table 2",
        params=variant.params,
        macs=variant.gflops,
        convention="the paper's GFLOPs are multiply-adds",
        note=variant.note,
    )
    register_model(
        name,
        family="senet",
        task="image-classification",
        default_input=(3, 224, 224),
        preprocess=PREPROCESS,
        classes=imagenet_classes(),
        paper=PAPER,
        published=published,
    )(build)


for _name, _variant in VARIANTS.items():
    _register(_name, _variant)
