"""MicroNets against the released ML-zoo graph (KWS-M), the paper's Tables 4 and 5 and the Wake Vision recreations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlcli.core.meta import build_on_meta
from rlcli.models.registry import get_spec
from rlcli.models.vision.micronets import KWS, Conv2dSame, pad_channels
from rlcli.tasks.summary import summarize

# Weights + biases of the convolutions (BN folded) in the released int8 graphs, read from the flatbuffers:
# kws_micronet_m.tflite is ML-zoo's file (SHA-1 fd03a6b2..., as its definition.yaml declares; a copy is committed in
# FreeRTOS/iot-reference-arm-corstone3xx); the VWW counts are harvard-edge/Wake_Vision's model_zoo
# wv_quality_micronets_vww*_INT8.tflite (ML-zoo's own VWW and KWS-S/L files are Git LFS objects, not readable here).
GRAPH_PARAMS = {
    "micronet_kws_m": 111_984,
    "micronet_vww_2": 89_302,
    "micronet_vww_3": 266_829,
    "micronet_vww_4": 233_948,
}
# Multiply-accumulates of CONV_2D and DEPTHWISE_CONV_2D in the same graphs (output elements x kernel volume).
GRAPH_MACS = {
    "micronet_kws_m": 15_556_352,
    "micronet_vww_2": 3_143_416,
    "micronet_vww_3": 22_565_040,
    "micronet_vww_4": 18_828_800,
}
# kws_micronet_m.tflite's weight tensors in order, as PyTorch shapes (OHWI -> OIHW; depthwise 1HWC -> C1HW).
KWS_M_WEIGHTS = [
    (140, 1, 10, 4), (140, 1, 3, 3), (140, 140, 1, 1), (140, 1, 3, 3), (140, 140, 1, 1), (140, 1, 3, 3),
    (140, 140, 1, 1), (140, 1, 3, 3), (112, 140, 1, 1), (112, 1, 3, 3), (196, 112, 1, 1), (12, 196, 1, 1),
]  # fmt: skip
# Table 4: "Mops", a multiply-accumulate counted as two operations.
TABLE_4_OPS = {
    "micronet_kws_s": 16.4e6, "micronet_kws_m": 30.6e6, "micronet_kws_l": 129e6,
    "micronet_vww_2": 5.3e6, "micronet_vww_3": 45.2e6, "micronet_vww_4": 37.7e6,
}  # fmt: skip


def kws_by_hand(stem: int, blocks: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """Params and MACs of a Table 5 network at 49x10: the 10x4 stem, then every block on the 25x5 map."""
    params, macs = stem * 40 + stem, 490 * stem * 40
    channels = stem
    for out, _ in blocks:
        params += channels * 9 + channels + channels * out + out
        macs += 125 * (channels * 9 + channels * out)
        channels = out
    return params + channels * 12 + 12, macs + channels * 12


@pytest.mark.parametrize("name", sorted(TABLE_4_OPS))
def test_counts_and_table_4(name):
    summary = summarize(name, depth=0)
    if name in GRAPH_PARAMS:
        assert (summary.params, summary.macs) == (GRAPH_PARAMS[name], GRAPH_MACS[name])
    if name in KWS:
        stem, blocks, _ = KWS[name]
        assert (summary.params, summary.macs) == kws_by_hand(stem, blocks)
    paper = summary.paper
    assert paper.published.params is None and paper.macs is None  # Table 4 prints ops, no parameter count
    assert summary.flops == pytest.approx(TABLE_4_OPS[name], rel=0.02) or paper.published.note


def test_kws_m_has_the_released_graphs_layers():
    net = build_on_meta(lambda: get_spec("micronet_kws_m").build())
    weights = [tuple(v.shape) for k, v in net.state_dict().items() if k.endswith("weight")]
    assert [*weights[:-1], (*weights[-1], 1, 1)] == KWS_M_WEIGHTS


def test_tensorflow_same_padding():
    """SAME pads (kernel - 1) in all at stride 1, the odd pixel after; at stride 2 just enough for ceil(n / 2)."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 49, 10)
    stem = Conv2dSame(1, 2, (10, 4))
    assert torch.allclose(stem(x), F.conv2d(F.pad(x, (1, 2, 4, 5)), stem.weight, stem.bias))
    strided = Conv2dSame(1, 2, 3, 2)
    assert torch.allclose(strided(x), F.conv2d(F.pad(x, (0, 1, 1, 1)), strided.weight, strided.bias, stride=2))
    assert strided(x).shape[-2:] == (25, 5)


def test_residual_pads_channels_around_the_narrower_side():
    x = torch.ones(1, 25, 2, 2)
    padded = pad_channels(x, 32)  # Wake Vision's VWW-3 pads 25 -> 32 channels as (4, 3)
    assert padded[0, :, 0, 0].tolist() == [0.0] * 4 + [1.0] * 25 + [0.0] * 3


@pytest.mark.parametrize(
    ("name", "shape", "classes"), [("micronet_kws_s", (1, 49, 10), 12), ("micronet_vww_2", (1, 50, 50), 2)]
)
def test_forward(name, shape, classes):
    torch.manual_seed(0)
    net = get_spec(name).build().eval()
    with torch.no_grad():
        out = net(torch.randn(2, *shape))
    assert out.shape == (2, classes) and torch.isfinite(out).all()
    assert get_spec(name).card.default_input == shape
