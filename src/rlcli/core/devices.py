"""Devices and dtypes as users name them on the command line."""

from __future__ import annotations

import torch

from rlcli.errors import RlError, UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


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
