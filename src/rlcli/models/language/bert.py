"""BERT: "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding" (Devlin et al., 2018).

The encoder (Section 3): token, position and segment ("token type") embeddings summed and layer-normalised, then
L post-LayerNorm transformer layers (bidirectional self-attention, then a GELU feed-forward of width 4H, each
added to its input and layer-normalised), and the pooler: a tanh dense layer on the first ([CLS]) token.
``forward(input_ids, attention_mask=..., token_type_ids=...)`` returns the last hidden state [batch, tokens, H]
and the pooled output [batch, H].

Module names are Hugging Face's ``BertModel`` (``embeddings.word_embeddings``, ``encoder.layer.0.attention.self
.query``, ``pooler.dense`` ...), the PyTorch port everyone loads, so its checkpoints map one to one. As
transformers' ``base_model_prefix`` does, ``load_state_dict`` also takes the files of the pretraining models
(``bert-base-uncased``'s ``model.safetensors`` is a ``BertForPreTraining``): their ``bert.`` prefix is stripped,
the LayerNorm ``gamma``/``beta`` of TensorFlow-converted files read as ``weight``/``bias``, and the ``cls.``
keys — the masked-LM and next-sentence heads, which are not part of the encoder — are dropped, as is the
``embeddings.position_ids`` buffer older transformers versions saved. Other keys (a fine-tuned ``classifier``)
stay unexpected: strict loading names them.

Beyond the paper, the Hugging Face ``BertConfig`` fields that change the maths are honoured (widths, depth,
activation, vocabulary and segment counts, context length, LayerNorm epsilon) or refused by name (relative
position embeddings, decoder use with a causal mask, cross-attention). Google's TensorFlow code uses the tanh
approximation of GELU; the released configs say ``gelu``, which transformers (and rl) compute exactly with erf.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from rlcli.core.feeds import InputSpec, TensorSpec
from rlcli.errors import CheckpointError
from rlcli.models.cards import Paper, Published
from rlcli.models.language.gpt2 import ACTIVATIONS
from rlcli.models.registry import register_model


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522  # WordPiece vocabulary of the uncased English models
    hidden_size: int = 768  # H
    num_hidden_layers: int = 12  # L
    num_attention_heads: int = 12  # A
    intermediate_size: int = 3072  # feed-forward width, 4H
    hidden_act: str = "gelu"  # the feed-forward's, a name in gpt2.ACTIVATIONS (transformers' ACT2FN names)
    max_position_embeddings: int = 512  # learned positions: the longest input
    type_vocab_size: int = 2  # segments A and B
    layer_norm_eps: float = 1e-12
    add_pooling_layer: bool = True  # transformers builds BertForMaskedLM, ...ForTokenClassification without it

    @classmethod
    def from_hf(cls, data: dict[str, Any]) -> BertConfig:
        """From a Hugging Face ``config.json`` of model_type bert; a missing field takes transformers' default.

        Raises CheckpointError, naming the field, for settings this module does not compute.
        """
        position = data.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise CheckpointError(
                f"position_embedding_type '{position}' is not supported: rl's BERT has absolute (learned) positions"
            )
        for flag, meaning in (("is_decoder", "a causal decoder"), ("add_cross_attention", "cross-attention")):
            if data.get(flag):
                raise CheckpointError(f"{flag} is true ({meaning}): rl's BERT is the bidirectional encoder")
        defaults = cls()
        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name == "add_pooling_layer":
                continue
            default = getattr(defaults, field.name)
            value = data.get(field.name, default)
            if isinstance(default, str):
                ok = isinstance(value, str)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            else:
                ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
            if not ok:
                raise CheckpointError(f"{field.name} is {value!r}, not a {type(default).__name__} above zero")
            values[field.name] = float(value) if isinstance(default, float) else value
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        """CheckpointError for an activation rl does not know or a width the heads do not divide."""
        if self.hidden_act not in ACTIVATIONS:
            raise CheckpointError(f"hidden_act '{self.hidden_act}' is not supported ({', '.join(ACTIVATIONS)})")
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )


# Section 3: BERT_BASE (L=12, H=768, A=12) and BERT_LARGE (L=24, H=1024, A=16); feed-forward 4H. Printed totals:
# "Total Parameters=110M" and "=340M".
SIZES: dict[str, tuple[BertConfig, str]] = {
    "bert_base": (BertConfig(), "110M"),
    "bert_large": (BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096), "340M"),
}  # fmt: skip


class BertEmbeddings(nn.Module):
    """Token + position + segment embeddings, then LayerNorm (Figure 2)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # every token in segment A, as transformers defaults
        return self.LayerNorm(x + self.token_type_embeddings(token_type_ids))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, steps, channels = x.shape
        q, k, v = (
            projection(x).view(batch, steps, self.num_attention_heads, -1).transpose(1, 2)
            for projection in (self.query, self.key, self.value)
        )
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # softmax(q k^T / sqrt(d_head) + mask) v
        return y.transpose(1, 2).reshape(batch, steps, channels)


class BertSelfOutput(nn.Module):
    """The attention's output projection, added to the layer's input and layer-normalised (post-LN)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(x))


class BertOutput(nn.Module):
    """The feed-forward's second layer, added to its input and layer-normalised."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    """tanh(W h_[CLS] + b): the sentence-level representation the NSP head and classifiers read (Section 3)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class BertModelOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # [batch, tokens, hidden]
    pooler_output: torch.Tensor | None  # [batch, hidden]; None without a pooler


class BertModel(nn.Module):
    """The BERT encoder with its pooler, in transformers' ``BertModel`` layout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        config.check()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if config.add_pooling_layer else None
        self.apply(self._init_weights)
        self.register_load_state_dict_pre_hook(_released_names)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights (initializer_range), zero biases, unit LayerNorm.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> BertModelOutput:
        """``attention_mask`` [batch, tokens]: 1 for tokens to attend to, 0 for padding (transformers' meaning)."""
        steps = input_ids.shape[1]
        if steps > self.config.max_position_embeddings:
            raise ValueError(f"{steps} tokens exceed the {self.config.max_position_embeddings} position embeddings")
        x = self.embeddings(input_ids, token_type_ids)
        x = self.encoder(x, None if attention_mask is None else additive_mask(attention_mask, x.dtype))
        return BertModelOutput(x, self.pooler(x) if self.pooler is not None else None)


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[batch, tokens] of 1/0 -> [batch, 1, 1, tokens] added to the attention scores: 0 where attended, the dtype's
    lowest value at padding. As transformers' eager path: a row that hides every key attends uniformly, not NaN."""
    hidden = attention_mask[:, None, None, :] == 0
    return torch.zeros(hidden.shape, dtype=dtype, device=hidden.device).masked_fill(hidden, torch.finfo(dtype).min)


# Keys of the released files that are not the encoder's: the pretraining heads (masked LM and next sentence
# prediction) and the position-id buffer transformers < 4.31 saved.
_DROPPED_PREFIXES = ("cls.",)
_DROPPED_KEYS = ("embeddings.position_ids",)
_TENSORFLOW_NAMES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}


def from_hf_state_dict(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """A transformers BERT state dict (``BertModel`` or ``BertForPreTraining``, TensorFlow-converted or not) in this
    module's names, for a ``BertModel`` registered at ``prefix``; keys outside ``prefix`` are kept as they are."""
    converted = {}
    for key, tensor in state.items():
        if not key.startswith(prefix):
            converted[key] = tensor
            continue
        name = key[len(prefix) :].removeprefix("bert.")
        if name.startswith(_DROPPED_PREFIXES) or name in _DROPPED_KEYS:
            continue
        for old, new in _TENSORFLOW_NAMES.items():
            if name.endswith(old):
                name = name[: -len(old)] + new
        converted[prefix + name] = tensor
    return converted


def _released_names(module, state_dict, prefix, *args) -> None:
    # A load_state_dict pre-hook: it receives load_state_dict's own copy of the caller's dict and rewrites it.
    converted = from_hf_state_dict(dict(state_dict), prefix)
    state_dict.clear()
    state_dict.update(converted)


def token_inputs(size: tuple[int, ...]) -> InputSpec:
    """What BERT is fed for one sequence of ``size`` = (tokens,): ids, a mask that hides nothing, segment A."""
    return InputSpec((
        TensorSpec(tuple(size), "int64", "input_ids"),
        TensorSpec(tuple(size), "int64", "attention_mask", fill="ones"),
        TensorSpec(tuple(size), "int64", "token_type_ids", fill="zeros"),
    ))  # fmt: skip


PAPER = Paper(
    title="BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
    authors="Jacob Devlin, Ming-Wei Chang, Kenton Lee, Kristina Toutanova",
    year=2018,
    url="https://arxiv.org/abs/1810.04805",
    arxiv="1810.04805",
)

CONVENTION = (
    "Section 3's 'Total Parameters'; no MACs are printed. rl counts transformers' BertModel (embeddings, encoder, "
    "pooler) with the uncased English vocabulary of 30,522 WordPieces"
)
# Found by counting transformers' BertModel and BertForPreTraining built from these configs (num_parameters); the
# multilingual count with its 119,547-WordPiece vocabulary.
NOTES = {
    "bert_base": "110M is the count to two significant figures: transformers' BertModel has 109.48 M, "
    "BertForPreTraining (with the MLM and NSP heads) 110.11 M; Google's README also labels the 177.85 M "
    "multilingual BERT-Base 110M",
    "bert_large": "340M is the count to two significant figures: transformers' BertModel has 335.14 M, "
    "BertForPreTraining (with the MLM and NSP heads) 336.23 M",
}


def _register(name: str, config: BertConfig, params: str) -> None:
    def build(input_size: tuple[int, ...], **kwargs: Any) -> BertModel:
        return BertModel(replace(config, **kwargs))

    register_model(
        name,
        family="bert",
        task="masked-lm",
        default_input=(config.max_position_embeddings,),
        input_kind="tokens",
        paper=PAPER,
        published=Published(
            input_size=(config.max_position_embeddings,),
            source="Section 3",
            params=params,
            convention=CONVENTION,
            note=NOTES[name],
        ),
        arguments=BertConfig,  # the builder forwards BertConfig's fields: what a stored config may set
        inputs=token_inputs,
    )(build)


for _name, (_config, _params) in SIZES.items():
    _register(_name, _config, _params)
