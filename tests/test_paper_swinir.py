"""SwinIR against the official JingyunLiang/SwinIR models/network_swinir.py, its README and the paper's Table 3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlcli.core.meta import build_on_meta
from rlcli.models.registry import get_spec
from rlcli.models.vision.swinir import relative_position_index
from rlcli.tasks.summary import summarize

OFFICIAL = Path(__file__).parent / "data" / "official"

# sum(p.numel()) of the official network_swinir.py SwinIR built as main_test_swinir.py's define_model() builds it
# for task classical_sr (training_patch_size 48) and lightweight_sr, at scales 2, 3 and 4.
PARAMS = {
    "swinir_x2": 11_752_487, "swinir_x3": 11_937_127, "swinir_x4": 11_900_199,
    "swinir_light_x2": 910_152, "swinir_light_x3": 918_267, "swinir_light_x4": 929_628,
}  # fmt: skip
# The same less the 24 relative_position_bias_table parameters (24 x 15 x 15 x 6 = 32,400): Table 3's 878K, 886K
# and 897K are these counts.
BIAS_TABLES = 24 * 15 * 15 * 6
TABLE_3_PARAMS = {"swinir_light_x2": 878e3, "swinir_light_x3": 886e3, "swinir_light_x4": 897e3}
# torch.utils.flop_counter.FlopCounterMode on the official models (eval, one image of the card's input: 256x256 LR
# for classical SR, the LR sizes Table 3 was computed at for lightweight SR), FLOPs / 2; equal to the formulas below.
MACS = {
    "swinir_x2": 816_889_724_928, "swinir_x3": 829_535_551_488, "swinir_x4": 856_903_385_088,
    "swinir_light_x2": 200_089_843_200, "swinir_light_x3": 89_894_960_640, "swinir_light_x4": 51_736_354_560,
}  # fmt: skip
# network_swinir.py's own flops() at those sizes (the figures Table 3 prints, rounded) and, for classical x4, with
# the upsampler (which has no flops()) left at zero: the README's 788.6G is close to it.
OFFICIAL_FLOPS_FUNCTION = {
    "swinir_light_x2": 195_589_056_000, "swinir_light_x3": 87_197_395_200, "swinir_light_x4": 49_649_529_600,
    "swinir_x4": 788_099_235_840,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_counts_against_the_official_code(name):
    summary = summarize(name, depth=0)
    assert (summary.params, summary.macs) == (PARAMS[name], MACS[name])
    card = get_spec(name).card
    assert card.task == "super-resolution" and card.preprocess is None
    comparison = summary.paper
    if not (comparison.params.within_rounding and (comparison.macs is None or comparison.macs.within_rounding)):
        assert card.published.note


@pytest.mark.parametrize("name", sorted(TABLE_3_PARAMS))
def test_table_3_leaves_out_the_bias_tables(name):
    assert round(PARAMS[name] - BIAS_TABLES, -3) == TABLE_3_PARAMS[name]
    printed = get_spec(name).card.published.macs
    assert f"{OFFICIAL_FLOPS_FUNCTION[name] / 1e9:.1f}G" in {printed, "49.6G"}  # 49.650 printed as 49.6


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_light_macs_by_hand(scale):
    """Per LR pixel: 24 Swin layers (qkv, proj, a 2C MLP: 8C^2; QK^T and AV in 64-token windows: 2*64*C), four RSTB
    convs and conv_after_body (9C^2 each), conv_first (27C) and one conv to 3s^2 channels (27Cs^2)."""
    c = 60
    per_pixel = 24 * (8 * c * c + 2 * 64 * c) + 5 * 9 * c * c + 27 * c + 27 * c * scale**2
    _, h, w = get_spec(f"swinir_light_x{scale}").card.published.input_size
    assert per_pixel * h * w == MACS[f"swinir_light_x{scale}"]


def test_classical_x4_macs_by_hand():
    c, f = 180, 64  # embedding and upsampler channels
    body = 36 * (8 * c * c + 2 * 64 * c) + 7 * 9 * c * c + 27 * c
    upsampler = 9 * c * f + 9 * f * 4 * f * (1 + 4) + 9 * f * 3 * 16  # conv_before, two conv+shuffle, conv_last
    assert (body + upsampler) * 256 * 256 == MACS["swinir_x4"]
    # The README's figure is flops() without the upsampler, conv_after_body at 3C^2 and 73 LayerNorms of C.
    flops_function = (body - 6 * c * c + 73 * c) * 256 * 256
    assert flops_function == OFFICIAL_FLOPS_FUNCTION["swinir_x4"]


def test_relative_position_index_by_hand():
    # A 2x2 window: (dh + 1) * 3 + (dw + 1) for every (query, key) pair, positions in row-major order.
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index(2), expected)


@pytest.mark.parametrize("name", ["swinir_x2", "swinir_light_x2"])
def test_official_layout_loads_as_is(name):
    """Keys and shapes of the official state_dict(), buffers included (relative_position_index, and attn_mask of
    the shifted layers at the training patch: 48 px classical, 64 px lightweight), as the released files hold."""
    shapes = json.loads((OFFICIAL / f"{name}.json").read_text())
    net = build_on_meta(lambda: get_spec(name).build())
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == shapes
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    net.load_state_dict(state, strict=True, assign=True)


def test_training_patch_sets_the_stored_masks():
    net = build_on_meta(lambda: get_spec("swinir_x2").build(img_size=64))  # the DF2K s64 files
    assert net.state_dict()["layers.0.residual_group.blocks.1.attn_mask"].shape == (64, 64, 64)
    assert "layers.0.residual_group.blocks.0.attn_mask" not in net.state_dict()


@pytest.mark.parametrize(("name", "scale"), [("swinir_light_x3", 3), ("swinir_x2", 2)])
def test_forward_pads_to_windows_and_crops_back(name, scale):
    torch.manual_seed(0)
    net = get_spec(name).build().eval()
    image = torch.rand(1, 3, 13, 21)  # not a multiple of the window: reflect-padded, masks recomputed
    with torch.no_grad():
        out = net(image)
    assert out.shape == (1, 3, 13 * scale, 21 * scale)
    assert torch.isfinite(out).all()


def test_a_files_training_patch_is_read_from_its_stored_masks():
    """DF2K's s64 classical files (and an s48 lightweight one) store masks for their patch: rl builds to fit them."""
    from rlcli.models.loading import build_with_weights

    spec = get_spec("swinir_light_x2")  # built for 64 px patches by default
    state = build_on_meta(lambda: spec.build(None, img_size=48)).state_dict()
    net = build_with_weights(spec, state, None, "swinir_s48.pth")
    assert net.layers[0].residual_group.blocks[1].attn_mask.shape == (36, 64, 64)  # (48 / 8)^2 windows of 8 x 8
