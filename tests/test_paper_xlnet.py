"""XLNet-Base and -Large against transformers' XLNetModel, the PyTorch layout of the released checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rlcli.core.feeds import Feed
from rlcli.core.flops import profile_forward
from rlcli.core.meta import build_on_meta
from rlcli.models.language.xlnet import SIZES, XLNetConfig, XLNetModel, from_hf_state_dict
from rlcli.models.registry import get_spec
from rlcli.tasks.summary import summarize

transformers = pytest.importorskip("transformers")

OFFICIAL = Path(__file__).parent / "data" / "official"

# transformers' XLNetModel(XLNetConfig(n_layer, d_model, n_head, d_inner)).num_parameters(), checked again below.
PARAMS = {"xlnet_base": 116_718_336, "xlnet_large": 360_268_800}
# rl's MACs for 512 tokens (with token_type_ids) after a 384-token memory; equal to torch's FlopCounterMode on
# transformers' XLNetModel at the same input (run by hand, full size) and to the formula in test_macs_by_hand.
MACS = {"xlnet_base": 74_129_080_320, "xlnet_large": 250_022_461_440}


def _hf_config(config: XLNetConfig, **extra):
    return transformers.XLNetConfig(
        vocab_size=config.vocab_size, d_model=config.d_model, n_layer=config.n_layer, n_head=config.n_head,
        d_inner=config.d_inner, ff_activation=config.ff_activation, dropout=0.0, **extra,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_counts_against_transformers(name):
    summary = summarize(name, depth=0)
    with torch.device("meta"):
        reference = transformers.XLNetModel(_hf_config(SIZES[name]))
    assert summary.params == PARAMS[name] == reference.num_parameters()
    assert summary.macs == MACS[name]
    assert summary.tokens == 512 and summary.macs_per_token == MACS[name] // 512
    assert [t["name"] for t in summary.inputs] == ["input_ids", "token_type_ids", "mems"]
    assert summary.inputs[2]["shape"] == [1, SIZES[name].n_layer, 384, SIZES[name].d_model]
    assert summary.paper.published is None  # the paper prints no counts


@pytest.mark.parametrize("name", sorted(MACS))
def test_macs_by_hand(name):
    """Per layer, T = 512 queries over K = 896 keys (memory + segment); the relative encoding spans K + T
    distances and is projected per sample. Segment scores: the query against 2 segment vectors, then T x K x 2 per
    head."""
    config = SIZES[name]
    tokens, keys, d, heads = 512, 896, config.d_model, config.n_head
    distances = keys + tokens
    layer = (
        tokens * d * d + 2 * keys * d * d + distances * d * d  # q; k and v over memory + segment; r
        + tokens * keys * d + tokens * distances * d  # content and position scores
        + tokens * 2 * d + tokens * keys * heads * 2  # segment scores
        + tokens * keys * d + tokens * d * d  # weighted values, o
        + 2 * tokens * d * config.d_inner  # feed-forward
    )  # fmt: skip
    assert config.n_layer * layer == MACS[name]


def test_macs_equal_flop_counter_on_transformers():
    """rl's counter on the meta device against torch's FlopCounterMode on transformers' model, at a tiny size."""
    config = XLNetConfig(vocab_size=50, d_model=32, n_layer=2, n_head=4, d_inner=48)
    torch.manual_seed(0)
    reference = transformers.XLNetModel(_hf_config(config)).eval()
    ids = torch.zeros(1, 7, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        reference(ids, token_type_ids=ids, mems=[torch.zeros(5, 1, 32)] * 2)
    net = build_on_meta(lambda: XLNetModel(config)).eval()
    ids = torch.empty(1, 7, dtype=torch.long, device="meta")
    feed = Feed(kwargs={"input_ids": ids, "token_type_ids": ids, "mems": torch.empty(1, 2, 5, 32, device="meta")})
    assert profile_forward(net, feed).total_macs == counter.get_total_flops() // 2


def test_released_layout_loads_as_is():
    """transformers' XLNetModel(xlnet-base-cased's config).state_dict() keys and shapes (large only scales them)."""
    shapes = json.loads((OFFICIAL / "xlnet_base.json").read_text())
    net = build_on_meta(lambda: get_spec("xlnet_base").build())
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    net.load_state_dict(state, strict=True, assign=True)


def test_lm_head_files_convert():
    """The released files hold XLNetLMHeadModel: ``transformer.`` names and an ``lm_loss`` head."""
    config = XLNetConfig(vocab_size=50, d_model=32, n_layer=2, n_head=4, d_inner=48)
    with torch.device("meta"):
        lm = transformers.XLNetLMHeadModel(_hf_config(config))
    converted = from_hf_state_dict(lm.state_dict())
    XLNetModel(config).load_state_dict(converted, strict=True, assign=True)


@pytest.mark.parametrize(
    "settings",
    [{}, {"attn_type": "uni", "same_length": True, "clamp_len": 3, "mem_len": 4}, {"mem_len": 6, "reuse_len": 3}],
)
def test_outputs_equal_transformers(settings):
    config = XLNetConfig(vocab_size=50, d_model=32, n_layer=2, n_head=4, d_inner=48, **settings)
    torch.manual_seed(0)
    reference = transformers.XLNetModel(_hf_config(config, **settings)).eval()
    net = XLNetModel(config).eval()
    net.load_state_dict(reference.state_dict(), strict=True)
    ids, segments = torch.randint(0, 50, (2, 5)), torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    memory = torch.randn(2, 2, 3, 32)  # [batch, layer, M, d]
    calls = [{}, {"token_type_ids": segments}, {"token_type_ids": segments, "mems": memory}]
    if config.attn_type == "bi":  # transformers adds the padding mask in place, which fails for "uni" with batch 2
        calls.append({"token_type_ids": segments, "mems": memory, "attention_mask": mask})
    for call in calls:
        official = {**call, "mems": list(memory.permute(1, 2, 0, 3))} if "mems" in call else call
        with torch.no_grad():
            expected = reference(ids, **official)
            hidden, new_mems = net(ids, **call)
        assert torch.allclose(hidden, expected.last_hidden_state, atol=1e-4)
        assert torch.allclose(new_mems, torch.stack(expected.mems).permute(2, 0, 1, 3), atol=1e-4)


def test_memory_in_the_official_layout_comes_back_so():
    config = XLNetConfig(vocab_size=50, d_model=32, n_layer=2, n_head=4, d_inner=48, mem_len=4)
    net = XLNetModel(config).eval()
    with torch.no_grad():
        hidden, new_mems = net(torch.zeros(2, 3, dtype=torch.long), mems=[torch.zeros(3, 2, 32)] * 2)
    assert hidden.shape == (2, 3, 32)
    assert isinstance(new_mems, list) and [m.shape for m in new_mems] == [(4, 2, 32)] * 2
