"""YOLOv5 (v6.0+ P5 detectors) against the official code's counts and layout and the README's table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlcli.core.meta import build_on_meta
from rlcli.errors import UsageError
from rlcli.models.registry import get_spec
from rlcli.tasks.summary import summarize

OFFICIAL = Path(__file__).parent / "data" / "official"

# sum(p.numel()) of the official models/yolo.py Model("models/yolov5{n,s,m,l,x}.yaml") (ultralytics/yolov5 v7.0,
# unfused: the layout of the released checkpoints); its own summary line prints the same figures.
PARAMS = {"yolov5n": 1_872_157, "yolov5s": 7_235_389, "yolov5m": 21_190_557, "yolov5l": 46_563_709,
          "yolov5x": 86_749_405}  # fmt: skip
# Multiply-accumulates at 3x640x640: half of torch.utils.flop_counter.FlopCounterMode's total on the official
# Model in eval mode (convolutions only; the Detect decode is elementwise).
MACS = {"yolov5n": 2_234_060_800, "yolov5s": 8_216_780_800, "yolov5m": 24_436_224_000, "yolov5l": 54_496_870_400,
        "yolov5x": 102_724_096_000}  # fmt: skip
# README "FLOPs @640 (B)": thop 0.0.31 x 2 on the BN-fused model, which counts each conv bias as one op per output.
README_FLOPS = {"yolov5n": 4.5e9, "yolov5s": 16.5e9, "yolov5m": 49.0e9, "yolov5l": 109.1e9, "yolov5x": 205.7e9}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_counts_against_the_official_code_and_readme(name):
    summary = summarize(name, depth=0)
    assert summary.params == PARAMS[name]
    assert summary.macs == MACS[name]
    assert 2 * summary.macs == pytest.approx(README_FLOPS[name], rel=0.02)
    assert summary.paper.macs_compared and summary.paper.flops.rl == 2 * MACS[name]
    card = get_spec(name).card
    assert card.task == "detection" and card.default_input == (3, 640, 640) and card.preprocess is None
    # The card explains every figure that is off by more than rounding.
    assert summary.paper.flops.within_rounding or card.published.note
    assert summary.paper.params.within_rounding or "fusing BN" in card.published.note


def test_readme_flops_are_thop_with_bias_ops_on_the_fused_model():
    """The notes' arithmetic: 2 x (MACs + conv output elements) rounds to every README figure."""
    # Conv2d output elements at 640 px (the outputs in the notes), summed with forward hooks on rl's model; the
    # official model gives the same (thop 0.0.31 run on the fused official model: 4.496 / 16.485 / 48.967 /
    # 109.145 / 205.669 B).
    outputs = {"yolov5n": 13_969_200, "yolov5s": 25_796_400, "yolov5m": 47_454_000, "yolov5l": 75_665_200,
               "yolov5x": 110_430_000}  # fmt: skip
    for name, flops in README_FLOPS.items():
        assert abs(2 * (MACS[name] + outputs[name]) - flops) <= 0.05e9


def test_output_elements_at_640_from_the_layer_list():
    """The P3/P4/P5 maps of a 640 px input have 80x80, 40x40 and 20x20 cells, three anchors each."""
    net = build_on_meta(lambda: get_spec("yolov5n").build()).eval()
    boxes = net(torch.zeros(1, 3, 640, 640, device="meta"))
    assert tuple(boxes.shape) == (1, 3 * (80 * 80 + 40 * 40 + 20 * 20), 85) == (1, 25200, 85)


def test_official_layout_loads_as_is():
    shapes = json.loads((OFFICIAL / "yolov5n.json").read_text())
    net = build_on_meta(lambda: get_spec("yolov5n").build())
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    net.load_state_dict(state, strict=True, assign=True)
    assert "model.24.anchors" in shapes and not any("stride" in key for key in shapes)


def test_small_real_forward_in_both_modes():
    torch.manual_seed(0)
    net = get_spec("yolov5n").build((3, 64, 96), num_classes=3).eval()
    with torch.no_grad():
        boxes = net(torch.rand(2, 3, 64, 96))
        assert boxes.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 8)
        assert torch.all(boxes[..., 4:] >= 0) and torch.all(boxes[..., 4:] <= 1)  # objectness, classes: sigmoid
        maps = net.train()(torch.rand(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 3, 8, 12, 8), (2, 3, 4, 6, 8), (2, 3, 2, 3, 8)]


def test_anchors_are_stored_in_grid_units():
    """The official Model divides the yaml's pixel anchors by each scale's stride before saving them."""
    net = get_spec("yolov5n").build((3, 64, 64))
    expected = torch.tensor([[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]])
    expected = expected.float().view(3, 3, 2) / torch.tensor([8.0, 16.0, 32.0]).view(3, 1, 1)
    assert torch.equal(net.model[24].anchors, expected)


def test_sides_must_be_multiples_of_32():
    with pytest.raises(UsageError, match="multiples of 32"):
        get_spec("yolov5s").build((3, 600, 600))
