"""CSRA: "Residual Attention: A Simple but Effective Method for Multi-Label Recognition" (Zhu & Wu, ICCV 2021).

Per class i, with x_j the backbone feature at position j and m_i the class's 1x1-conv classifier, L2-normalised:

    s_j^i  = x_j . m_i / |m_i|                         class score at position j
    base_i = mean_j s_j^i                              class-agnostic average pooling
    att_i  = sum_j s_j^i softmax_j(T s_j^i)            class-specific attention; T = inf is max_j s_j^i
    logit_i = base_i + lambda att_i

A multi-head CSRA sums heads of different temperatures T (1, 2, 4, 6 or 8 heads), each with its own classifier.
Module and parameter names follow the official code (``classifier.multi_head.{i}.head.weight`` after a torchvision
ResNet without its ``fc``, or after the official ``pipeline/vit_csra.py`` ViT), so the authors' released checkpoints
load as they are.

Backbones:
- ``csra_resnet{18,34,50,101,152}``: torchvision's ResNet without pooling and fc (the paper's ResNet-101).
- ``csra_vit_b16``, ``csra_vit_l16``: the original ViT (Dosovitskiy et al.) as the official ViT-CSRA builds it: the
  class token goes through the transformer with the patches; after the final LayerNorm it is dropped and the patch
  tokens are laid out as a map (14 x 14 at 224 px, 28 x 28 at 448 px) for the CSRA heads.
- ``csra_tiny``: not from the paper: a four-stage convolutional network of 62 K parameters, for training heads on a
  CPU in seconds (rl's tests train it) and for trying the command before a long run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from rlcli.core.images import Preprocess
from rlcli.models.cards import Paper
from rlcli.models.layers import Mlp
from rlcli.models.registry import register_model

# The official temperature schedules by number of heads (the official code writes T = inf as 99).
TEMPERATURES: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (1.0, math.inf),
    4: (1.0, 2.0, 4.0, math.inf),
    6: (1.0, 2.0, 3.0, 4.0, 5.0, math.inf),
    8: (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, math.inf),
}

# lambda of the authors' released checkpoints, by dataset (their README's val.py commands)
OFFICIAL_LAMBDA = {"voc2007": 0.1, "coco": 0.5, "wider": 0.3}

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


# --- ViT-CSRA -------------------------------------------------------------------------------------------------

PATCH = 16


@dataclass(frozen=True)
class ViTConfig:
    embed_dim: int  # token width
    depth: int  # transformer blocks
    heads: int  # attention heads per block (not CSRA heads)
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6  # the official builders' partial(nn.LayerNorm, eps=1e-6)


# The official VIT_B16_224_CSRA and VIT_L16_224_CSRA (pipeline/vit_csra.py), qkv with bias.
VIT_VARIANTS = {
    "b16": ViTConfig(embed_dim=768, depth=12, heads=12),
    "l16": ViTConfig(embed_dim=1024, depth=24, heads=16),
}


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [batch, patches, dim], row-major over the grid


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as the official code's
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.attn = Attention(dim, config.heads)
        self.norm2 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTCSRA(nn.Module):
    """The official VIT_CSRA: ViT with its class token, final LayerNorm, then the patch tokens as a map for CSRA."""

    def __init__(
        self, variant: str = "b16", num_classes: int = 14, num_heads: int = 1, lam: float = 0.3, image_size: int = 224
    ) -> None:
        super().__init__()
        if image_size % PATCH:
            raise ValueError(f"ViT-CSRA takes sides that are a multiple of {PATCH} px, not {image_size}")
        config = VIT_VARIANTS[variant]
        self.variant, self.num_heads, self.lam, self.grid = variant, num_heads, lam, image_size // PATCH
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.classifier = MultiHeadCSRA(num_heads, lam, dim, num_classes)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.grid * PATCH, self.grid * PATCH):
            side = self.grid * PATCH
            raise ValueError(f"this ViT-CSRA takes {side} x {side} inputs, not {x.shape[-2]} x {x.shape[-1]}")
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        patches = self.norm(tokens)[:, 1:]  # the class token is dropped only here, after the final norm
        return patches.transpose(1, 2).reshape(len(x), -1, self.grid, self.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        return self.classifier(features), self.classifier.attention_maps(features)


def vit_image_size(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The input side a ViT-CSRA file was trained at, from its position table (1 + grid^2 rows)."""
    table = state.get("pos_embed")
    if table is None or table.dim() != 3:
        return {}
    grid = math.isqrt(table.shape[1] - 1)
    return {"image_size": grid * PATCH} if grid * grid == table.shape[1] - 1 else {}


def infer_vit_variant(state: dict[str, torch.Tensor]) -> str | None:
    """b16 or l16 from a ViT-CSRA state dict's width and depth, or None."""
    if "pos_embed" not in state or "patch_embed.proj.weight" not in state:
        return None
    width = int(state["pos_embed"].shape[-1])
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for name, config in VIT_VARIANTS.items():
        if (config.embed_dim, config.depth) == (width, depth):
            return name
    return None


# --- a tiny backbone for training on a CPU --------------------------------------------------------------------


class TinyCSRA(nn.Module):
    """Four 3x3 conv-BN-ReLU stages (16, 32, 64, 64 channels, total stride 8), then CSRA heads. Not from the paper:
    small enough that full training on a CPU takes seconds."""

    WIDTHS = (16, 32, 64, 64)
    STRIDES = (2, 2, 2, 1)

    def __init__(self, num_classes: int = 20, num_heads: int = 1, lam: float = 0.1) -> None:
        super().__init__()
        self.num_heads, self.lam = num_heads, lam
        layers: list[nn.Module] = []
        channels = 3
        for width, stride in zip(self.WIDTHS, self.STRIDES, strict=True):
            layers += [nn.Conv2d(channels, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = MultiHeadCSRA(num_heads, lam, channels, num_classes)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

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


# Wider-Attribute's 14 attributes in the order of its annotation files' attribute_id_map (the heads' order).
WIDER_ATTRIBUTES = (
    "Male", "longHair", "sunglass", "Hat", "Tshirt", "longSleeve", "formal", "shorts", "jeans", "longPants", "skirt",
    "faceMask", "logo", "stripe",
)  # fmt: skip

# Evaluation preprocessing of the official checkpoints (pipeline/dataset.py): a square resize (aspect ratio not
# kept), pixels in [0, 1] for VOC and COCO; Wider-Attribute's ViTs at 224 px, normalised with mean 0.5, std 0.5.
OFFICIAL_PREPROCESS = Preprocess(resize=448, crop=448, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), square=True)
WIDER_PREPROCESS = Preprocess(resize=224, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), square=True)


def official_preprocess(dataset: str | None, side: int | None = None) -> Preprocess | None:
    """The official evaluation transform for a dataset's released heads (None for an unknown dataset)."""
    if dataset == "wider":
        base = WIDER_PREPROCESS
    elif dataset in ("voc2007", "coco"):
        base = OFFICIAL_PREPROCESS
    else:
        return None
    return base if side is None else replace(base, resize=side, crop=side)


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


def _register_vit(variant: str) -> None:
    def build(
        input_size: tuple[int, ...] | None = None,
        num_classes: int = 14,
        num_heads: int = 1,
        lam: float = 0.3,
        image_size: int | None = None,
    ) -> ViTCSRA:
        side = image_size or (input_size[-1] if input_size else 224)
        return ViTCSRA(variant, num_classes=num_classes, num_heads=num_heads, lam=lam, image_size=side)

    register_model(
        f"csra_vit_{variant}",
        family="csra",
        task="multi-label",
        default_input=(3, 224, 224),
        preprocess=WIDER_PREPROCESS,
        classes=WIDER_ATTRIBUTES,
        paper=PAPER,
        arguments_from_state=vit_image_size,
    )(build)


for _variant in VIT_VARIANTS:
    _register_vit(_variant)


TINY_PREPROCESS = Preprocess(resize=64, crop=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), square=True)


@register_model("csra_tiny", family="csra", task="multi-label", default_input=(3, 64, 64), preprocess=TINY_PREPROCESS)
def _build_tiny(input_size=None, num_classes: int = 20, num_heads: int = 1, lam: float = 0.1) -> TinyCSRA:
    return TinyCSRA(num_classes=num_classes, num_heads=num_heads, lam=lam)
