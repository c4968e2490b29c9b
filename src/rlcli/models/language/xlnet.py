"""XLNet: "XLNet: Generalized Autoregressive Pretraining for Language Understanding" (Yang et al., 2019).

A Transformer-XL encoder (relative positional attention with content and position biases ``r_w_bias`` and
``r_r_bias``, segment recurrence over a memory of earlier hidden states) pretrained by permutation language
modelling with two-stream attention (Section 2.3): a content stream h that sees its own token and a query stream g
that sees only its position (``mask_emb``), both reading the content stream's keys and values. XLNet adds relative
segment encodings (Section 2.5): whether two tokens are in the same segment picks one of two learned vectors
(``seg_embed``), scored against the query plus a bias ``r_s_bias``.

rl builds what Hugging Face's ``XLNetModel`` computes at inference and fine-tuning, with ``perm_mask=None`` and
``target_mapping=None``: the content stream alone, attending bidirectionally (``attn_type="bi"``) to memory +
segment; the query stream exists only in pretraining and is not built. Module names are Hugging Face's (the PyTorch
form of the released ``xlnet-base-cased``/``xlnet-large-cased``; their files hold ``XLNetLMHeadModel``, whose
``transformer.`` prefix and ``lm_loss`` head ``from_hf_state_dict`` drops). The positional encoding is, as in the
official code, computed for every sample of the batch, and projected by ``r`` for every sample.

Inputs: ``input_ids`` and ``token_type_ids`` [batch, T], and ``mems`` [batch, n_layer, M, d_model], the memory of
every layer (the official list of n_layer tensors [M, batch, d_model] is accepted too); memory positions count as
segment 0, as Hugging Face pads them. The forward returns the content stream's last hidden states [batch, T,
d_model] and the new memory (the input of every layer, the last ``mem_len`` positions of memory + segment; all of
them when mem_len is None), in the layout the memory came in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rlcli.core.feeds import InputSpec, TensorSpec
from rlcli.models.cards import Paper
from rlcli.models.registry import register_model


@dataclass(frozen=True)
class XLNetConfig:
    """Hugging Face's XLNetConfig fields that change what the model computes."""

    vocab_size: int = 32000  # SentencePiece, cased
    d_model: int = 1024
    n_layer: int = 24
    n_head: int = 16
    d_inner: int = 4096
    ff_activation: str = "gelu"  # as the released configs name it; "relu" the official alternative
    layer_norm_eps: float = 1e-12
    attn_type: str = "bi"  # "uni": each token sees memory and the tokens up to itself
    same_length: bool = False  # with "uni", every token sees the same number of positions
    clamp_len: int = -1  # distances beyond this share one encoding; -1: none
    mem_len: int | None = None  # memory handed to the next segment; None: all of memory + segment
    reuse_len: int | None = None  # only the first reuse_len tokens of a segment enter the next memory

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head


# The official README's released models: "24-layer, 1024-hidden, 16-heads" and "12-layer, 768-hidden, 12-heads";
# d_inner from their xlnet_config.json (Hugging Face's xlnet-large-cased / xlnet-base-cased configs).
SIZES = {
    "xlnet_base": XLNetConfig(d_model=768, n_layer=12, n_head=12, d_inner=3072),
    "xlnet_large": XLNetConfig(),
}
SEQUENCE = 512  # pretraining's seq_len (official README, train.py flags), the longest fine-tuning input
MEMORY = 384  # pretraining's mem_len (official README: --seq_len=512 --reuse_len=256 --mem_len=384)

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


class XLNetRelativeAttention(nn.Module):
    """Relative attention of the content stream: content (a), position (b) and segment (e) scores."""

    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        self.n_head, self.d_head = config.n_head, config.d_head
        self.scale = 1 / (config.d_head**0.5)
        heads = (config.d_model, config.n_head, config.d_head)
        self.q = nn.Parameter(torch.empty(heads))
        self.k = nn.Parameter(torch.empty(heads))
        self.v = nn.Parameter(torch.empty(heads))
        self.o = nn.Parameter(torch.empty(heads))
        self.r = nn.Parameter(torch.empty(heads))
        self.r_r_bias = nn.Parameter(torch.empty(config.n_head, config.d_head))
        self.r_s_bias = nn.Parameter(torch.empty(config.n_head, config.d_head))
        self.r_w_bias = nn.Parameter(torch.empty(config.n_head, config.d_head))
        self.seg_embed = nn.Parameter(torch.empty(2, config.n_head, config.d_head))
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    @staticmethod
    def rel_shift_bnij(x: Tensor, klen: int) -> Tensor:
        """Scores over distances klen ... -qlen+1 moved so that column j is key j (the official trick)."""
        b, n, i, j = x.shape
        x = x.reshape(b, n, j, i)[:, :, 1:, :].reshape(b, n, i, j - 1)
        return x[:, :, :, :klen]

    def forward(
        self, h: Tensor, r: Tensor, seg_mat: Tensor | None, attn_mask: Tensor | None, mems: Tensor | None
    ) -> Tensor:
        cat = h if mems is None else torch.cat([mems, h], dim=0)
        q_head = torch.einsum("ibh,hnd->ibnd", h, self.q)
        k_head = torch.einsum("ibh,hnd->ibnd", cat, self.k)
        v_head = torch.einsum("ibh,hnd->ibnd", cat, self.v)
        k_head_r = torch.einsum("ibh,hnd->ibnd", r, self.r)

        ac = torch.einsum("ibnd,jbnd->bnij", q_head + self.r_w_bias, k_head)
        bd = self.rel_shift_bnij(torch.einsum("ibnd,jbnd->bnij", q_head + self.r_r_bias, k_head_r), ac.shape[3])
        score = ac + bd
        if seg_mat is not None:
            ef = torch.einsum("ibnd,snd->ibns", q_head + self.r_s_bias, self.seg_embed)
            score = score + torch.einsum("ijbs,ibns->bnij", seg_mat, ef)
        score = score * self.scale
        if attn_mask is not None:
            score = score - 1e30 * attn_mask.permute(2, 3, 0, 1)  # [q, k, batch, 1] -> [batch, 1, q, k]
        prob = F.softmax(score, dim=3)
        vec = torch.einsum("bnij,jbnd->ibnd", prob, v_head)
        return self.layer_norm(torch.einsum("ibnd,hnd->ibh", vec, self.o) + h)


class XLNetFeedForward(nn.Module):
    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.layer_1 = nn.Linear(config.d_model, config.d_inner)
        self.layer_2 = nn.Linear(config.d_inner, config.d_model)
        self.activation = ACTIVATIONS[config.ff_activation]

    def forward(self, inp: Tensor) -> Tensor:
        return self.layer_norm(self.layer_2(self.activation(self.layer_1(inp))) + inp)


class XLNetLayer(nn.Module):
    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        self.rel_attn = XLNetRelativeAttention(config)
        self.ff = XLNetFeedForward(config)

    def forward(
        self, h: Tensor, r: Tensor, seg_mat: Tensor | None, attn_mask: Tensor | None, mems: Tensor | None
    ) -> Tensor:
        return self.ff(self.rel_attn(h, r, seg_mat, attn_mask, mems))


class XLNetModel(nn.Module):
    """XLNet's content stream. ``forward`` returns (hidden states [batch, T, d_model], new memory)."""

    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        if config.d_model % config.n_head:
            raise ValueError(f"d_model {config.d_model} is not divisible by n_head {config.n_head}")
        if config.ff_activation not in ACTIVATIONS:
            raise ValueError(f"ff_activation {config.ff_activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if config.attn_type not in ("bi", "uni"):
            raise ValueError(f"attn_type {config.attn_type!r} is not 'bi' or 'uni'")
        self.config = config
        self.word_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.mask_emb = nn.Parameter(torch.empty(1, 1, config.d_model))  # the query stream's input (pretraining)
        self.layer = nn.ModuleList(XLNetLayer(config) for _ in range(config.n_layer))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Hugging Face's XLNetPreTrainedModel: N(0, 0.02) everywhere, zero biases, unit LayerNorm.
        for name, param in module.named_parameters(recurse=False):
            if name == "bias":
                nn.init.zeros_(param)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(param)
            else:
                nn.init.normal_(param, 0.0, 0.02)

    def relative_positional_encoding(self, qlen: int, klen: int, bsz: int, device: torch.device) -> Tensor:
        """Sinusoids of the distances klen ... -qlen+1 ("bi") or klen ... 1 ("uni"), [len, batch, d_model]."""
        d_model = self.config.d_model
        inv_freq = 1 / torch.pow(10000, torch.arange(0, d_model, 2.0, device=device) / d_model)
        end = -qlen if self.config.attn_type == "bi" else -1
        pos_seq = torch.arange(klen, end, -1.0, device=device)
        if self.config.clamp_len > 0:
            pos_seq = pos_seq.clamp(-self.config.clamp_len, self.config.clamp_len)
        sinusoid = pos_seq[:, None] * inv_freq
        return torch.cat([sinusoid.sin(), sinusoid.cos()], dim=-1)[:, None, :].expand(-1, bsz, -1)

    def _attention_mask(self, qlen: int, mlen: int, attention_mask: Tensor | None, like: Tensor) -> Tensor | None:
        """1.0 where a query may not look, [q, k, batch or 1, 1]; a token always sees itself (non_tgt_mask)."""
        mask = None
        if self.config.attn_type == "uni":
            causal = torch.ones(qlen, qlen + mlen, device=like.device, dtype=like.dtype)
            mask = causal.triu(mlen + 1)
            if self.config.same_length:
                mask[:, :qlen] += causal[:, :qlen].tril(-1)
            mask = mask[:, :, None, None]
        if attention_mask is not None:
            padding = (1.0 - attention_mask.to(like.dtype)).transpose(0, 1)[None]  # [1, q, batch]
            if mlen > 0:
                padding = torch.cat([padding.new_zeros(1, mlen, padding.shape[2]), padding], dim=1)
            mask = padding[:, :, :, None] if mask is None else mask + padding[:, :, :, None]
        if mask is None:
            return None
        mask = (mask > 0).to(like.dtype)
        itself = -torch.eye(qlen, device=like.device, dtype=like.dtype)
        if mlen > 0:
            itself = torch.cat([itself.new_zeros(qlen, mlen), itself], dim=-1)
        return ((mask + itself[:, :, None, None]) > 0).to(like.dtype)

    @staticmethod
    def _segment_matrix(token_type_ids: Tensor, mlen: int, dtype: torch.dtype) -> Tensor:
        """One-hot [q, k, batch, 2] of "not in the same segment"; memory positions are segment 0."""
        ids = token_type_ids.transpose(0, 1)
        cat_ids = torch.cat([ids.new_zeros(mlen, ids.shape[1]), ids], dim=0) if mlen > 0 else ids
        same = ids[:, None] == cat_ids[None, :]
        return torch.stack([same, ~same], dim=-1).to(dtype)

    def _cache(self, current: Tensor, previous: Tensor | None) -> Tensor:
        if self.config.reuse_len:
            current = current[: self.config.reuse_len]
        cat = current if previous is None else torch.cat([previous, current], dim=0)
        return (cat[-self.config.mem_len :] if self.config.mem_len else cat).detach()

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        mems: Tensor | Sequence[Tensor] | None = None,
        attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | list[Tensor]]:
        """Hidden states of ``input_ids`` [batch, T] after ``mems`` (memory [batch, n_layer, M, d_model], or the
        official list of n_layer [M, batch, d_model]); ``attention_mask`` [batch, T]: 1 for tokens, 0 for padding."""
        stacked = mems is None or isinstance(mems, Tensor)
        layers = _unstack(mems) if isinstance(mems, Tensor) else (list(mems) if mems is not None else None)
        qlen, bsz = input_ids.shape[1], input_ids.shape[0]
        mlen = layers[0].shape[0] if layers else 0
        h = self.word_embedding(input_ids.transpose(0, 1))
        seg_mat = None if token_type_ids is None else self._segment_matrix(token_type_ids, mlen, h.dtype)
        attn_mask = self._attention_mask(qlen, mlen, attention_mask, h)
        r = self.relative_positional_encoding(qlen, mlen + qlen, bsz, h.device).to(h.dtype)
        new_mems = []
        for i, layer in enumerate(self.layer):
            previous = layers[i] if layers else None
            new_mems.append(self._cache(h, previous))
            h = layer(h, r, seg_mat, attn_mask, previous)
        return h.transpose(0, 1), (torch.stack(new_mems).permute(2, 0, 1, 3) if stacked else new_mems)


def _unstack(mems: Tensor) -> list[Tensor]:
    """[batch, n_layer, M, d_model] -> n_layer tensors [M, batch, d_model], the official layout."""
    if mems.dim() != 4:
        raise ValueError(f"mems must be [batch, n_layer, M, d_model], not {list(mems.shape)}")
    return list(mems.permute(1, 2, 0, 3).unbind(0))


def from_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A released ``XLNetLMHeadModel`` file (``transformer.`` names, ``lm_loss`` head) -> XLNetModel's names."""
    return {
        name.removeprefix("transformer."): tensor for name, tensor in state.items() if not name.startswith("lm_loss.")
    }


PAPER = Paper(
    title="XLNet: Generalized Autoregressive Pretraining for Language Understanding",
    authors="Zhilin Yang, Zihang Dai, Yiming Yang, Jaime Carbonell, Ruslan Salakhutdinov, Quoc V. Le",
    year=2019,
    url="https://arxiv.org/abs/1906.08237",
    arxiv="1906.08237",
)


def token_and_memory_inputs(config: XLNetConfig) -> Callable[[tuple[int, ...]], InputSpec]:
    """The feed at a sequence length: ids and segment ids, and a pretraining-sized memory of every layer."""

    def inputs(size: tuple[int, ...]) -> InputSpec:
        return InputSpec(
            (
                TensorSpec(tuple(size), "int64", "input_ids"),
                TensorSpec(tuple(size), "int64", "token_type_ids"),
                TensorSpec((config.n_layer, MEMORY, config.d_model), "float32", "mems"),
            )
        )

    return inputs


def config_from_hf(data: dict) -> XLNetConfig:
    """From a Hugging Face ``config.json`` of model_type xlnet; fields that change the maths and that rl does not
    build are refused by name."""
    if data.get("untie_r", True) is not True:
        raise ValueError("untie_r false (one set of attention biases for all layers) is not built by rl")
    fields = {name for name in XLNetConfig.__dataclass_fields__}
    return XLNetConfig(**{key: value for key, value in data.items() if key in fields})


def _register(name: str, config: XLNetConfig) -> None:
    def build(input_size: tuple[int, ...], **settings) -> XLNetModel:
        return XLNetModel(XLNetConfig(**{**asdict(config), **settings}))

    # The paper prints no parameter or operation counts ("XLNet-Large ... the same architecture hyperparameters
    # as BERT-Large, which results in a similar model size"): a card without figures.
    register_model(
        name,
        family="xlnet",
        task="language-model",
        default_input=(SEQUENCE,),
        input_kind="tokens",
        paper=PAPER,
        arguments=XLNetConfig,
        inputs=token_and_memory_inputs(config),
    )(build)


for _name, _config in SIZES.items():
    _register(_name, _config)
