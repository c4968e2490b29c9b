"""Weight-only int8: symmetric per-output-channel quantisation and the modules that compute with it.

Each output row ``w`` of a weight becomes ``q * s`` with ``q = round(w / s)`` in [-127, 127] and one scale
``s = max|w| / 127`` per row, so the largest weight of every row is exact and the error of any weight is at most
``s / 2``. Activations stay in floating point ("weight-only"): on the CPU the matmul runs on torch's int8 kernel
``aten._weight_int8pack_mm`` (the one gpt-fast uses), which reads the int8 weight and multiplies by the scale inside
the kernel, so a one-row matmul streams a quarter of float32's bytes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

INT8_LIMIT = 127  # symmetric: -128 is never used, so that q and -q are both representable

# torch's CPU kernel vectorises bfloat16 activations only on x86 (AVX2, AVX512); float32 and float16 activations go
# through its scalar loop there, 5-6x slower than a float32 matmul (measured with benchmarks/generate.py's floor loop).
KERNEL_DTYPE = torch.bfloat16
# The kernel walks the inner dimension 16 values at a time with aligned vector loads (int8mm_kernel.cpp, AVX512) and
# checks neither: a width that is not a multiple of 16 returns garbage or crashes (torch 2.14, measured), a misaligned
# input row would fault. Other shapes and inputs take the dequantising path below.
KERNEL_WIDTH_MULTIPLE = 16
KERNEL_ALIGNMENT = 64


def quantize_rows(weight: torch.Tensor, scale_dtype: torch.dtype = KERNEL_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` [out, in] (any float dtype) -> (int8 [out, in], scales [out] in ``scale_dtype``).

    The scales are rounded to ``scale_dtype`` before the weights are divided by them, so that ``q * scale`` is the
    best int8 approximation with the scale the kernel multiplies by. An all-zero row gets scale 1 and zeros.

    Example:
        >>> q, s = quantize_rows(torch.tensor([[0.5, -1.0, 0.25]]))
        >>> q.tolist(), s.float().tolist()
        ([[64, -127, 32]], [0.00787353515625])
    """
    rows = weight.detach().float()
    largest = rows.abs().amax(dim=1)
    scales = torch.where(largest > 0, largest / INT8_LIMIT, torch.ones_like(largest)).to(scale_dtype)
    q = torch.round(rows / scales.float()[:, None]).clamp_(-INT8_LIMIT, INT8_LIMIT).to(torch.int8)
    return q.contiguous(), scales


def dequantize_rows(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return q.to(dtype) * scales.to(dtype)[:, None]


def int8_kernel_applies(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> bool:
    """Whether torch's CPU int8 kernel computes ``x @ (q * scales).T`` correctly (and fast) for these tensors."""
    return (
        x.is_cpu
        and x.dtype == scales.dtype == KERNEL_DTYPE
        and x.shape[-1] % KERNEL_WIDTH_MULTIPLE == 0
        and x.is_contiguous()
        and x.data_ptr() % KERNEL_ALIGNMENT == 0
        and q.is_contiguous()
        and q.data_ptr() % KERNEL_ALIGNMENT == 0
    )


# The op, looked up once: ``torch.ops.aten.<name>`` resolves through two namespace objects on every access (about
# 1 us, and decoding GPT-2 small calls the kernel 49 times per token).
_WEIGHT_INT8PACK_MM = getattr(torch.ops.aten, "_weight_int8pack_mm", None)


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x @ (q * scales[:, None]).T`` over the last dimension of ``x``, in ``x``'s dtype."""
    rows = x.reshape(-1, x.shape[-1])
    if not rows.is_contiguous() or rows.data_ptr() % KERNEL_ALIGNMENT:
        rows = rows.clone(memory_format=torch.contiguous_format)
    if _WEIGHT_INT8PACK_MM is not None and int8_kernel_applies(rows, q, scales):
        out = _WEIGHT_INT8PACK_MM(rows, q, scales)
    else:
        # Elsewhere (CUDA, other widths, other dtypes) the same product, with the weight dequantised on the fly.
        out = F.linear(rows, q.to(x.dtype)) * scales.to(x.dtype)
    return out.view(*x.shape[:-1], q.shape[0])


class Int8Linear(nn.Module):
    """``nn.Linear`` with an int8 weight and one scale per output channel; bias and activations in float."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype = KERNEL_DTYPE) -> Int8Linear:
        q, scales = quantize_rows(linear.weight, dtype)
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        return cls(q, scales, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, bias = int8_matmul(x, self.weight, self.scales), self.bias  # a buffer: each read is a module lookup
        return y if bias is None else y.add_(bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Embedding(nn.Module):
    """Rows of an int8 table, dequantised on lookup: with a tied LM head the token embedding and the head share one
    int8 table instead of the head's int8 copy plus a float table (GPT-2 small: 38.6 MB instead of 38.6 + 77.2 MB in
    bfloat16)."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).to(self.scales.dtype) * self.scales[ids].unsqueeze(-1)


def int8_kernel_available(device: torch.device) -> bool:
    """Whether ``device`` has a vectorised int8 kernel rl uses: an x86 CPU with AVX2 or AVX512 (the capability torch
    dispatches to; its scalar fallback is slower than float32)."""
    if device.type != "cpu" or not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return False
    return torch.backends.cpu.get_cpu_capability().startswith(("AVX2", "AVX512"))
