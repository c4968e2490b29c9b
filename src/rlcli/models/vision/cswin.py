"""CSWin Transformer: "CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows"
(Dong et al., CVPR 2022).

A 7x7 stride-4 convolutional token embedding, then four stages of CSWin blocks joined by 3x3 stride-2 convolutions
that halve the resolution and double the channels. A block is LayerNorm -> cross-shaped window self-attention ->
LayerNorm -> MLP, both residual. The attention splits channels and heads in two halves: one attends within
full-height stripes ``sw`` tokens wide, the other within full-width stripes ``sw`` tokens high; in the last stage the
stripe is the whole map, so attention is global with one branch. LePE (locally-enhanced positional encoding) adds a
depthwise 3x3 convolution of V, run inside each stripe, to the attention output.

The stripe widths depend on the input: the official 224 px models use (1, 2, 7, 7) and the 384 px fine-tuned ones
(1, 2, 12, 12) — in both, stages 3 and 4 use the side of the last stage's map (input / 32). The builder applies that
rule at the input it is given, so ``--input-size 384`` gives the 384 models (same parameters, other stripes).

Module names follow the official ``models/cswin.py`` (``stage1_conv_embed``, ``stage1.0.attns.0.get_v``,
``merge1.conv`` ...), so the released checkpoints load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlcli.core.images import Preprocess
from rlcli.errors import ModelRunError
from rlcli.models.cards import Paper, Published, imagenet_classes
from rlcli.models.layers import Mlp
from rlcli.models.registry import register_model


@dataclass(frozen=True)
class CSWinConfig:
    embed_dim: int  # C, the channels of stage 1 (doubled by each merge)
    depths: tuple[int, int, int, int]  # blocks per stage
    heads: tuple[int, int, int, int]  # attention heads per stage
    mlp_ratio: float = 4.0


# The official CSWin_64_12211_tiny_224, CSWin_64_24322_small_224, CSWin_96_24322_base_224 and
# CSWin_144_24322_large_224 (the 384 models are the same networks with wider stripes). Published figures: the
# official README at 224 px (params, "FLOPs" that are multiply-accumulates).
VARIANTS: dict[str, tuple[CSWinConfig, str, str]] = {
    "cswin_t": (CSWinConfig(64, (1, 2, 21, 1), (2, 4, 8, 16)), "23M", "4.3G"),
    "cswin_s": (CSWinConfig(64, (2, 4, 32, 2), (2, 4, 8, 16)), "35M", "6.9G"),
    "cswin_b": (CSWinConfig(96, (2, 4, 32, 2), (4, 8, 16, 32)), "78M", "15.0G"),
    "cswin_l": (CSWinConfig(144, (2, 4, 32, 2), (6, 12, 24, 24)), "173M", "31.5G"),
}

# Why rl's count differs from the README beyond rounding: each found by counting the official models/cswin.py
# (sum of p.numel(), and torch's FlopCounterMode on its forward), which gives rl's numbers exactly.
NOTES = {
    "cswin_t": "the official models/cswin.py builds 22,320,552 parameters, rl's count: the README's 23M is more than "
    "the released code builds",
    "cswin_s": "FlopCounterMode on the official models/cswin.py gives rl's 6.80 G multiply-accumulates: the README's "
    "6.9G is more than the released code computes",
    "cswin_b": "the official models/cswin.py builds 77,382,184 parameters, rl's count: the README's 78M is more than "
    "the released code builds",
    "cswin_l": "FlopCounterMode on the official models/cswin.py gives rl's 33.13 G multiply-accumulates: the README's "
    "31.5G is less than the released code computes",
}

PAPER = Paper(
    title="CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows",
    authors="Xiaoyi Dong, Jianmin Bao, Dongdong Chen, Weiming Zhang, Nenghai Yu, Lu Yuan, Dong Chen, Baining Guo",
    year=2022,
    url="https://arxiv.org/abs/2107.00652",
    arxiv="2107.00652",
)

# The official evaluation (main.py: timm's resolve_data_config over the model's default_cfg 'cswin_224'): crop_pct
# 0.9 -> resize floor(224 / 0.9) = 248, bicubic, ImageNet mean/std.
PREPROCESS = Preprocess(resize=248, crop=224, interpolation="bicubic")


def stripe_widths(side: int) -> tuple[int, int, int, int]:
    """The stripe width of each stage for a ``side`` x ``side`` input: (1, 2, side/32, side/32), which is the
    official (1, 2, 7, 7) at 224 px and (1, 2, 12, 12) at 384 px."""
    return (1, 2, side // 32, side // 32)


class TokensFromMap(nn.Module):
    """(B, C, H, W) -> (B, H*W, C): einops' ``Rearrange('b c h w -> b (h w) c')`` in the official embedding."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)


class LePEAttention(nn.Module):
    """Self-attention inside stripes of ``stripe_h`` x ``stripe_w`` tokens, plus LePE: a depthwise 3x3 convolution
    of V computed in each stripe (zero padding at the stripe's border), added to the attention output."""

    def __init__(self, dim: int, resolution: int, stripe_h: int, stripe_w: int, num_heads: int) -> None:
        super().__init__()
        self.resolution, self.stripe_h, self.stripe_w, self.num_heads = resolution, stripe_h, stripe_w, num_heads
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)

    def stripes(self, x: Tensor) -> Tensor:
        """(B, H*W, C) -> (B * stripes, C, stripe_h, stripe_w)."""
        b, _, c = x.shape
        side, sh, sw = self.resolution, self.stripe_h, self.stripe_w
        x = x.transpose(1, 2).reshape(b, c, side // sh, sh, side // sw, sw)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(-1, c, sh, sw)

    def heads(self, x: Tensor) -> Tensor:
        """(B', C, stripe_h, stripe_w) -> (B', heads, stripe_h * stripe_w, C / heads)."""
        n, c = x.shape[:2]
        return x.reshape(n, self.num_heads, c // self.num_heads, -1).transpose(2, 3)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, _, c = q.shape
        v_stripes = self.stripes(v)
        lepe = self.heads(self.get_v(v_stripes))
        q, k, v = self.heads(self.stripes(q)), self.heads(self.stripes(k)), self.heads(v_stripes)
        x = F.scaled_dot_product_attention(q, k, v) + lepe  # scale (C / heads) ** -0.5, as the official qk_scale
        side, sh, sw = self.resolution, self.stripe_h, self.stripe_w
        x = x.transpose(1, 2).reshape(b, side // sh, side // sw, sh, sw, c)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(b, side * side, c)


class CSWinBlock(nn.Module):
    """Pre-norm block: cross-shaped window attention (half the channels and heads attend within full-height stripes
    ``stripe`` tokens wide, the other half within full-width stripes ``stripe`` tokens high; one global branch when
    the stripe covers the map, as in the last stage) and an MLP."""

    def __init__(self, dim: int, resolution: int, num_heads: int, stripe: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.qkv = nn.Linear(dim, dim * 3)
        self.norm1 = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        if stripe == resolution:
            branches = [LePEAttention(dim, resolution, resolution, resolution, num_heads)]
        else:
            columns = LePEAttention(dim // 2, resolution, resolution, stripe, num_heads // 2)
            rows = LePEAttention(dim // 2, resolution, stripe, resolution, num_heads // 2)
            branches = [columns, rows]
        self.attns = nn.ModuleList(branches)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, c).unbind(2)
        if len(self.attns) == 1:
            attended = self.attns[0](q, k, v)
        else:
            half = c // 2
            parts = [attn(q[..., s], k[..., s], v[..., s]) for attn, s in zip(self.attns, _halves(half), strict=True)]
            attended = torch.cat(parts, dim=2)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


def _halves(half: int) -> tuple[slice, slice]:
    return slice(None, half), slice(half, None)


class Merge_Block(nn.Module):
    """3x3 stride-2 convolution between stages (half the resolution, twice the channels), then LayerNorm."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, 2, 1)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, x: Tensor, resolution: int) -> Tensor:
        b, _, c = x.shape
        x = self.conv(x.transpose(1, 2).reshape(b, c, resolution, resolution))
        return self.norm(x.flatten(2).transpose(1, 2))


class CSWinTransformer(nn.Module):
    def __init__(self, config: CSWinConfig, img_size: int = 224, num_classes: int = 1000) -> None:
        super().__init__()
        self.img_size = img_size
        dim = config.embed_dim
        self.stage1_conv_embed = nn.Sequential(nn.Conv2d(3, dim, 7, 4, 2), TokensFromMap(), nn.LayerNorm(dim))
        self.resolutions = tuple(img_size // 2**i for i in range(2, 6))
        stripes = stripe_widths(img_size)
        for i, (depth, heads) in enumerate(zip(config.depths, config.heads, strict=True)):
            if i > 0:
                setattr(self, f"merge{i}", Merge_Block(dim, dim * 2))
                dim *= 2
            blocks = [CSWinBlock(dim, self.resolutions[i], heads, stripes[i], config.mlp_ratio) for _ in range(depth)]
            setattr(self, f"stage{i + 1}", nn.ModuleList(blocks))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ModelRunError(
                f"this CSWin was built for {self.img_size}x{self.img_size} inputs, not "
                f"{x.shape[-2]}x{x.shape[-1]} (give --input-size {x.shape[-1]} to build it for that size)"
            )
        x = self.stage1_conv_embed(x)
        for i, stage in enumerate((self.stage1, self.stage2, self.stage3, self.stage4)):
            if i > 0:
                x = getattr(self, f"merge{i}")(x, self.resolutions[i - 1])
            for block in stage:
                x = block(x)
        return self.head(self.norm(x).mean(dim=1))


def check_input_size(input_size: tuple[int, ...]) -> int:
    """The side of a valid CSWin input (3 x S x S, S a multiple of 32), or a ModelRunError saying why not."""
    if len(input_size) != 3 or input_size[0] != 3 or input_size[1] != input_size[2] or input_size[1] % 32:
        shown = "x".join(str(s) for s in input_size)
        raise ModelRunError(f"CSWin takes 3xSxS images with S a multiple of 32 (224, 384 ...), not {shown}")
    return input_size[1]


def _register(name: str, config: CSWinConfig, params: str, macs: str) -> None:
    def build(input_size: tuple[int, ...], num_classes: int = 1000) -> CSWinTransformer:
        return CSWinTransformer(config, img_size=check_input_size(input_size), num_classes=num_classes)

    published = Published(
        input_size=(3, 224, 224),
        source="official README",
        params=params,
        macs=macs,
        convention="the README's 'FLOPs' are multiply-accumulates",
        note=NOTES.get(name, ""),
    )
    register_model(
        name,
        family="cswin",
        task="image-classification",
        default_input=(3, 224, 224),
        preprocess=PREPROCESS,
        classes=imagenet_classes(),
        paper=PAPER,
        published=published,
    )(build)


for _name, (_config, _params, _macs) in VARIANTS.items():
    _register(_name, _config, _params, _macs)
