"""Tokenizers for language models, read with the `tokenizers` library from a model folder."""

from __future__ import annotations

from pathlib import Path

from rlcli.errors import CheckpointError

END_OF_TEXT = "<|endoftext|>"


def load_tokenizer(folder: Path):
    """``tokenizer.json``, else GPT-2's ``vocab.json`` + ``merges.txt`` as a byte-level BPE.

    Returns a ``tokenizers.Tokenizer``.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    single = folder / "tokenizer.json"
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    try:
        if single.is_file():
            return Tokenizer.from_file(str(single))
        if vocab.is_file() and merges.is_file():
            tokenizer = Tokenizer(BPE.from_file(str(vocab), str(merges)))
            # GPT-2's byte-level scheme: no prefix space, bytes mapped to printable characters and back.
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tokenizer.decoder = decoders.ByteLevel()
            if tokenizer.token_to_id(END_OF_TEXT) is not None:
                from tokenizers import AddedToken

                tokenizer.add_special_tokens([AddedToken(END_OF_TEXT, special=True)])
            return tokenizer
    except Exception as exc:  # the library raises plain Exception subclasses for malformed files
        raise CheckpointError(f"{folder}: cannot read the tokenizer ({exc})") from exc
    raise CheckpointError(f"{folder}: no tokenizer (looked for tokenizer.json, or vocab.json with merges.txt)")
