"""SwinIR: "SwinIR: Image Restoration Using Swin Transformer" (Liang et al., ICCV Workshops 2021).

Image super-resolution in three parts (Section 3.1, Figure 2): a 3x3 convolution for shallow features; residual
Swin Transformer blocks (RSTB: Swin Transformer layers of window attention, plain and shifted in turn, then a 3x3
convolution and a residual connection) and one more 3x3 convolution for deep features; a long skip connection and
a sub-pixel (PixelShuffle) reconstruction. Classical SR (``swinir_x2``...) uses 6 RSTBs of 6 layers at 180 channels
and a conv -> (conv, PixelShuffle) x n -> conv upsampler; lightweight SR (``swinir_light_x2``...) 4 RSTBs at 60
channels and one conv + PixelShuffle ("pixelshuffledirect").

The network takes a low-resolution RGB image in [0, 1] and returns the image ``scale`` times larger. It subtracts
DIV2K's mean colour itself and pads the input (reflecting) to a multiple of the window size, cropping the output
back, as the official ``network_swinir.py`` does; so there is no preprocessing besides scaling pixels to [0, 1].

Module and buffer names are the official code's, so its released files (``{"params": state_dict}``,
e.g. ``001_classicalSR_DIV2K_s48w8_SwinIR-M_x2.pth``) load as they are. Those files hold the buffers
``relative_position_index`` and, for shifted layers, ``attn_mask`` computed for the training patch (48 or 64 px,
``s48``/``s64`` in the name): ``img_size`` sets that patch, and the mask is recomputed for other input sizes.
Stochastic depth (training only) is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlcli.models.cards import Paper, Published
from rlcli.models.layers import Mlp
from rlcli.models.registry import register_model

PAPER = Paper(
    title="SwinIR: Image Restoration Using Swin Transformer",
    authors="Jingyun Liang, Jiezhang Cao, Guolei Sun, Kai Zhang, Luc Van Gool, Radu Timofte",
    year=2021,
    url="https://arxiv.org/abs/2108.10257",
    arxiv="2108.10257",
)


@dataclass(frozen=True)
class SwinIRConfig:
    embed_dim: int  # channels C of every RSTB
    depths: tuple[int, ...]  # Swin Transformer layers per RSTB
    num_heads: tuple[int, ...]
    upsampler: str  # "pixelshuffle" (classical SR) or "pixelshuffledirect" (lightweight SR)
    img_size: int  # training patch (LR pixels): the size the stored attention masks are computed for
    window_size: int = 8
    mlp_ratio: float = 2.0


# Section 4.1 and the official main_test_swinir.py define_model(): classical SR is "SwinIR-M" (released files
# 001_classicalSR_DIV2K_s48w8_*, patch 48), lightweight SR "SwinIR-S" (002_lightweightSR_DIV2K_s64w8_*, patch 64).
CLASSICAL = SwinIRConfig(embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, upsampler="pixelshuffle", img_size=48)
LIGHTWEIGHT = SwinIRConfig(
    embed_dim=60, depths=(6,) * 4, num_heads=(6,) * 4, upsampler="pixelshuffledirect", img_size=64
)
NUM_FEAT = 64  # channels of the classical upsampler
RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K's mean colour, subtracted inside the network

CLASSICAL_INPUT = (3, 256, 256)  # the official README's runtime and FLOPs input (x4 on a 256x256 LR image)
MULT_ADDS = "Table 3's '#Mult-Adds' are multiply-accumulates ('multiply-accumulate operations', Section 4.3)"
# Table 3's figures are network_swinir.py's flops() at the LR size its __main__ uses, (1024 // s // 8 + 1) * 8 by
# (720 // s // 8 + 1) * 8, not at the 1280x720 HR image the text names: that reproduces 195.6G, 87.2G and 49.6G.
LIGHT_NOTE = (
    "#Params leave out the 24 relative-position-bias tables (official code: {with_tables:,} with, {without:,} "
    "without); #Mult-Adds are network_swinir.py's flops() at this LR size (the 1024x720 HR of its __main__, rounded "
    "up a window; the text says 1280x720), which counts the LayerNorms, conv_after_body as 3C² and the upsampling "
    "conv as 27C MACs per pixel (rl: 9C² and 27Cs²)"
)

VARIANTS: dict[str, tuple[SwinIRConfig, int, Published]] = {
    "swinir_x2": (CLASSICAL, 2, Published(
        input_size=CLASSICAL_INPUT, source="Section 4.3", params="11.8M",
        convention="the text's one parameter count for classical SwinIR ('11.8M'), printed without a scale",
    )),
    "swinir_x3": (CLASSICAL, 3, Published(
        input_size=CLASSICAL_INPUT, source="Section 4.3", params="11.8M",
        convention="the text's one parameter count for classical SwinIR ('11.8M'), printed without a scale",
        note="11.8M is the x2 network's count (official code: 11,752,487); x3's upsampling conv has 576 output "
        "channels, not 256 (11,937,127)",
    )),
    "swinir_x4": (CLASSICAL, 4, Published(
        input_size=CLASSICAL_INPUT, source="official README", params="11.9M", macs="788.6G",
        convention="the README's '#FLOPs' are multiply-accumulates (network_swinir.py's flops(); issue #18: on a "
        "256x256 LR image for x4 SR)",
        note="near network_swinir.py's flops() at 256x256 (788.1G), which has no count for the upsampler "
        "(conv_before_upsample, upsample, conv_last: 56.9G), counts conv_after_body as 3C² MACs per pixel, not 9C² "
        "(12.7G), and counts the LayerNorms (0.9G)",
    )),
    "swinir_light_x2": (LIGHTWEIGHT, 2, Published(
        input_size=(3, 520, 368), source="Table 3", params="878K", macs="195.6G", convention=MULT_ADDS,
        note=LIGHT_NOTE.format(with_tables=910_152, without=877_752),
    )),
    "swinir_light_x3": (LIGHTWEIGHT, 3, Published(
        input_size=(3, 344, 248), source="Table 3", params="886K", macs="87.2G", convention=MULT_ADDS,
        note=LIGHT_NOTE.format(with_tables=918_267, without=885_867),
    )),
    "swinir_light_x4": (LIGHTWEIGHT, 4, Published(
        input_size=(3, 264, 184), source="Table 3", params="897K", macs="49.6G", convention=MULT_ADDS,
        note=LIGHT_NOTE.format(with_tables=929_628, without=897_228),
    )),
}  # fmt: skip


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C) -> (B * H/M * W/M, M, M, C): non-overlapping M x M windows."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


def window_reverse(windows: Tensor, window_size: int, h: int, w: int) -> Tensor:
    """The inverse of ``window_partition``."""
    b = windows.shape[0] // ((h // window_size) * (w // window_size))
    x = windows.view(b, h // window_size, w // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def relative_position_index(window_size: int) -> Tensor:
    """(M², M²) indices into the (2M-1)² relative-position-bias table, one per pair of positions in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return relative[:, :, 0] * (2 * window_size - 1) + relative[:, :, 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with a learnt relative position bias B (Equation 6)."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(b // windows, windows, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class SwinTransformerBlock(nn.Module):
    """A Swin Transformer layer (STL): LN -> (shifted) window MSA -> residual, LN -> MLP -> residual (Eq. 7)."""

    def __init__(
        self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int, shift_size: int,
        mlp_ratio: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.input_resolution = input_resolution
        if min(input_resolution) <= window_size:  # a window as large as the patch: no partition, no shift
            shift_size, window_size = 0, min(input_resolution)
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        # Persistent, as in the official code: the released files hold it for the training patch.
        self.register_buffer("attn_mask", self.calculate_mask(input_resolution) if shift_size > 0 else None)

    def calculate_mask(self, x_size: tuple[int, int]) -> Tensor:
        """(windows, M², M²) additive mask: -100 between positions that the cyclic shift brought from apart."""
        h, w = x_size
        image = torch.zeros((1, h, w, 1))
        cuts = (slice(0, -self.window_size), slice(-self.window_size, -self.shift_size), slice(-self.shift_size, None))
        region = 0
        for rows in cuts:
            for cols in cuts:
                image[:, rows, cols, :] = region
                region += 1
        windows = window_partition(image, self.window_size).view(-1, self.window_size * self.window_size)
        mask = windows.unsqueeze(1) - windows.unsqueeze(2)
        return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        h, w = x_size
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = window_partition(x, self.window_size).view(-1, self.window_size * self.window_size, c)
        if self.shift_size == 0:
            mask = None
        elif tuple(x_size) == tuple(self.input_resolution):
            mask = self.attn_mask
        else:
            mask = self.calculate_mask(x_size).to(x.device)
        windows = self.attn(windows, mask=mask).view(-1, self.window_size, self.window_size, c)
        x = window_reverse(windows, self.window_size, h, w)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + x.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class BasicLayer(nn.Module):
    """The Swin Transformer layers of one RSTB, window partitions plain and shifted by M/2 in turn."""

    def __init__(
        self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
        mlp_ratio: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, input_resolution, num_heads, window_size, window_size // 2 * (i % 2), mlp_ratio)
            for i in range(depth)
        )

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        for block in self.blocks:
            x = block(x, x_size)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer block: STLs -> 3x3 conv -> + input (Equation 5)."""

    def __init__(
        self, dim: int, input_resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
        mlp_ratio: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.residual_group = BasicLayer(dim, input_resolution, depth, num_heads, window_size, mlp_ratio)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: Tensor, x_size: tuple[int, int]) -> Tensor:
        y = self.residual_group(x, x_size)
        y = y.transpose(1, 2).reshape(x.shape[0], -1, *x_size)
        return self.conv(y).flatten(2).transpose(1, 2) + x


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, HW, C) tokens (patch size 1), then LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.flatten(2).transpose(1, 2))


class Upsample(nn.Sequential):
    """Classical SR upsampler: (3x3 conv to 4C, PixelShuffle(2)) per factor 2, or one to 9C and PixelShuffle(3)."""

    def __init__(self, scale: int, num_feat: int) -> None:
        if scale & (scale - 1) == 0:
            steps = [(4, 2)] * (scale.bit_length() - 1)
        elif scale == 3:
            steps = [(9, 3)]
        else:
            raise ValueError(f"scale {scale} is not supported: 2^n or 3")
        layers: list[nn.Module] = []
        for factor, shuffle in steps:
            layers += [nn.Conv2d(num_feat, factor * num_feat, 3, 1, 1), nn.PixelShuffle(shuffle)]
        super().__init__(*layers)


class UpsampleOneStep(nn.Sequential):
    """Lightweight SR upsampler: one 3x3 conv straight to 3·s² channels and PixelShuffle(s)."""

    def __init__(self, scale: int, num_feat: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(num_feat, scale**2 * out_channels, 3, 1, 1), nn.PixelShuffle(scale))


class SwinIR(nn.Module):
    def __init__(self, config: SwinIRConfig, upscale: int, img_size: int | None = None) -> None:
        super().__init__()
        dim = config.embed_dim
        self.upscale = upscale
        self.upsampler = config.upsampler
        self.window_size = config.window_size
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(3, dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(dim)
        patch = img_size or config.img_size
        self.layers = nn.ModuleList(
            RSTB(dim, (patch, patch), depth, heads, config.window_size, config.mlp_ratio)
            for depth, heads in zip(config.depths, config.num_heads, strict=True)
        )
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1)
        if config.upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, NUM_FEAT, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample = Upsample(upscale, NUM_FEAT)
            self.conv_last = nn.Conv2d(NUM_FEAT, 3, 3, 1, 1)
        elif config.upsampler == "pixelshuffledirect":
            self.upsample = UpsampleOneStep(upscale, dim, 3)
        else:
            raise ValueError(f"unknown upsampler {config.upsampler!r}")
        self.apply(_init_weights)

    def check_image_size(self, x: Tensor) -> Tensor:
        """Reflect-pad the bottom and right to a multiple of the window size."""
        h, w = x.shape[-2:]
        pad_h = (self.window_size - h % self.window_size) % self.window_size
        pad_w = (self.window_size - w % self.window_size) % self.window_size
        return F.pad(x, (0, pad_w, 0, pad_h), "reflect")

    def forward_features(self, x: Tensor) -> Tensor:
        x_size = (x.shape[2], x.shape[3])
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x, x_size)
        return self.norm(x).transpose(1, 2).reshape(x.shape[0], -1, *x_size)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = self.check_image_size(x) - self.mean
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        if self.upsampler == "pixelshuffle":
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        else:
            x = self.upsample(x)
        x = x + self.mean
        return x[:, :, : h * self.upscale, : w * self.upscale]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def patch_of(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The training patch a file's stored attention masks were computed for: mask [windows, w*w, w*w] with
    windows = (patch / w)^2, so patch = sqrt(windows) * w (s48 and s64 files differ only there)."""
    masks = [t for k, t in state.items() if k.endswith("attn_mask") and t.dim() == 3]
    if not masks:
        return {}
    windows, area = masks[0].shape[0], masks[0].shape[1]
    side, window = math.isqrt(windows), math.isqrt(area)
    return {"img_size": side * window} if side * side == windows and window * window == area else {}


def _register(name: str, config: SwinIRConfig, upscale: int, published: Published) -> None:
    def build(input_size: tuple[int, ...], img_size: int = config.img_size) -> SwinIR:
        return SwinIR(config, upscale, img_size=img_size)

    register_model(
        name,
        family="swinir",
        task="super-resolution",
        default_input=published.input_size,
        preprocess=None,
        paper=PAPER,
        published=published,
        arguments_from_state=patch_of,
    )(build)


for _name, (_config, _upscale, _published) in VARIANTS.items():
    _register(_name, _config, _upscale, _published)
