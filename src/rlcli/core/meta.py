"""Building models without allocating their weights."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def build_on_meta(build: Callable[[], M]) -> M:
    """Call ``build`` so that every parameter and buffer lives on the meta device.

    The fast way puts all tensor creation on the meta device. Some constructors compute their layout with torch
    arithmetic and read it back (RegNet's block widths call ``.tolist()``), which meta tensors cannot do; for those,
    construction runs on the CPU and each parameter and buffer is moved to meta as it is registered. Both ways
    allocate no weight memory: ``torch.empty`` reserves address space only and is released at once.
    """
    try:
        with torch.device("meta"), _initializers_skipped():
            return build()
    except NotImplementedError as exc:
        if "meta" not in str(exc):
            raise
    with _weights_to_meta_on_registration(), _initializers_skipped():
        return build()


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
