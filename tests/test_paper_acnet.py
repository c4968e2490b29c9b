"""ACNet's asymmetric convolution blocks and their fusion (rlcli.core.fusion) against the official code's ResNet-18."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlcli.core.fusion import fuse_asymmetric, fuse_conv_bn, reparameterize
from rlcli.core.meta import build_on_meta
from rlcli.models.registry import get_spec
from rlcli.models.vision.acnet import ACBlock
from rlcli.tasks.summary import summarize

# The official DingXiaoH/ACNet code for `-a sres18`: base_model/resnet.py create_ResNet18 built by
# acnet/acnet_builder.py ACNetBuilder(deploy=False / True), counted with sum(p.numel()). The training-time network
# has 6 * c_in * c_out more weights and two more BatchNorms per 3x3 layer; the deploy one has ResNet-18's structure
# with a bias (c_out) in place of each fused layer's BatchNorm (2 * c_out): torchvision's 11,689,512 less 3,840.
PARAMS = {"acnet_resnet18": 19_028_520, "acnet_resnet18_deploy": 11_685_672}
# torch.utils.flop_counter.FlopCounterMode on the same official models at 1x3x224x224 (FLOPs / 2). The deploy count
# is torchvision's resnet18 (1.814 G in its weights' metadata): ACNet's point, no extra inference cost.
MACS = {"acnet_resnet18": 2_931_593_216, "acnet_resnet18_deploy": 1_814_073_344}
# state_dict() entries of the official models (parameters and BatchNorm buffers).
STATE_ENTRIES = {"acnet_resnet18": 314, "acnet_resnet18_deploy": 58}


def randomise_batchnorms(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that folding them is really tested."""
    generator = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            size = bn.num_features
            bn.running_mean.copy_(torch.rand(size, generator=generator) - 0.5)
            bn.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
            bn.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            bn.bias.data.copy_(torch.rand(size, generator=generator) * 0.4 - 0.2)
    return module.eval()


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_counts_against_the_official_code(name):
    summary = summarize(name, depth=0)
    assert (summary.params, summary.macs) == (PARAMS[name], MACS[name])


def test_training_time_macs_by_hand():
    """Each 3x3 layer gains a 1x3 and a 3x1 convolution at its output size: 6/9 of its MACs again."""
    square = 0
    for channels, side, first_in in [(64, 56, 64), (128, 28, 64), (256, 14, 128), (512, 7, 256)]:
        square += side * side * 9 * channels * (first_in + 3 * channels)  # conv1 of block 0, then three c->c layers
    assert MACS["acnet_resnet18"] - MACS["acnet_resnet18_deploy"] == square * 6 // 9


def test_the_paper_prints_no_resnet18_cost():
    for name in PARAMS:
        assert get_spec(name).card.published is None
        assert get_spec(name).card.paper.arxiv == "1908.03930"


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_official_layout(name):
    net = build_on_meta(lambda: get_spec(name).build())
    state = net.state_dict()
    assert len(state) == STATE_ENTRIES[name]
    if name == "acnet_resnet18":
        assert state["stage2.0.conv1.acb.ver_conv.weight"].shape == (128, 64, 3, 1)
        assert state["stage2.0.conv2.hor_conv.weight"].shape == (128, 128, 1, 3)
        assert state["stage1.1.conv2.square_bn.running_var"].shape == (64,)
    else:
        assert state["stage2.0.conv1.acb.fused_conv.weight"].shape == (128, 64, 3, 3)
        assert state["stage4.1.conv2.fused_conv.bias"].shape == (512,)
        assert not any("square" in key or "_bn" in key for key in state)
    assert state["conv1.conv.weight"].shape == (64, 3, 7, 7)
    assert state["stage3.0.shortcut.conv.weight"].shape == (256, 128, 1, 1)
    assert state["linear.weight"].shape == (1000, 512)


def test_fuse_conv_bn_equals_bn_after_conv():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True), nn.BatchNorm2d(6)
    randomise_batchnorms(bn)
    kernel, bias = fuse_conv_bn(conv, bn)
    x = torch.randn(2, 4, 9, 11)
    expected = bn(conv(x))
    assert torch.allclose(nn.functional.conv2d(x, kernel, bias, stride=2, padding=1), expected, atol=1e-5)


def test_fuse_asymmetric_adds_onto_the_skeleton():
    square = torch.zeros(1, 1, 3, 3)
    fused = fuse_asymmetric(square, torch.tensor([[[[1.0, 2.0, 3.0]]]]), torch.tensor([[[[10.0], [20.0], [30.0]]]]))
    assert fused[0, 0].tolist() == [[0, 10, 0], [1, 22, 3], [0, 30, 0]]
    assert square.abs().sum() == 0  # the input is left alone
    with pytest.raises(ValueError):
        fuse_asymmetric(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 1, 5))


@pytest.mark.parametrize(("kernel", "stride", "padding", "size"), [(3, 1, 1, 10), (3, 2, 1, 11), (5, 1, 2, 9)])
def test_one_block_fused_equals_unfused(kernel, stride, padding, size):
    torch.manual_seed(0)
    block = randomise_batchnorms(ACBlock(3, 5, kernel, stride, padding))
    x = torch.randn(2, 3, size, size + 3)
    with torch.no_grad():
        expected = block(x)
        fused = block.fused()
        assert fused.deploy and fused.fused() is fused
        assert torch.allclose(fused(x), expected, atol=1e-5)


def test_resnet18_fused_equals_unfused_and_loads_into_the_deploy_model():
    torch.manual_seed(0)
    net = randomise_batchnorms(get_spec("acnet_resnet18").build(num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = net(x)
        fused = reparameterize(net)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.stage1.modules())
        assert (fused(x) - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max())
    # The fused weights are acnet_resnet18_deploy's layout, on meta and on real tensors.
    state = fused.state_dict()
    meta = build_on_meta(lambda: get_spec("acnet_resnet18_deploy").build(num_classes=10))
    meta.load_state_dict({k: torch.empty(v.shape, device="meta") for k, v in state.items()}, strict=True, assign=True)
    deploy = get_spec("acnet_resnet18_deploy").build(num_classes=10).eval()
    deploy.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.allclose(deploy(x), expected, atol=1e-5 * max(1.0, expected.abs().max()))


def test_preprocessing_is_the_official_imagenet_evaluation():
    card = get_spec("acnet_resnet18_deploy").card
    preprocess = card.preprocess
    assert (preprocess.resize, preprocess.crop, preprocess.interpolation) == (256, 224, "bilinear")
    assert preprocess.mean == (0.485, 0.456, 0.406) and preprocess.std == (0.229, 0.224, 0.225)
    assert len(card.classes) == 1000
