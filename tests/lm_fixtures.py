"""A tiny random GPT-2 saved by Hugging Face transformers, with a byte-level BPE tokenizer trained here."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import torch

TEXT = (
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and arrows "
    "of outrageous fortune, or to take arms against a sea of troubles and by opposing end them. Ünïcödé: 日本語. "
) * 20


@cache
def train_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([TEXT], trainer)
    return tokenizer


def make_tiny_gpt2(folder: Path, *, n_positions: int = 64, seed: int = 0, **config_changes) -> Path:
    """config.json + model.safetensors + tokenizer.json (+ vocab.json/merges.txt) of a 2-layer GPT-2.

    ``config_changes`` are further transformers ``GPT2Config`` fields (``activation_function="relu"``,
    ``vocab_size=320`` for a vocabulary padded beyond the tokenizer's ...).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer.model.save(str(folder))  # vocab.json and merges.txt, the older layout
    torch.manual_seed(seed)
    eos = tokenizer.token_to_id("<|endoftext|>")
    settings = dict(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=tokenizer.get_vocab_size(),
        n_positions=n_positions,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    config = GPT2Config(**(settings | config_changes))
    model = GPT2LMHeadModel(config).eval()
    # Random weights are near zero and give near-uniform logits; scale them up so greedy choices are clear-cut.
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4.0)
    model.save_pretrained(str(folder))
    return folder


def as_bin_layout(folder: Path, target: Path) -> Path:
    """The same model as pytorch_model.bin with vocab.json + merges.txt (the layout of older Hub snapshots)."""
    from safetensors.torch import load_file

    target.mkdir(parents=True, exist_ok=True)
    state = load_file(str(folder / "model.safetensors"))
    torch.save(state, target / "pytorch_model.bin")
    for name in ("config.json", "vocab.json", "merges.txt"):
        shutil.copy(folder / name, target / name)
    return target


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def make_padded_vocab_gpt2(folder: Path, *, vocab_size: int = 320, seed: int = 0) -> Path:
    """The tiny GPT-2 with its vocabulary padded past the tokenizer's 300 ids (as GPT-2 padded to 50304 is), and
    the padded ids made the most likely after any input.

    The final LayerNorm gets a large bias ``b`` and every padded embedding row is ``3 b``: a padded id's logit is
    then about ``3 |b|^2``, far above the real ids' (tests check this against transformers' logits).
    """
    from transformers import GPT2LMHeadModel

    make_tiny_gpt2(folder, seed=seed, vocab_size=vocab_size)
    model = GPT2LMHeadModel.from_pretrained(str(folder)).eval()
    real = train_tokenizer().get_vocab_size()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bias = torch.randn(model.config.n_embd, generator=generator) * 3
        model.transformer.ln_f.bias.copy_(bias)
        padded = vocab_size - real
        noise = torch.randn(padded, model.config.n_embd, generator=generator) * 0.1
        model.transformer.wte.weight[real:] = 3 * bias + noise
    model.save_pretrained(str(folder))
    return folder
