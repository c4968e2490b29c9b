"""Hugging Face models as transformers builds them: ``hf/NAME`` (a model id in the local Hub cache) or ``hf/PATH``
(a folder with a ``config.json``), built by transformers' ``AutoModel`` from the config alone — no weights.

The config is read as data: its ``model_type`` must be one transformers itself implements (``CONFIG_MAPPING``), and
the class ``AutoModel`` maps it to is built; a repository's own code (``auto_map``) is never imported. What is built
is the base model without a task head, as ``AutoModel`` builds it (GPT-2's ``GPT2Model``, BERT's ``BertModel``
with its pooler), so the task is ``feature-extraction``. A bare folder or name (no ``hf/``) keeps meaning rl's own
implementation of that architecture (``models.language.hf_config``).

The default input is the model's own kind, stated: token ids (``input_ids``, by keyword; an encoder-decoder also
gets ``decoder_input_ids`` of the same length) of DEFAULT_SEQUENCE tokens, or the model's maximum when that is
shorter; images (``pixel_values``) at the config's ``image_size``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from rlcli.core.feeds import InputSpec, TensorSpec
from rlcli.core.hub import download_command, find_hf_snapshot
from rlcli.errors import CheckpointError, ModelNotFoundError, RlError
from rlcli.models.cards import ModelCard
from rlcli.models.language.hf_config import CONFIG_FILE, read_config
from rlcli.models.registry import ModelSpec
from rlcli.models.zoo import HF_PREFIX, require

SOURCE = "transformers"
DEFAULT_SEQUENCE = 512  # tokens fed by default, unless the model's positions allow fewer
TASK = "feature-extraction"  # AutoModel's base model: hidden states, no task head


def hf_spec(name: str) -> ModelSpec:
    """The spec of ``hf/NAME`` or ``hf/PATH`` (the prefix included).

    Example:
        >>> hf_spec("hf/bert-base-uncased").card.default_input
        (512,)
    """
    target = name.removeprefix(HF_PREFIX)
    transformers = require("transformers", "hf", "an hf/ model")
    folder = _resolve(target, name)
    data = read_config(folder)
    config = _config(transformers, data, folder)
    model_class = _model_class(transformers, config, folder)
    main_input = getattr(model_class, "main_input_name", "input_ids")
    if main_input == "input_ids":
        size, kind, inputs = (_sequence_length(config),), "tokens", _token_inputs(config)
    elif main_input == "pixel_values":
        size, kind, inputs = _image_size(config), "image", _pixel_inputs
    else:
        raise ModelNotFoundError(
            f"{folder / CONFIG_FILE}: {model_class.__name__} takes {main_input}; rl feeds hf/ models token ids or "
            f"images (give --inputs to feed it yourself)"
        )
    card = ModelCard(
        name=name,
        family=config.model_type,
        source=SOURCE,
        task=TASK,
        default_input=size,
        input_kind=kind,
    )
    return ModelSpec(card=card, builder=_builder(transformers, config, kind), inputs=inputs)


def _resolve(target: str, typed: str) -> Path:
    path = Path(target).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{target} is a file; an hf/ model is the folder that holds {CONFIG_FILE}")
    if not target or target.startswith(("/", ".", "~")) or target.count("/") > 1:
        raise ModelNotFoundError(f"no such model folder: {target}")
    lookup = find_hf_snapshot(target)
    if lookup.snapshot is None:
        looked = ", ".join(str(p) for p in lookup.looked_in)
        raise RlError(
            f"{typed}: '{target}' is not a folder and not in the local Hugging Face cache (looked in {looked}); rl "
            f"never downloads. Fetch its config once with: {download_command(target, (CONFIG_FILE,))}"
        )
    return lookup.snapshot


def _config(transformers, data: dict[str, Any], folder: Path):
    model_type = data.get("model_type")
    known = transformers.CONFIG_MAPPING
    if not isinstance(model_type, str) or model_type not in known:
        raise ModelNotFoundError(
            f"{folder / CONFIG_FILE}: model_type {model_type!r} is not one transformers {transformers.__version__} "
            f"implements (rl never runs a repository's own code)"
        )
    try:
        return known[model_type].from_dict({k: v for k, v in data.items() if k != "auto_map"})
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: not a {model_type} config ({exc})") from None


def _model_class(transformers, config, folder: Path):
    try:
        return transformers.MODEL_MAPPING[type(config)]
    except KeyError:
        raise ModelNotFoundError(
            f"{folder / CONFIG_FILE}: transformers has no AutoModel for model_type {config.model_type!r}"
        ) from None


def _sequence_length(config) -> int:
    """DEFAULT_SEQUENCE tokens, or the model's maximum position when that is shorter."""
    limit = getattr(config, "max_position_embeddings", None)
    return min(DEFAULT_SEQUENCE, limit) if isinstance(limit, int) and limit > 0 else DEFAULT_SEQUENCE


def _image_size(config) -> tuple[int, int, int]:
    side = getattr(config, "image_size", 224)
    height, width = (side, side) if isinstance(side, int) else tuple(side)
    return (getattr(config, "num_channels", 3), height, width)


def _token_inputs(config):
    names = ("input_ids", "decoder_input_ids") if getattr(config, "is_encoder_decoder", False) else ("input_ids",)

    def inputs(size: tuple[int, ...]) -> InputSpec:
        return InputSpec(tuple(TensorSpec(tuple(size), "int64", name=n) for n in names))

    return inputs


def _pixel_inputs(size: tuple[int, ...]) -> InputSpec:
    return InputSpec((TensorSpec(tuple(size), "float32", name="pixel_values"),))


def _builder(transformers, config, kind: str):
    def build(input_size: tuple[int, ...] | None, **kwargs: Any):
        settings = copy.deepcopy(config)
        for key, value in kwargs.items():
            setattr(settings, key, value)
        if kind == "image" and input_size and hasattr(settings, "image_size"):
            settings.image_size = input_size[-1] if input_size[-1] == input_size[-2] else list(input_size[-2:])
        return transformers.AutoModel.from_config(settings)

    return build
