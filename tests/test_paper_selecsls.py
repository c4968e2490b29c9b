"""SelecSLS Net (XNect) against the official mehtadushy/SelecSLS-Pytorch models/selecsls.py."""

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

# sum(p.numel()) of the official Net(nClasses=1000, config=...) (commit 3852734) with configs SelecSLS42_B,
# SelecSLS60, SelecSLS60_B and SelecSLS84. timm 1.0.31 counts the same for the first three; its selecsls84 has
# 50,954,600 (a 3x3 last head convolution where the official one is 1x1).
PARAMS = {"selecsls42b": 32_458_248, "selecsls60": 30_670_768, "selecsls60b": 32_774_064, "selecsls84": 40_468_840}
# The README prints no counts: multiply-accumulates at 3x224x224 as regression constants, equal to
# FlopCounterMode's total / 2 on the official models and to the hand count below.
MACS = {"selecsls42b": 2_971_924_480, "selecsls60": 3_581_005_952, "selecsls60b": 3_618_498_688,
        "selecsls84": 5_721_156_608}  # fmt: skip

# The official selecSLS_config rows (inp, skip, k, oup, isFirst, stride) and head (in, out, kernel, stride).
L42 = [(32, 0, 64, 64, 1, 2), (64, 64, 64, 128, 0, 1), (128, 0, 144, 144, 1, 2), (144, 144, 144, 288, 0, 1),
       (288, 0, 304, 304, 1, 2), (304, 304, 304, 480, 0, 1)]  # fmt: skip
L60 = [(32, 0, 64, 64, 1, 2), (64, 64, 64, 128, 0, 1), (128, 0, 128, 128, 1, 2), (128, 128, 128, 128, 0, 1),
       (128, 128, 128, 288, 0, 1), (288, 0, 288, 288, 1, 2), *[(288, 288, 288, 288, 0, 1)] * 2,
       (288, 288, 288, 416, 0, 1)]  # fmt: skip
L84 = [(32, 0, 64, 64, 1, 2), (64, 64, 64, 144, 0, 1), (144, 0, 144, 144, 1, 2), *[(144, 144, 144, 144, 0, 1)] * 3,
       (144, 144, 144, 304, 0, 1), (304, 0, 304, 304, 1, 2), *[(304, 304, 304, 304, 0, 1)] * 4,
       (304, 304, 304, 512, 0, 1)]  # fmt: skip
OFFICIAL_CONFIGS = {
    "selecsls42b": (L42, [(480, 960, 3, 2), (960, 1024, 3, 1), (1024, 1280, 3, 2), (1280, 1024, 1, 1)]),
    "selecsls60": (L60, [(416, 756, 3, 2), (756, 1024, 3, 1), (1024, 1024, 3, 2), (1024, 1280, 1, 1)]),
    "selecsls60b": (L60, [(416, 756, 3, 2), (756, 1024, 3, 1), (1024, 1280, 3, 2), (1280, 1024, 1, 1)]),
    "selecsls84": (L84, [(512, 960, 3, 2), (960, 1024, 3, 1), (1024, 1024, 3, 2), (1024, 1280, 1, 1)]),
}


def hand_count(name: str, side: int = 224) -> tuple[int, int]:
    """Parameters and MACs from the official table: conv-BN pairs (k*k*in*out weights, 2*out affine), the fc."""
    params = macs = 0

    def conv(cin, cout, k, stride=1):
        nonlocal params, macs, side
        side = (side - 1) // stride + 1  # "same" padding
        params += k * k * cin * cout + 2 * cout
        macs += side * side * k * k * cin * cout

    conv(3, 32, 3, 2)
    modules, head = OFFICIAL_CONFIGS[name]
    for inp, skip, k, oup, first, stride in modules:
        conv(inp, k, 3, stride), conv(k, k, 1), conv(k, k // 2, 3), conv(k // 2, k, 1), conv(k, k // 2, 3)
        conv(2 * k + (0 if first else skip), oup, 1)
    for cin, cout, k, stride in head:
        conv(cin, cout, k, stride)
    features = head[-1][1]
    return params + features * 1000 + 1000, macs + features * 1000


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_counts_against_the_official_code(name):
    summary = summarize(name, depth=0)
    assert summary.input_shape == [1, 3, 224, 224]
    assert (summary.params, summary.macs) == (PARAMS[name], MACS[name])
    assert hand_count(name) == (PARAMS[name], MACS[name])


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_the_official_layout_loads_as_is(name):
    shapes = json.loads((OFFICIAL / f"{name}.json").read_text())
    net = build_on_meta(lambda: get_spec(name).build())
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    net.load_state_dict(state, strict=True, assign=True)


def test_the_card_names_the_paper_and_the_official_evaluation():
    card = get_spec("selecsls60").card
    assert (card.paper.arxiv, card.paper.year) == ("1907.00837", 2020)
    assert card.published is None  # nothing printed to compare with
    # util/imagenet_data_loader.py: Resize(256), CenterCrop(224), ImageNet mean/std, torchvision's bilinear default.
    assert card.preprocess == Preprocess(resize=256, crop=224, interpolation="bilinear")
    assert card.default_input == (3, 224, 224) and len(card.classes) == 1000


@pytest.mark.parametrize("name", ["selecsls42b", "selecsls84"])
def test_a_small_forward_on_random_weights(name):
    torch.manual_seed(0)
    net = get_spec(name).build(num_classes=5).eval()
    with torch.inference_mode():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_classify_runs_an_official_layout_file(rl, tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    weights = tmp_path / "SelecSLS42_B_statedict.pth"
    torch.save(get_spec("selecsls42b").build().state_dict(), weights)
    Image.new("RGB", (300, 200), (200, 120, 10)).save(tmp_path / "a.png")
    result = rl("classify", str(tmp_path / "a.png"), "-m", "selecsls42b", "-w", str(weights), "--json", "-j", "0")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["top_k"][0]["label"] in get_spec("selecsls42b").card.classes
