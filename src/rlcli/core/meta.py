"""Building models without allocating their weights, and running the steps of a forward pass that depend on values."""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

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


# --- forward passes whose work depends on values ----------------------------------------------------------------


@dataclass(frozen=True)
class ValueSteps:
    """The steps of a model's forward pass whose results depend on tensor values, and how a meta-device pass runs
    them. Each step is named ``"module:function"``: the attribute a model's code looks up when it calls it.

    ``selections`` keep some of their candidates (torchvision's NMS): each is replaced by the function given, which
    keeps every candidate. Boolean masks, ``nonzero`` and ``torch.where(mask)`` keep every element too (torch's own
    meta rule for ``nonzero``), so the work after a selection is at the caps the model's code sets (its top-k
    proposals, detections per image): the same count on every run, and the largest the model does.
    ``on_cpu`` read values for their own work (pasting masks into the image reads box corners): they run on real
    CPU tensors of the shapes that reach them, filled with zeros, and their results go back to the meta device.
    ``caps`` says in words what bounds the work after the selections of a built model.
    """

    selections: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    on_cpu: tuple[str, ...] = ()
    caps: Callable[[nn.Module], list[str]] | None = None


@dataclass
class RealStep:
    """What one ``on_cpu`` step did for real: its calls, the shapes of its tensors in the first call, and the largest
    call's real tensors in bytes (zero-filled inputs made for it and outputs returned)."""

    function: str
    calls: int = 0
    input_shapes: list[list[int]] = field(default_factory=list)
    output_shapes: list[list[int]] = field(default_factory=list)
    tensor_bytes: int = 0


@contextlib.contextmanager
def value_steps_on_meta(steps: ValueSteps) -> Iterator[list[RealStep]]:
    """Within this block, a forward pass on the meta device runs ``steps`` as ValueSteps describes; yields the
    record of the steps that ran on real tensors (filled in as they run). Everything is restored afterwards.

    Example:
        >>> with value_steps_on_meta(steps) as ran:
        ...     profile = profile_forward(net, feed)
        >>> [(step.function, step.calls) for step in ran]
        [('torchvision.models.detection.transform:paste_masks_in_image', 1)]
    """
    found = {reference: _resolve(reference) for reference in (*steps.selections, *steps.on_cpu)}
    ran = [RealStep(reference) for reference in steps.on_cpu]
    stand_ins = {
        **steps.selections,
        **{step.function: _on_real_tensors(found[step.function][1], step) for step in ran},
    }
    try:
        for reference, stand_in in stand_ins.items():
            setattr(found[reference][0], _attribute(reference), stand_in)
        with _nonzero_keeps_every_element():
            yield ran
    finally:
        for reference, (owner, original) in found.items():
            setattr(owner, _attribute(reference), original)


def _attribute(reference: str) -> str:
    return reference.partition(":")[2]


def _resolve(reference: str) -> tuple[Any, Callable[..., Any]]:
    module = importlib.import_module(reference.partition(":")[0])
    function = getattr(module, _attribute(reference), None)
    if not callable(function):
        raise ValueError(f"value step {reference!r} names no function")
    return module, function


def _nonzero_keeps_every_element() -> contextlib.AbstractContextManager[Any]:
    """torch's meta kernel for ``nonzero`` (which boolean indexing and ``torch.where(mask)`` use) refuses unless its
    config says to assume every element is non-zero; a torch without that switch keeps refusing (the caller then
    counts on real tensors)."""
    from torch.fx.experimental import _config

    if not hasattr(_config, "meta_nonzero_assume_all_nonzero"):
        return contextlib.nullcontext()
    return _config.patch(meta_nonzero_assume_all_nonzero=True)


def _on_real_tensors(function: Callable[..., Any], step: RealStep) -> Callable[..., Any]:
    from torch.utils._pytree import tree_flatten, tree_map

    def on_meta(tensor: Any) -> bool:
        return isinstance(tensor, torch.Tensor) and tensor.device.type == "meta"

    def run(*args: Any, **kwargs: Any) -> Any:
        given = [t for t in tree_flatten((args, kwargs))[0] if on_meta(t)]
        if not given:  # called on real tensors already (a pass on the CPU): nothing to stand in for
            return function(*args, **kwargs)

        def real(tensor: Any) -> Any:
            return torch.zeros(tensor.shape, dtype=tensor.dtype) if on_meta(tensor) else tensor

        args, kwargs = tree_map(real, (args, kwargs))
        result = function(*args, **kwargs)
        returned = [t for t in tree_flatten(result)[0] if isinstance(t, torch.Tensor)]
        step.calls += 1
        if step.calls == 1:
            step.input_shapes = [list(t.shape) for t in given]
            step.output_shapes = [list(t.shape) for t in returned]
        step.tensor_bytes = max(step.tensor_bytes, sum(t.numel() * t.element_size() for t in (*given, *returned)))
        return tree_map(lambda t: torch.empty_like(t, device="meta") if isinstance(t, torch.Tensor) else t, result)

    return run
