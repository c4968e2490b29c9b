"""GPT-2: "Language Models are Unsupervised Multitask Learners" (Radford et al., 2019).

A decoder-only transformer: token + learned position embeddings, a stack of pre-LayerNorm blocks (causal
self-attention, then an MLP with tanh-approximated GELU), a final LayerNorm and an LM head tied to the token
embedding. Module names follow the released checkpoints (``transformer.h.0.attn.c_attn`` ...), so weights map
one to one; the released files store ``c_attn``/``c_proj``/``c_fc`` as Conv1D, i.e. transposed relative to
``nn.Linear``, which ``from_hf_state_dict`` undoes.

Generation uses a pre-allocated key/value cache: after the prompt, each step runs only the newest token.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from rlcli.models.registry import register_model


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257  # 50,000 BPE merges + 256 byte tokens + <|endoftext|>
    n_positions: int = 1024  # context length
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5

    @classmethod
    def from_hf(cls, data: dict[str, Any]) -> GPT2Config:
        """From a Hugging Face ``config.json`` of model_type gpt2 (``n_ctx`` is an older name of n_positions)."""
        return cls(
            vocab_size=int(data["vocab_size"]),
            n_positions=int(data.get("n_positions", data.get("n_ctx", 1024))),
            n_embd=int(data["n_embd"]),
            n_layer=int(data["n_layer"]),
            n_head=int(data["n_head"]),
            layer_norm_epsilon=float(data.get("layer_norm_epsilon", 1e-5)),
        )

    def to_hf(self) -> dict[str, Any]:
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], **asdict(self)}


SIZES = {
    "gpt2": GPT2Config(),
    "gpt2-medium": GPT2Config(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": GPT2Config(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": GPT2Config(n_embd=1600, n_layer=48, n_head=25),
}


class KVCache:
    """Keys and values of every layer for up to ``length`` positions, allocated once."""

    def __init__(self, config: GPT2Config, batch: int, length: int, dtype: torch.dtype, device: torch.device):
        shape = (batch, config.n_head, length, config.n_embd // config.n_head)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.filled = 0  # positions written so far, shared by all layers


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # query, key, value in one projection
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        batch, steps, channels = x.shape
        q, k, v = self.c_attn(x).split(channels, dim=2)
        q, k, v = (t.view(batch, steps, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        if cache is None or cache.filled == 0:
            if cache is not None:
                cache.keys[layer][:, :, :steps] = k
                cache.values[layer][:, :, :steps] = v
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            start, end = cache.filled, cache.filled + steps
            cache.keys[layer][:, :, start:end] = k
            cache.values[layer][:, :, start:end] = v
            k, v = cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end]
            # New tokens see every cached position and the new ones up to themselves.
            mask = None if steps == 1 else torch.ones(steps, end, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(batch, steps, channels))


class MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)


class GPT2(nn.Module):
    """GPT-2 language model. ``forward(ids)`` returns logits of shape [batch, steps, vocab]."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in the paper's released models
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
        """Logits for ``ids`` [batch, steps]; with a cache, ``ids`` continue the cached positions.

        ``last_only`` computes logits for the final position only: prompt processing then skips the LM head
        (a third of GPT-2 small's compute per token) for every position but the one sampled from.
        """
        start = cache.filled if cache is not None else 0
        steps = ids.shape[1]
        if start + steps > self.config.n_positions:
            raise ValueError(f"{start + steps} positions exceed the context of {self.config.n_positions}")
        positions = torch.arange(start, start + steps, device=ids.device)
        x = self.transformer.wte(ids) + self.transformer.wpe(positions)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.filled = start + steps
        x = self.transformer.ln_f(x[:, -1:] if last_only else x)
        return self.lm_head(x)


CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of the released files


def from_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released/Hugging Face GPT-2 tensors -> this module's names: Conv1D weights transposed, mask buffers and the
    tied LM head dropped, a missing ``transformer.`` prefix (original OpenAI-converted files) added."""
    converted = {}
    for name, tensor in state.items():
        if name.endswith(_IGNORED_SUFFIXES) or name == "lm_head.weight":
            continue
        key = name if name.startswith("transformer.") else f"transformer.{name}"
        converted[key] = tensor.t() if key.endswith(CONV1D_WEIGHTS) else tensor
    return converted


def to_hf_state_dict(model: GPT2) -> dict[str, torch.Tensor]:
    """This module's tensors in the released layout (Conv1D weights transposed back), e.g. for shipping."""
    return {
        name: (tensor.t().contiguous() if name.endswith(CONV1D_WEIGHTS) else tensor)
        for name, tensor in model.state_dict().items()
        if name != "lm_head.weight"
    }


def _register(name: str, config: GPT2Config) -> None:
    def build(input_size: tuple[int, ...], **kwargs: Any) -> GPT2:
        return GPT2(GPT2Config(**{**asdict(config), **kwargs}))

    register_model(
        name, family="gpt2", task="language-model", default_input=(config.n_positions,), input_kind="tokens"
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
