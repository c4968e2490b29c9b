"""GPT-2 against the reference implementation (Hugging Face transformers) on the same checkpoint."""

from __future__ import annotations

import pytest
import torch

from lm_fixtures import as_bin_layout, edit_config, make_tiny_gpt2
from rlcli.core.packing import PackedLinear, packing_available
from rlcli.errors import CheckpointError, RlError
from rlcli.tasks.generate import Generator, SamplingOptions, load_language_model
from rlcli.tasks.summary import summarize


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return make_tiny_gpt2(tmp_path_factory.mktemp("gpt2") / "tiny")


@pytest.fixture(scope="session")
def reference(tiny_dir):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(str(tiny_dir)).eval()


@pytest.fixture(scope="session")
def lm(tiny_dir):
    return load_language_model(str(tiny_dir), device="cpu")


def test_logits_match_the_reference(lm, reference):
    ids = torch.randint(0, lm.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours = lm.model(ids)
        theirs = reference(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_bin_layout_with_vocab_and_merges_loads_the_same_model(tiny_dir, tmp_path, lm):
    other = load_language_model(str(as_bin_layout(tiny_dir, tmp_path / "bin")), device="cpu")
    for (name, a), (_, b) in zip(lm.model.state_dict().items(), other.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    text = "whether 'tis nobler 日本語"
    assert other.tokenizer.encode(text).ids == lm.tokenizer.encode(text).ids


def test_greedy_output_matches_the_reference_token_for_token(lm, reference):
    prompt = "To be, or not"
    ids = lm.tokenizer.encode(prompt).ids
    expected = reference.generate(
        torch.tensor([ids]), max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, len(ids) :].tolist()
    result = Generator(lm).generate(prompt, SamplingOptions(max_new_tokens=30, temperature=0, ignore_eos=True))
    assert result.samples[0].token_ids == expected


def test_greedy_output_past_the_context_matches_the_reference_on_the_same_windows(lm, reference):
    """Past the context rl re-encodes the newest three quarters and goes on (README); transformers' generate cannot
    go past it, so the reference is its forward pass, without a cache, over exactly those windows."""
    prompt = "To be, or not to be, that is"
    ids = lm.tokenizer.encode(prompt).ids
    context = lm.config.n_positions
    keep = context - context // 4
    tokens, start = list(ids), 0
    with torch.inference_mode():
        for _ in range(150):
            if len(tokens) - start > context:
                start = len(tokens) - keep
            tokens.append(int(reference(torch.tensor([tokens[start:]])).logits[0, -1].argmax()))
    result = Generator(lm).generate(prompt, SamplingOptions(max_new_tokens=150, temperature=0, ignore_eos=True))
    assert start > 0 and any("window slid" in w for w in result.warnings)
    assert result.samples[0].token_ids == tokens[len(ids) :]


def test_kv_cache_equals_full_recomputation(lm):
    from rlcli.models.language.gpt2 import KVCache

    ids = torch.randint(0, lm.config.vocab_size, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        full = lm.model(ids)
        cache = KVCache(lm.config, 1, lm.config.n_positions, torch.float32, torch.device("cpu"))
        steps = [lm.model(ids[:, :10], cache)]
        steps += [lm.model(ids[:, t : t + 1], cache) for t in range(10, 25)]
        steps.append(lm.model(ids[:, 25:], cache))  # several new tokens after a filled cache
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


def left_padded(lengths, vocab, seed, pad=0):
    """Random rows of ``lengths`` tokens, left-padded with ``pad`` to the longest, and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, width - length :] = torch.randint(0, vocab, (length,), generator=generator)
        mask[row, width - length :] = 1
    return ids, mask


def hf_positions(mask):
    """transformers' position ids for a left-padded batch (GPT-2's prepare_inputs_for_generation)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def test_left_padded_batch_logits_match_the_reference_with_its_mask_and_positions(lm, reference):
    ids, mask = left_padded([7, 19, 1, 12], lm.config.vocab_size, seed=11)
    with torch.inference_mode():
        ours = lm.model(ids, attention_mask=mask)
        theirs = reference(ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() < 1e-4
    assert torch.isfinite(ours).all()  # padding rows too: nothing NaN that could spread


def test_left_padded_batch_with_the_cache_matches_the_reference_step_by_step(lm, reference):
    """Prompt of the padded batch, then decoding steps through the shared cache (one token, then three), each
    against transformers' full forward over everything so far with the same mask and positions."""
    from rlcli.models.language.gpt2 import KVCache

    ids, mask = left_padded([3, 9, 6], lm.config.vocab_size, seed=12)
    more = torch.randint(0, lm.config.vocab_size, (3, 6), generator=torch.Generator().manual_seed(13))
    cache = KVCache(lm.config, 3, 20, torch.float32, torch.device("cpu"))
    full_ids, full_mask = torch.cat([ids, more], 1), torch.cat([mask, torch.ones_like(more)], 1)
    with torch.inference_mode():
        steps = [lm.model(ids, cache, attention_mask=full_mask)]
        steps += [lm.model(more[:, t : t + 1], cache, attention_mask=full_mask) for t in range(3)]
        steps.append(lm.model(more[:, 3:], cache, attention_mask=full_mask))
        theirs = reference(full_ids, attention_mask=full_mask, position_ids=hf_positions(full_mask)).logits
    ours = torch.cat(steps, dim=1)
    real = full_mask.bool()
    assert (ours[real] - theirs[real]).abs().max().item() < 1e-4


def test_dropping_finished_rows_from_the_cache_keeps_the_others(lm):
    from rlcli.models.language.gpt2 import KVCache

    ids, mask = left_padded([4, 8, 5], lm.config.vocab_size, seed=14)
    nxt = torch.randint(0, lm.config.vocab_size, (3, 1), generator=torch.Generator().manual_seed(15))
    full_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
    with torch.inference_mode():
        cache = KVCache(lm.config, 3, 12, torch.float32, torch.device("cpu"))
        lm.model(ids, cache, attention_mask=mask)
        kept = torch.tensor([2, 0])
        cache.keep_rows(kept)
        ours = lm.model(nxt[kept], cache, attention_mask=full_mask[kept])
        expected = [lm.model(torch.cat([ids[r : r + 1, -n:], nxt[r : r + 1]], 1))[:, -1:] for r, n in ((2, 5), (0, 4))]
    torch.testing.assert_close(ours, torch.cat(expected), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_left_padded_batch_in_packed_bfloat16_and_int8_equals_each_row_alone(tiny_dir, dtype):
    """The masked attention path with the packed bfloat16 and int8 layers: a row of a padded batch gives the
    logits that row gives alone, in the same dtype (up to the rounding of a matmul over more rows)."""
    lm = load_language_model(str(tiny_dir), dtype=dtype, device="cpu")
    lengths = [5, 16, 9]
    ids, mask = left_padded(lengths, lm.config.vocab_size, seed=16)
    with torch.inference_mode():
        batched = lm.model(ids, attention_mask=mask).float()
        for row, length in enumerate(lengths):
            alone = lm.model(ids[row : row + 1, -length:].clone()).float()[0]
            spread = alone.std().item()
            assert (batched[row, -length:] - alone).abs().max().item() <= 0.05 * spread, (dtype, row)


def test_gpt2_small_has_the_papers_parameter_count():
    summary = summarize("gpt2", input_size="128", depth=0)
    assert summary.params == 124_439_808
    assert summary.macs_per_token is not None and summary.tokens == 128


def test_config_that_does_not_match_the_weights(tiny_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    edit_config(broken, n_embd=64)
    with pytest.raises(CheckpointError, match=r"transformer\.h\.0\..*: checkpoint \[\d+(, \d+)*\] vs model"):
        load_language_model(str(broken), device="cpu")


def test_missing_and_corrupt_weights(tiny_dir, tmp_path):
    import shutil

    missing = tmp_path / "missing"
    shutil.copytree(tiny_dir, missing)
    (missing / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_language_model(str(missing), device="cpu")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_language_model(str(corrupt), device="cpu")
    no_config = tmp_path / "noconfig"
    shutil.copytree(tiny_dir, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_language_model(str(no_config), device="cpu")


def test_tokenizer_larger_than_the_vocabulary(tiny_dir, tmp_path):
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(tiny_dir, odd)
    edit_config(odd, vocab_size=100)
    with pytest.raises(CheckpointError, match="tokenizer has 300 tokens but the model's vocabulary has 100"):
        load_language_model(str(odd), device="cpu")


def test_hub_names_resolve_from_the_local_cache_only(tiny_dir, tmp_path, monkeypatch):
    import shutil

    repo = tmp_path / "hub" / "models--openai-community--gpt2"
    shutil.copytree(tiny_dir, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert load_language_model("gpt2", device="cpu").folder == repo / "snapshots" / "abc123"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert load_language_model("openai-community/gpt2", device="cpu").folder == repo / "snapshots" / "abc123"
    with pytest.raises(RlError) as info:
        load_language_model("distilgpt2", device="cpu")
    message = str(info.value)
    assert "models--distilbert--distilgpt2" in message and "hf download distilgpt2" in message
    assert "never downloads" in message


# --- Hugging Face config fields that change the forward pass ---------------------------------------------------

VARIANTS = {
    "gelu (erf)": dict(activation_function="gelu"),
    "gelu_python": dict(activation_function="gelu_python"),
    "gelu_pytorch_tanh": dict(activation_function="gelu_pytorch_tanh"),
    "gelu_fast": dict(activation_function="gelu_fast"),
    "gelu_accurate": dict(activation_function="gelu_accurate"),
    "quick_gelu": dict(activation_function="quick_gelu"),
    "gelu_10": dict(activation_function="gelu_10"),
    "relu": dict(activation_function="relu"),
    "relu2": dict(activation_function="relu2"),
    "relu6": dict(activation_function="relu6"),
    "leaky_relu": dict(activation_function="leaky_relu"),
    "silu": dict(activation_function="silu"),
    "swish": dict(activation_function="swish"),
    "mish": dict(activation_function="mish"),
    "tanh": dict(activation_function="tanh"),
    "sigmoid": dict(activation_function="sigmoid"),
    "linear": dict(activation_function="linear"),
    "n_inner": dict(n_inner=48),
    "no attention scaling": dict(scale_attn_weights=False),
    "scale by inverse layer index": dict(scale_attn_by_inverse_layer_idx=True),
    "both scalings off and on": dict(scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True),
    "reorder and upcast (eager)": dict(reorder_and_upcast_attn=True, attn_implementation="eager"),
    "layer_norm_epsilon": dict(layer_norm_epsilon=0.5),
    "untied LM head": dict(tie_word_embeddings=False),
}


def hf_variant(tmp_path, changes):
    """A tiny transformers GPT-2 with ``changes``, saved to a folder, and the reference model loaded from it."""
    from transformers import GPT2LMHeadModel

    changes = dict(changes)
    attention = changes.pop("attn_implementation", "sdpa")
    folder = make_tiny_gpt2(tmp_path / "variant", **changes)
    return folder, GPT2LMHeadModel.from_pretrained(str(folder), attn_implementation=attention).eval()


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=VARIANTS.keys())
def test_config_variants_match_the_reference(tmp_path, changes):
    from rlcli.models.language.gpt2 import KVCache

    folder, reference = hf_variant(tmp_path, changes)
    lm = load_language_model(str(folder), device="cpu")
    ids = torch.randint(0, lm.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        theirs = reference(ids).logits
        full = lm.model(ids)
        cache = KVCache(lm.config, 2, lm.config.n_positions, torch.float32, torch.device("cpu"))
        steps = [lm.model(ids[:, :16], cache)] + [lm.model(ids[:, t : t + 1], cache) for t in range(16, 24)]
        cached = torch.cat(steps, dim=1)
    assert (full - theirs).abs().max().item() < 1e-4
    assert (cached - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(add_cross_attention=True), "add_cross_attention"),
        (dict(activation_function="prelu"), "activation_function 'prelu'"),
        (dict(activation_function="xielu"), "activation_function 'xielu'"),
        (dict(activation_function="no-such-function"), "activation_function 'no-such-function'"),
    ],
)
def test_config_fields_rl_cannot_run_are_refused_by_name(tmp_path, tiny_dir, changes, message):
    import shutil

    folder = tmp_path / "refused"
    shutil.copytree(tiny_dir, folder)
    edit_config(folder, **changes)
    with pytest.raises(CheckpointError, match=message) as info:
        load_language_model(str(folder), device="cpu")
    assert "\n" not in str(info.value)


def test_heads_that_do_not_divide_the_width_are_refused(tmp_path, tiny_dir):
    import shutil

    folder = tmp_path / "heads"
    shutil.copytree(tiny_dir, folder)
    edit_config(folder, n_head=3)
    with pytest.raises(CheckpointError, match=r"n_embd 32 .*n_head 3"):
        load_language_model(str(folder), device="cpu")


# --- bfloat16 on weights packed for oneDNN -------------------------------------------------------------------------

needs_packing = pytest.mark.skipif(
    not packing_available(torch.device("cpu"), torch.bfloat16), reason="oneDNN bfloat16 is not available on this CPU"
)


@needs_packing
@pytest.mark.parametrize("shape", [(1, 48), (3, 48), (2, 5, 48)])  # one row (decoding), several, a batch of steps
def test_packed_linear_equals_the_float64_product_of_its_bfloat16_weights(shape):
    generator = torch.Generator().manual_seed(len(shape))
    linear = torch.nn.Linear(48, 40).bfloat16()
    x = torch.randn(shape, generator=generator).bfloat16()
    expected = torch.nn.functional.linear(x.double(), linear.weight.double(), linear.bias.double())
    result = PackedLinear.from_linear(linear)(x)
    assert result.dtype == torch.bfloat16 and result.shape == (*shape[:-1], 40)
    # float32 accumulation, one bfloat16 rounding of the result (2^-8 relative)
    assert torch.allclose(result.double(), expected, rtol=2**-7, atol=1e-3 * expected.abs().max().item())


@needs_packing
def test_bfloat16_on_the_cpu_packs_the_linear_layers_and_keeps_the_embedding_plain(tiny_dir, reference):
    lm = load_language_model(str(tiny_dir), dtype="bfloat16", device="cpu")
    block = lm.model.transformer.h[0]
    for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj, lm.model.lm_head):
        assert isinstance(layer, PackedLinear) and layer.weight.is_mkldnn
    wte = lm.model.transformer.wte.weight
    assert wte.dtype == torch.bfloat16 and not wte.is_mkldnn
    # The packed head holds the embedding's own values (tied), reordered.
    assert torch.equal(lm.model.lm_head.weight.to_dense(), wte)
    ids = torch.randint(0, lm.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        ours, theirs = lm.model(ids).double(), reference(ids).logits.double()
    # bfloat16 against transformers float32, over three random tiny models: mean 0.9-1.0 % and largest 9-11 % of the
    # logits' spread, the same figures as bfloat16 through a plain F.linear.
    error, spread = (ours - theirs).abs(), theirs.std().item()
    assert error.mean().item() <= 0.02 * spread and error.max().item() <= 0.20 * spread
