"""Devices and dtypes as users name them on the command line."""

from __future__ import annotations

import torch

from rlcli.core.quantize import KERNEL_DTYPE, int8_kernel_available
from rlcli.errors import RlError, UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Weight formats beyond DTYPES, with the dtype their activations compute in: weight-only int8 (rl generate).
QUANTIZED = {"int8": KERNEL_DTYPE}


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when torch sees one, else the CPU), ``cpu`` or ``cuda``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RlError("--device cuda: no CUDA device is available (torch sees none)")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"unknown device '{device}': choose auto, cpu or cuda")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{dtype}': choose {', '.join(DTYPES)}")
    return DTYPES[dtype]


def compute_dtype(name: str) -> torch.dtype:
    """The activations' dtype of a weight format: a float dtype computes in itself, int8 in bfloat16 (the dtype
    torch's int8 kernel is fast for)."""
    if name in QUANTIZED:
        return QUANTIZED[name]
    if name not in DTYPES:
        raise UsageError(f"unknown dtype '{name}': choose {', '.join([*DTYPES, *QUANTIZED])}")
    return DTYPES[name]


def fastest_dtype(device: torch.device) -> tuple[str, str]:
    """The weight format ``--dtype auto`` picks for decoding on ``device``, and why (for a note to the user).

    Decoding one token streams every weight once, so fewer bytes per weight is faster wherever a kernel reads them
    at memory speed. Measured on an AVX512 CPU with 2 cores (benchmarks/generate.py): int8 > bfloat16 > float32.
    On CUDA rl's int8 path dequantises in a plain matmul, so bfloat16 is the fast choice there.
    """
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bfloat16", "CUDA device with bfloat16 support"
        return "float32", "this CUDA device does not support bfloat16"
    capability = torch.backends.cpu.get_cpu_capability()
    if int8_kernel_available(device):
        return "int8", f"torch's int8 matmul kernel is vectorised on this CPU ({capability})"
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bfloat16", f"no vectorised int8 kernel on this CPU ({capability}); oneDNN supports bfloat16"
    return "float32", f"neither a vectorised int8 kernel nor bfloat16 support on this CPU ({capability})"
