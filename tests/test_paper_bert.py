"""BERT against the paper's Section 3 and Hugging Face transformers' BertModel (the reference PyTorch port)."""

from __future__ import annotations

import json

import pytest
import torch

from rlcli.core.meta import build_on_meta
from rlcli.errors import CheckpointError
from rlcli.models.registry import get_spec
from rlcli.tasks.summary import summarize

# Section 3: BERT_BASE (L=12, H=768, A=12), BERT_LARGE (L=24, H=1024, A=16); feed-forward 4H, 512 positions, the
# uncased vocabulary of 30,522 WordPieces (Google's bert_config.json, transformers' BertConfig defaults).
OFFICIAL = {
    "bert_base": {},
    "bert_large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}
# transformers 5.24 BertModel(BertConfig(**OFFICIAL[name])).num_parameters(), the pooler included; recomputed below.
PARAMS = {"bert_base": 109_482_240, "bert_large": 335_141_888}
PRINTED = {"bert_base": "110M", "bert_large": "340M"}


def reference_config(**changes):
    from transformers import BertConfig

    return BertConfig(**changes)


def on_meta(model_class, config):
    with torch.device("meta"):
        return model_class(config)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_parameters_equal_transformers_bert_model(name):
    from transformers import BertModel

    summary = summarize(name, depth=0)
    expected = on_meta(BertModel, reference_config(**OFFICIAL[name])).num_parameters()
    assert summary.params == expected == PARAMS[name]


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_paper_card_prints_section_3_and_explains_the_rounding(name):
    from transformers import BertForPreTraining

    summary = summarize(name, depth=0)
    published = get_spec(name).card.published
    assert (published.source, published.params, published.input_size) == ("Section 3", PRINTED[name], (512,))
    assert published.macs is None and published.flops is None  # the paper prints no MACs
    # 109.48 M and 335.14 M are beyond half a unit of "110M" and "340M", so the card says why ...
    assert not summary.paper.params.within_rounding and published.note
    # ... and what it says holds: both printed figures are the counts to two significant figures, with or without
    # BertForPreTraining's heads (which the note quotes).
    with_heads = on_meta(BertForPreTraining, reference_config(**OFFICIAL[name])).num_parameters()
    assert float(f"{summary.params:.2g}") == float(f"{with_heads:.2g}") == summary.paper.params.published
    assert f"{with_heads / 1e6:.2f} M" in published.note and f"{summary.params / 1e6:.2f} M" in published.note


def hand_macs(layers: int, hidden: int, intermediate: int, tokens: int) -> int:
    """Per layer: q, k, v and the output projection, the two feed-forward layers, q k^T and the weighted sum of v;
    then the pooler's dense layer on one token. Embedding lookups, LayerNorm, softmax and GELU are not MACs."""
    per_layer = 4 * tokens * hidden**2 + 2 * tokens * hidden * intermediate + 2 * tokens**2 * hidden
    return layers * per_layer + hidden**2


@pytest.mark.parametrize("tokens", [512, 128])
def test_macs_by_hand_at_512_and_at_input_size_128(tokens):
    """No MACs are printed; regression constants at 512 tokens, which equal torch's FlopCounterMode on transformers'
    BertModel built on meta (no mask) — 48,318,971,904 and 167,504,773,120, checked by hand once."""
    for name, (layers, hidden, intermediate) in {"bert_base": (12, 768, 3072), "bert_large": (24, 1024, 4096)}.items():
        summary = summarize(name, input_size=str(tokens), depth=0)
        assert summary.macs == hand_macs(layers, hidden, intermediate, tokens)
        assert summary.inputs == [
            {"name": n, "shape": [1, tokens], "list_of": None, "dtype": "int64"}
            for n in ("input_ids", "attention_mask", "token_type_ids")
        ]
    assert summarize("bert_base", depth=0).macs == 48_318_971_904
    assert summarize("bert_large", depth=0).macs == 167_504_773_120


def test_more_tokens_than_positions_is_one_error_line(rl):
    result = rl("summary", "bert_base", "--input-size", "513")
    assert result.code == 1
    assert result.stderr.count("\n") == 1 and "513 tokens exceed the 512 position embeddings" in result.stderr


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_transformers_layouts_load_as_is(name):
    """BertModel's own state dict, and BertForPreTraining's as bert-base-uncased's model.safetensors stores it:
    ``bert.``-prefixed, LayerNorm ``gamma``/``beta`` from the TensorFlow conversion, the ``cls.`` MLM/NSP heads (the
    file's key list is quoted in huggingface/candle#1887)."""
    from transformers import BertForPreTraining, BertModel

    config = reference_config(**OFFICIAL[name])
    released = {
        key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): tensor
        for key, tensor in on_meta(BertForPreTraining, config).state_dict().items()
    }
    assert "bert.embeddings.LayerNorm.gamma" in released and "cls.seq_relationship.weight" in released
    for state in (on_meta(BertModel, config).state_dict(), released):
        net = build_on_meta(lambda: get_spec(name).build())
        net.load_state_dict(state, strict=True, assign=True)
        assert net.encoder.layer[-1].output.LayerNorm.weight.shape == (config.hidden_size,)


def test_a_fine_tuned_head_stays_unexpected():
    net = build_on_meta(lambda: get_spec("bert_base").build())
    state = {**net.state_dict(), "classifier.weight": torch.empty(2, 768, device="meta")}
    with pytest.raises(RuntimeError, match=r"classifier\.weight"):
        net.load_state_dict(state, strict=True, assign=True)


TINY = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 37, "max_position_embeddings": 40, "type_vocab_size": 3}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """A tiny random BertModel and BertForPreTraining, each written by transformers' save_pretrained."""
    from transformers import BertForPreTraining, BertModel

    root = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    for model_class in (BertModel, BertForPreTraining):
        model_class(reference_config(**TINY)).save_pretrained(root / model_class.__name__)
    return root


def padded_batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY["vocab_size"], (3, 24), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0  # padding
    mask[2, 5:] = 0
    segments = torch.zeros_like(ids)
    segments[:, 10:] = 1
    segments[0, 20:] = 2
    return ids, mask, segments


@pytest.mark.parametrize("saved_as", ["BertModel", "BertForPreTraining"])
def test_outputs_equal_transformers_with_padding_and_segments(tiny_folders, saved_as):
    from safetensors.torch import load_file
    from transformers import AutoModel

    from rlcli.models.language.bert import BertConfig, BertModel

    folder = tiny_folders / saved_as
    ours = BertModel(BertConfig.from_hf(json.loads((folder / "config.json").read_text()))).eval()
    ours.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    reference = AutoModel.from_pretrained(str(folder)).eval()  # the BertModel inside, as transformers loads it
    ids, mask, segments = padded_batch()
    with torch.inference_mode():
        mine = ours(ids, attention_mask=mask, token_type_ids=segments)
        theirs = reference(input_ids=ids, attention_mask=mask, token_type_ids=segments)
    assert mine.last_hidden_state.shape == (3, 24, 32) and mine.pooler_output.shape == (3, 32)
    assert (mine.last_hidden_state - theirs.last_hidden_state).abs().max().item() < 1e-4
    assert (mine.pooler_output - theirs.pooler_output).abs().max().item() < 1e-4
    # The mask matters: without it the padded sequences come out otherwise.
    unmasked = ours(ids, token_type_ids=segments).last_hidden_state
    assert (unmasked[1] - theirs.last_hidden_state[1]).abs().max().item() > 1e-3


@pytest.mark.parametrize(
    ("change", "named"),
    [({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
     ({"is_decoder": True}, "is_decoder"), ({"add_cross_attention": True}, "add_cross_attention"),
     ({"hidden_act": "gelu_magic"}, "hidden_act 'gelu_magic'"), ({"num_attention_heads": 5}, "not divisible"),
     ({"hidden_size": "768"}, "hidden_size is '768'")],
)  # fmt: skip
def test_config_fields_rl_does_not_compute_are_refused_by_name(change, named):
    from rlcli.models.language.bert import BertConfig

    with pytest.raises(CheckpointError, match=named):
        BertConfig.from_hf({"model_type": "bert", **change})
    assert BertConfig.from_hf({"position_embedding_type": "absolute"}) == BertConfig()  # bert-base-uncased's
