"""Transformer-XL: "Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context" (Dai et al., 2019).

A decoder-only transformer that reads a segment of T tokens together with a memory: the hidden states of the M
tokens before it, kept from the previous segment at every layer (segment-level recurrence, Section 3.2). Each
layer attends from the segment to memory + segment with the relative positional attention of Section 3.3: scores
(a) content + (c) a global content bias u (``r_w_bias``), and (b) position + (d) a global position bias v
(``r_r_bias``), where positions are sinusoids of the distance projected by ``r_net``. The WikiText-103 model adds
an adaptive input embedding and an adaptive softmax (Baevski & Auli 2018; Grave et al. 2017) that share their
tables and, past the head cluster, their projections (``tie_weight``, ``tie_projs``).

``transfo_xl_wt103`` is the released WikiText-103 model, whose weights are TensorFlow (tf/sota/wt103.sh:
18 layers, d_model 1024, 16 heads of 64, d_inner 4096, div_val 4, ``untie_r=True``: u and v per layer,
``proj_share_all_but_first``) evaluated with tgt_len 128, mem_len 1600, clamp_len 1000 and same_length (the same
in the official pytorch/run_wt103_large.sh). Its PyTorch form is Hugging Face's conversion, ``transfo-xl-wt103``
(TransfoXLLMHeadModel, gone from transformers 5): module names follow it (``transformer.layers.0.dec_attn.qkv_net``,
``crit.out_layers.0``) so that file loads as it is. The official PyTorch mem_transformer.py differs from the TF
model in two places: it shares one u and v across layers, and its adaptive softmax reads tail cluster i's
probability from head column ``-i`` where TF (and so the released weights) reads ``cutoffs[0] + i - 1``; rl
follows TF.

Two choices of form, which leave every value as the official code computes it:

- so that it runs on the meta device (no data-dependent shapes), the adaptive input projects every token through
  every cluster's projection and keeps its own cluster's (the official code gathers each cluster's tokens with
  ``nonzero`` and projects only those): the embedding's MACs are T x d_model x (1024 + 256 + 64 + 16) where the
  official code spends T x d_model x (its cluster's width);
- the output is the log-probabilities of the whole vocabulary (as Hugging Face's ``crit`` without labels): the
  head and every tail cluster for every token.

Inputs: ``input_ids`` [batch, T] and ``mems`` [batch, n_layer, M, d_model], the memory of every layer (the
official code's list of n_layer tensors [M, batch, d_model] is accepted too). The forward returns the
log-probabilities [batch, T, vocab] and the new memory, in the layout the memory came in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rlcli.core.feeds import InputSpec, TensorSpec
from rlcli.models.cards import Paper, Published
from rlcli.models.registry import register_model


@dataclass(frozen=True)
class TransfoXLConfig:
    """The released WikiText-103 model (tf/sota/wt103.sh, Hugging Face's transfo-xl-wt103 config)."""

    vocab_size: int = 267735  # WikiText-103's words, with <eos> and <unk>
    cutoffs: tuple[int, ...] = (20000, 40000, 200000)  # adaptive input/softmax clusters: 20k, 20k, 160k, 67,735
    div_val: int = 4  # cluster i's embedding is d_embed / 4^i wide
    d_embed: int = 1024
    d_model: int = 1024
    n_layer: int = 18
    n_head: int = 16
    d_head: int = 64
    d_inner: int = 4096
    mem_len: int = 1600  # memory kept for the next segment (evaluation setting; training used 384)
    clamp_len: int = 1000  # distances beyond this share one positional encoding
    same_length: bool = True  # every token attends to the same number of positions (evaluation setting)
    untie_r: bool = True  # u and v per layer (the released TF model), not one pair shared by all layers
    tie_weight: bool = True  # the adaptive softmax's tables are the adaptive input's
    tie_projs: tuple[bool, ...] = (False, True, True, True)  # ... and so are its projections, but the head's
    pre_lnorm: bool = False
    layer_norm_epsilon: float = 1e-5


WT103 = TransfoXLConfig()
EVAL_TOKENS = 128  # tgt_len of the released evaluation (run_wt103_large.sh eval, tf/sota/wt103.sh TEST_TGT_LEN)


class PositionalEmbedding(nn.Module):
    """Sinusoids of a sequence of (relative) positions, [len, 1, d]."""

    def __init__(self, demb: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1 / (10000 ** (torch.arange(0.0, demb, 2.0) / demb)))

    def forward(self, pos_seq: Tensor) -> Tensor:
        sinusoid = torch.outer(pos_seq, self.inv_freq)
        return torch.cat([sinusoid.sin(), sinusoid.cos()], dim=-1)[:, None, :]


class PositionwiseFF(nn.Module):
    def __init__(self, config: TransfoXLConfig) -> None:
        super().__init__()
        self.pre_lnorm = config.pre_lnorm
        # The official indices (CoreNet.0, CoreNet.3) name the two linear layers of the released files.
        self.CoreNet = nn.Sequential(
            nn.Linear(config.d_model, config.d_inner),
            nn.ReLU(inplace=True),
            nn.Dropout(0.0),
            nn.Linear(config.d_inner, config.d_model),
            nn.Dropout(0.0),
        )
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)

    def forward(self, inp: Tensor) -> Tensor:
        if self.pre_lnorm:
            return inp + self.CoreNet(self.layer_norm(inp))
        return self.layer_norm(inp + self.CoreNet(inp))


class RelPartialLearnableMultiHeadAttn(nn.Module):
    """Relative positional attention (Section 3.3): scores (a)+(c) and (b)+(d), the latter shifted into place."""

    def __init__(self, config: TransfoXLConfig, r_w_bias: nn.Parameter | None, r_r_bias: nn.Parameter | None):
        super().__init__()
        self.n_head, self.d_head, self.pre_lnorm = config.n_head, config.d_head, config.pre_lnorm
        self.scale = 1 / (config.d_head**0.5)
        width = config.n_head * config.d_head
        if r_w_bias is None or r_r_bias is None:
            self.r_r_bias = nn.Parameter(torch.empty(config.n_head, config.d_head))
            self.r_w_bias = nn.Parameter(torch.empty(config.n_head, config.d_head))
        else:
            self.r_r_bias, self.r_w_bias = r_r_bias, r_w_bias
        self.qkv_net = nn.Linear(config.d_model, 3 * width, bias=False)
        self.o_net = nn.Linear(width, config.d_model, bias=False)
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.r_net = nn.Linear(config.d_model, width, bias=False)

    @staticmethod
    def _rel_shift(x: Tensor) -> Tensor:
        """Score [i, j] of distance klen-1-j moved to the column of distance i+mlen-j (the official trick)."""
        zero_pad = x.new_zeros((x.size(0), 1, *x.size()[2:]))
        padded = torch.cat([zero_pad, x], dim=1).view(x.size(1) + 1, x.size(0), *x.size()[2:])
        return padded[1:].view_as(x)

    def forward(self, w: Tensor, r: Tensor, attn_mask: Tensor, mems: Tensor | None) -> Tensor:
        qlen, bsz = w.size(0), w.size(1)
        # Keys and values cover memory + segment; the official code projects queries for both and keeps the last.
        cat = w if mems is None else torch.cat([mems, w], 0)
        heads = self.qkv_net(self.layer_norm(cat) if self.pre_lnorm else cat)
        r_head_k = self.r_net(r).view(r.size(0), self.n_head, self.d_head)
        w_head_q, w_head_k, w_head_v = torch.chunk(heads, 3, dim=-1)
        klen = w_head_k.size(0)
        w_head_q = w_head_q[-qlen:].view(qlen, bsz, self.n_head, self.d_head)
        w_head_k = w_head_k.view(klen, bsz, self.n_head, self.d_head)
        w_head_v = w_head_v.view(klen, bsz, self.n_head, self.d_head)

        ac = torch.einsum("ibnd,jbnd->ijbn", w_head_q + self.r_w_bias, w_head_k)  # (a) + (c)
        bd = self._rel_shift(torch.einsum("ibnd,jnd->ijbn", w_head_q + self.r_r_bias, r_head_k))  # (b) + (d)
        score = ((ac + bd) * self.scale).masked_fill(attn_mask[:, :, None, None], float("-inf"))
        prob = F.softmax(score, dim=1)
        vec = torch.einsum("ijbn,jbnd->ibnd", prob, w_head_v).reshape(qlen, bsz, self.n_head * self.d_head)
        out = self.o_net(vec)
        return w + out if self.pre_lnorm else self.layer_norm(w + out)


class RelPartialLearnableDecoderLayer(nn.Module):
    def __init__(self, config: TransfoXLConfig, r_w_bias: nn.Parameter | None, r_r_bias: nn.Parameter | None):
        super().__init__()
        self.dec_attn = RelPartialLearnableMultiHeadAttn(config, r_w_bias, r_r_bias)
        self.pos_ff = PositionwiseFF(config)

    def forward(self, dec_inp: Tensor, r: Tensor, attn_mask: Tensor, mems: Tensor | None) -> Tensor:
        return self.pos_ff(self.dec_attn(dec_inp, r, attn_mask, mems))


def _cluster_bounds(config: TransfoXLConfig) -> list[tuple[int, int]]:
    ends = [0, *config.cutoffs, config.vocab_size]
    return list(pairwise(ends))


class AdaptiveEmbedding(nn.Module):
    """Adaptive input: cluster i's tokens look up a d_embed / div_val^i table, projected to d_model, times
    sqrt(d_model)."""

    def __init__(self, config: TransfoXLConfig) -> None:
        super().__init__()
        self.div_val, self.d_proj, self.d_embed = config.div_val, config.d_model, config.d_embed
        self.emb_scale = config.d_model**0.5
        self.bounds = _cluster_bounds(config) if config.div_val != 1 else [(0, config.vocab_size)]
        self.emb_layers = nn.ModuleList()
        self.emb_projs = nn.ParameterList()
        for i, (low, high) in enumerate(self.bounds):
            width = config.d_embed // config.div_val**i
            self.emb_layers.append(nn.Embedding(high - low, width))
            if config.div_val != 1 or config.d_model != config.d_embed:
                self.emb_projs.append(nn.Parameter(torch.empty(config.d_model, width)))

    def forward(self, ids: Tensor) -> Tensor:
        if self.div_val == 1:
            embed = self.emb_layers[0](ids)
            return (F.linear(embed, self.emb_projs[0]) if len(self.emb_projs) else embed) * self.emb_scale
        embed = 0
        for (low, high), table, proj in zip(self.bounds, self.emb_layers, self.emb_projs, strict=True):
            inside = (ids >= low) & (ids < high)
            # Every token through every cluster, its own kept: the official result without data-dependent shapes.
            local = F.linear(table((ids - low).clamp(0, high - low - 1)), proj)
            embed = embed + local * inside.unsqueeze(-1)
        return embed * self.emb_scale


class ProjectedAdaptiveLogSoftmax(nn.Module):
    """Adaptive softmax: the head scores the shortlist and one logit per tail cluster; a tail token's log-probability
    is its cluster's head log-probability plus its log-probability within the cluster."""

    def __init__(self, config: TransfoXLConfig) -> None:
        super().__init__()
        self.shortlist = config.cutoffs[0] if config.cutoffs else config.vocab_size
        n_clusters = len(config.cutoffs)
        self.div_val = config.div_val
        self.bounds = _cluster_bounds(config)
        if n_clusters:
            self.cluster_weight = nn.Parameter(torch.zeros(n_clusters, config.d_embed))
            self.cluster_bias = nn.Parameter(torch.zeros(n_clusters))
        self.out_layers = nn.ModuleList()
        self.out_projs = nn.ParameterList()
        if config.div_val == 1:
            self.out_layers.append(nn.Linear(config.d_embed, config.vocab_size))
            for _ in self.bounds:
                self.out_projs.append(
                    nn.Parameter(torch.empty(config.d_model, config.d_embed))
                    if config.d_model != config.d_embed
                    else None
                )
        else:
            for i, (low, high) in enumerate(self.bounds):
                width = config.d_embed // config.div_val**i
                self.out_projs.append(nn.Parameter(torch.empty(config.d_model, width)))
                self.out_layers.append(nn.Linear(width, high - low))

    def _cluster(self, i: int) -> tuple[Tensor, Tensor]:
        if self.div_val == 1:
            low, high = self.bounds[i]
            return self.out_layers[0].weight[low:high], self.out_layers[0].bias[low:high]
        return self.out_layers[i].weight, self.out_layers[i].bias

    @staticmethod
    def _logit(hidden: Tensor, weight: Tensor, bias: Tensor, proj: Tensor | None) -> Tensor:
        return F.linear(hidden if proj is None else F.linear(hidden, proj.t()), weight, bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """Log-probabilities of every word for ``hidden`` [..., d_model]."""
        weight, bias = self._cluster(0)
        if len(self.bounds) == 1:
            return F.log_softmax(self._logit(hidden, weight, bias, self.out_projs[0]), dim=-1)
        weight = torch.cat([weight, self.cluster_weight], dim=0)
        bias = torch.cat([bias, self.cluster_bias], dim=0)
        head = F.log_softmax(self._logit(hidden, weight, bias, self.out_projs[0]), dim=-1)
        parts = [head[..., : self.shortlist]]
        for i in range(1, len(self.bounds)):
            tail = F.log_softmax(self._logit(hidden, *self._cluster(i), self.out_projs[i]), dim=-1)
            # Cluster i's probability is head column shortlist + i - 1, as the TF model that trained the weights.
            parts.append(head[..., self.shortlist + i - 1, None] + tail)
        return torch.cat(parts, dim=-1)


class MemTransformer(nn.Module):
    """Embedding and decoder layers: hidden states [batch, T, d_model] and the new memory."""

    def __init__(self, config: TransfoXLConfig) -> None:
        super().__init__()
        self.config = config
        self.word_emb = AdaptiveEmbedding(config)
        if not config.untie_r:
            self.r_w_bias = nn.Parameter(torch.empty(config.n_head, config.d_head))
            self.r_r_bias = nn.Parameter(torch.empty(config.n_head, config.d_head))
        shared = (None, None) if config.untie_r else (self.r_w_bias, self.r_r_bias)
        self.layers = nn.ModuleList(RelPartialLearnableDecoderLayer(config, *shared) for _ in range(config.n_layer))
        self.pos_emb = PositionalEmbedding(config.d_model)

    def _attention_mask(self, qlen: int, mlen: int, device: torch.device) -> Tensor:
        """True where a query may not look: the future, and with same_length what lies beyond mem_len behind."""
        klen = mlen + qlen
        ones = torch.ones(qlen, klen, dtype=torch.bool, device=device)
        mask = torch.triu(ones, 1 + mlen)
        if self.config.same_length:
            beyond = klen - self.config.mem_len
            mask = mask | torch.tril(ones, -(qlen - beyond if beyond > 0 else qlen))
        return mask

    def forward(self, input_ids: Tensor, mems: list[Tensor] | None) -> tuple[Tensor, list[Tensor]]:
        ids = input_ids.transpose(0, 1)  # the official [len, batch] layout
        qlen = ids.size(0)
        mlen = mems[0].size(0) if mems else 0
        klen = mlen + qlen
        core_out = self.word_emb(ids)
        pos_seq = torch.arange(klen - 1, -1, -1.0, device=core_out.device, dtype=core_out.dtype)
        if self.config.clamp_len > 0:
            pos_seq = pos_seq.clamp(max=self.config.clamp_len)
        pos_emb = self.pos_emb(pos_seq)
        mask = self._attention_mask(qlen, mlen, core_out.device)
        hids = []
        for i, layer in enumerate(self.layers):
            hids.append(core_out)
            core_out = layer(core_out, pos_emb, mask, mems[i] if mems else None)
        return core_out.transpose(0, 1), self._update_mems(hids, mems)

    def _update_mems(self, hids: list[Tensor], mems: list[Tensor] | None) -> list[Tensor]:
        """The last mem_len of memory + segment, per layer: the next segment's memory."""
        with torch.no_grad():
            previous = mems or [None] * len(hids)
            cat = [h if m is None else torch.cat([m, h], 0) for m, h in zip(previous, hids, strict=True)]
            return [c[max(0, c.size(0) - self.config.mem_len) :].detach() for c in cat]


class TransfoXL(nn.Module):
    """Transformer-XL language model. ``forward(input_ids, mems)`` returns (log-probabilities, new memory)."""

    def __init__(self, config: TransfoXLConfig = WT103) -> None:
        super().__init__()
        self.config = config
        self.transformer = MemTransformer(config)
        self.crit = ProjectedAdaptiveLogSoftmax(config)
        self._tie()
        self.apply(self._init_weights)

    def _tie(self) -> None:
        embedding = self.transformer.word_emb
        if self.config.tie_weight:
            for out_layer, table in zip(self.crit.out_layers, embedding.emb_layers, strict=True):
                out_layer.weight = table.weight
        for i, tied in enumerate(self.config.tie_projs[: len(self.crit.out_projs)]):
            if tied and (self.config.div_val != 1 or self.config.d_model != self.config.d_embed):
                self.crit.out_projs[i] = embedding.emb_projs[0 if self.config.div_val == 1 else i]

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # The official train.py's choices: N(0, 0.02) weights, N(0, 0.01) projections, zero biases, unit LayerNorm.
        for name, param in module.named_parameters(recurse=False):
            if name == "bias" or name.startswith("cluster"):
                nn.init.zeros_(param)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(param)
            else:
                nn.init.normal_(param, 0.0, 0.01 if isinstance(module, nn.ParameterList) else 0.02)

    def forward(self, input_ids: Tensor, mems: Tensor | Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Log-probabilities [batch, T, vocab] of the word after each of ``input_ids`` [batch, T], given ``mems``
        (memory [batch, n_layer, M, d_model], or the official list of n_layer [M, batch, d_model]); and the memory
        for the next segment, in the same layout (stacked when ``mems`` is None)."""
        stacked = mems is None or isinstance(mems, Tensor)
        layers = _unstack(mems) if isinstance(mems, Tensor) else (list(mems) if mems is not None else None)
        hidden, new_mems = self.transformer(input_ids, layers)
        return self.crit(hidden), (torch.stack(new_mems).permute(2, 0, 1, 3) if stacked else new_mems)


def _unstack(mems: Tensor) -> list[Tensor]:
    """[batch, n_layer, M, d_model] -> n_layer tensors [M, batch, d_model], the official layout."""
    if mems.dim() != 4:
        raise ValueError(f"mems must be [batch, n_layer, M, d_model], not {list(mems.shape)}")
    return list(mems.permute(1, 2, 0, 3).unbind(0))


PAPER = Paper(
    title="Transformer-XL: Attentive Language Models Beyond a Fixed-Length Context",
    authors="Zihang Dai, Zhilin Yang, Yiming Yang, Jaime Carbonell, Quoc V. Le, Ruslan Salakhutdinov",
    year=2019,
    url="https://arxiv.org/abs/1901.02860",
    arxiv="1901.02860",
)


def memory_inputs(size: tuple[int, ...], config: TransfoXLConfig = WT103) -> InputSpec:
    """``input_ids`` of T tokens and a memory of ``config.mem_len`` positions at every layer."""
    return InputSpec(
        (
            TensorSpec(tuple(size), "int64", "input_ids"),
            TensorSpec((config.n_layer, config.mem_len, config.d_model), "float32", "mems"),
        )
    )


def build(input_size: tuple[int, ...], **settings) -> TransfoXL:
    return TransfoXL(TransfoXLConfig(**{**asdict(WT103), **settings}))


register_model(
    "transfo_xl_wt103",
    family="transfo_xl",
    task="language-model",
    default_input=(EVAL_TOKENS,),
    input_kind="tokens",
    paper=PAPER,
    published=Published(
        input_size=(EVAL_TOKENS,),
        source="Table 1",
        params="257M",
        convention="the paper prints parameters only; rl's MACs are per segment of T tokens with a memory of 1,600 "
        "(the released evaluation), per token divided by T",
        note="the released 18-layer config builds 285.2 M (official mem_transformer.py: 285,170,506 with one u, v; "
        "+34,816 per-layer as the TF weights): 245.6 M layers, 38.3 M tied adaptive input, 1.3 M softmax; Table 1's "
        "257M matches no tying of it (unresolved)",
    ),
    arguments=TransfoXLConfig,
    inputs=memory_inputs,
)(build)
