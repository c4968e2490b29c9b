"""SE-ResNet-50 and SE-ResNeXt-50 against the paper's Tables 2 and 10 and Cadene's port of the official weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlcli.core.meta import build_on_meta
from rlcli.models.registry import get_spec
from rlcli.tasks.summary import summarize

OFFICIAL = Path(__file__).parent / "data" / "official"

# sum(p.numel()) of Cadene's pretrainedmodels senet.py se_resnet50 / se_resnext50_32x4d (pretrained=None), equal to
# timm 1.0.31's legacy_seresnet50 / legacy_seresnext50_32x4d.
PARAMS = {"se_resnet50": 28_088_024, "se_resnext50_32x4d": 27_559_896}
# Table 2, SENet column: GFLOPs (multiply-adds) at 224 px.
PAPER_MACS = {"se_resnet50": 3.87e9, "se_resnext50_32x4d": 4.25e9}
# rl's count, which the cards' notes explain: torch.utils.flop_counter.FlopCounterMode on the same Cadene models at
# 1x3x224x224 gives exactly these (its FLOPs / 2).
MACS = {"se_resnet50": 3_860_488_192, "se_resnext50_32x4d": 4_232_994_816}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_counts_against_the_official_port_and_the_paper(name):
    summary = summarize(name, depth=0)
    assert summary.params == PARAMS[name]
    assert summary.macs == MACS[name]
    assert summary.macs == pytest.approx(PAPER_MACS[name], rel=0.02)
    assert summary.paper.published.note  # beyond rounding of the printed figure: the card says why
    assert not summary.paper.macs.within_rounding


def test_se_resnet50_parameters_as_table_10_prints_them():
    assert summarize("se_resnet50", depth=0).paper.params.within_rounding  # 28.1M at r = 16


def test_the_se_blocks_by_hand():
    """Eq. 5 of the paper for the FC weights, plus the FC biases, over ResNet-50's stages (N_s blocks of C_s)."""
    stages = [(3, 256), (4, 512), (6, 1024), (3, 2048)]
    weights = sum(2 / 16 * n * c * c for n, c in stages)
    biases = sum(n * (c // 16 + c) for n, c in stages)
    net = build_on_meta(lambda: get_spec("se_resnet50").build())
    se = sum(p.numel() for name, p in net.named_parameters() if ".se_module." in name)
    assert se == weights + biases
    # At 224 px each SE FC layer runs once per image: its MACs equal its weights (2,514,944 of them), and the rest
    # of the network is ResNet-50's Caffe layout, whose 3.858 G the paper prints as 3.86 G.
    assert MACS["se_resnet50"] - weights == pytest.approx(3.86e9, abs=0.005e9)


def test_stride_on_the_first_1x1_in_se_resnet_and_on_the_3x3_in_se_resnext():
    resnet = build_on_meta(lambda: get_spec("se_resnet50").build())
    resnext = build_on_meta(lambda: get_spec("se_resnext50_32x4d").build())
    assert resnet.layer2[0].conv1.stride == (2, 2) and resnet.layer2[0].conv2.stride == (1, 1)
    assert resnext.layer2[0].conv1.stride == (1, 1) and resnext.layer2[0].conv2.stride == (2, 2)
    assert resnext.layer2[0].conv2.groups == 32


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_cadene_layout_loads_as_is(name):
    shapes = json.loads((OFFICIAL / f"{name}.json").read_text())
    net = build_on_meta(lambda: get_spec(name).build())
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    net.load_state_dict(state, strict=True, assign=True)


def test_a_small_forward_on_real_weights():
    torch.manual_seed(0)
    net = get_spec("se_resnext50_32x4d").build(num_classes=10).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_preprocessing_is_cadenes_evaluation():
    """pretrainedmodels' TransformImage (scale 0.875, RGB in [0, 1], the pretrained_settings' mean/std) written with
    torchvision's transforms, against the card's."""
    from PIL import Image
    from torchvision import transforms

    official = transforms.Compose([
        transforms.Resize(int(224 / 0.875)),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (240, 320, 3), dtype=torch.uint8, generator=generator).numpy()
    image = Image.fromarray(pixels)
    card = get_spec("se_resnet50").card
    assert torch.allclose(card.preprocess(image), official(image), atol=1e-6)


def test_classify_runs_a_checkpoint_in_cadenes_layout(rl, tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    torch.save(get_spec("se_resnet50").build().state_dict(), tmp_path / "se_resnet50-ce0d4300.pth")
    Image.new("RGB", (300, 200), (10, 120, 200)).save(tmp_path / "a.png")
    weights = str(tmp_path / "se_resnet50-ce0d4300.pth")
    result = rl("classify", str(tmp_path / "a.png"), "-m", "se_resnet50", "-w", weights, "--json")
    assert result.code == 0, result.stderr
    [line] = [json.loads(text) for text in result.stdout.splitlines()]
    assert line["top_k"][0]["label"] in get_spec("se_resnet50").card.classes
