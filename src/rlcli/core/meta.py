"""Building models without allocating their weights."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

from rlcli.errors import ModelRunError

M = TypeVar("M", bound=nn.Module)

_ABOUT_META = re.compile(r"\bmeta\b", re.IGNORECASE)


class MetaBuildError(ModelRunError):
    """A constructor that cannot run with meta tensors either way (it reads their values, or mixes them with CPU
    tensors of its own, as a ``torch.jit.trace`` with a CPU example does); ``reason`` is its first line."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"building on the meta device failed: {reason}")
        self.reason = reason


def build_on_meta(build: Callable[[], M]) -> M:
    """Call ``build`` so that every parameter and buffer lives on the meta device.

    The fast way puts all tensor creation on the meta device. Some constructors compute their layout with torch
    arithmetic and read it back (RegNet's block widths call ``.tolist()``), which meta tensors cannot do; for those,
    construction runs on the CPU and each parameter and buffer is moved to meta as it is registered. Both ways
    allocate no weight memory: ``torch.empty`` reserves address space only and is released at once. When the
    second way fails for meta tensors too, MetaBuildError says why (the caller may build on the CPU instead).
    """
    try:
        with torch.device("meta"), _initializers_skipped():
            return build()
    except Exception as exc:
        if _meta_failure(exc) is None:
            raise
    try:
        with _weights_to_meta_on_registration(), _initializers_skipped():
            return build()
    except Exception as exc:
        reason = _meta_failure(exc)
        if reason is None:
            raise
        raise MetaBuildError(reason) from exc


def _meta_failure(exc: BaseException) -> str | None:
    """The first line of the innermost error in ``exc``'s chain that is about meta tensors, if any (user code is
    wrapped in errors that repeat its message)."""
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).strip()
        if _ABOUT_META.search(text):
            found = f"{type(exc).__name__}: {text.splitlines()[0]}"
        exc = exc.__cause__ or exc.__context__
    return found


@contextlib.contextmanager
def _initializers_skipped() -> Iterator[None]:
    """Make ``torch.nn.init``'s in-place initialisers no-ops: meta tensors hold no values to initialise.

    Besides wasted work, some of them (``normal_``) reach meta tensors through torch's Python reference
    implementations, whose first use imports the compiler stack: 1.6 s on this project's CI machine.
    """
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_") and callable(getattr(nn.init, n))]
    originals = {name: getattr(nn.init, name) for name in names}

    def skip(tensor, *args, **kwargs):
        return tensor

    for name in names:
        setattr(nn.init, name, skip)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(nn.init, name, original)


@contextlib.contextmanager
def _weights_to_meta_on_registration() -> Iterator[None]:
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def register_meta_parameter(self, name, param):
        if param is not None and param.device.type != "meta":
            param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def register_meta_buffer(self, name, tensor, persistent=True):
        if tensor is not None:
            tensor = tensor.to("meta")
        register_buffer(self, name, tensor, persistent)

    nn.Module.register_parameter = register_meta_parameter
    nn.Module.register_buffer = register_meta_buffer
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter
        nn.Module.register_buffer = register_buffer
