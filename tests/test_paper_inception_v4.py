"""Inception-v4 and Inception-ResNet-v2 against Cadene's pretrainedmodels port (the released TF-slim networks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlcli.core.images import Preprocess
from rlcli.core.meta import build_on_meta
from rlcli.models.registry import get_spec
from rlcli.tasks.summary import summarize

OFFICIAL = Path(__file__).parent / "data" / "official"
NAMES = ("inception_v4", "inception_resnet_v2")

# sum(p.numel()) of Cadene's pretrainedmodels (commit 8aae3d8) InceptionV4(num_classes=1000) and
# InceptionResNetV2(num_classes=1000); timm 1.0.31's inception_v4 and inception_resnet_v2 count the same.
PARAMS = {"inception_v4": 42_679_816, "inception_resnet_v2": 55_843_464}
# The paper prints no parameter or operation counts, so these are regression constants: multiply-accumulates at
# 3x299x299, equal to torch.utils.flop_counter.FlopCounterMode's total / 2 on Cadene's models (convolutions and the
# classifier; pooling and the residual scaling are not counted by either).
MACS = {"inception_v4": 12_253_974_624, "inception_resnet_v2": 13_155_794_016}


@pytest.mark.parametrize("name", NAMES)
def test_counts_against_the_port(name):
    summary = summarize(name, depth=0)
    assert summary.input_shape == [1, 3, 299, 299]
    assert summary.params == PARAMS[name]
    assert summary.macs == MACS[name]


@pytest.mark.parametrize("name", NAMES)
def test_the_card_names_the_paper_and_cadenes_evaluation(name):
    card = get_spec(name).card
    assert (card.paper.arxiv, card.paper.year) == ("1602.07261", 2016)
    assert card.published is None  # nothing printed to compare with
    # pretrainedmodels.utils.TransformImage(scale=0.875): Resize(floor(299 / 0.875)), CenterCrop(299), mean/std 0.5.
    assert card.preprocess == Preprocess(resize=341, crop=299, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert card.default_input == (3, 299, 299) and len(card.classes) == 1000


def official_state(name: str, num_classes: int = 1000) -> dict[str, torch.Tensor]:
    shapes = json.loads((OFFICIAL / f"{name}.json").read_text())
    shapes["last_linear.weight"][0] = shapes["last_linear.bias"][0] = num_classes
    return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes", [1000, 1001])
def test_cadenes_layout_loads_as_is(name, num_classes):
    """1000 classes: pretrainedmodels' 'imagenet' model; 1001: its .pth files as stored (background first)."""
    net = build_on_meta(lambda: get_spec(name).build(num_classes=num_classes))
    net.load_state_dict(official_state(name, num_classes), strict=True, assign=True)


@pytest.mark.parametrize("name", NAMES)
def test_a_small_forward_on_random_weights(name):
    torch.manual_seed(0)
    net = get_spec(name).build(num_classes=7).eval()
    with torch.inference_mode():
        assert net(torch.randn(1, 3, 75, 75)).shape == (1, 7)  # 75 px: the smallest side that reaches 1x1


def test_classify_runs_a_cadene_layout_file(rl, tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    weights = tmp_path / "inceptionv4.pth"
    torch.save(get_spec("inception_v4").build().state_dict(), weights)
    Image.new("RGB", (400, 300), (10, 120, 200)).save(tmp_path / "a.png")
    result = rl("classify", str(tmp_path / "a.png"), "-m", "inception_v4", "-w", str(weights), "--json", "-j", "0")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["top_k"][0]["label"] in get_spec("inception_v4").card.classes
