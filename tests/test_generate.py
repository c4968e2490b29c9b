"""Decoding semantics and the `rl generate` command."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch

from lm_fixtures import make_padded_vocab_gpt2, make_tiny_gpt2
from rlcli.errors import UsageError
from rlcli.models.language.gpt2 import KVCache
from rlcli.tasks.generate import Generator, SamplingOptions, load_language_model, next_token_scores, sample_tokens


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_gpt2(tmp_path_factory.mktemp("gen") / "tiny")


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return load_language_model(str(tiny_dir), device="cpu")


@pytest.fixture(scope="module")
def padded_lm(tmp_path_factory):
    folder = make_padded_vocab_gpt2(tmp_path_factory.mktemp("padded") / "padded", vocab_size=320)
    return load_language_model(str(folder), device="cpu")


def greedy(lm, prompt="To be", n=30, **kw):
    return Generator(lm).generate(prompt, SamplingOptions(max_new_tokens=n, temperature=0, **kw)).samples[0]


# --- sampling semantics ----------------------------------------------------------------------------------------


def test_top_k_keeps_exactly_the_k_best():
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(0))
    scores = next_token_scores(logits, SamplingOptions(top_k=7), None)
    kept = torch.isfinite(scores)
    assert kept.sum(dim=1).tolist() == [7, 7, 7]
    assert torch.equal(kept, torch.zeros_like(kept).scatter(1, logits.topk(7).indices, True))
    draws = sample_tokens(logits.repeat(200, 1), SamplingOptions(top_k=7), None, torch.Generator().manual_seed(1))
    assert kept.repeat(200, 1).gather(1, draws[:, None]).all()


def hf_processed_scores(logits, options, seen):
    """The scores Hugging Face ``generate(do_sample=True)`` samples from, built from its own logits processors."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    # HF's order (GenerationMixin._get_logits_processor): penalties first, then temperature, top-k, top-p.
    processors = LogitsProcessorList()
    if options.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
    if options.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(options.temperature))
    if options.top_k != 0:
        processors.append(TopKLogitsWarper(options.top_k))
    if options.top_p < 1.0:
        processors.append(TopPLogitsWarper(options.top_p))
    # The repetition penalty reads the ids generated so far: one row of seen ids per batch row.
    input_ids = torch.stack([row.nonzero().flatten() for row in seen]) if seen is not None else None
    return processors(input_ids, logits.clone())


HF_CASES = [
    SamplingOptions(top_k=5, temperature=0.7),
    SamplingOptions(top_k=8, top_p=0.6),
    SamplingOptions(top_k=0, top_p=0.8, temperature=1.3),
    SamplingOptions(top_k=4, repetition_penalty=1.5),
    SamplingOptions(top_k=0, top_p=0.5, temperature=0.5, repetition_penalty=1.3),
    SamplingOptions(top_k=30, top_p=0.95, repetition_penalty=0.8),
]


def seen_tokens(logits, count=3):
    """A repetition history that covers the top token and some negative logits (both branches of the penalty)."""
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen.scatter_(1, logits.argsort(dim=1)[:, -count:], True)
    seen.scatter_(1, logits.argsort(dim=1)[:, :count], True)
    return seen


@pytest.mark.parametrize("options", HF_CASES)
def test_scores_equal_hugging_faces_logits_processors(options):
    logits = torch.randn(4, 60, generator=torch.Generator().manual_seed(11)) * 3
    seen = seen_tokens(logits)
    ours = next_token_scores(logits, options, seen)
    theirs = hf_processed_scores(logits, options, seen)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    kept = torch.isfinite(theirs)
    assert (ours[kept] - theirs[kept]).abs().max().item() < 1e-6


@pytest.mark.parametrize("options", HF_CASES)
def test_draws_follow_hugging_faces_distribution(options):
    logits = torch.randn(1, 30, generator=torch.Generator().manual_seed(3)) * 2
    seen = seen_tokens(logits, count=2)
    expected = hf_processed_scores(logits, options, seen).softmax(-1)[0]
    draws = sample_tokens(logits.repeat(20000, 1), options, seen.repeat(20000, 1), torch.Generator().manual_seed(4))
    observed = torch.bincount(draws, minlength=30).float() / 20000
    assert (observed[expected == 0] == 0).all()
    # 20,000 draws: the standard error of a frequency is at most 0.0035, so 0.015 is over four of them.
    assert (observed - expected).abs().max().item() < 0.015


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.07, 0.03]])
    for top_p, expected in [(0.5, 1), (0.6, 2), (0.75, 2), (0.76, 3), (0.9, 3), (0.95, 4), (1.0, 5)]:
        scores = next_token_scores(probs.log(), SamplingOptions(top_k=0, top_p=top_p), None)
        assert torch.isfinite(scores).sum().item() == expected, top_p
    scores = next_token_scores(probs.log(), SamplingOptions(top_k=0, top_p=0.9), None)
    assert torch.equal(torch.isfinite(scores[0]), torch.tensor([True, True, True, False, False]))


def test_temperature_scales_and_zero_is_argmax():
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    assert sample_tokens(logits, SamplingOptions(temperature=0), None, torch.Generator()).item() == 1
    scaled = next_token_scores(logits, SamplingOptions(temperature=2.0, top_k=0), None)
    assert torch.allclose(scaled, logits / 2)


def test_repetition_penalty_as_ctrl_defines_it():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    scores = next_token_scores(logits, SamplingOptions(temperature=1.0, top_k=0, repetition_penalty=2.0), seen)
    assert scores.tolist() == [[1.0, -4.0, 1.0]]


def test_same_seed_same_text_other_seed_other_text(lm):
    options = SamplingOptions(max_new_tokens=40, seed=123, top_k=0, ignore_eos=True)
    first = Generator(lm).generate("To be", options).samples[0]
    again = Generator(lm).generate("To be", options).samples[0]
    other = Generator(lm).generate("To be", SamplingOptions(max_new_tokens=40, seed=124, top_k=0, ignore_eos=True))
    assert first.token_ids == again.token_ids and first.text == again.text
    assert other.samples[0].token_ids != first.token_ids


def test_batched_samples_differ_and_report_logprobs(lm):
    result = Generator(lm).generate("To be", SamplingOptions(max_new_tokens=20, seed=5, num_samples=3, ignore_eos=True))
    ids = [s.token_ids for s in result.samples]
    assert len({tuple(i) for i in ids}) == 3
    for sample in result.samples:
        assert len(sample.logprobs) == len(sample.token_ids) == 20
        assert all(lp <= 0 for lp in sample.logprobs)
    assert result.stats.new_tokens == 60


def test_logprobs_are_the_models_own(lm):
    sample = greedy(lm, n=5, ignore_eos=True)
    ids = lm.tokenizer.encode("To be").ids + sample.token_ids
    with torch.inference_mode():
        logprobs = lm.model(torch.tensor([ids])).log_softmax(-1)[0]
    start = len(ids) - 5
    expected = [logprobs[start - 1 + i, t].item() for i, t in enumerate(sample.token_ids)]
    assert sample.logprobs == pytest.approx(expected, abs=1e-4)


# --- ending samples --------------------------------------------------------------------------------------------


def test_stop_string_ends_the_sample_before_it(lm):
    full = greedy(lm, n=40, ignore_eos=True)
    stop = full.text[12:15]
    first = full.text.find(stop)
    stopped = greedy(lm, n=40, ignore_eos=True, stop=(stop,))
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:first]


def test_end_of_text_ends_a_sample_unless_ignored(lm, monkeypatch):
    full = greedy(lm, n=20, ignore_eos=True)
    chosen = full.token_ids[6]
    first = full.token_ids.index(chosen)
    monkeypatch.setattr(lm, "eos_id", chosen)
    ended = greedy(lm, n=20)
    assert ended.finish_reason == "eos"
    assert ended.token_ids == full.token_ids[: first + 1]
    assert ended.text == lm.tokenizer.decode(full.token_ids[:first], skip_special_tokens=False)
    assert greedy(lm, n=20, ignore_eos=True).finish_reason == "length"


def test_long_prompt_keeps_its_last_tokens_and_generation_slides_past_the_context(lm):
    prompt = "whether 'tis nobler in the mind to suffer " * 30
    result = Generator(lm).generate(prompt, SamplingOptions(max_new_tokens=150, seed=0, ignore_eos=True))
    assert lm.config.n_positions == 64
    assert result.stats.prompt_tokens == 64 - 16
    assert any("kept its last 48" in w for w in result.warnings)
    assert any("window slid" in w for w in result.warnings)
    assert len(result.samples[0].token_ids) == 150


def test_empty_prompt_starts_from_end_of_text(lm):
    result = Generator(lm).generate("", SamplingOptions(max_new_tokens=5, temperature=0, ignore_eos=True))
    assert result.stats.prompt_tokens == 1


def test_interrupt_keeps_what_was_produced(lm):
    pieces = []

    def on_text(index, delta):
        pieces.append(delta)
        if len(pieces) == 3:
            raise KeyboardInterrupt

    result = Generator(lm).generate(
        "To be", SamplingOptions(max_new_tokens=50, temperature=0, ignore_eos=True), on_text
    )
    assert result.interrupted
    assert result.samples[0].finish_reason == "interrupted"
    assert "".join(pieces) == result.samples[0].text[: len("".join(pieces))]


def test_streamed_pieces_add_up_to_the_text(lm):
    pieces = []
    options = SamplingOptions(max_new_tokens=60, seed=3, top_k=0, ignore_eos=True, stop=("zzz-never",))
    result = Generator(lm).generate("To", options, lambda i, d: pieces.append(d))
    assert "".join(pieces) == result.samples[0].text


def test_streaming_never_splits_a_character(lm, monkeypatch):
    import rlcli.tasks.generate as task

    text = "日本語: whether 日本"
    planned = iter(lm.tokenizer.encode(text).ids)
    assert len(lm.tokenizer.encode("日").ids) > 1  # the test needs characters spread over several tokens
    monkeypatch.setattr(task, "sample_tokens", lambda logits, options, seen, gen: torch.tensor([next(planned)]))
    pieces = []
    count = len(lm.tokenizer.encode(text).ids)
    result = Generator(lm).generate(
        "To", SamplingOptions(max_new_tokens=count, ignore_eos=True), lambda i, d: pieces.append(d)
    )
    assert result.samples[0].text == text
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


class ScriptedModel(torch.nn.Module):
    """Stands in for the network: its logits make ``planned`` the greedy choice, one token per step."""

    def __init__(self, config, planned):
        super().__init__()
        self.config = config
        self.planned = list(planned)
        self.step = 0

    def forward(self, ids, cache=None, last_only=False):
        logits = torch.zeros(ids.shape[0], 1 if last_only else ids.shape[1], self.config.vocab_size)
        if self.step < len(self.planned):
            logits[:, -1, self.planned[self.step]] = 10.0
        self.step += 1
        return logits


def scripted(lm, text):
    """``lm`` with its model replaced by one whose greedy continuation is exactly ``text``; and the ids of it."""
    import dataclasses

    ids = lm.tokenizer.encode(text).ids
    return dataclasses.replace(lm, model=ScriptedModel(lm.config, ids)), ids


MULTIBYTE_TEXT = "To be é 日本語 🙂 end"


@pytest.mark.parametrize("stop", ["日", "本語", "é 日", "🙂", "語 🙂 e"])
def test_stop_string_with_a_character_split_across_tokens(lm, stop):
    fake, ids = scripted(lm, MULTIBYTE_TEXT)
    cut = MULTIBYTE_TEXT.index(stop)
    # The test needs the stop string's first character spread over tokens: some prefix decodes to the text
    # before it plus the replacement character that stands for the incomplete bytes.
    first_multibyte = next(i for i in range(cut, len(MULTIBYTE_TEXT)) if ord(MULTIBYTE_TEXT[i]) > 127)
    prefixes = [lm.tokenizer.decode(ids[:k], skip_special_tokens=False) for k in range(len(ids))]
    assert MULTIBYTE_TEXT[:first_multibyte] + "\ufffd" in prefixes
    pieces = []
    options = SamplingOptions(max_new_tokens=len(ids), temperature=0, ignore_eos=True, stop=(stop,))
    sample = Generator(fake).generate("To", options, lambda i, d: pieces.append(d)).samples[0]
    assert sample.finish_reason == "stop"
    assert sample.text == MULTIBYTE_TEXT[:cut]
    assert "".join(pieces) == MULTIBYTE_TEXT[:cut]  # nothing of the stop string was streamed before it matched


@pytest.mark.parametrize(
    "options",
    [
        SamplingOptions(temperature=0),
        SamplingOptions(top_k=10),
        SamplingOptions(top_k=0),
        SamplingOptions(top_k=0, top_p=0.5),
        SamplingOptions(top_k=40, top_p=0.9, temperature=0.5),
        SamplingOptions(temperature=0, repetition_penalty=1.3),
        SamplingOptions(top_k=5, repetition_penalty=2.0),
    ],
)
def test_ids_beyond_the_tokenizer_are_never_sampled(padded_lm, options):
    import dataclasses

    from transformers import GPT2LMHeadModel

    assert padded_lm.tokenizer.get_vocab_size() == 300 and padded_lm.config.vocab_size == 320
    prompt_ids = padded_lm.tokenizer.encode("To be").ids
    with torch.inference_mode():
        reference = GPT2LMHeadModel.from_pretrained(str(padded_lm.folder)).eval()
        logits = reference(torch.tensor([prompt_ids])).logits[0, -1]
    assert logits.topk(20).indices.min().item() >= 300  # the 20 padded ids are the model's favourites
    options = dataclasses.replace(options, max_new_tokens=25, num_samples=4, seed=0, ignore_eos=True)
    result = Generator(padded_lm).generate("To be", options)
    emitted = [t for sample in result.samples for t in sample.token_ids]
    assert len(emitted) == 100
    assert max(emitted) < 300


# --- many prompts in one batch ---------------------------------------------------------------------------------

PROMPTS = ["To be", "whether 'tis nobler in the mind to suffer the slings", "", "Ü", "or not to be, that is the"]


def alone(lm, prompt, options, seed):
    return Generator(lm).generate(prompt, SamplingOptions(**{**vars(options), "seed": seed})).samples[0]


@pytest.mark.parametrize(
    "options",
    [
        SamplingOptions(max_new_tokens=12, temperature=0, ignore_eos=True),
        SamplingOptions(max_new_tokens=12, temperature=0, repetition_penalty=1.5, ignore_eos=True),
        SamplingOptions(max_new_tokens=12, temperature=0.8, top_k=20, top_p=0.9, ignore_eos=True),
        SamplingOptions(max_new_tokens=12, temperature=1.0, top_k=0, ignore_eos=True),
    ],
    ids=["greedy", "penalty", "top-k-top-p", "full-vocabulary"],
)
def test_a_batch_of_prompts_gives_each_prompts_own_sample(lm, options):
    """Left-padded, different lengths, one cache: each row is what the prompt gives alone with its seed."""
    seeds = [10 + i for i in range(len(PROMPTS))]
    batched = Generator(lm).generate_batch(PROMPTS, options, seeds)
    for prompt, seed, sample in zip(PROMPTS, seeds, batched, strict=True):
        single = alone(lm, prompt, options, seed)
        assert (sample.token_ids, sample.text, sample.finish_reason) == (
            single.token_ids,
            single.text,
            single.finish_reason,
        ), prompt
        assert sample.logprobs == pytest.approx(single.logprobs, abs=1e-4)


def test_rows_end_independently_and_leave_the_batch(lm, monkeypatch):
    """A stop string, <|endoftext|> and max tokens end rows at different steps; the others go on unchanged."""
    options = SamplingOptions(max_new_tokens=16, temperature=0)
    full = [alone(lm, p, replace_options(options, ignore_eos=True), 0) for p in PROMPTS]
    monkeypatch.setattr(lm, "eos_id", full[1].token_ids[0])  # the second prompt ends at once by <|endoftext|>
    texts = [alone(lm, p, replace_options(options, ignore_eos=True), 0).text for p in PROMPTS]  # "" starts from it
    windows = (texts[3][i : i + 3] for i in range(len(texts[3]) - 2))
    stop = next(w for w in windows if not any(w in t for t in texts[:3] + texts[4:]))  # the fourth by a stop string
    options = replace_options(options, stop=(stop,))
    kept_rows = []
    original = KVCache.keep_rows

    def spy(cache, rows):
        kept_rows.append(rows.tolist())
        original(cache, rows)

    monkeypatch.setattr(KVCache, "keep_rows", spy)
    batched = Generator(lm).generate_batch(PROMPTS, options, [0] * len(PROMPTS))
    monkeypatch.setattr(KVCache, "keep_rows", original)
    reasons = [s.finish_reason for s in batched]
    assert reasons[1] == "eos" and reasons[3] == "stop" and "length" in reasons
    assert kept_rows and all(len(rows) < len(PROMPTS) for rows in kept_rows)
    for prompt, sample in zip(PROMPTS, batched, strict=True):
        single = alone(lm, prompt, options, 0)
        assert (sample.token_ids, sample.text, sample.finish_reason) == (
            single.token_ids,
            single.text,
            single.finish_reason,
        )


def replace_options(options, **changes):
    return SamplingOptions(**{**vars(options), **changes})


def test_a_prompt_past_the_context_runs_alone_and_an_unrunnable_one_is_its_error(lm, monkeypatch):
    long_prompt = "whether 'tis nobler in the mind to suffer " * 30  # generation will slide the window
    options = SamplingOptions(max_new_tokens=30, temperature=0, ignore_eos=True)
    batched = Generator(lm).generate_batch([long_prompt, "To be"], options, [0, 1])
    assert batched[0].token_ids == alone(lm, long_prompt, options, 0).token_ids
    assert batched[1].token_ids == alone(lm, "To be", options, 1).token_ids
    monkeypatch.setattr(lm, "eos_id", None)
    problem, fine = Generator(lm).generate_batch(["", "To be"], options, [0, 1])
    assert "empty prompt" in str(problem) and fine.token_ids == batched[1].token_ids


def write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    return path


def test_cli_prompts_greedy_rows_equal_each_prompt_alone(rl, tiny_dir, tmp_path):
    path = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    common = ["-m", str(tiny_dir), "--temperature", "0", "-n", "8", "--stop", "e t"]
    result = rl("generate", "--prompts", str(path), *common, "--batch-size", "4")
    assert result.code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    for index, (prompt, row) in enumerate(zip(PROMPTS, rows, strict=True)):
        single = rl("generate", *common, "--json", prompt)
        sample = json.loads(single.stdout)["samples"][0]
        expected = {"text": sample["text"], "tokens": sample["token_ids"], "finish_reason": sample["finish_reason"]}
        assert row == {"id": f"p{index}", **expected}


def test_cli_seeded_sampling_does_not_depend_on_the_batch_size(rl, tiny_dir, tmp_path):
    """Prompt k (from 0) samples with seed --seed + k, whatever the batch: rows equal across --batch-size 1 and 4,
    and equal to `rl generate --seed S+k PROMPT` alone."""
    path = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    common = ["-m", str(tiny_dir), "-n", "10", "--seed", "3", "--ignore-eos"]
    runs = [rl("generate", "--prompts", str(path), *common, "--batch-size", size) for size in ("1", "4")]
    assert [r.code for r in runs] == [0, 0], runs[1].stderr
    assert runs[0].stdout == runs[1].stdout
    rows = [json.loads(line) for line in runs[1].stdout.splitlines()]
    for index, (prompt, row) in enumerate(zip(PROMPTS, rows, strict=True)):
        single = rl("generate", "-m", str(tiny_dir), "-n", "10", "--seed", str(3 + index), "--ignore-eos", "--json",
                    prompt)  # fmt: skip
        assert row["tokens"] == json.loads(single.stdout)["samples"][0]["token_ids"]
    assert len({tuple(r["tokens"]) for r in rows}) == len(rows)


@pytest.mark.parametrize(
    "options",
    [
        SamplingOptions(top_k=-1),
        SamplingOptions(top_p=0.0),
        SamplingOptions(top_p=1.5),
        SamplingOptions(temperature=-0.1),
        SamplingOptions(max_new_tokens=0),
        SamplingOptions(repetition_penalty=0),
        SamplingOptions(repetition_penalty=float("nan")),
        SamplingOptions(repetition_penalty=float("inf")),
        SamplingOptions(temperature=float("nan")),
        SamplingOptions(temperature=float("inf")),
        SamplingOptions(top_p=float("nan")),
        SamplingOptions(top_p=float("inf")),
        SamplingOptions(num_samples=0),
    ],
)
def test_invalid_sampling_values(options):
    with pytest.raises(UsageError):
        options.validate()


# --- the command -----------------------------------------------------------------------------------------------


def test_cli_json_document(rl, tiny_dir):
    result = rl("generate", "-m", str(tiny_dir), "--seed", "7", "-n", "12", "--ignore-eos", "--json", "To be")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["prompt"] == "To be" and doc["seed"] == 7
    assert doc["settings"]["max_new_tokens"] == 12 and doc["settings"]["top_k"] == 50
    [sample] = doc["samples"]
    assert len(sample["token_ids"]) == len(sample["logprobs"]) == 12
    assert sample["finish_reason"] == "length"
    assert {"prompt_tokens", "new_tokens", "time_to_first_token", "tokens_per_second"} <= set(doc["stats"])


def test_cli_prompt_from_stdin_echo_and_stats(rl, tiny_dir, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"To be")))
    piped = rl("generate", "-m", str(tiny_dir), "--seed", "1", "-n", "10", "--ignore-eos", "--echo", "--stats")
    assert piped.code == 0, piped.stderr
    direct = rl("generate", "-m", str(tiny_dir), "--seed", "1", "-n", "10", "--ignore-eos", "To be")
    assert piped.stdout == "To be" + direct.stdout
    assert "tokens/s" in piped.stderr and "seed 1" in piped.stderr


def test_cli_samples_are_separated(rl, tiny_dir):
    result = rl("generate", "-m", str(tiny_dir), "--seed", "1", "-n", "5", "--num-samples", "2", "To")
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("--- sample 1 ---\n") and "\n--- sample 2 ---\n" in result.stdout


def test_cli_too_many_samples_is_a_usage_error_before_allocating(rl, tiny_dir, monkeypatch):
    import rlcli.core.resources as resources
    import rlcli.tasks.generate as task

    def no_generation(*args, **kwargs):
        # Fails the test without allocating: the loop's first lines would take a billion-row batch.
        raise AssertionError("generation started")

    monkeypatch.setattr(task.Generator, "_loop", no_generation)
    result = rl("generate", "-m", str(tiny_dir), "--num-samples", "1000000000", "hi")
    assert result.code == 2
    assert result.stderr.startswith("error: --num-samples 1000000000") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    # The cost by hand for the tiny model (2 layers, 64 positions, 32 channels, 300 ids, float32) and 100,000
    # samples: keys and values 2 * 2 * 100,000 * 64 * 32 * 4 bytes + logits 100,000 * 300 * 4 = 3.16 GiB.
    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 2**30)
    result = rl("generate", "-m", str(tiny_dir), "--num-samples", "100000", "hi")
    assert result.code == 2
    assert result.stderr == (
        "error: --num-samples 100000 (the key/value cache and logits) needs at least 3.2 GiB of memory; "
        "this machine has 1.0 GiB available\n"
    )


def test_cli_samples_are_printed_as_they_finish(rl, tiny_dir, monkeypatch):
    import itertools
    import re

    from rlcli.models.language.gpt2 import GPT2

    args = ["generate", "-m", str(tiny_dir), "--seed", "0", "-n", "12", "--top-k", "0", "--stop", "o"]
    args += ["--num-samples", "6"]
    samples = json.loads(rl(*args, "--json", "To be").stdout)["samples"]
    ended = sorted((len(s["token_ids"]), i) for i, s in enumerate(samples) if s["finish_reason"] != "length")
    by_length = [i for i, s in enumerate(samples) if s["finish_reason"] == "length"]
    # The case needs samples ending at different steps, two ending at the same step, and one running to the end.
    assert len({step for step, _ in ended}) > 1 and len({step for step, _ in ended}) < len(ended) and by_length

    # Every forward pass writes a marker to stdout: the markers before a sample's header count the steps run.
    forward = GPT2.forward

    def marking(self, *a, **k):
        sys.stdout.write("\0")
        return forward(self, *a, **k)

    monkeypatch.setattr(GPT2, "forward", marking)
    result = rl(*args, "To be")
    assert result.code == 0, result.stderr
    headers = re.findall(r"(\0*)\n?--- sample (\d+) ---\n", result.stdout)
    printed = [int(number) - 1 for _, number in headers]
    steps_run = list(itertools.accumulate(len(marks) for marks, _ in headers))
    # Finishing order, ties in sample order, then the samples that ran to --max-new-tokens.
    assert printed == [index for _, index in ended] + by_length
    # Printed right after their last token: the k-th token comes from the k-th forward pass (the prompt's first).
    assert steps_run[: len(ended)] == [step for step, _ in ended]
    expected = "\n".join(f"--- sample {i + 1} ---\n{samples[i]['text']}\n" for i in printed)
    assert result.stdout.replace("\0", "") == expected


def test_cli_non_utf8_stdin(rl, tiny_dir, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9")))
    result = rl("generate", "-m", str(tiny_dir), "-")
    assert result.code == 1
    assert result.stderr.startswith("error: stdin is not UTF-8")


@pytest.mark.parametrize(
    "args",
    [
        ["--top-k", "-1"],
        ["--top-p", "0"],
        ["--top-p", "1.5"],
        ["--top-p", "nan"],
        ["--temperature", "-1"],
        ["--temperature", "inf"],
        ["--temperature", "nan"],
        ["--repetition-penalty", "nan"],
        ["--repetition-penalty", "inf"],
        ["--repetition-penalty", "-inf"],
        ["--dtype", "float16"],
    ],
)
def test_cli_bad_sampling_values_are_usage_errors(rl, tiny_dir, args):
    result = rl("generate", "-m", str(tiny_dir), *args, "hi")
    assert result.code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    if args[0] != "--dtype":
        assert args[0] in result.stderr


def test_cli_missing_model_says_how_to_get_it(rl, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    result = rl("generate", "-m", "gpt2-medium", "hi")
    assert result.code == 1
    assert "hf download openai-community/gpt2-medium" in result.stderr
    assert result.stderr.count("\n") == 1


def test_cli_misspelt_model_suggests_the_close_name(rl, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    result = rl("generate", "-m", "shakspeare", "hi")
    assert result.code == 1
    assert result.stderr.startswith("error: model 'shakspeare' ") and result.stderr.count("\n") == 1
    assert result.stderr.rstrip().endswith("did you mean shakespeare?")
    assert "hf download" not in result.stderr
    assert "did you mean gpt2-large" in rl("generate", "-m", "gpt2-lrage", "hi").stderr


def test_cli_misspelt_model_suggests_a_repository_of_the_local_cache(rl, tiny_dir, tmp_path, monkeypatch):
    import shutil

    repo = tmp_path / "models--someone--tiny-poet"
    shutil.copytree(tiny_dir, repo / "snapshots" / "abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert rl("generate", "-m", "someone/tiny-poet", "-n", "2", "hi").code == 0
    result = rl("generate", "-m", "someone/tiny-peot", "hi")
    assert result.code == 1
    assert result.stderr.rstrip().endswith("did you mean someone/tiny-poet?")


def test_cli_interrupt_exits_130_and_keeps_output(rl, tiny_dir, monkeypatch):
    from rlcli.cli import generate as command

    calls = []

    def interrupting(index, delta):
        calls.append(delta)
        sys.stdout.write(delta)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(command, "write_through", interrupting)
    result = rl("generate", "-m", str(tiny_dir), "--stream", "-n", "40", "--temperature", "0", "--ignore-eos", "To")
    assert result.code == 130
    assert result.stdout.startswith("".join(calls))
    assert "Traceback" not in result.stderr


def test_cli_missing_folder_is_named_as_a_folder(rl, tmp_path):
    result = rl("generate", "-m", str(tmp_path / "no-such-model"), "hi")
    assert result.code == 1
    assert result.stderr == f"error: no such model folder: {tmp_path / 'no-such-model'}\n"
