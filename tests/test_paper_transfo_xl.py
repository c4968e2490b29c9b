"""Transformer-XL's WikiText-103 model against the official kimiyoung/transformer-xl code, Hugging Face's conversion
of the released weights (transfo-xl-wt103) and the paper's Table 1.

transformers 5 no longer ships TransfoXL, so the references were run by hand: the official pytorch/mem_transformer.py
(a tiny config, one shared u and v) and transformers 4.35's TransfoXLLMHeadModel (a tiny config with untie_r) give
the hidden states, log-probabilities and new memories of rl's module on the same weights within 3e-6. The tests
below hold what can be checked without them: counts by hand, the released layout, and the model's own identities.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlcli.core.meta import build_on_meta
from rlcli.models.language.transfo_xl import TransfoXL, TransfoXLConfig
from rlcli.models.registry import get_spec
from rlcli.tasks.summary import summarize

OFFICIAL = Path(__file__).parent / "data" / "official"

# transformers 4.35 TransfoXLLMHeadModel(TransfoXLConfig()) (the transfo-xl-wt103 config: untie_r, tie_projs
# [False, True, True, True]), num_parameters(). The official mem_transformer.py with run_wt103_large.sh's flags
# counts 285,170,506: one u and v shared by the 18 layers, 17 x 2 x 16 x 64 = 34,816 fewer.
PARAMS = 285_205_322
OFFICIAL_PYTORCH_PARAMS = 285_170_506
# rl's MACs at T = 128 with a 1,600-token memory: test_macs_by_hand writes them out. torch's FlopCounterMode on
# transformers 4.35's TransfoXLLMHeadModel at the same input (token ids 0, all in the head cluster) gives
# 169,472,604,160: 44,040,192 = 128 x 1024 x (256 + 64 + 16) less, the tail clusters' input projections, which the
# official code skips for tokens outside them and rl computes and discards (no data-dependent shapes on meta).
MACS = 169_516_644_352
HF_MACS_HEAD_CLUSTER = 169_472_604_160


def test_counts_and_the_papers_table():
    summary = summarize("transfo_xl_wt103", depth=0)
    assert summary.params == PARAMS == OFFICIAL_PYTORCH_PARAMS + 17 * 2 * 16 * 64
    assert summary.macs == MACS == HF_MACS_HEAD_CLUSTER + 128 * 1024 * (256 + 64 + 16)
    assert summary.tokens == 128 and summary.macs_per_token == MACS // 128
    assert [t["name"] for t in summary.inputs] == ["input_ids", "mems"]
    assert summary.inputs[1]["shape"] == [1, 18, 1600, 1024]
    paper = summary.paper
    assert paper.published.source == "Table 1" and paper.params.printed == "257M"
    assert not paper.params.within_rounding and paper.published.note  # 285.2 M built; the note says so


def test_macs_by_hand():
    """Per layer, on a 128-token segment after a 1,600-token memory (1,728 keys), d = 1024, 16 x 64 heads."""
    tokens, keys, d, inner, layers = 128, 1728, 1024, 4096, 18
    layer = (
        keys * d * 3 * d  # qkv_net runs over memory + segment (the official code keeps the last 128 queries)
        + keys * d * d  # r_net: one positional encoding per distance, shared by the batch
        + 3 * tokens * keys * d  # (a)+(c), (b)+(d) and the weighted sum of values
        + tokens * d * d  # o_net
        + 2 * tokens * d * inner  # CoreNet
    )
    embedding = tokens * d * (1024 + 256 + 64 + 16)  # every token through every cluster's projection
    softmax = tokens * (
        d * 1024 + 1024 * (20000 + 3)  # head: shortlist and one logit per tail cluster
        + d * 256 + 256 * 20000
        + d * 64 + 64 * 160000
        + d * 16 + 16 * 67735
    )  # fmt: skip
    assert layers * layer + embedding + softmax == MACS


def test_a_shorter_segment_and_memory_by_input_size():
    summary = summarize("transfo_xl_wt103", input_size="64", depth=0)
    assert summary.tokens == 64 and summary.inputs[0]["shape"] == [1, 64]
    assert summary.inputs[1]["shape"] == [1, 18, 1600, 1024]  # the memory stays the evaluation's
    assert summary.macs_per_token == summary.macs // 64
    small = summarize("transfo_xl_wt103", inputs="input_ids=64:int64 mems=18x64x1024", depth=0)
    assert small.macs < summary.macs


def test_released_layout_loads_as_is():
    """Hugging Face's TransfoXLLMHeadModel state_dict (transformers 4.35), the layout of transfo-xl-wt103: tied
    tables and projections stored under both names, the inverse frequencies as a buffer."""
    shapes = json.loads((OFFICIAL / "transfo_xl_wt103.json").read_text())
    assert len(shapes) == 257
    net = build_on_meta(lambda: get_spec("transfo_xl_wt103").build())
    state = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    net.load_state_dict(state, strict=True, assign=True)


TINY = TransfoXLConfig(
    vocab_size=60, cutoffs=(10, 20, 40), div_val=2, d_embed=16, d_model=16, n_layer=2, n_head=2, d_head=8,
    d_inner=32, mem_len=6, clamp_len=1000, same_length=False,
)  # fmt: skip


def _tiny(config: TransfoXLConfig = TINY) -> TransfoXL:
    torch.manual_seed(0)
    net = TransfoXL(config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    return net


def test_forward_shapes_and_normalised_log_probabilities():
    net = _tiny()
    ids = torch.randint(0, 60, (2, 5))
    with torch.no_grad():
        log_probs, mems = net(ids, torch.randn(2, 2, 4, 16))
    assert log_probs.shape == (2, 5, 60) and mems.shape == (2, 2, 6, 16)
    assert torch.allclose(log_probs.logsumexp(-1), torch.zeros(2, 5), atol=1e-5)
    with torch.no_grad():
        _, official_layout = net(ids, list(torch.randn(2, 4, 2, 16)))
    assert isinstance(official_layout, list) and official_layout[0].shape == (6, 2, 16)


def test_adaptive_input_is_each_tokens_own_cluster():
    net = _tiny()
    embedding = net.transformer.word_emb
    ids = torch.tensor([[0, 9, 10, 19, 20, 39, 40, 59]])
    expected = []
    for token in ids[0].tolist():
        cluster = next(i for i, (low, high) in enumerate(embedding.bounds) if low <= token < high)
        row = embedding.emb_layers[cluster].weight[token - embedding.bounds[cluster][0]]
        expected.append(embedding.emb_projs[cluster] @ row * 16**0.5)
    with torch.no_grad():
        assert torch.allclose(embedding(ids)[0], torch.stack(expected), atol=1e-5)


def test_segment_recurrence_equals_one_long_segment():
    """With a memory at least as long as the first segment (and same_length off), reading B after A's memory is
    reading A + B at once: each layer's memory is the hidden state A's tokens have in the long pass (Section 3.2)."""
    net = _tiny()
    a, b = torch.randint(0, 60, (2, 4)), torch.randint(0, 60, (2, 3))
    with torch.no_grad():
        _, memory = net(a)
        recurrent, _ = net(b, memory)
        whole, _ = net(torch.cat([a, b], dim=1))
    assert memory.shape == (2, 2, 4, 16)
    assert torch.allclose(recurrent, whole[:, 4:], atol=1e-4)


def test_same_length_limits_every_token_to_mem_len_positions():
    net = _tiny(TransfoXLConfig(**{**TINY.__dict__, "same_length": True}))
    mask = net.transformer._attention_mask(qlen=3, mlen=6, device=torch.device("cpu"))
    assert (~mask).sum(dim=1).tolist() == [6, 6, 6]  # each sees mem_len = 6 positions, itself included
    assert not mask[2, 8] and mask[0, 7] and mask[1, 0]


def test_the_official_softmax_ties_all_but_the_head_projection():
    net = build_on_meta(lambda: get_spec("transfo_xl_wt103").build())
    embedding, crit = net.transformer.word_emb, net.crit
    assert all(out.weight is table.weight for out, table in zip(crit.out_layers, embedding.emb_layers, strict=True))
    assert crit.out_projs[0] is not embedding.emb_projs[0]
    assert all(crit.out_projs[i] is embedding.emb_projs[i] for i in (1, 2, 3))


@pytest.mark.parametrize("bad", [torch.zeros(2, 4, 16)])
def test_memory_of_the_wrong_rank_is_refused(bad):
    with pytest.raises(ValueError, match="mems must be"):
        _tiny()(torch.zeros(2, 3, dtype=torch.long), bad)
