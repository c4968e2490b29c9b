"""Counting multiply-accumulates and output shapes of one forward pass, per module.

The pass runs under a dispatch mode that sees every aten operator, so functional code (``F.linear``, ``q @ k``,
``scaled_dot_product_attention``) is counted as well as modules. It works on the meta device: only shapes flow,
no weights are allocated and no arithmetic is done.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from rlcli.errors import ModelRunError

#: The one statement of what a MAC is here; every command prints or embeds it with its numbers.
CONVENTION = (
    "MACs = multiply-accumulates of convolutions, linear layers, matmuls and attention "
    "(scaled_dot_product_attention included); FLOPs = 2 x MACs; elementwise ops, normalisation, "
    "activations and pooling are not counted (the convention of torchvision's published GFLOPS)"
)

# Operators torch asks about that carry no work; decomposing them would only cost time.
_METADATA_OPS = {torch.ops.prim.device.default}


@dataclass
class ModuleRecord:
    """What one module did in the forward pass. MACs include its submodules' work."""

    name: str
    type: str
    depth: int
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    output_bytes: int = 0
    macs: int = 0
    calls: int = 0
    is_leaf: bool = True
    first_call: int = -1


@dataclass
class ForwardProfile:
    """Per-module records in the order modules were first called, and the totals of the pass."""

    modules: list[ModuleRecord]
    total_macs: int
    activation_bytes: int


class _MacCounter(TorchDispatchMode):
    """Adds the MACs of each counted operator to every module on the call stack."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[ModuleRecord] = []
        self.total_macs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in flop_registry and func not in _METADATA_OPS:
            # Fused kernels without a formula (e.g. CPU flash attention) decompose into counted ops.
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        if packet in flop_registry:
            # torch's formulas count FLOPs as 2 per multiply-accumulate.
            macs = int(flop_registry[packet](*args, **kwargs, out_val=out)) // 2
            self.total_macs += macs
            for record in self.stack:
                record.macs += macs
        return out


def profile_forward(model: nn.Module, inputs: tuple[Any, ...] | dict[str, Any]) -> ForwardProfile:
    """Run one forward pass and record MACs and output shapes per module.

    Args:
        model: the model, typically on the meta device.
        inputs: positional inputs as a tuple, or keyword inputs as a dict.

    Returns:
        A ForwardProfile. Raises ModelRunError naming the innermost module that failed.

    Example:
        >>> with torch.device("meta"):
        ...     net = torchvision.models.resnet18()
        >>> profile_forward(net, (torch.empty(1, 3, 224, 224, device="meta",),)).total_macs
        1814073344
    """
    counter = _MacCounter()
    records = {name: _new_record(name, module) for name, module in model.named_modules()}
    with _module_hooks(model, records, counter), _no_hidden_fast_paths(), counter, torch.inference_mode():
        try:
            if isinstance(inputs, dict):
                model(**inputs)
            else:
                model(*inputs)
        except Exception as exc:
            raise ModelRunError(_describe_failure(counter.stack, exc)) from exc
    _fill_uncalled_containers(model, records)
    called = [r for r in records.values() if r.calls or r.macs]
    called.sort(key=lambda r: (r.first_call, r.depth))
    activation = sum(r.output_bytes for r in called if r.is_leaf)
    return ForwardProfile(modules=called, total_macs=counter.total_macs, activation_bytes=activation)


def _fill_uncalled_containers(model: nn.Module, records: dict[str, ModuleRecord]) -> None:
    """Give containers that never run themselves (a ModuleList, a namespace module) their children's work.

    Such a container is listed just before its first descendant that ran, with the MACs of its subtree.
    """

    def visit(prefix: str, module: nn.Module) -> tuple[int, int]:
        record = records[prefix]
        subtree = [visit(f"{prefix}.{name}" if prefix else name, child) for name, child in module.named_children()]
        if record.calls:
            return record.macs, record.first_call
        ran = [(macs, first) for macs, first in subtree if first >= 0]
        if ran:
            record.macs = sum(macs for macs, _ in ran)
            record.first_call = min(first for _, first in ran)
            record.calls = 0
        return record.macs, record.first_call

    visit("", model)


def _new_record(name: str, module: nn.Module) -> ModuleRecord:
    depth = 0 if name == "" else name.count(".") + 1
    is_leaf = next(module.children(), None) is None
    return ModuleRecord(name=name, type=type(module).__name__, depth=depth, is_leaf=is_leaf)


@contextlib.contextmanager
def _module_hooks(model: nn.Module, records: dict[str, ModuleRecord], counter: _MacCounter) -> Iterator[None]:
    """Keep the stack of running modules and capture each one's outputs; hooks are removed in any case."""
    order = itertools.count()
    handles = []

    def pre_hook(record: ModuleRecord):
        def hook(module, args):
            if not record.calls:
                record.first_call = next(order)
            record.calls += 1
            counter.stack.append(record)

        return hook

    def post_hook(record: ModuleRecord):
        def hook(module, args, output):
            counter.stack.pop()
            tensors = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
            record.output_shapes = [tuple(t.shape) for t in tensors]
            record.output_bytes += sum(t.numel() * t.element_size() for t in tensors)

        return hook

    try:
        for name, module in model.named_modules():
            record = records[name]
            handles.append(module.register_forward_pre_hook(pre_hook(record)))
            handles.append(module.register_forward_hook(post_hook(record)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _no_hidden_fast_paths() -> Iterator[None]:
    """Route attention through code paths whose work is visible to the counter.

    nn.MultiheadAttention's inference fast path calls one fused native op, and SDPA picks fused kernels by
    device; both would hide their matmuls. The math backend spells attention out as two batched matmuls.
    """
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _describe_failure(stack: list[ModuleRecord], exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    layers = [r for r in stack if r.name]
    if not layers:
        return f"the forward pass failed: {reason}"
    failing = layers[-1]
    return f"the forward pass failed in layer '{failing.name}' ({failing.type}): {reason}"
