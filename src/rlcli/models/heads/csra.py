"""CSRA: "Residual Attention: A Simple but Effective Method for Multi-Label Recognition" (Zhu & Wu, ICCV 2021).

Per class i, with x_j the backbone feature at position j and m_i the class's 1x1-conv classifier, L2-normalised:

    s_j^i  = x_j . m_i / |m_i|                         class score at position j
    base_i = mean_j s_j^i                              class-agnostic average pooling
    att_i  = sum_j s_j^i softmax_j(T s_j^i)            class-specific attention; T = inf is max_j s_j^i
    logit_i = base_i + lambda att_i

A multi-head CSRA sums heads of different temperatures T (1, 2, 4, 6 or 8 heads), each with its own classifier.
Module and parameter names follow the official code (``classifier.multi_head.{i}.head.weight`` after a torchvision
ResNet without its ``fc``), so the authors' released checkpoints load as they are.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rlcli.core.images import Preprocess
from rlcli.models.cards import Paper
from rlcli.models.registry import register_model

# The official temperature schedules by number of heads (the official code writes T = inf as 99).
TEMPERATURES: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (1.0, math.inf),
    4: (1.0, 2.0, 4.0, math.inf),
    6: (1.0, 2.0, 3.0, 4.0, 5.0, math.inf),
    8: (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, math.inf),
}

# lambda of the authors' released checkpoints, by dataset
OFFICIAL_LAMBDA = {"voc2007": 0.1, "coco": 0.5}

RESNET_LAYOUTS = {  # depth -> (bottleneck blocks?, blocks per stage), as torchvision builds them
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}


class CSRA(nn.Module):
    """One head: a bias-free 1x1 convolution classifier with residual attention at temperature ``temperature``."""

    def __init__(self, channels: int, num_classes: int, temperature: float, lam: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.lam = lam
        self.head = nn.Conv2d(channels, num_classes, kernel_size=1, bias=False)

    def class_scores(self, features: torch.Tensor) -> torch.Tensor:
        """s_j^i for every class and position: [batch, classes, H, W]."""
        norms = self.head.weight.flatten(1).norm(dim=1)  # one per class
        return self.head(features) / norms.view(1, -1, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        scores = self.class_scores(features).flatten(2)
        base = scores.mean(dim=2)
        if math.isinf(self.temperature):
            attention = scores.amax(dim=2)
        else:
            attention = (scores * torch.softmax(self.temperature * scores, dim=2)).sum(dim=2)
        return base + self.lam * attention


class MultiHeadCSRA(nn.Module):
    """Heads with the official temperatures for their count, summed."""

    def __init__(self, num_heads: int, lam: float, channels: int, num_classes: int) -> None:
        super().__init__()
        if num_heads not in TEMPERATURES:
            raise ValueError(f"CSRA has 1, 2, 4, 6 or 8 heads, not {num_heads}")
        self.multi_head = nn.ModuleList(CSRA(channels, num_classes, t, lam) for t in TEMPERATURES[num_heads])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(features) for head in self.multi_head]).sum(dim=0)

    def attention_maps(self, features: torch.Tensor) -> torch.Tensor:
        """Class score maps averaged over heads: where each class was found, [batch, classes, H, W]."""
        return torch.stack([head.class_scores(features) for head in self.multi_head]).mean(dim=0)


class ResNetCSRA(nn.Module):
    """A torchvision ResNet without its pooling and fc, followed by a (multi-head) CSRA classifier."""

    def __init__(self, depth: int = 101, num_classes: int = 20, num_heads: int = 1, lam: float = 0.1) -> None:
        super().__init__()
        import torchvision

        if depth not in RESNET_LAYOUTS:
            raise ValueError(f"no ResNet of depth {depth}; choose {', '.join(map(str, RESNET_LAYOUTS))}")
        resnet = torchvision.models.get_model(f"resnet{depth}")
        self.depth, self.num_heads, self.lam = depth, num_heads, lam
        # Same attribute names as torchvision's ResNet, so the backbone's keys are torchvision's.
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        channels = resnet.fc.in_features
        self.classifier = MultiHeadCSRA(num_heads, lam, channels, num_classes)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        return self.classifier(features), self.classifier.attention_maps(features)


def infer_resnet_depth(state: dict[str, torch.Tensor]) -> int | None:
    """The depth of the ResNet whose keys are in ``state`` (from its block counts), or None."""
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in state)
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{stage}.")}) for stage in (1, 2, 3, 4))
    for depth, layout in RESNET_LAYOUTS.items():
        if layout == (bottleneck, blocks):
            return depth
    return None


def head_count(state: dict[str, torch.Tensor]) -> int:
    return len([k for k in state if k.startswith("classifier.multi_head.") and k.endswith(".head.weight")])


# Evaluation preprocessing of the official checkpoints: a 448 x 448 resize (aspect ratio not kept), pixels in [0, 1].
OFFICIAL_PREPROCESS = Preprocess(resize=448, crop=448, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), square=True)

PAPER = Paper(
    title="Residual Attention: A Simple but Effective Method for Multi-Label Recognition",
    authors="Ke Zhu, Jianxin Wu",
    year=2021,
    url="https://arxiv.org/abs/2108.02456",
    arxiv="2108.02456",
)


def _register(depth: int) -> None:
    def build(input_size: tuple[int, ...], num_classes: int = 20, num_heads: int = 1, lam: float = 0.1) -> ResNetCSRA:
        return ResNetCSRA(depth=depth, num_classes=num_classes, num_heads=num_heads, lam=lam)

    register_model(
        f"csra_resnet{depth}",
        family="csra",
        task="multi-label",
        default_input=(3, 448, 448),
        preprocess=OFFICIAL_PREPROCESS,
        paper=PAPER,
    )(build)


for _depth in RESNET_LAYOUTS:
    _register(_depth)
