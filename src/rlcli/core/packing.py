"""Linear layers whose weights are laid out once, at load time, in the blocked format of oneDNN's CPU kernels.

A plain bfloat16 ``F.linear`` reorders nothing ahead of time, and for the one-row products of decoding torch's CPU
path reaches less than half of what oneDNN's inner-product kernel does on a weight it has reordered in advance (the
kernel inductor uses for frozen bfloat16 models, ``mkldnn::_linear_pointwise``). Measured one thread, GPT-2 small's
shapes, bfloat16: the 50,257 x 768 LM head 21.2 -> 8.4 ms per row, a 3,072 x 768 MLP layer 0.31 -> 0.14 ms; prompts
of 32 rows gain too (44.8 -> 34.4 ms for the head). The results are the same products (bfloat16 inputs and
weights, float32 accumulation).
"""

from __future__ import annotations

import torch
from torch import nn


def packing_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether rl packs linear weights for ``dtype`` on ``device``: bfloat16 on a CPU where oneDNN supports it.

    float32 gains nothing measurable from packing (28 vs 31 ms per GPT-2 small token on one thread, within noise).
    """
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


class PackedLinear(nn.Module):
    """``nn.Linear`` on a weight reordered for oneDNN (an opaque ``torch._mkldnn`` tensor, CPU only)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # batch_size=1: the layout chosen for one-row products (decoding); other row counts work on the same layout.
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1))
        self.register_buffer("bias", None if bias is None else bias.detach())

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
