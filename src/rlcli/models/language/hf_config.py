"""Hugging Face model folders as models rl can summarise: ``rl summary ./bert-base-uncased`` or a cached Hub name.

A folder (or the local Hub cache's snapshot of a repository, found offline by ``core.hub.find_hf_snapshot``) is
read for its ``config.json`` alone, as data: its ``model_type`` picks one of rl's own architectures from a fixed
table and the fields that change the maths configure it. Nothing the file names is imported or run — no
``trust_remote_code``, no ``auto_map`` — and weights are not read: the model is built on meta like a registered
one. The card's source is ``huggingface`` and its name the folder or repository as typed.

What is built is the base model, as transformers' ``AutoModel`` builds it whatever ``architectures`` says: for
``bert`` the encoder with its pooler (bert-base-uncased's config names BertForMaskedLM; its file is a
BertForPreTraining's, pooler included), no task head; for ``gpt2`` the language model, whose head is tied.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rlcli.core.hub import find_hf_snapshot
from rlcli.errors import CheckpointError, ModelNotFoundError
from rlcli.models.cards import ModelCard
from rlcli.models.registry import ModelSpec

SOURCE = "huggingface"
CONFIG_FILE = "config.json"
_MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few kilobytes; anything far larger is not one

# A Hub repository id: ``name`` or ``org/name``, of letters, digits, '-', '_' and '.'.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def spec_from_hf(name_or_folder: str) -> ModelSpec | None:
    """The spec of a Hugging Face model folder, or of a repository cached in the local Hub cache.

    None when ``name_or_folder`` is neither (the caller reports an unknown model). A folder without config.json, a
    config rl cannot read and a ``model_type`` rl does not build are errors that name the folder.

    Example:
        >>> spec_from_hf("./bert-base-uncased").card.family
        'bert'
    """
    folder = _resolve(name_or_folder)
    if folder is None:
        return None
    data = read_config(folder)
    model_type = data.get("model_type")
    builder = _BUILDERS.get(model_type) if isinstance(model_type, str) else None
    if builder is None:
        raise ModelNotFoundError(
            f"{folder / CONFIG_FILE}: model_type {model_type!r} is not one rl builds "
            f"(it builds {', '.join(sorted(_BUILDERS))})"
        )
    try:
        return builder(name_or_folder, data)
    except CheckpointError as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: {exc}") from None


def _resolve(name: str) -> Path | None:
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{name} is a file; a Hugging Face model is the folder that holds {CONFIG_FILE}")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"no such model folder: {name}")
    if not _REPO_ID.match(name):
        return None
    return find_hf_snapshot(name).snapshot


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json as a dict; a CheckpointError naming the file when it is missing or unreadable."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE} (a Hugging Face model folder holds one)")
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise CheckpointError(f"{path}: {path.stat().st_size:,} bytes, too large for a model config")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a model config (a JSON object), but a {type(data).__name__}")
    return data


def _bert_spec(name: str, data: dict[str, Any]) -> ModelSpec:
    from rlcli.models.language.bert import BertConfig, BertModel, token_inputs

    config = BertConfig.from_hf(data)

    def build(input_size: tuple[int, ...], **kwargs: Any) -> BertModel:
        return BertModel(replace(config, **kwargs))

    card = _card(name, "bert", "masked-lm", config.max_position_embeddings)
    return ModelSpec(card=card, builder=build, arguments=BertConfig, inputs=token_inputs)


def _gpt2_spec(name: str, data: dict[str, Any]) -> ModelSpec:
    from rlcli.models.language.gpt2 import GPT2, GPT2Config

    try:
        config = GPT2Config.from_hf(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"not a GPT-2 config ({type(exc).__name__}: {exc})") from None

    def build(input_size: tuple[int, ...], **kwargs: Any) -> GPT2:
        return GPT2(GPT2Config(**{**asdict(config), **kwargs}))

    card = _card(name, "gpt2", "language-model", config.n_positions)
    return ModelSpec(card=card, builder=build, arguments=GPT2Config)


def _xlnet_spec(name: str, data: dict[str, Any]) -> ModelSpec:
    from rlcli.models.language.xlnet import (
        SEQUENCE,
        XLNetConfig,
        XLNetModel,
        config_from_hf,
        token_and_memory_inputs,
    )

    try:
        config = config_from_hf(data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"not an XLNet config rl builds ({exc})") from None

    def build(input_size: tuple[int, ...], **kwargs: Any) -> XLNetModel:
        return XLNetModel(replace(config, **kwargs))

    card = _card(name, "xlnet", "language-model", SEQUENCE)
    return ModelSpec(card=card, builder=build, arguments=XLNetConfig, inputs=token_and_memory_inputs(config))


def _card(name: str, family: str, task: str, tokens: int) -> ModelCard:
    return ModelCard(name=name, family=family, source=SOURCE, task=task, default_input=(tokens,), input_kind="tokens")


# model_type -> spec maker: the only architectures a config.json can select.
_BUILDERS: dict[str, Callable[[str, dict[str, Any]], ModelSpec]] = {
    "bert": _bert_spec,
    "gpt2": _gpt2_spec,
    "xlnet": _xlnet_spec,
}
