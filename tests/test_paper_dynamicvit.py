"""DynamicViT-DeiT-S against the official raoyongming/DynamicViT models/dyvit.py and the paper's DeiT-S results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlcli.core.meta import build_on_meta
from rlcli.errors import ModelRunError
from rlcli.models.cards import imagenet_classes
from rlcli.models.registry import get_spec
from rlcli.tasks.summary import summarize

OFFICIAL = Path(__file__).parent / "data" / "official"

RHO = {"dynamicvit_s_070": 0.7, "dynamicvit_s_080": 0.8, "dynamicvit_s_090": 0.9}
# sum(p.numel()) of the official VisionTransformerDiffPruning(patch_size=16, embed_dim=384, depth=12, num_heads=6,
# mlp_ratio=4, qkv_bias=True, pruning_loc=[3, 6, 9]) as infer.py builds 'deit-s': DeiT-S and three PredictorLG.
PARAMS = 22_774_414
# The paper's DeiT-S results at keeping ratio rho: GFLOPs (multiply-accumulates, fvcore's count).
PAPER_MACS = {"dynamicvit_s_070": 2.9e9, "dynamicvit_s_080": 3.4e9, "dynamicvit_s_090": 4.0e9}
# torch.utils.flop_counter.FlopCounterMode on that official model in eval mode (token_ratio [rho, rho^2, rho^3]),
# FLOPs / 2, one 3x224x224 image: rl's count equals it exactly (fvcore adds LayerNorms: 2.99 G, 3.47 G, 4.05 G).
MACS = {"dynamicvit_s_070": 2_980_897_728, "dynamicvit_s_080": 3_463_053_504, "dynamicvit_s_090": 4_040_734_080}
# Patch tokens kept after stages 1, 2, 3: the official int(196 * rho ** s), written out.
KEPT = {"dynamicvit_s_070": [137, 96, 67], "dynamicvit_s_080": [156, 125, 100], "dynamicvit_s_090": [176, 158, 142]}


@pytest.mark.parametrize("name", sorted(RHO))
def test_counts_against_the_official_code_and_table_1(name):
    summary = summarize(name, depth=0)
    assert summary.params == PARAMS
    assert summary.counted_on == "meta"
    assert summary.macs == MACS[name]
    paper = summary.paper
    assert summary.macs == pytest.approx(PAPER_MACS[name], rel=0.02) or paper.published.note
    assert paper.macs.within_rounding or paper.published.note


@pytest.mark.parametrize("name", sorted(RHO))
def test_the_sequence_really_shrinks(name):
    """The blocks' input lengths, hooked on the meta device: 197 tokens, then the class token and the kept ones."""
    rho = RHO[name]
    assert KEPT[name] == [int(196 * rho**s) for s in (1, 2, 3)]
    net = build_on_meta(lambda: get_spec(name).build()).eval()
    blocks, predictors = [], []
    for block in net.blocks:
        block.register_forward_pre_hook(lambda module, args: blocks.append(args[0].shape[1]))
    for predictor in net.score_predictor:
        predictor.register_forward_pre_hook(lambda module, args: predictors.append(args[0].shape[1]))
    with torch.no_grad():
        assert net(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 1000)
    first, second, third = (1 + kept for kept in KEPT[name])
    assert blocks == [197] * 3 + [first] * 3 + [second] * 3 + [third] * 3
    assert predictors == [196, first - 1, second - 1]


@pytest.mark.parametrize("name", sorted(RHO))
def test_macs_by_hand(name):
    """DeiT-S per block: 4608 * 384 MACs per token in its linear layers (qkv, proj, MLP) and 2 N^2 * 384 in
    attention; each predictor 384^2 + 384 * 192 + 192 * 96 + 96 * 2 per patch token it scores."""
    lengths = [197] + [1 + kept for kept in KEPT[name]]
    blocks = sum(3 * (n * 4608 * 384 + 2 * n * n * 384) for n in lengths)
    predictors = sum(n - 1 for n in lengths[:3]) * (384 * 384 + 384 * 192 + 192 * 96 + 96 * 2)
    patch_embed = 196 * 384 * 3 * 16 * 16
    assert patch_embed + blocks + predictors + 384 * 1000 == MACS[name]


@pytest.mark.parametrize("name", sorted(RHO))
def test_official_layout_loads_as_is(name):
    """The official model's state_dict keys and shapes (the same for every rho)."""
    shapes = json.loads((OFFICIAL / "dynamicvit_s_070.json").read_text())
    net = build_on_meta(lambda: get_spec(name).build())
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    net.load_state_dict(state, strict=True, assign=True)


def test_a_small_forward_on_real_weights():
    torch.manual_seed(0)
    net = get_spec("dynamicvit_s_070").build((3, 64, 64), num_classes=10).eval()
    assert net.kept == [11, 7, 5]  # int(16 * rho ** s) of a 4x4 grid
    with torch.no_grad():
        assert net(torch.randn(2, 3, 64, 64)).shape == (2, 10)
        with pytest.raises(ModelRunError, match="built for 64x64"):
            net(torch.randn(1, 3, 224, 224))


def test_inputs_it_cannot_take_are_one_error_line(rl):
    result = rl("summary", "dynamicvit_s_070", "--input-size", "3x100x100")
    assert result.code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_classify_runs_an_official_layout_file_with_deits_preprocessing(rl, tmp_path):
    from PIL import Image

    from rlcli.core.checkpoints import save_checkpoint

    torch.manual_seed(0)
    state = get_spec("dynamicvit_s_080").build().state_dict()
    weights = save_checkpoint(tmp_path / "dynamicvit.safetensors", state).path
    Image.new("RGB", (300, 200), (10, 120, 200)).save(tmp_path / "a.png")
    result = rl("classify", str(tmp_path / "a.png"), "-m", "dynamicvit_s_080", "-w", str(weights), "--json")
    assert result.code == 0, result.stderr
    top = json.loads(result.stdout)["top_k"]
    assert len(top) == 5 and all(row["label"] == imagenet_classes()[row["index"]] for row in top)  # not a predictor's 2
    # infer.py -> datasets.build_transform(is_train=False): crop_pct 224/256 -> Resize(int(224 / 0.875) = 256,
    # interpolation=3 (bicubic)), CenterCrop(224), ImageNet mean/std.
    preprocess = get_spec("dynamicvit_s_080").card.preprocess
    expected = (256, 224, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (preprocess.resize, preprocess.crop, preprocess.interpolation, preprocess.mean, preprocess.std) == expected
