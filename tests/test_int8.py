"""Weight-only int8 decoding (`rl generate --dtype int8`) and `--dtype auto`, held against float32 references:
hand-computed quantisation, float64 matmuls, Hugging Face transformers' float32 GPT-2 on the same checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lm_fixtures import make_tiny_gpt2
from rlcli.core.devices import fastest_dtype
from rlcli.core.quantize import Int8Linear, int8_matmul, quantize_rows
from rlcli.models.language.gpt2 import DEMO_FOLDER
from rlcli.tasks.generate import Generator, SamplingOptions, load_language_model, perplexity

SLICE = Path(__file__).parent / "data" / "hamlet_slice.txt"

# Stated tolerances of int8 (bfloat16 activations) against float32, on tiny random GPT-2s (weights scaled x4, so
# their logits spread with a standard deviation of about 2), over random token ids: the largest logit difference
# within 40 % of that spread (measured 15-33 % over widths 32, 40, 48 and three draws; bfloat16 alone 8-13 %), the
# mean within 4 % (measured 1.8-2.8 %; bfloat16 0.9-1.1 %); the same top token wherever float32's leads the runner-up
# by more than 15 % of the spread (every disagreement measured had a lead under 8 %: near-ties), and at 90 % of all
# positions (measured 92-95 %); the same greedy tokens for the first 10 (measured 27 of 30).
MAX_LOGIT_ERROR = 0.40
MEAN_LOGIT_ERROR = 0.04
CLEAR_LEAD = 0.15
TOP1_AGREEMENT = 0.90
GREEDY_PREFIX = 10


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_gpt2(tmp_path_factory.mktemp("int8") / "tiny")


@pytest.fixture(scope="module")
def reference(tiny_dir):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def int8_lm(tiny_dir):
    return load_language_model(str(tiny_dir), dtype="int8", device="cpu")


# --- quantisation ----------------------------------------------------------------------------------------------


def test_rows_quantise_as_written_by_hand():
    q, scales = quantize_rows(torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [2.54, 1.27, -0.01]]))
    # Row 0: scale 1/127 in bfloat16 = 0.00787353515625; 0.5 / scale = 63.50 -> 64, 0.25 / scale = 31.75 -> 32.
    # Row 1 is all zero: scale 1. Row 2: 2.54 / 127 = 0.02 -> bfloat16 0.0200195...; 1.27 / it = 63.44 -> 63.
    assert q.dtype == torch.int8 and scales.dtype == torch.bfloat16
    assert q.tolist() == [[64, -127, 32], [0, 0, 0], [127, 63, 0]]
    assert scales.float().tolist() == [0.00787353515625, 1.0, 0.02001953125]


def test_every_weight_is_within_half_a_step_of_its_value():
    weight = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 1, 64)[:, None]
    q, scales = quantize_rows(weight)
    step = scales.double()[:, None]
    error = (q.double() * step - weight.double()).abs()
    assert (error <= step / 2 + 1e-12).all()
    assert (q.abs().amax(dim=1) >= 126).all()  # each row's largest weight uses the full range


@pytest.mark.parametrize("width", [48, 768, 33, 40])  # 33 and 40 are widths torch's kernel computes wrongly
@pytest.mark.parametrize("rows", [1, 5])
def test_int8_matmul_equals_the_float64_product(width, rows):
    generator = torch.Generator().manual_seed(width)
    q, scales = quantize_rows(torch.randn(37, width, generator=generator))
    x = torch.randn(rows, width, generator=generator).bfloat16()
    expected = x.double() @ (q.double() * scales.double()[:, None]).T
    result = int8_matmul(x, q, scales)
    assert result.dtype == torch.bfloat16 and result.shape == (rows, 37)
    # float32 accumulation, one bfloat16 rounding of the result (2^-8 relative) and of the scales' product
    assert torch.allclose(result.double(), expected, rtol=2**-7, atol=1e-2 * expected.abs().max().item())


def test_int8_matmul_takes_a_misaligned_or_strided_input():
    q, scales = quantize_rows(torch.randn(20, 64, generator=torch.Generator().manual_seed(1)))
    base = torch.randn(3, 64 + 1, generator=torch.Generator().manual_seed(2)).bfloat16()
    for x in (base[:, 1:], base.flatten()[1 : 1 + 64].view(1, 64)):  # strided; contiguous 2 bytes past an alignment
        expected = x.double() @ (q.double() * scales.double()[:, None]).T
        assert torch.allclose(int8_matmul(x, q, scales).double(), expected, rtol=2**-7, atol=0.05)


def test_int8_linear_adds_the_bias_over_any_leading_shape():
    linear = torch.nn.Linear(32, 24).eval()
    quantised = Int8Linear.from_linear(linear)
    x = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(3))
    expected = torch.nn.functional.linear(x.double(), linear.weight.double(), linear.bias.double())
    result = quantised(x.bfloat16())
    assert result.shape == (2, 3, 24)
    assert (result.double() - expected).abs().max().item() < 0.05


# --- the model ---------------------------------------------------------------------------------------------------


def test_int8_model_holds_int8_linear_weights_and_float_embeddings_and_norms(int8_lm):
    model = int8_lm.model
    block = model.transformer.h[0]
    for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj, model.lm_head):
        assert layer.weight.dtype == torch.int8 and layer.scales.dtype == torch.bfloat16
    assert block.ln_1.weight.dtype == model.transformer.wpe.weight.dtype == torch.bfloat16
    # Tied: the token embedding reads the head's own int8 table, no float copy.
    assert model.transformer.wte.weight.data_ptr() == model.lm_head.weight.data_ptr()
    assert int8_lm.weights == "int8" and int8_lm.dtype == torch.bfloat16


def test_int8_logits_agree_with_transformers_float32_within_the_stated_tolerance(int8_lm, reference):
    ids = torch.randint(0, int8_lm.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ours = int8_lm.model(ids).double()
        theirs = reference(ids).logits.double()
    spread = theirs.std().item()
    error = (ours - theirs).abs()
    assert error.max().item() <= MAX_LOGIT_ERROR * spread
    assert error.mean().item() <= MEAN_LOGIT_ERROR * spread
    agree = ours.argmax(-1) == theirs.argmax(-1)
    best_two = theirs.topk(2, dim=-1).values
    clear = best_two[..., 0] - best_two[..., 1] > CLEAR_LEAD * spread
    assert clear.sum() > agree.numel() // 2 and agree[clear].all()
    assert agree.double().mean().item() >= TOP1_AGREEMENT


def test_int8_greedy_output_matches_transformers_float32_for_the_first_tokens(int8_lm, reference):
    prompt = "To be, or not"
    ids = int8_lm.tokenizer.encode(prompt).ids
    expected = reference.generate(
        torch.tensor([ids]), max_new_tokens=GREEDY_PREFIX, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, len(ids) :].tolist()
    options = SamplingOptions(max_new_tokens=GREEDY_PREFIX, temperature=0, ignore_eos=True)
    assert Generator(int8_lm).generate(prompt, options).samples[0].token_ids == expected


def test_bfloat16_decoding_with_its_float32_cache_follows_transformers_float32(tiny_dir, reference):
    lm = load_language_model(str(tiny_dir), dtype="bfloat16", device="cpu")
    prompt = "To be, or not"
    ids = lm.tokenizer.encode(prompt).ids
    expected = reference.generate(
        torch.tensor([ids]), max_new_tokens=GREEDY_PREFIX, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, len(ids) :].tolist()
    options = SamplingOptions(max_new_tokens=GREEDY_PREFIX, temperature=0, ignore_eos=True)
    assert Generator(lm).generate(prompt, options).samples[0].token_ids == expected


def test_widths_the_kernel_cannot_take_still_compute_correctly(tmp_path):
    """n_embd 40 is not a multiple of 16: torch's AVX512 kernel would return garbage; rl dequantises instead."""
    from transformers import GPT2LMHeadModel

    folder = make_tiny_gpt2(tmp_path / "w40", n_embd=40)
    reference = GPT2LMHeadModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    lm = load_language_model(str(folder), dtype="int8", device="cpu")
    ids = torch.randint(0, lm.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ours, theirs = lm.model(ids).double(), reference(ids).logits.double()
    error, spread = (ours - theirs).abs(), theirs.std().item()
    assert error.max().item() <= MAX_LOGIT_ERROR * spread and error.mean().item() <= MEAN_LOGIT_ERROR * spread


def test_demo_model_perplexity_in_int8_is_within_2_percent_of_transformers_float32():
    """The reference: transformers' float32 GPT-2 on the bundled folder, scored as rl scores (a document starting
    after <|endoftext|>, consecutive windows of the context)."""
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel

    text = SLICE.read_text(encoding="utf-8")
    model = GPT2LMHeadModel.from_pretrained(str(DEMO_FOLDER), dtype=torch.float32).eval()
    tokenizer = Tokenizer.from_file(str(DEMO_FOLDER / "tokenizer.json"))
    ids = torch.tensor([tokenizer.token_to_id("<|endoftext|>"), *tokenizer.encode(text).ids])
    context, total = model.config.n_positions, 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, context):
            window = ids[start : start + context + 1]
            logits = model(window[None, :-1]).logits[0]
            total += torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum").item()
    float32 = math.exp(total / (len(ids) - 1))
    int8 = perplexity(load_language_model("shakespeare", dtype="int8", device="cpu"), text)
    assert abs(int8 / float32 - 1) <= 0.02  # measured: 46.74 vs 46.57, +0.4 %


# --- --dtype auto and the command ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capability", "bf16", "expected"),
    [("AVX512", True, "int8"), ("AVX2", True, "int8"), ("DEFAULT", True, "bfloat16"), ("DEFAULT", False, "float32")],
)
def test_auto_picks_int8_where_the_kernel_is_vectorised(monkeypatch, capability, bf16, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: bf16)
    name, reason = fastest_dtype(torch.device("cpu"))
    assert name == expected and capability in reason


def test_auto_on_cuda_is_bfloat16_where_supported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert fastest_dtype(torch.device("cuda"))[0] == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert fastest_dtype(torch.device("cuda"))[0] == "float32"


def test_cli_int8_reports_its_dtype(rl, tiny_dir):
    result = rl("generate", "-m", str(tiny_dir), "--dtype", "int8", "--seed", "1", "-n", "8", "--json", "To be")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["settings"]["dtype"] == "int8" and len(doc["samples"][0]["token_ids"]) == 8


def test_cli_auto_says_which_dtype_it_chose(rl, tiny_dir):
    chosen, _ = fastest_dtype(torch.device("cpu"))
    result = rl("generate", "-m", str(tiny_dir), "--dtype", "auto", "--seed", "1", "-n", "4", "--json", "To be")
    assert result.code == 0, result.stderr
    assert result.stderr.startswith(f"--dtype auto: {chosen} (") and result.stderr.count("\n") == 1
    assert json.loads(result.stdout)["settings"]["dtype"] == chosen


def test_other_commands_keep_their_float_choices(rl, tmp_path):
    result = rl("classify", "resnet18", str(tmp_path), "--dtype", "int8")
    assert result.code == 2 and "int8" in result.stderr
