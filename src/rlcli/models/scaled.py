"""ResNet, ResNeXt and MobileNet families with a width knob, for comparisons at a matched compute budget.

- ResNet (He et al., 2016) and ResNeXt (Xie et al., 2017): ResNet-50's layout of bottleneck blocks [3, 4, 6, 3]
  with every stage width (and the stem) multiplied by ``width``. ResNeXt keeps the paper's template of
  ``groups`` paths of ``width_per_group`` channels each (32 x 4d), scaled with the stage width. At width 1 they
  are exactly torchvision's resnet50 and resnext50_32x4d.
- MobileNet v1 (Howard et al., 2017): the paper's width multiplier alpha (``rlcli.models.vision.mobilenet_v1``).
- MobileNet v2 (Sandler et al., 2018) and v3-large (Howard et al., 2019): torchvision's own width multiplier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

RESNET50_LAYERS = (3, 4, 6, 3)
RESNET_STAGE_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class FamilyConfig:
    """One member of a family: what to build and how its knobs are set (for the table)."""

    family: str
    width: float
    groups: int = 1
    width_per_group: int = 64

    def describe(self) -> str:
        if self.family in ("resnet", "resnext"):
            widths = "/".join(str(w) for w in stage_widths(self.width))
            paths = f", {self.groups} x {scaled_group_width(self)}d" if self.family == "resnext" else ""
            return f"width x{self.width:.3f} (stages {widths}{paths})"
        return f"width_mult {self.width:.3f}"

    def build(self, num_classes: int = 1000) -> nn.Module:
        if self.family in ("resnet", "resnext"):
            return ScaledResNet(
                widths=stage_widths(self.width),
                stem=max(8, round(64 * self.width)),
                groups=self.groups,
                width_per_group=self.width_per_group,
                num_classes=num_classes,
            )
        if self.family == "mobilenet_v1":
            from rlcli.models.vision.mobilenet_v1 import MobileNetV1

            return MobileNetV1(width=self.width, num_classes=num_classes)
        if self.family == "mobilenet_v2":
            from torchvision.models import MobileNetV2

            return MobileNetV2(num_classes=num_classes, width_mult=self.width)
        if self.family == "mobilenet_v3":
            from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

            # torchvision's builder does not pass width_mult on; its configuration function does.
            setting, last_channel = _mobilenet_v3_conf("mobilenet_v3_large", width_mult=self.width)
            return MobileNetV3(setting, last_channel, num_classes=num_classes)
        raise ValueError(f"unknown family {self.family}")

    def stock_name(self) -> str | None:
        """The registered model this configuration is exactly, if any (torchvision's carry published accuracy)."""
        if self.width != 1.0:
            return None
        if self.family == "resnet":
            return "resnet50"
        if self.family == "resnext" and (self.groups, self.width_per_group) in ((32, 4),):
            return "resnext50_32x4d"
        stock = {"mobilenet_v1": "mobilenet_v1", "mobilenet_v2": "mobilenet_v2", "mobilenet_v3": "mobilenet_v3_large"}
        return stock.get(self.family)


def stage_widths(width: float) -> tuple[int, ...]:
    return tuple(max(8, round(base * width)) for base in RESNET_STAGE_WIDTHS)


def scaled_group_width(config: FamilyConfig) -> int:
    """Channels per path in the first stage: torchvision's int(planes * width_per_group / 64)."""
    return int(stage_widths(config.width)[0] * config.width_per_group / 64)


class ScaledResNet(nn.Module):
    """torchvision's ResNet with bottleneck blocks, every width a parameter (torchvision fixes 64..512)."""

    def __init__(
        self,
        widths: tuple[int, ...] = RESNET_STAGE_WIDTHS,
        stem: int = 64,
        layers: tuple[int, ...] = RESNET50_LAYERS,
        groups: int = 1,
        width_per_group: int = 64,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        from torchvision.models.resnet import Bottleneck

        if any(int(w * width_per_group / 64) < 1 for w in widths):
            raise ValueError("too narrow: a bottleneck path would have no channel")
        self.inplanes, self.groups, self.base_width = stem, groups, width_per_group
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = [
            self._make_stage(Bottleneck, w, n, 1 if i == 0 else 2)
            for i, (w, n) in enumerate(zip(widths, layers, strict=True))
        ]
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * Bottleneck.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_stage(self, block: Any, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [
            block(self.inplanes, planes, groups=self.groups, base_width=self.base_width) for _ in range(blocks - 1)
        ]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))
