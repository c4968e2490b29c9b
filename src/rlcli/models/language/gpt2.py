"""GPT-2: "Language Models are Unsupervised Multitask Learners" (Radford et al., 2019).

A decoder-only transformer: token + learned position embeddings, a stack of pre-LayerNorm blocks (causal
self-attention, then an MLP with tanh-approximated GELU), a final LayerNorm and an LM head tied to the token
embedding. Module names follow the released checkpoints (``transformer.h.0.attn.c_attn`` ...), so weights map
one to one; the released files store ``c_attn``/``c_proj``/``c_fc`` as Conv1D, i.e. transposed relative to
``nn.Linear``, which ``from_hf_state_dict`` undoes.

Beyond the paper, the Hugging Face ``GPT2Config`` fields that change the maths are honoured (MLP width and
activation, attention scaling, float32 attention, an untied LM head) or refused by name (cross-attention).

Generation uses a pre-allocated key/value cache: after the prompt, each step runs only the newest token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from rlcli.core.packing import PackedLinear
from rlcli.core.quantize import Int8Embedding, Int8Linear
from rlcli.errors import CheckpointError
from rlcli.models.cards import Paper
from rlcli.models.registry import register_model


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# The MLP activations of transformers' ACT2FN that have no parameters, by the names config.json uses. The tanh
# approximations (gelu_new, gelu_fast, gelu_accurate ...) are one formula written differently: they differ in
# rounding only. transformers' prelu and xielu carry learned parameters and are refused.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_python_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_accurate": _gelu_tanh,
    "gelu": F.gelu,
    "gelu_python": F.gelu,
    "gelu_10": lambda x: F.gelu(x).clamp(-10, 10),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "relu2": lambda x: F.relu(x).square(),
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,  # nn.LeakyReLU's default slope, 0.01, as transformers builds it
    "silu": F.silu,
    "swish": F.silu,
    "mish": F.mish,
    "hardswish": F.hardswish,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
    "laplace": lambda x: 0.5 * (1.0 + torch.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0)))),
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(),
}


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257  # 50,000 BPE merges + 256 byte tokens + <|endoftext|>
    n_positions: int = 1024  # context length
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    n_inner: int | None = None  # MLP width; None = 4 * n_embd, the paper's
    activation_function: str = "gelu_new"  # the MLP's, a name in ACTIVATIONS; GPT-2's is tanh-approximated GELU
    scale_attn_weights: bool = True  # divide attention scores by sqrt(head width), as "Attention is all you need"
    scale_attn_by_inverse_layer_idx: bool = False  # and by the 1-based layer number (Stanford CRFM's Mistral)
    reorder_and_upcast_attn: bool = False  # attention in float32 when the weights are float16/bfloat16
    tie_word_embeddings: bool = True  # the LM head is the token embedding, as in the released models

    @classmethod
    def from_hf(cls, data: dict[str, Any]) -> GPT2Config:
        """From a Hugging Face ``config.json`` of model_type gpt2 (``n_ctx`` is an older name of n_positions).

        Raises CheckpointError, naming the field, for settings this module cannot compute exactly.
        """
        if data.get("add_cross_attention"):
            raise CheckpointError(
                "add_cross_attention is true: this GPT-2 is the decoder of an encoder-decoder model, which rl "
                "does not run"
            )
        activation = str(data.get("activation_function", "gelu_new"))
        if activation not in ACTIVATIONS:
            raise CheckpointError(f"activation_function '{activation}' is not supported ({', '.join(ACTIVATIONS)})")
        n_embd, n_head = int(data["n_embd"]), int(data["n_head"])
        if n_head < 1 or n_embd % n_head:
            raise CheckpointError(f"n_embd {n_embd} is not divisible by n_head {n_head}")
        n_inner = data.get("n_inner")
        return cls(
            vocab_size=int(data["vocab_size"]),
            n_positions=int(data.get("n_positions", data.get("n_ctx", 1024))),
            n_embd=n_embd,
            n_layer=int(data["n_layer"]),
            n_head=n_head,
            layer_norm_epsilon=float(data.get("layer_norm_epsilon", 1e-5)),
            n_inner=None if n_inner is None else int(n_inner),
            activation_function=activation,
            scale_attn_weights=bool(data.get("scale_attn_weights", True)),
            scale_attn_by_inverse_layer_idx=bool(data.get("scale_attn_by_inverse_layer_idx", False)),
            reorder_and_upcast_attn=bool(data.get("reorder_and_upcast_attn", False)),
            tie_word_embeddings=bool(data.get("tie_word_embeddings", True)),
        )

    def to_hf(self) -> dict[str, Any]:
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], **asdict(self)}

    @property
    def mlp_width(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def attention_scale(self, layer: int) -> float:
        """The factor on q·k of layer ``layer`` (0-based), as transformers' GPT2Attention computes it."""
        scale = (self.n_embd // self.n_head) ** -0.5 if self.scale_attn_weights else 1.0
        return scale / (layer + 1) if self.scale_attn_by_inverse_layer_idx else scale


SIZES = {
    "gpt2": GPT2Config(),
    "gpt2-medium": GPT2Config(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": GPT2Config(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": GPT2Config(n_embd=1600, n_layer=48, n_head=25),
}


def cache_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype of the key/value cache, in which decoding's attention runs, for a model computing in ``dtype``.

    float32 on the CPU whatever the model's dtype: torch's CPU attention for one new token is 5x slower in bfloat16
    than in float32 (scaled_dot_product_attention, GPT-2 small's 12 heads over 160 positions: 115 vs 21 us per layer,
    724 vs 93 us at 1,024 positions, 2 cores), and more exact. The price is twice the cache: 75 MB instead of 38 for
    GPT-2 small's 1,024 positions. Elsewhere the model's own dtype.
    """
    return torch.float32 if device.type == "cpu" else dtype


class KVCache:
    """Keys and values of every layer for up to ``length`` positions, allocated once."""

    def __init__(self, config: GPT2Config, batch: int, length: int, dtype: torch.dtype, device: torch.device):
        self.dtype = dtype
        shape = (batch, config.n_head, length, config.n_embd // config.n_head)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.filled = 0  # positions written so far, shared by all layers

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (indices), in that order: finished sequences leave the batch."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config, layer: int = 0) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.scale = config.attention_scale(layer)
        self.upcast = config.reorder_and_upcast_attn
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # query, key, value in one projection
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``mask`` (bool, [batch, 1, steps, positions so far], True = may attend; ``padding_mask``) replaces the
        causal mask when some rows hold padding."""
        batch, steps, channels = x.shape
        qkv = self.c_attn(x)
        if cache is not None and cache.dtype != qkv.dtype:
            # Attention runs in the cache's dtype (cache_dtype): one cast of the fused projection, not three.
            qkv = qkv.to(cache.dtype)
        # [batch, heads, steps, head width] views of the projection, as split + view + transpose would give them
        # (the same strides), in three ops instead of seven.
        q, k, v = qkv.view(batch, steps, 3, self.n_head, -1).permute(2, 0, 3, 1, 4).unbind(0)
        if cache is None or cache.filled == 0:
            if cache is not None:
                cache.keys[layer][:, :, :steps] = k
                cache.values[layer][:, :, :steps] = v
            y = self._attend(q, k, v, is_causal=True) if mask is None else self._attend(q, k, v, attn_mask=mask)
        else:
            start, end = cache.filled, cache.filled + steps
            cache.keys[layer][:, :, start:end] = k
            cache.values[layer][:, :, start:end] = v
            k, v = cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end]
            # New tokens see every cached position and the new ones up to themselves.
            if mask is None and steps > 1:
                mask = torch.ones(steps, end, dtype=torch.bool, device=x.device).tril(start)
            y = self._attend(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(batch, steps, channels).to(x.dtype))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **masking: Any) -> torch.Tensor:
        if self.upcast and q.dtype in (torch.float16, torch.bfloat16):
            # reorder_and_upcast_attn: transformers computes scores and softmax in float32 in its eager path (its
            # sdpa path ignores the flag); here the whole attention runs in float32, which is at least as exact.
            # In float32 the flag changes nothing.
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=self.scale, **masking)
            return y.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale, **masking)


class MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_width)
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd)
        self.activation = ACTIVATIONS[config.activation_function]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.activation(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPT2Config, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class GPT2(nn.Module):
    """GPT-2 language model. ``forward(ids)`` returns logits of shape [batch, steps, vocab]."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # tied, as in the paper's released models
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        ids: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits for ``ids`` [batch, steps]; with a cache, ``ids`` continue the cached positions.

        ``last_only`` computes logits for the final position only: prompt processing then skips the LM head
        (a third of GPT-2 small's compute per token) for every position but the one sampled from.

        ``attention_mask`` [batch, positions so far + steps] (1 = token, 0 = padding) batches sequences of different
        lengths, left-padded, as transformers does: padding is never attended to, and each row's positions count
        its tokens only (``position_ids`` from the mask's cumulative sum), so a row's logits are those of the row
        alone.
        """
        start = cache.filled if cache is not None else 0
        steps = ids.shape[1]
        if start + steps > self.config.n_positions:
            raise ValueError(f"{start + steps} positions exceed the context of {self.config.n_positions}")
        mask = None
        if attention_mask is None:
            positions = torch.arange(start, start + steps, device=ids.device)
        else:
            valid = attention_mask[:, : start + steps].bool()
            positions = (valid.long().cumsum(-1) - 1).clamp(min=0)[:, start:]
            mask = padding_mask(valid, steps)
        x = self.transformer.wte(ids) + self.transformer.wpe(positions)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer, mask)
        if cache is not None:
            cache.filled = start + steps
        x = self.transformer.ln_f(x[:, -1:] if last_only else x)
        return self.lm_head(x)


def padding_mask(valid: torch.Tensor, steps: int) -> torch.Tensor:
    """Which keys each of the last ``steps`` queries may attend to, [batch, 1, steps, positions], from ``valid``
    [batch, positions] (False = padding): earlier or equal positions that are not padding.

    A query at a padding position would have no key at all. torch 2.14's CPU kernels return zeros for it, but
    attention over nothing is NaN in other kernels and versions (transformers unmasks such rows for that reason),
    and a NaN would reach every later layer through that position's keys and values (a masked key's value is still
    multiplied by its zero weight, and 0 x NaN is NaN); so such a query attends to itself: finite with any kernel,
    and never read.
    """
    end = valid.shape[1]
    keys = valid[:, None, None, :]
    if steps == 1:
        return keys
    causal = torch.ones(steps, end, dtype=torch.bool, device=valid.device).tril(end - steps)
    itself = torch.ones(steps, end, dtype=torch.bool, device=valid.device).tril(end - steps).triu(end - steps)
    return (keys & causal) | itself


def quantize_int8(model: GPT2, dtype: torch.dtype = torch.bfloat16) -> GPT2:
    """Weight-only int8, in place: the linear layers of every block and the LM head hold int8 weights with one scale
    per output channel, computed from the float weights they replace (``rlcli.core.quantize``); embeddings, norms
    and biases stay floating point, converted to ``dtype``, the dtype of the activations.

    With a tied head the token embedding reads rows of the head's int8 table, dequantised on lookup: one int8 table
    instead of an int8 head beside a float table (GPT-2 small: 38.6 MB instead of 38.6 + 77.2 MB in bfloat16).
    """
    for parent, name in block_linears(model):
        setattr(parent, name, Int8Linear.from_linear(getattr(parent, name), dtype))
    head = Int8Linear.from_linear(model.lm_head, dtype)
    model.lm_head = head
    if model.config.tie_word_embeddings:
        model.transformer.wte = Int8Embedding(head.weight, head.scales)
    return model.to(dtype)  # the remaining float tensors; int8 ones keep their dtype


def block_linears(model: GPT2) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every block's linear layer: the weights one decoding step streams, with the head."""
    pairs: list[tuple[nn.Module, str]] = []
    for block in model.transformer.h:
        pairs += [(block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"), (block.mlp, "c_proj")]
    return pairs


def pack_linears(model: GPT2) -> GPT2:
    """In place: the blocks' linear layers and the LM head on weights reordered for oneDNN's CPU kernels
    (``rlcli.core.packing``), the same products computed faster. The token embedding keeps its plain table; with a
    tied head the packed head is a second copy of it (GPT-2 small in bfloat16: 77 MB)."""
    for parent, name in block_linears(model):
        setattr(parent, name, PackedLinear.from_linear(getattr(parent, name)))
    model.lm_head = PackedLinear.from_linear(model.lm_head)
    return model


CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of the released files


def from_hf_state_dict(state: dict[str, torch.Tensor], tied: bool = True) -> dict[str, torch.Tensor]:
    """Released/Hugging Face GPT-2 tensors -> this module's names: Conv1D weights transposed, mask buffers and a
    tied LM head dropped, a missing ``transformer.`` prefix (original OpenAI-converted files) added."""
    converted = {}
    for name, tensor in state.items():
        if name.endswith(_IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
            continue
        if name == "lm_head.weight":
            converted[name] = tensor
            continue
        key = name if name.startswith("transformer.") else f"transformer.{name}"
        converted[key] = tensor.t() if key.endswith(CONV1D_WEIGHTS) else tensor
    return converted


def to_hf_state_dict(model: GPT2) -> dict[str, torch.Tensor]:
    """This module's tensors in the released layout (Conv1D weights transposed back), e.g. for shipping."""
    return {
        name: (tensor.t().contiguous() if name.endswith(CONV1D_WEIGHTS) else tensor)
        for name, tensor in model.state_dict().items()
        if name != "lm_head.weight" or not model.config.tie_word_embeddings
    }


PAPER = Paper(
    title="Language Models are Unsupervised Multitask Learners",
    authors="Alec Radford, Jeffrey Wu, Rewon Child, David Luan, Dario Amodei, Ilya Sutskever",
    year=2019,
    url="https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf",
)


def _register(name: str, config: GPT2Config) -> None:
    def build(input_size: tuple[int, ...], **kwargs: Any) -> GPT2:
        return GPT2(GPT2Config(**{**asdict(config), **kwargs}))

    register_model(
        name,
        family="gpt2",
        task="language-model",
        default_input=(config.n_positions,),
        input_kind="tokens",
        paper=PAPER if name != DEMO_NAME else None,
        arguments=GPT2Config,  # the builder forwards GPT2Config's fields: what a stored config may set
    )(build)


DEMO_FOLDER = Path(__file__).with_name("demo_lm")
DEMO_NAME = "shakespeare"


def demo_config() -> GPT2Config:
    """The bundled demo model's configuration (trained by scripts/train_demo_lm.py)."""
    return GPT2Config.from_hf(json.loads((DEMO_FOLDER / "config.json").read_text(encoding="utf-8")))


for _name, _config in SIZES.items():
    _register(_name, _config)
if (DEMO_FOLDER / "config.json").is_file():
    _register(DEMO_NAME, demo_config())
