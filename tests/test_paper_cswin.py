"""CSWin Transformer against the official microsoft/CSWin-Transformer models/cswin.py and its README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlcli.core.meta import build_on_meta
from rlcli.errors import ModelRunError
from rlcli.models.registry import get_spec
from rlcli.tasks.summary import summarize

OFFICIAL = Path(__file__).parent / "data" / "official"

# sum(p.numel()) of the official models/cswin.py CSWin_64_12211_tiny_224, CSWin_64_24322_small_224,
# CSWin_96_24322_base_224 and CSWin_144_24322_large_224 (1000 classes; the _384 models count the same).
PARAMS = {"cswin_t": 22_320_552, "cswin_s": 34_643_304, "cswin_b": 77_382_184, "cswin_l": 173_262_664}
# The official README at 224 px: "FLOPs" (multiply-accumulates) and parameters.
README_MACS = {"cswin_t": 4.3e9, "cswin_s": 6.9e9, "cswin_b": 15.0e9, "cswin_l": 31.5e9}
README_PARAMS = {"cswin_t": 23e6, "cswin_s": 35e6, "cswin_b": 78e6, "cswin_l": 173e6}
# torch.utils.flop_counter.FlopCounterMode on the official models (eval, one 3x224x224 image), FLOPs / 2: rl's count
# equals it exactly, and the cards' notes say where the README differs.
MACS = {"cswin_t": 4_324_203_008, "cswin_s": 6_800_714_752, "cswin_b": 14_955_348_480, "cswin_l": 33_130_144_512}
# The same at 384 px on CSWin_96_24322_base_384 and CSWin_144_24322_large_384 (README: 47.0G and 96.8G).
MACS_384 = {"cswin_b": 46_963_660_800, "cswin_l": 101_881_930_752}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_counts_against_the_official_code_and_the_readme(name):
    summary = summarize(name, depth=0)
    assert summary.params == PARAMS[name]
    assert summary.macs == MACS[name]
    paper = summary.paper
    # Within 2 % of the README, or the card's note says why not (the L model's README figure is 5 % below).
    assert summary.macs == pytest.approx(README_MACS[name], rel=0.02) or paper.published.note
    # Differences beyond the README's rounding are explained on the card.
    if not (paper.params.within_rounding and paper.macs.within_rounding):
        assert paper.published.note
    assert summary.params == pytest.approx(README_PARAMS[name], rel=0.03)


def test_cswin_t_by_hand():
    """Convolutions, linear layers and the attention matmuls of CSWin-T at 224 px written out.

    A stage at side R with C channels and stripe width sw: per block, the linear layers take 12 C^2 per token (qkv
    3, proj 1, MLP 8); each of the two half-channel branches attends within R/sw stripes of R*sw tokens (QK^T and
    AV: 2 (R sw)^2 C/2 each), and LePE's depthwise 3x3 takes 9 C per token. The last stage attends globally.
    """
    macs = 56 * 56 * 64 * 3 * 7 * 7
    for side, channels, stripe, blocks in [(56, 64, 1, 1), (28, 128, 2, 2), (14, 256, 7, 21), (7, 512, 7, 1)]:
        tokens = side * side
        if side != 224 // 4:
            macs += tokens * channels * (channels // 2) * 9  # the merge before the stage
        if stripe == side:
            attention = 2 * tokens * tokens * channels
        else:
            attention = 2 * (side // stripe) * 2 * (side * stripe) ** 2 * (channels // 2)
        macs += blocks * (tokens * 12 * channels * channels + attention + tokens * channels * 9)
    macs += 512 * 1000
    assert macs == MACS["cswin_t"]


@pytest.mark.parametrize("name", sorted(MACS_384))
def test_384_px_uses_the_384_models_stripes(name):
    summary = summarize(name, input_size="384", depth=0)
    assert summary.params == PARAMS[name]
    assert summary.macs == MACS_384[name]
    net = build_on_meta(lambda: get_spec(name).build((3, 384, 384)))
    widths = [stage[0].attns[0].stripe_w for stage in (net.stage1, net.stage2, net.stage3)]
    assert widths == [1, 2, 12] and len(net.stage4[0].attns) == 1  # split sizes [1, 2, 12, 12]
    at_224 = build_on_meta(lambda: get_spec(name).build())
    assert [stage[0].attns[0].stripe_w for stage in (at_224.stage1, at_224.stage2, at_224.stage3)] == [1, 2, 7]


@pytest.mark.parametrize("size", [(3, 224, 224), (3, 384, 384)])
def test_official_layout_loads_as_is(size):
    """The official CSWin_64_12211_tiny_224's state_dict keys and shapes (the 384 model has the same ones)."""
    shapes = json.loads((OFFICIAL / "cswin_t.json").read_text())
    net = build_on_meta(lambda: get_spec("cswin_t").build(size))
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    net.load_state_dict(state, strict=True, assign=True)


def test_a_small_forward_on_real_weights():
    torch.manual_seed(0)
    net = get_spec("cswin_t").build((3, 32, 32), num_classes=10).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        with pytest.raises(ModelRunError, match="built for 32x32"):
            net(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("size", ["200", "3x224x256", "1x224x224"])
def test_inputs_it_cannot_take_are_one_error_line(rl, size):
    result = rl("summary", "cswin_t", "--input-size", size)
    assert result.code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "multiple of 32" in result.stderr


def test_classify_runs_an_official_layout_file_with_the_official_preprocessing(rl, tmp_path):
    from PIL import Image

    from rlcli.core.checkpoints import save_checkpoint

    torch.manual_seed(0)
    layout = build_on_meta(lambda: get_spec("cswin_t").build()).state_dict()
    state = {key: torch.randn(tensor.shape) * 0.02 for key, tensor in layout.items()}
    weights = save_checkpoint(tmp_path / "cswin_t.safetensors", state).path
    Image.new("RGB", (300, 200), (10, 120, 200)).save(tmp_path / "a.png")
    result = rl("classify", str(tmp_path / "a.png"), "-m", "cswin_t", "-w", str(weights), "--json")
    assert result.code == 0, result.stderr
    # The released 384 px files have the same keys: at --crop 384 the network is built with the 384 stripes (a
    # 224 px build cannot take the 24 x 24 map of stage 3: 24 is no multiple of its stripe width 7).
    at_384 = rl("classify", str(tmp_path / "a.png"), "-m", "cswin_t", "-w", str(weights), "--crop", "384", "-j", "0")
    assert at_384.code == 0, at_384.stderr
    # main.py evaluates through timm's resolve_data_config over default_cfg 'cswin_224': crop_pct 0.9, bicubic,
    # ImageNet mean/std -> Resize(floor(224 / 0.9) = 248), CenterCrop(224).
    card = get_spec("cswin_t").card
    expected = (248, 224, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    preprocess = card.preprocess
    assert (preprocess.resize, preprocess.crop, preprocess.interpolation, preprocess.mean, preprocess.std) == expected
    assert len(card.classes) == 1000
