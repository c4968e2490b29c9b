"""`rl generate`: GPT-2-style decoding with a KV cache, temperature, top-k/top-p, repetition penalty and seeds.

Loading resolves a model offline: a folder in the Hugging Face layout, a Hub name found in the local Hugging Face
cache, or the model bundled with rlcli. Sampling follows Hugging Face ``generate``'s order of operations:
repetition penalty, temperature, top-k, top-p, then a draw from the renormalised distribution.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rlcli.core.checkpoints import load_checkpoint, load_into
from rlcli.core.devices import QUANTIZED, compute_dtype, fastest_dtype, resolve_device
from rlcli.core.hub import HUB_ALIASES, find_hf_snapshot, hf_hub_cache
from rlcli.core.meta import build_on_meta
from rlcli.core.packing import packing_available
from rlcli.core.resources import check_fits_in_memory
from rlcli.core.text import END_OF_TEXT, load_tokenizer
from rlcli.errors import CheckpointError, RlError, UsageError
from rlcli.models.catalog import suggest
from rlcli.models.language.gpt2 import (
    CONV1D_WEIGHTS,
    DEMO_FOLDER,
    DEMO_NAME,
    GPT2,
    GPT2Config,
    KVCache,
    cache_dtype,
    from_hf_state_dict,
    pack_linears,
    quantize_int8,
)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

TextCallback = Callable[[int, str], None]  # (sample index, newly settled text)
FinishCallback = Callable[[int, "Sample"], None]  # (sample index, the finished sample)


# --- loading -------------------------------------------------------------------------------------------------


@dataclass
class LanguageModel:
    name: str
    folder: Path
    model: GPT2
    tokenizer: Any
    eos_id: int | None
    dtype: torch.dtype  # of the activations (and of the weights, unless weights is int8)
    device: torch.device
    load_seconds: float
    weights: str = "float32"  # the weight format: float32, bfloat16 or int8 (weight-only, per-channel scales)
    auto_reason: str | None = None  # why --dtype auto chose the format, when it did

    @property
    def config(self) -> GPT2Config:
        return self.model.config


DEFAULT_MODEL = "gpt2"


def default_model() -> tuple[str, str | None]:
    """GPT-2 from the local Hugging Face cache when it is there, else the bundled demo model (with a note why)."""
    if find_hf_snapshot(DEFAULT_MODEL).snapshot is not None:
        return DEFAULT_MODEL, None
    return DEMO_NAME, (
        f"{DEFAULT_MODEL} is not in the local Hugging Face cache: using the bundled Shakespeare model "
        f"(--model {DEMO_NAME}; `hf download openai-community/gpt2` gets GPT-2)"
    )


def resolve_model_folder(name: str) -> Path:
    """The bundled model, a folder as given, else a Hub repository's snapshot in the local Hugging Face cache."""
    if name == DEMO_NAME:
        return DEMO_FOLDER
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise RlError(f"{path} is a file; give the folder that holds config.json and the weights")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise RlError(f"no such model folder: {path}")
    lookup = find_hf_snapshot(name)
    if lookup.snapshot is not None:
        return lookup.snapshot
    known = known_model_names()
    close = [] if name in known else suggest(name, known)
    if close:
        alternatives = " or ".join(close)
        raise RlError(
            f"model '{name}' is not a folder and not in the local Hugging Face cache; did you mean {alternatives}?"
        )
    looked = ", ".join(str(p) for p in lookup.looked_in)
    repo = f"openai-community/{name}" if name.startswith("gpt2") else name
    raise RlError(
        f"model '{name}' is not a folder and not in the local Hugging Face cache (looked in {looked}); "
        f"rl never downloads. Fetch it once with `hf download {repo} config.json model.safetensors "
        f"tokenizer.json`, or pass a folder with --model DIR"
    )


def known_model_names() -> list[str]:
    """Names --model resolves without a folder: the bundled model, GPT-2's Hub names and the local cache's."""
    cached = []
    if hf_hub_cache().is_dir():
        # The cache names a repository org/name as the folder models--org--name.
        folders = (p.name for p in hf_hub_cache().iterdir() if p.is_dir() and p.name.startswith("models--"))
        cached = sorted(f.removeprefix("models--").replace("--", "/", 1) for f in folders)
    return [DEMO_NAME, *HUB_ALIASES, *cached]


def load_language_model(name: str, *, dtype: str = "float32", device: str = "auto") -> LanguageModel:
    """Load a GPT-2 checkpoint in the Hugging Face layout, offline.

    ``dtype`` is float32, bfloat16, int8 (weight-only int8 of the blocks' linear layers and the LM head, quantised
    here from the float checkpoint; activations in bfloat16) or auto (the fastest of these on the device,
    ``core.devices.fastest_dtype``).

    Example:
        >>> lm = load_language_model("gpt2")          # from ~/.cache/huggingface/hub
        >>> lm = load_language_model("./my-gpt2", dtype="int8")
    """
    started = time.perf_counter()
    target = resolve_device(device)
    reason = None
    if dtype == "auto":
        dtype, reason = fastest_dtype(target)
    torch_dtype = compute_dtype(dtype)
    folder = resolve_model_folder(name)
    config = read_gpt2_config(folder)
    tokenizer = load_tokenizer(folder)
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise CheckpointError(
            f"{folder}: the tokenizer has {tokenizer.get_vocab_size()} tokens but the model's vocabulary has "
            f"{config.vocab_size}: they do not belong together"
        )
    int8 = dtype in QUANTIZED
    pack = not int8 and packing_available(target, torch_dtype)
    model = load_gpt2_weights(folder, config, torch_dtype, int8=int8, pack=pack).to(device=target).eval()
    eos = tokenizer.token_to_id(END_OF_TEXT)
    return LanguageModel(
        name=name,
        folder=folder,
        model=model,
        tokenizer=tokenizer,
        eos_id=eos,
        dtype=torch_dtype,
        device=target,
        load_seconds=time.perf_counter() - started,
        weights=dtype,
        auto_reason=reason,
    )


def read_gpt2_config(folder: Path) -> GPT2Config:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("model_type", "gpt2") != "gpt2":
            raise CheckpointError(f"model_type is '{data['model_type']}'; rl generate runs GPT-2 models")
        return GPT2Config.from_hf(data)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a GPT-2 config ({type(exc).__name__}: {exc})") from exc


def load_gpt2_weights(
    folder: Path, config: GPT2Config, dtype: torch.dtype = torch.float32, *, int8: bool = False, pack: bool = False
) -> GPT2:
    """The model of ``folder`` computing in ``dtype``; with ``int8``, its linear layers quantised from the float
    checkpoint read in float32 (``quantize_int8``); with ``pack``, its linear layers on weights reordered for
    oneDNN's CPU kernels (``pack_linears``; bfloat16 on the CPU, ``core.packing.packing_available``)."""
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder}: no weights (looked for {', '.join(WEIGHT_FILES)})")
    tied = config.tie_word_embeddings
    state = from_hf_state_dict(load_checkpoint(weights, dtype=torch.float32 if int8 else dtype).state_dict, tied=tied)
    if not int8 and not pack:
        arrange_for_blas(state, "transformer.wte.weight" if tied else "lm_head.weight", dtype)
    model = build_on_meta(lambda: GPT2(config))  # no initialisation work: every tensor comes from the file
    if tied:
        state["lm_head.weight"] = state.get("transformer.wte.weight", torch.empty(0))
    load_into(model, state, source=str(weights), assign=True)
    if tied:
        model.lm_head.weight = model.transformer.wte.weight  # assign=True made two Parameters; tie them again
    if int8:
        del state  # the float tensors go as their layers are replaced
        quantize_int8(model, dtype)
    elif pack:
        del state
        pack_linears(model)
    return model


def arrange_for_blas(state: dict[str, torch.Tensor], head: str, dtype: torch.dtype) -> None:
    """Lay the float weights out in memory as the one-row matmuls of decoding stream them fastest."""
    if head in state and state[head].dim() == 2:
        # Store the LM head (the tied embedding) as [n_embd, vocab] in memory, seen through a transposed view: the
        # head's one-row matmul then runs on the layout BLAS streams fastest (8 ms instead of 13 ms per token for
        # GPT-2 small in float32 on 2 cores, benchmarks/generate.py), and embedding lookups do not care.
        state[head] = state[head].t().contiguous().t()
    if dtype == torch.bfloat16:
        # The block weights arrive as views of GPT-2's [in, out] Conv1D storage. That layout suits float32
        # one-row matmuls (17 GB/s vs 14 for [out, in]); oneDNN's bfloat16 kernels prefer [out, in] (16 vs 14).
        for name, tensor in state.items():
            if name.endswith(CONV1D_WEIGHTS):
                state[name] = tensor.contiguous()


# --- sampling ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int = 100
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 50  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; CTRL's penalty, as Hugging Face applies it
    seed: int | None = None
    num_samples: int = 1
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError("--max-new-tokens must be at least 1")
        if not math.isfinite(self.temperature) or self.temperature < 0:  # isfinite rules out nan too
            raise UsageError(f"--temperature must be a finite number >= 0 (0 = greedy), not {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"--top-k must be >= 0 (0 = off), not {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], not {self.top_p}")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise UsageError(f"--repetition-penalty must be a finite number > 0, not {self.repetition_penalty}")
        if self.num_samples < 1:
            raise UsageError("--num-samples must be at least 1")
        if any(not s for s in self.stop):
            raise UsageError("--stop strings must not be empty")


def next_token_scores(logits: torch.Tensor, options: SamplingOptions, seen: torch.Tensor | None) -> torch.Tensor:
    """Processed scores [batch, vocab] whose softmax is the sampling distribution (-inf = excluded).

    This is the reference statement of the sampling rules; ``sample_tokens`` draws from the same distribution
    without materialising it over the whole vocabulary when top-k is set.
    """
    scores = _penalised(logits, options, seen)
    if options.temperature == 0:
        return scores
    scores = scores / options.temperature
    if 0 < options.top_k < scores.shape[-1]:
        kth = torch.topk(scores, options.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if options.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True, dim=-1)
        drop = _outside_nucleus(ordered, options.top_p)
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scores


def sample_tokens(
    logits: torch.Tensor,
    options: SamplingOptions,
    seen: torch.Tensor | None,
    generator: torch.Generator | Sequence[torch.Generator],
) -> torch.Tensor:
    """One token per row, drawn from ``softmax(next_token_scores(...))``; argmax when temperature is 0.

    With top-k the draw happens among the k candidates only: a softmax and a multinomial over 50 values
    instead of 50,257 (about 1.5 ms per token for GPT-2 on 2 cores). ``generator`` is one random stream for the
    whole batch, or one per row: each row then draws from its own, exactly as it would in a batch of one.
    """
    if options.temperature == 0:
        return _penalised(logits, options, seen).argmax(dim=-1)
    if not 0 < options.top_k < logits.shape[-1]:
        probs = next_token_scores(logits, options, seen).softmax(dim=-1)
        return _draw(probs, generator).squeeze(1)
    scores = _penalised(logits, options, seen) / options.temperature
    values, indices = torch.topk(scores, options.top_k, dim=-1)  # sorted, best first
    if options.top_p < 1.0:
        values = values.masked_fill(_outside_nucleus(values, options.top_p), float("-inf"))
    pick = _draw(values.softmax(dim=-1), generator)
    return indices.gather(1, pick).squeeze(1)


def _draw(probs: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
    if isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator)
    rows = [torch.multinomial(probs[row : row + 1], 1, generator=g) for row, g in enumerate(generator)]
    return torch.cat(rows)


def _penalised(logits: torch.Tensor, options: SamplingOptions, seen: torch.Tensor | None) -> torch.Tensor:
    if seen is None or options.repetition_penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / options.repetition_penalty, logits * options.repetition_penalty)
    return torch.where(seen, penalised, logits)


def _outside_nucleus(ordered: torch.Tensor, top_p: float) -> torch.Tensor:
    """For scores sorted best first: True where the tokens ranked above already reach ``top_p`` of the mass."""
    probs = ordered.softmax(dim=-1)
    drop = (probs.cumsum(dim=-1) - probs) >= top_p
    drop[:, 0] = False  # the most likely token always stays
    return drop


# --- generation ----------------------------------------------------------------------------------------------


def prompt_seed(seed: int, position: int) -> int:
    """The seed of the prompt at ``position`` (from 0) of a list run with ``seed``: ``seed + position``.

    Each prompt samples from its own random stream, so its text depends on the seed and its place in the list
    only, never on the batch it was decoded in: it is the text ``rl generate --seed SEED+POSITION PROMPT`` gives.
    """
    return seed + position


def generation_bytes(config: GPT2Config, batch: int, dtype: torch.dtype, length: int | None = None) -> int:
    """What a batch of samples allocates at least: keys and values (in ``dtype``) of every layer for ``length``
    positions (the whole context by default), and one row of float32 logits per sample."""
    length = config.n_positions if length is None else length
    cache = 2 * config.n_layer * batch * length * config.n_embd * dtype.itemsize
    return cache + batch * config.vocab_size * 4


def check_generation_fits(lm: LanguageModel, options: SamplingOptions) -> None:
    """A usage error, before anything is allocated, when --num-samples asks for more memory than there is."""
    if lm.device.type != "cpu":
        return  # the check reads the host's memory; an accelerator's is its own
    needed = generation_bytes(lm.config, options.num_samples, cache_dtype(lm.dtype, lm.device))
    check_fits_in_memory(needed, f"--num-samples {options.num_samples} (the key/value cache and logits)")


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    # The model's own log-probability of each token, before any sampling processing (normalised over the ids the
    # tokenizer can decode, when the model's vocabulary is padded beyond them).
    logprobs: list[float]
    finish_reason: str  # "length", "eos", "stop" or "interrupted"


@dataclass
class GenerationStats:
    prompt_tokens: int
    new_tokens: int
    load_seconds: float
    time_to_first_token: float
    generate_seconds: float
    tokens_per_second: float  # decoding rate after the first token, all samples together


@dataclass
class GenerationResult:
    model: str
    prompt: str
    settings: dict[str, Any]
    seed: int
    samples: list[Sample]
    stats: GenerationStats
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Stream:
    """One sample's decoded text, produced incrementally and held back where it may still change."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None

    def as_sample(self) -> Sample:
        return Sample(self.text, self.ids, self.logprobs, self.finish_reason or "length")


@dataclass(frozen=True)
class _Listeners:
    on_text: TextCallback | None = None
    on_finish: FinishCallback | None = None


class Generator:
    """Runs sampling loops over one loaded model."""

    def __init__(self, lm: LanguageModel) -> None:
        self.lm = lm

    def generate(
        self,
        prompt: str,
        options: SamplingOptions,
        on_text: TextCallback | None = None,
        on_finish: FinishCallback | None = None,
    ) -> GenerationResult:
        """Samples for ``prompt``. ``on_text`` receives each sample's text as it settles; ``on_finish`` each sample
        as soon as it ends (eos or stop: in the order they end, samples ending at one step in index order), then
        the samples that ran to max_new_tokens or were interrupted, in index order."""
        options.validate()
        listeners = _Listeners(on_text, on_finish)
        lm = self.lm
        warnings: list[str] = []
        prompt_ids = self._prompt_ids(prompt, options, warnings)
        check_generation_fits(lm, options)
        seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        streams = [_Stream() for _ in range(options.num_samples)]
        started = time.perf_counter()
        first_token_at: float | None = None
        interrupted = False
        with torch.inference_mode():
            try:
                first_token_at = self._loop(prompt_ids, options, seed, streams, listeners, warnings)
            except KeyboardInterrupt:
                interrupted = True
        finished = time.perf_counter()
        for index, stream in enumerate(streams):
            if stream.finish_reason is None:
                self._finish(stream, index, "interrupted" if interrupted else "length", options, listeners)
        new_tokens = sum(len(s.ids) for s in streams)
        first = first_token_at or finished
        decode_tokens = new_tokens - len(streams)
        return GenerationResult(
            model=lm.name,
            prompt=prompt,
            settings={k: v for k, v in asdict(options).items() if k != "seed"} | {"dtype": lm.weights},
            seed=seed,
            samples=[s.as_sample() for s in streams],
            stats=GenerationStats(
                prompt_tokens=len(prompt_ids),
                new_tokens=new_tokens,
                load_seconds=lm.load_seconds,
                time_to_first_token=first - started,
                generate_seconds=finished - started,
                tokens_per_second=decode_tokens / (finished - first) if decode_tokens > 0 and finished > first else 0.0,
            ),
            warnings=warnings,
            interrupted=interrupted,
        )

    def _prompt_ids(self, prompt: str, options: SamplingOptions, warnings: list[str]) -> list[int]:
        """The prompt's token ids: <|endoftext|> for an empty prompt, the last ones when it leaves no room."""
        lm, config = self.lm, self.lm.config
        prompt_ids = lm.tokenizer.encode(prompt).ids if prompt else []
        if not prompt_ids:
            if lm.eos_id is None:
                raise RlError("empty prompt, and the tokenizer has no <|endoftext|> token to start from")
            prompt_ids = [lm.eos_id]  # GPT-2 starts unconditional samples from <|endoftext|>
        room = config.n_positions - min(options.max_new_tokens, config.n_positions // 4)
        if len(prompt_ids) > room:
            warnings.append(
                f"the prompt has {len(prompt_ids)} tokens; the context holds {config.n_positions}: kept its last {room}"
            )
            prompt_ids = prompt_ids[-room:]
        return prompt_ids

    def generate_batch(
        self, prompts: Sequence[str], options: SamplingOptions, seeds: Sequence[int]
    ) -> list[Sample | RlError]:
        """One sample per prompt, the prompts decoded together as one batch; for a prompt that cannot be run (an
        empty prompt without <|endoftext|>), its error in its place.

        The prompts are left-padded to the longest, with an attention mask and per-row positions
        (``GPT2.forward``'s ``attention_mask``), over one key/value cache; a row that ends (<|endoftext|>, a stop
        string) leaves the batch, and the others go on. Each prompt samples from its own random stream, seeded with
        its entry of ``seeds``: its sample is the one ``generate`` gives it alone with that seed, whatever else is
        in the batch, up to rounding: a matmul over more rows may round a logit differently (its last bit in
        float32; in bfloat16 and int8 a rounding step can move it further, and change a token).
        A prompt whose generation would pass the context (where the window slides, row by row) runs alone.
        """
        options.validate()
        if options.num_samples != 1:
            raise UsageError("a batch of prompts takes one sample per prompt")
        results: list[Sample | RlError | None] = [None] * len(prompts)
        batched: list[tuple[int, list[int]]] = []
        for slot, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            try:
                prompt_ids = self._prompt_ids(prompt, options, [])
            except RlError as exc:
                results[slot] = exc
                continue
            if len(prompt_ids) + options.max_new_tokens > self.lm.config.n_positions:
                results[slot] = self.generate(prompt, replace(options, seed=seed)).samples[0]
            else:
                batched.append((slot, prompt_ids))
        if batched:
            with torch.inference_mode():
                samples = self._batch_loop([ids for _, ids in batched], options, [seeds[s] for s, _ in batched])
            for (slot, _), sample in zip(batched, samples, strict=True):
                results[slot] = sample
        return results  # type: ignore[return-value]  # every slot is filled

    def _batch_loop(self, prompt_ids: list[list[int]], options: SamplingOptions, seeds: list[int]) -> list[Sample]:
        lm, config, device = self.lm, self.lm.config, self.lm.device
        batch, width = len(prompt_ids), max(map(len, prompt_ids))
        length = width + options.max_new_tokens
        kv_dtype = cache_dtype(lm.dtype, device)
        if device.type == "cpu":
            needed = generation_bytes(config, batch, kv_dtype, length)
            check_fits_in_memory(needed, f"a batch of {batch} prompts (the key/value cache and logits)")
        ids = torch.full((batch, width), lm.eos_id or 0, dtype=torch.long, device=device)
        valid = torch.zeros((batch, width), dtype=torch.bool, device=device)
        for row, row_ids in enumerate(prompt_ids):
            ids[row, width - len(row_ids) :] = torch.tensor(row_ids, device=device)
            valid[row, width - len(row_ids) :] = True
        seen = None
        if options.repetition_penalty != 1.0:
            seen = torch.zeros(batch, config.vocab_size, dtype=torch.bool, device=device)
            for row, row_ids in enumerate(prompt_ids):
                seen[row, row_ids] = True
        generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        streams = [_Stream() for _ in range(batch)]
        active = list(range(batch))  # the stream of each row of the batch, as finished rows leave it
        cache = KVCache(config, batch, length, kv_dtype, device)
        padded = not bool(valid.all())
        logits = self._next_logits(ids, cache, last_only=True, attention_mask=valid if padded else None)
        quiet = _Listeners()
        for step in range(options.max_new_tokens):
            tokens = sample_tokens(logits, options, seen, [generators[i] for i in active])
            logprobs = logits.log_softmax(dim=-1).gather(1, tokens[:, None]).squeeze(1)
            for stream, token, logprob in zip(active, tokens.tolist(), logprobs.tolist(), strict=True):
                self._append(streams[stream], stream, token, logprob, options, quiet)
            keep = [row for row, stream in enumerate(active) if streams[stream].finish_reason is None]
            if not keep or step == options.max_new_tokens - 1:
                break
            if len(keep) < len(active):
                rows = torch.tensor(keep, device=device)
                cache.keep_rows(rows)
                tokens, valid = tokens[rows], valid[rows]
                seen = None if seen is None else seen[rows]
                active = [active[row] for row in keep]
                padded = not bool(valid.all())
            if seen is not None:
                seen[torch.arange(len(active), device=device), tokens] = True
            valid = torch.cat([valid, valid.new_ones(len(active), 1)], dim=1)
            logits = self._next_logits(tokens[:, None], cache, attention_mask=valid if padded else None)
        for stream in streams:
            if stream.finish_reason is None:
                stream.finish_reason = "length"
        return [stream.as_sample() for stream in streams]

    def _loop(self, prompt_ids, options, seed, streams, listeners, warnings) -> float | None:
        lm, config = self.lm, self.lm.config
        batch, device = options.num_samples, lm.device
        generator = torch.Generator(device=device).manual_seed(seed)
        history = torch.tensor([prompt_ids] * batch, dtype=torch.long, device=device)
        seen = None
        if options.repetition_penalty != 1.0:
            seen = torch.zeros(batch, config.vocab_size, dtype=torch.bool, device=device)
            seen[:, history[0]] = True
        cache = KVCache(config, batch, config.n_positions, cache_dtype(lm.dtype, device), device)
        logits = self._next_logits(history, cache, last_only=True)
        first_token_at = None
        slid = False
        for _ in range(options.max_new_tokens):
            tokens = sample_tokens(logits, options, seen, generator)
            logprobs = logits.log_softmax(dim=-1).gather(1, tokens[:, None]).squeeze(1)
            if first_token_at is None:
                first_token_at = time.perf_counter()
            if self._record(tokens.tolist(), logprobs.tolist(), streams, options, listeners):
                break
            if seen is not None:
                seen[torch.arange(batch, device=device), tokens] = True
            history = torch.cat([history, tokens[:, None]], dim=1)
            if cache.filled + 1 > config.n_positions:
                # Learned absolute positions cannot be shifted in the cache: re-encode the newest three quarters.
                keep = config.n_positions - config.n_positions // 4
                cache.filled = 0
                logits = self._next_logits(history[:, -keep:], cache, last_only=True)
                if not slid:
                    warnings.append(f"generation passed the context of {config.n_positions} tokens: the window slid")
                    slid = True
            else:
                logits = self._next_logits(tokens[:, None], cache)
        return first_token_at

    def _next_logits(
        self, ids: torch.Tensor, cache: KVCache, last_only: bool = False, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Float32 logits [batch, vocab] of the position after ``ids``, ids the tokenizer cannot decode at -inf.

        A vocabulary padded past the tokenizer's (GPT-2 trained at 50304 for speed) has rows no text maps to;
        masking them here, before anything reads the logits, keeps them out of every sampling path and out of
        the reported log-probabilities.
        """
        padding = {} if attention_mask is None else {"attention_mask": attention_mask}
        logits = self.lm.model(ids, cache, last_only=last_only, **padding)[:, -1].float()
        decodable = self.lm.tokenizer.get_vocab_size()
        if decodable < logits.shape[-1]:
            logits[:, decodable:] = float("-inf")
        return logits

    def _record(self, tokens, logprobs, streams, options, listeners) -> bool:
        """Append one token to each unfinished sample; True when every sample has finished."""
        for index, (stream, token, logprob) in enumerate(zip(streams, tokens, logprobs, strict=True)):
            if stream.finish_reason is None:
                self._append(stream, index, token, logprob, options, listeners)
        return all(s.finish_reason is not None for s in streams)

    def _append(self, stream: _Stream, index: int, token: int, logprob: float, options, listeners) -> None:
        """One new token of one sample: its text, and its end at <|endoftext|> or a stop string."""
        stream.ids.append(token)
        stream.logprobs.append(logprob)
        if token == self.lm.eos_id and not options.ignore_eos:
            self._finish(stream, index, "eos", options, listeners)
            return
        settled = settled_length(stream.text)
        stream.text = self.lm.tokenizer.decode(stream.ids, skip_special_tokens=False)
        if options.stop:
            # A new match ends in the changed part, which starts where the previous text stopped being settled.
            window_start = max(0, settled - max(len(s) for s in options.stop) + 1)
            hits = [i for i in (stream.text.find(s, window_start) for s in options.stop) if i >= 0]
            if hits:
                stream.text = stream.text[: min(hits)]
                self._finish(stream, index, "stop", options, listeners)
                return
        self._emit(stream, index, options, listeners.on_text, final=False)

    def _finish(self, stream: _Stream, index: int, reason: str, options: SamplingOptions, listeners: _Listeners):
        stream.finish_reason = reason
        self._emit(stream, index, options, listeners.on_text, final=True)
        if listeners.on_finish is not None:
            listeners.on_finish(index, stream.as_sample())

    @staticmethod
    def _emit(stream: _Stream, index: int, options: SamplingOptions, on_text: TextCallback | None, final: bool):
        if on_text is None:
            return
        text = stream.text
        end = len(text)
        if not final:
            # Hold back an incomplete UTF-8 character and anything that may still become a stop string.
            end = settled_length(text)
            if options.stop:
                end -= max(len(s) for s in options.stop) - 1
        if end > stream.emitted:
            piece, stream.emitted = text[stream.emitted : end], end
            on_text(index, piece)


def settled_length(text: str) -> int:
    """How much of a decoded text later tokens cannot change: all but a trailing incomplete UTF-8 character, which
    byte-level BPE decodes as U+FFFD until its last byte arrives."""
    return len(text.rstrip("\ufffd"))


# --- evaluation ----------------------------------------------------------------------------------------------


def negative_log_likelihood(lm: LanguageModel, text: str) -> tuple[float, int]:
    """Summed next-token NLL (nats) of ``text`` and the number of tokens predicted.

    The text starts after <|endoftext|> (as a document does in GPT-2's training) and is scored in consecutive,
    non-overlapping windows of the model's context.
    """
    ids = lm.tokenizer.encode(text).ids
    if lm.eos_id is not None:
        ids = [lm.eos_id, *ids]
    if len(ids) < 2:
        raise RlError("the text is too short to score")
    data = torch.tensor(ids, device=lm.device)
    context = lm.config.n_positions
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, context):
            window = data[start : start + context + 1]
            logits = lm.model(window[None, :-1]).float()
            total += torch.nn.functional.cross_entropy(logits[0], window[1:], reduction="sum").item()
    return total, len(ids) - 1


def perplexity(lm: LanguageModel, text: str) -> float:
    """exp(mean next-token NLL) of ``text`` under the model."""
    total, count = negative_log_likelihood(lm, text)
    return math.exp(total / count)
