"""GPT-3's eight sizes: what Table 2.1's hyperparameters build, against the printed n_params and transformers."""

from __future__ import annotations

import pytest
import torch

from rlcli.tasks.summary import summarize

VOCAB, CONTEXT = 50257, 2048

# Table 2.1 as printed: n_params, n_layers, d_model, n_heads, d_head.
TABLE = {
    "gpt3_small": ("125M", 12, 768, 12, 64),
    "gpt3_medium": ("350M", 24, 1024, 16, 64),
    "gpt3_large": ("760M", 24, 1536, 16, 96),
    "gpt3_xl": ("1.3B", 24, 2048, 24, 128),
    "gpt3_2_7b": ("2.7B", 32, 2560, 32, 80),
    "gpt3_6_7b": ("6.7B", 32, 4096, 32, 128),
    "gpt3_13b": ("13.0B", 40, 5140, 40, 128),
    "gpt3_175b": ("175.0B", 96, 12288, 96, 128),
}


def gpt2_layout_params(layers: int, width: int, attention: int | None = None) -> int:
    """GPT-2's layout written out: per block QKV and output projections (attention wide), a 4x MLP, two
    LayerNorms; token and position embeddings (the LM head is the tied token embedding); a final LayerNorm."""
    a, f = attention or width, 4 * width
    block = (3 * width * a + 3 * a) + (a * width + width) + (width * f + f) + (f * width + width) + 4 * width
    return layers * block + VOCAB * width + CONTEXT * width + 2 * width


@pytest.mark.parametrize("name", sorted(TABLE))
def test_params_are_what_table_2_1_builds(name):
    printed, layers, width, _, _ = TABLE[name]
    summary = summarize(name, depth=0)
    assert summary.params == gpt2_layout_params(layers, width)
    check = summary.paper.params
    assert check.printed == printed
    explained = {"gpt3_medium", "gpt3_175b"}  # beyond the printed rounding; the cards say why
    assert check.within_rounding == (name not in explained)


def test_the_inconsistent_rows_are_read_as_their_n_params_require():
    """XL: 24 x 128 = 3,072 heads for d_model 2,048; 13B: 40 x 128 = 5,120 for d_model 5,140. Only d_model
    throughout prints the stated n_params; the other readings would print 1.5B and 12.9B."""
    assert round(gpt2_layout_params(24, 2048) / 1e9, 1) == 1.3
    assert round(gpt2_layout_params(24, 2048, attention=24 * 128) / 1e9, 1) == 1.5
    assert round(gpt2_layout_params(40, 5140) / 1e9, 1) == 13.0
    assert round(gpt2_layout_params(40, 5120) / 1e9, 1) == 12.9
    assert round(gpt2_layout_params(40, 5140, attention=40 * 128) / 1e9, 1) == 12.9


def test_gpt3_small_equals_transformers_gpt2_at_its_hyperparameters():
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        reference = GPT2LMHeadModel(GPT2Config(n_positions=CONTEXT, n_embd=768, n_layer=12, n_head=12))
    assert summarize("gpt3_small", depth=0).params == reference.num_parameters()


def test_gpt3_175b_is_counted_on_meta_with_dense_attention():
    summary = summarize("gpt3_175b", depth=0, input_size="128")
    assert summary.counted_on == "meta" and summary.params == 174_604_259_328
    # per block at T tokens: projections 12 d^2 T, attention 2 T^2 d (QK^T and AV); the LM head V d T
    t, d = 128, 12288
    assert summary.macs == 96 * (12 * d * d * t + 2 * t * t * d) + VOCAB * d * t
    assert "locally banded sparse" in summary.paper.published.convention
