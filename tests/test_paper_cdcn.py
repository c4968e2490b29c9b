"""CDCN and CDCN++ against the official CDCNs.py and central difference convolution against its definition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlcli.core.flops import profile_forward
from rlcli.core.meta import build_on_meta
from rlcli.models.registry import get_spec
from rlcli.models.vision.cdcn import CDCN, CDCNpp, CentralDifferenceConv2d
from rlcli.tasks.summary import summarize

# sum(p.numel()) of the official ZitongYu/CDCN CVPR2020_paper_codes/models/CDCNs.py CDCN() and CDCNpp() (theta 0.7).
PARAMS = {"cdcn": 2_245_016, "cdcn_pp": 2_257_352}
# The paper prints no parameter or FLOP counts. rl's MACs at 1x3x256x256, each CDC layer counted as its 3x3
# convolution plus the 1x1 convolution of the summed kernel that the official code runs; equal to
# torch.utils.flop_counter.FlopCounterMode on the official models (FLOPs / 2), and with theta = 0 (the official
# shortcut to a vanilla convolution) to THETA_ZERO_MACS, nine tenths of the difference being the 1x1 terms.
MACS = {"cdcn": 52_597_227_520, "cdcn_pp": 56_427_014_144}
THETA_ZERO_MACS = {"cdcn": 47_337_504_768, "cdcn_pp": 50_784_495_616}
# state_dict() entries of the official models.
STATE_ENTRIES = {"cdcn": 73, "cdcn_pp": 76}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_counts_against_the_official_code(name):
    summary = summarize(name, depth=0)
    assert (summary.params, summary.macs) == (PARAMS[name], MACS[name])
    assert summary.input_shape == [1, 3, 256, 256]
    assert get_spec(name).card.published is None


@pytest.mark.parametrize(("name", "model"), [("cdcn", CDCN), ("cdcn_pp", CDCNpp)])
def test_the_central_difference_term_costs_one_ninth_more(name, model):
    vanilla = build_on_meta(lambda: model(theta=0.0))
    macs = profile_forward(vanilla, (torch.zeros(1, 3, 256, 256, device="meta"),)).total_macs
    assert macs == THETA_ZERO_MACS[name]
    assert (MACS[name] - macs) * 9 == macs - attention_macs(name)  # the attention convs are plain convolutions


def attention_macs(name: str) -> int:
    """CDCN++'s spatial attention: a 2->1 KxK convolution on each block's output (128, 64 and 32 px)."""
    return sum(side * side * 2 * k * k for side, k in [(128, 7), (64, 5), (32, 3)]) if name == "cdcn_pp" else 0


def test_one_cdc_layer_by_hand():
    layer = build_on_meta(lambda: CentralDifferenceConv2d(64, 128))
    macs = profile_forward(layer, (torch.zeros(1, 64, 32, 32, device="meta"),)).total_macs
    assert macs == 32 * 32 * 128 * 64 * (9 + 1)


def test_cdc_is_the_papers_equation():
    """y(p0) = sum_n w(pn) x(p0 + pn) - theta * x(p0) * sum_n w(pn), written out over each 3x3 window."""
    torch.manual_seed(0)
    layer = CentralDifferenceConv2d(3, 4, theta=0.7)
    x = torch.randn(2, 3, 6, 7)
    windows = nn.functional.unfold(x, 3, padding=1).reshape(2, 3, 9, 6 * 7)  # (batch, channel, neighbour, position)
    weight = layer.conv.weight.reshape(4, 3, 9)
    expected = torch.einsum("ocn,bcnp->bop", weight, windows - 0.7 * windows[:, :, 4:5])
    with torch.no_grad():
        assert torch.allclose(layer(x), expected.reshape(2, 4, 6, 7), atol=1e-5)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_official_layout(name):
    net = build_on_meta(lambda: get_spec(name).build())
    state = net.state_dict()
    assert len(state) == STATE_ENTRIES[name]
    assert state["conv1.0.conv.weight"].shape == (64, 3, 3, 3)
    assert state["Block3.1.running_var"].shape == (128,)
    if name == "cdcn":
        assert state["Block1.3.conv.weight"].shape == (196, 128, 3, 3)
        assert state["lastconv3.0.conv.weight"].shape == (1, 64, 3, 3)
    else:
        assert state["Block1.3.conv.weight"].shape == (204, 128, 3, 3)  # int(128 * 1.6)
        assert state["Block2.9.conv.weight"].shape == (128, 179, 3, 3)  # int(128 * 1.4)
        assert state["lastconv1.3.conv.weight"].shape == (1, 128, 3, 3)
        assert state["sa1.conv1.weight"].shape == (1, 2, 7, 7)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_a_small_forward_gives_the_32x32_depth_map(name):
    torch.manual_seed(0)
    net = get_spec(name).build().eval()
    with torch.no_grad():
        depth = net(torch.randn(2, 3, 64, 64))
    assert depth.shape == (2, 32, 32)
    assert (depth >= 0).all()  # the last layer is a ReLU


def test_preprocessing_is_the_official_evaluation():
    """Load_OULUNPU_valtest.py: the face crop resized to 256x256 (aspect ignored), then (x - 127.5) / 128."""
    preprocess = get_spec("cdcn").card.preprocess
    assert (preprocess.resize, preprocess.crop, preprocess.square) == (256, 256, True)
    pixels = torch.tensor([0.0, 127.5, 255.0]) / 255
    normalised = (pixels - preprocess.mean[0]) / preprocess.std[0]
    assert torch.allclose(normalised, (torch.tensor([0.0, 127.5, 255.0]) - 127.5) / 128)
