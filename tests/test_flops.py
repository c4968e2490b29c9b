"""MAC counting against hand-computed figures, on the meta device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlcli.core.flops import profile_forward
from rlcli.core.meta import build_on_meta
from rlcli.errors import ModelRunError
from tiny_models import Attention, FixedInputNet, TinyNet


def meta_input(*shape: int) -> tuple[torch.Tensor]:
    return (torch.empty(*shape, device="meta"),)


def test_conv_and_linear_macs_are_exact_and_attributed_to_layers():
    net = build_on_meta(TinyNet)
    profile = profile_forward(net, meta_input(2, 3, 8, 8))
    conv = 2 * 8 * 8 * 8 * (3 * 3 * 3)  # batch * H * W * out channels * (in channels * kernel)
    linear = 2 * 8 * 10
    by_name = {r.name: r for r in profile.modules}
    assert profile.total_macs == conv + linear
    assert by_name["features.0"].macs == conv
    assert by_name["head"].macs == linear
    assert by_name["features"].macs == conv  # containers include their children
    assert by_name[""].macs == conv + linear
    assert by_name["features.0"].output_shapes == [(2, 8, 8, 8)]
    assert by_name["head"].output_shapes == [(2, 10)]
    assert all(p.device.type == "meta" for p in net.parameters())


def test_functional_attention_is_counted():
    net = build_on_meta(Attention)
    profile = profile_forward(net, meta_input(1, 4, 8))
    projection = 4 * 8 * 24
    attention = 2 * (2 * 4 * 4 * 4)  # q @ k^T and attn @ v: heads * T * T * head_dim each
    assert profile.total_macs == projection + attention


def test_multihead_attention_fast_path_does_not_hide_work():
    with torch.device("meta"):
        mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    profile = profile_forward(SelfAttention(), meta_input(1, 4, 8))
    in_proj, attention, out_proj = 4 * 8 * 24, 2 * (2 * 4 * 4 * 4), 4 * 8 * 8
    assert profile.total_macs == in_proj + attention + out_proj
    assert torch.backends.mha.get_fastpath_enabled()  # restored afterwards


def test_activation_bytes_sum_leaf_outputs():
    net = build_on_meta(TinyNet)
    profile = profile_forward(net, meta_input(1, 3, 8, 8))
    conv_out = relu_out = 8 * 8 * 8 * 4
    pool_out, head_out = 8 * 4, 10 * 4
    assert profile.activation_bytes == conv_out + relu_out + pool_out + head_out


def test_failure_names_the_innermost_layer_and_hooks_are_removed():
    net = build_on_meta(FixedInputNet)
    with pytest.raises(ModelRunError, match=r"layer 'classifier' \(Linear\)"):
        profile_forward(net, meta_input(1, 3, 9, 9))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_meta_build_falls_back_for_constructors_that_read_tensors():
    import torchvision

    net = build_on_meta(torchvision.models.regnet_y_400mf)
    assert all(p.device.type == "meta" for p in net.parameters())
    assert sum(p.numel() for p in net.parameters()) == 4_344_144
