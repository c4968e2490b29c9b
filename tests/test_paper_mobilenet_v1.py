"""MobileNet v1 against the paper's Table 6 and timm's PyTorch layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlcli.core.meta import build_on_meta
from rlcli.models.registry import get_spec
from rlcli.tasks.summary import summarize

OFFICIAL = Path(__file__).parent / "data" / "official"

# Parameters with 1000 classes: timm 1.0.31's mobilenetv1_100 (the same channel rounding, multiples of 8) for
# width 1.0, and sum(p.numel()) of this layout at the other widths, checked by hand from Table 1:
# width 0.25 has 8/16/32/64/128/256 channels, so 470,072 parameters.
PARAMS = {"mobilenet_v1": 4_231_976, "mobilenet_v1_075": 2_585_560, "mobilenet_v1_050": 1_331_592,
          "mobilenet_v1_025": 470_072}  # fmt: skip
# Table 6: million mult-adds at 224 px.
PAPER_MACS = {"mobilenet_v1": 569e6, "mobilenet_v1_075": 325e6, "mobilenet_v1_050": 149e6, "mobilenet_v1_025": 41e6}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_counts_against_the_paper(name):
    summary = summarize(name, depth=0)
    assert summary.params == PARAMS[name]
    assert summary.macs == pytest.approx(PAPER_MACS[name], rel=0.02)
    assert summary.paper.params.within_rounding and summary.paper.macs.within_rounding


def test_width_one_mult_adds_by_hand():
    """Table 1 written out: 3x3 stem, 13 depthwise-separable blocks, the classifier."""
    layers = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
              *[(512, 512, 1)] * 5, (512, 1024, 2), (1024, 1024, 1)]  # fmt: skip
    side = 112
    macs = side * side * 32 * 3 * 9
    for in_channels, out_channels, stride in layers:
        side //= stride
        macs += side * side * in_channels * 9 + side * side * in_channels * out_channels
    macs += 1024 * 1000
    assert summarize("mobilenet_v1", depth=0).macs == macs


def test_timm_layout_loads_as_is():
    shapes = json.loads((OFFICIAL / "mobilenet_v1.json").read_text())
    net = build_on_meta(lambda: get_spec("mobilenet_v1").build())
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    net.load_state_dict(state, strict=True, assign=True)


def test_classify_runs_a_checkpoint_with_the_cards_preprocessing(rl, tmp_path):
    from PIL import Image

    from rlcli.core.checkpoints import save_checkpoint

    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "v1.safetensors", get_spec("mobilenet_v1_025").build().state_dict()).path
    Image.new("RGB", (300, 200), (10, 120, 200)).save(tmp_path / "a.png")
    result = rl("classify", str(tmp_path / "a.png"), "-m", "mobilenet_v1_025", "-w", str(weights), "--json")
    assert result.code == 0, result.stderr
    card = get_spec("mobilenet_v1").card
    assert (card.preprocess.crop, card.preprocess.interpolation, card.preprocess.mean) == (224, "bicubic", (0.5,) * 3)


def test_a_file_with_another_class_count_sizes_the_head(rl, tmp_path):
    """TF-slim's 1001 classes (a background class first), or a fine-tuned head: the file says how many."""
    from PIL import Image

    from rlcli.core.checkpoints import save_checkpoint
    from rlcli.models.vision.mobilenet_v1 import MobileNetV1

    weights = save_checkpoint(tmp_path / "tf.safetensors", MobileNetV1(0.25, num_classes=1001).state_dict()).path
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    result = rl("classify", str(tmp_path / "a.png"), "-m", "mobilenet_v1_025", "-w", str(weights), "--json", "-j", "0")
    assert result.code == 0, result.stderr
    assert all(entry["label"].startswith("class ") for entry in json.loads(result.stdout)["top_k"])
