"""Counting multiply-accumulates and output shapes of one forward pass (and its backward pass), per module.

The pass runs under a dispatch mode that sees every aten operator, so functional code (``F.linear``, ``q @ k``,
``scaled_dot_product_attention``) is counted as well as modules, and so is what TorchScript runs. It works on the
meta device, where only shapes flow: no weights are allocated and no arithmetic is done. A pass that reads values
raises NeedsRealValues; the same counting then runs on real tensors.

Every operator that runs is tallied with its calls and MACs, of its kind (``core.opkinds``): counted, not counted
under the convention, or without a formula. A training step's backward pass runs on the meta device too: autograd
works on meta tensors, and each backward operator is attributed to the modules that were running when the autograd
node executing it was created in the forward pass.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from rlcli.core.feeds import Feed
from rlcli.core.opkinds import COUNTED, NO_FORMULA, macs_of, op_kind, op_name
from rlcli.errors import ModelRunError

#: The one statement of what a MAC is here; every command prints or embeds it with its numbers.
CONVENTION = (
    "MACs = multiply-accumulates of convolutions, linear layers, matmuls and attention "
    "(scaled_dot_product_attention included); FLOPs = 2 x MACs; elementwise ops, normalisation, "
    "activations and pooling are not counted (the convention of torchvision's published GFLOPS)"
)

# Operators torch asks about that carry no work; decomposing them would only cost time.
_METADATA_OPS = {torch.ops.prim.device.default}

# What the operators that most often read values do, in the words of the Python that calls them.
_VALUE_READERS = {
    "aten::is_nonzero": "a tensor's truth value",
    "aten::item": "Tensor.item()",
    "aten::_local_scalar_dense": "Tensor.item()",
}


class NeedsRealValues(ModelRunError):
    """The forward pass reads tensor values (``.item()``, ``nonzero``, a distribution's argument check), which the
    meta device does not hold; ``reason`` says which operator, for the message of a run on real tensors."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the forward pass cannot run on the meta device: {reason}")
        self.reason = reason


def _reads_values(func, args, kwargs, exc: Exception) -> bool:
    """Whether ``func`` failed for want of data on meta tensors (not for a shape or device error)."""
    flat = tree_flatten((args, kwargs))[0]
    if not any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in flat):
        return False
    return isinstance(exc, NotImplementedError) or "meta tensor" in str(exc)


def _value_reason(func, exc: Exception) -> str:
    name = func._schema.name if hasattr(func, "_schema") else str(func)
    if "Cannot copy out of meta tensor" in str(exc):
        return f"{name} (copying values out: .tolist(), .cpu(), .numpy()) needs real values"
    if "no fake impl or Meta kernel" in str(exc):
        return f"{name} has no meta-device implementation"
    plain = _VALUE_READERS.get(name)
    return f"{name} ({plain}) needs real values" if plain else f"{name} needs real values"


#: What "activations" means in every figure rl prints: memory that one forward pass allocates for module outputs.
ACTIVATION_DEFINITION = (
    "memory newly allocated for module outputs: each storage not already held (input, weights, an earlier output) "
    "counts once; in-place results, views and passed-through inputs add nothing"
)

#: What "bytes" means for a row: the least it must move between memory and the arithmetic units.
BYTES_DEFINITION = (
    "bytes a layer must move at least: its weights (parameters and buffers, once) plus its input and output "
    "tensors (every call), at their dtype, as if everything inside it were fused; intensity = MACs / bytes"
)

#: The total of those bytes: each multiply-accumulate belongs to exactly one unit that moves its own operands.
TOTAL_BYTES_DEFINITION = (
    "layer by layer: the sum over the layers without submodules (each once per call), plus the operands of counted "
    "operators that run outside such layers (attention's matmuls in a module's own code); elementwise work outside "
    "layers (residual additions) is not included"
)

#: The loss a training step differentiates, in words.
LOSS_DEFINITION = (
    "loss = the sum of every floating-point output (a loss adds no MACs; any loss of all outputs costs the same "
    "backward pass)"
)

# Beyond this many rows, a module already listed elsewhere is not expanded again (sharing can multiply paths).
_MAX_PLACES = 10_000


@dataclass
class ModuleRecord:
    """What one module did in the forward pass, at one place it is registered. MACs include its submodules' work.

    A module registered under several parents (``shared``) has one record per place; each call goes to the place
    whose parent was running. ``output_shapes`` are those of the first call; ``calls`` counts them all. A
    ``scripted`` (TorchScript) module called by TorchScript code is invisible to hooks: its ``macs`` are None, its
    work is in the row of its nearest ancestor called from Python.
    """

    name: str
    type: str
    depth: int
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    output_bytes: int = 0
    macs: int | None = 0
    calls: int = 0
    is_leaf: bool = True
    first_call: int = -1
    shared: bool = False
    scripted: bool = False
    module: nn.Module | None = field(default=None, repr=False, compare=False)
    backward_macs: int | None = 0  # a training step's backward work done for this place's forward work
    input_bytes: int = 0  # the tensors passed in, every call (a tensor passed twice in one call counts once)
    output_traffic: int = 0  # the tensors returned, every call (views included: they are written or read too)
    ops: dict[str, OpCount] | None = field(default=None, repr=False)  # by operator, when asked for


@dataclass
class OpCount:
    """One operator's calls and MACs in a pass (and in its backward pass); ``kind`` as ``core.opkinds`` says."""

    op: str
    kind: str
    calls: int = 0
    macs: int = 0
    backward_calls: int = 0
    backward_macs: int = 0


@dataclass
class ForwardProfile:
    """Per-module records in tree order (siblings in the order they first ran), and the totals of the pass.

    ``ops``: every operator that ran, by name. ``functional_bytes`` / ``functional_macs``: the operands and work of
    counted operators that ran outside modules without submodules (see TOTAL_BYTES_DEFINITION).
    """

    modules: list[ModuleRecord]
    total_macs: int
    activation_bytes: int
    ops: list[OpCount] = field(default_factory=list)
    backward_macs: int | None = None  # set for a training step
    functional_bytes: int = 0
    functional_macs: int = 0


@dataclass(eq=False)
class _Place:
    """One path from the root to a module: the rows of the table. ``lineage`` is the place and its ancestors."""

    record: ModuleRecord
    module: nn.Module
    parent: _Place | None
    children: list[_Place] = field(default_factory=list)
    lineage: tuple[_Place, ...] = ()
    subtree_macs: int = 0
    subtree_backward_macs: int = 0
    subtree_ops: dict[str, OpCount] | None = None


class _MacCounter(TorchDispatchMode):
    """Tallies every operator and adds the MACs of each counted one once to every place running it, however often
    it is on the stack. In the backward pass, the places running are those recorded on the autograd node that runs.

    Tallies made while a fused operator is decomposed wait until the decomposition succeeds: one that fails before
    counting anything leaves the operator to run (and be tallied) whole.
    """

    def __init__(self, *, op_rows: bool = False) -> None:
        super().__init__()
        self.stack: list[_Place] = []
        self.total_macs = 0
        self.backward_macs = 0
        self.backward = False
        self.op_rows = op_rows
        self.ops: dict[str, OpCount] = {}
        self.functional_bytes = 0
        self.functional_macs = 0
        self._running: tuple[_Place, ...] | None = ()
        self._targets: dict[int, tuple[tuple[_Place, ...], list[_Place], list[_Place]]] = {}
        self._pending: list[tuple[Any, int, tuple[_Place, ...], int]] | None = None
        self.needs_values: str | None = None  # the outermost operator that failed for want of data

    def push(self, place: _Place) -> None:
        self.stack.append(place)
        self._running = None

    def pop(self, module: nn.Module) -> None:
        # A call that raised inside a caller's try/except never popped itself: unwind to this module's entry.
        while self.stack:
            place = self.stack.pop()
            if place.module is module:
                break
        self._running = None

    def running(self) -> tuple[_Place, ...]:
        """The places running now: the module stack, or in the backward pass the node's record of it."""
        if self.backward:
            node = torch._C._current_autograd_node()
            return node.metadata.get(_PLACES, ()) if node is not None else ()
        if self._running is None:
            self._running = tuple(self.stack)
        return self._running

    def on_node(self, node) -> None:
        """node_creation_hook: an autograd node remembers the places running when the forward pass made it."""
        node.metadata[_PLACES] = self.running()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = op_kind(func)
        counted = kind == COUNTED
        if kind == NO_FORMULA and func not in _METADATA_OPS:
            decomposed = self._decompose(func, args, kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        try:
            out = func(*args, **kwargs)
        except Exception as exc:
            # Each enclosing operator overwrites: the outermost is the one the model's code called.
            if _reads_values(func, args, kwargs, exc):
                self.needs_values = _value_reason(func, exc)
            raise
        macs, operands = 0, 0
        running = self.running()
        if counted:
            macs = macs_of(func, args, kwargs, out)
            if not self.backward and (not running or not running[-1].record.is_leaf):
                operands = _tensor_bytes((args, kwargs, out))
        if self._pending is not None:
            self._pending.append((func, macs, running, operands))
        else:
            self._commit(func, macs, running, operands)
        return out

    def _decompose(self, func, args, kwargs):
        """Operators without a formula (fused kernels, composite ones TorchScript or a caller's mode dispatches
        whole) decompose into counted ops where torch has a decomposition; operators that carry no MACs under the
        convention run as they are. A decomposition that fails before counting anything leaves the operator to run
        whole: some trip over the plain-number arguments of TorchScript graphs (``aten::div.Scalar`` in a traced
        model)."""
        outer, needs_values = self._pending, self.needs_values
        self._pending = []
        try:
            with self:
                result = func.decompose(*args, **kwargs)
        except Exception:
            counted = any(entry[1] for entry in self._pending)
            self._pending = outer
            if counted:
                raise
            self.needs_values = needs_values
            return NotImplemented
        done, self._pending = self._pending, outer
        if result is not NotImplemented:
            for entry in done:
                if outer is not None:
                    outer.append(entry)
                else:
                    self._commit(*entry)
        return result

    def _commit(self, func, macs: int, running: tuple[_Place, ...], operands: int) -> None:
        name = op_name(func)
        tally = self.ops.get(name)
        if tally is None:
            tally = self.ops[name] = OpCount(name, op_kind(func))
        _tally(tally, macs, self.backward)
        if self.backward:
            self.backward_macs += macs
        else:
            self.total_macs += macs
            self.functional_bytes += operands
            self.functional_macs += macs if operands else 0
        if not macs and not self.op_rows:
            return
        _, places, within = self._targets_of(running)
        for place in places:
            record = place.record
            if self.backward:
                record.backward_macs += macs
            else:
                record.macs += macs
            if self.op_rows:
                _tally(_op_of(record, "ops", name, tally.kind), macs, self.backward)
        for place in within:
            if self.backward:
                place.subtree_backward_macs += macs
            else:
                place.subtree_macs += macs
            if self.op_rows:
                _tally(_op_of(place, "subtree_ops", name, tally.kind), macs, self.backward)

    def _targets_of(self, running: tuple[_Place, ...]) -> tuple[tuple[_Place, ...], list[_Place], list[_Place]]:
        """The distinct places running, and every place they lie within (their lineages), cached per stack."""
        targets = self._targets.get(id(running))
        if targets is None or targets[0] is not running:
            places = list({id(p): p for p in running}.values())
            within = list({id(a): a for p in places for a in p.lineage}.values())
            targets = self._targets[id(running)] = (running, places, within)
        return targets


_PLACES = "rlcli.places"  # the key of an autograd node's metadata that holds the places running at its creation


def _tally(tally: OpCount, macs: int, backward: bool) -> None:
    if backward:
        tally.backward_calls += 1
        tally.backward_macs += macs
    else:
        tally.calls += 1
        tally.macs += macs


def _op_of(owner, attribute: str, name: str, kind: str) -> OpCount:
    table = getattr(owner, attribute)
    if table is None:
        table = {}
        setattr(owner, attribute, table)
    tally = table.get(name)
    if tally is None:
        tally = table[name] = OpCount(name, kind)
    return tally


def _tensor_bytes(tensors) -> int:
    """Bytes of the distinct tensors among ``tensors`` (by object: one passed twice is moved once)."""
    unique = {id(t): t for t in tree_flatten(tensors)[0] if isinstance(t, torch.Tensor)}
    return sum(t.numel() * t.element_size() for t in unique.values())


class _NewMemory:
    """Counts the bytes of storages not seen before; ``already_held`` (weights, inputs) are seen from the start.

    Storages are told apart by identity. A weak reference to each keeps its identity for the pass (not its memory),
    so a storage freed mid-pass cannot hand its address to a new one, which would then pass for the old.
    """

    def __init__(self, already_held: list[torch.Tensor]) -> None:
        self._seen: dict[int, StorageWeakRef] = {}
        self.total = 0
        for tensor in already_held:
            self._is_new(tensor)

    def new_bytes(self, tensor: torch.Tensor) -> int:
        """The bytes ``tensor`` adds: its whole storage the first time it is seen, else nothing."""
        size = self._is_new(tensor)
        self.total += size
        return size

    def _is_new(self, tensor: torch.Tensor) -> int:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested: no single storage to follow
            return tensor.numel() * tensor.element_size()
        ref = StorageWeakRef(storage)
        if ref.cdata in self._seen:
            return 0
        self._seen[ref.cdata] = ref
        return storage.nbytes()


def profile_forward(
    model: nn.Module,
    inputs: tuple[Any, ...] | dict[str, Any] | Feed,
    *,
    train: bool = False,
    op_rows: bool = False,
) -> ForwardProfile:
    """Run one forward pass and record MACs, calls, output shapes, bytes moved and new output memory per module.

    Args:
        model: the model, typically on the meta device (in training mode for ``train``).
        inputs: positional inputs as a tuple, keyword inputs as a dict, or both as a ``Feed``.
        train: a training step: the forward pass with autograd on, then the backward pass of LOSS_DEFINITION's
            loss; its MACs go to ``backward_macs`` (per module: those of the gradients of its forward work).
        op_rows: keep a table by operator for every module too (``ModuleRecord.ops``), not only for the pass.

    Returns:
        A ForwardProfile. Raises NeedsRealValues when the pass reads values that meta tensors do not hold, else
        ModelRunError naming the innermost module that failed.

    Example:
        >>> with torch.device("meta"):
        ...     net = torchvision.models.resnet18()
        >>> profile_forward(net, (torch.empty(1, 3, 224, 224, device="meta",),)).total_macs
        1814073344
    """
    counter = _MacCounter(op_rows=op_rows)
    root, places = _module_places(model)
    if not isinstance(inputs, Feed):
        inputs = Feed(kwargs=inputs) if isinstance(inputs, dict) else Feed(args=tuple(inputs))
    given = tree_flatten((inputs.args, inputs.kwargs))[0]
    memory = _NewMemory([*model.parameters(), *model.buffers(), *(t for t in given if isinstance(t, torch.Tensor))])
    grad_mode = torch.enable_grad() if train else torch.no_grad()
    nodes = _node_places(counter) if train else contextlib.nullcontext()
    with _module_hooks(places, counter, memory), _no_hidden_fast_paths(), counter, grad_mode, nodes:
        try:
            outputs = model(*inputs.args, **inputs.kwargs)
        except Exception as exc:
            if counter.needs_values:
                raise NeedsRealValues(_value_reader(model, inputs, counter.needs_values)) from exc
            if _on_meta(given) and "meta" in str(exc):
                # Data read outside the dispatcher (Tensor.numpy()), or meta tensors meeting the model's own CPU ones.
                raise NeedsRealValues(_describe_failure(counter.stack, exc)) from exc
            raise ModelRunError(_describe_failure(counter.stack, exc)) from exc
    if train:
        _run_backward(model, outputs, counter)
    _fill_uncalled(root, train)
    rows = _shown_rows(root, places)
    return ForwardProfile(
        modules=rows,
        total_macs=counter.total_macs,
        activation_bytes=memory.total,
        ops=sorted(counter.ops.values(), key=_op_order),
        backward_macs=counter.backward_macs if train else None,
        functional_bytes=counter.functional_bytes,
        functional_macs=counter.functional_macs,
    )


class _ValueReader(TorchDispatchMode):
    """Names the outermost operator that fails for want of data, as in _MacCounter (nothing else)."""

    def __init__(self) -> None:
        super().__init__()
        self.needs_values: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if _reads_values(func, args, kwargs, exc):
                self.needs_values = _value_reason(func, exc)
            raise


def _value_reader(model: nn.Module, inputs: Feed, reason: str) -> str:
    """The operator the model's own code called that read values, for the message of a run on real tensors.

    Counting runs under no_grad, where the dispatcher has already broken ``Tensor.item()`` and a tensor's truth value
    (``if mask.any():``) down to ``_local_scalar_dense`` before the counter sees them; under inference_mode they
    arrive whole. The pass is repeated that way only on this path, which then counts on the CPU anyway.
    """
    if "_local_scalar_dense" not in reason:
        return reason
    reader = _ValueReader()
    try:
        with _no_hidden_fast_paths(), torch.inference_mode(), reader:
            model(*inputs.args, **inputs.kwargs)
    except Exception:  # the failure is the expected one; only its name is wanted
        pass
    return reader.needs_values or reason


def _op_order(tally: OpCount) -> tuple[int, int, str]:
    return (-(tally.macs + tally.backward_macs), -(tally.calls + tally.backward_calls), tally.op)


def training_step_supported() -> bool:
    """Whether this torch can attribute backward work to modules (``torch.autograd.graph.node_creation_hook``)."""
    return hasattr(torch.autograd.graph, "node_creation_hook")


@contextlib.contextmanager
def _node_places(counter: _MacCounter) -> Iterator[None]:
    """Every autograd node made in the block records the places running (without the hook: totals only)."""
    if not training_step_supported():
        yield
        return
    with torch.autograd.graph.node_creation_hook(counter.on_node):
        yield


def _run_backward(model: nn.Module, outputs: Any, counter: _MacCounter) -> None:
    """The backward pass of LOSS_DEFINITION's loss under the counter; gradients are dropped afterwards."""
    floating = [t for t in tree_flatten(outputs)[0] if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    if not floating:
        raise ModelRunError(
            "a training step needs an output that depends on a parameter that requires grad; this model's outputs "
            "do not"
        )
    loss = sum(t.sum() for t in floating)
    counter.backward = True
    try:
        with _no_hidden_fast_paths(), counter:
            loss.backward()
    except Exception as exc:
        raise ModelRunError(f"the backward pass failed: {_first_line(exc)}") from exc
    finally:
        counter.backward = False
        for parameter in model.parameters():
            parameter.grad = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _on_meta(tensors: list[Any]) -> bool:
    return any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in tensors)


def _module_places(model: nn.Module) -> tuple[_Place, dict[int, list[_Place]]]:
    """Every place a module is registered at (all paths from the root), and the places of each module object.

    A module found again on its own path (a cycle) is listed there but not expanded; past ``_MAX_PLACES`` rows, a
    module already expanded at another place is not expanded again.
    """
    registrations = Counter(id(child) for m in model.modules() for child in m._modules.values() if child is not None)
    registrations[id(model)] += 1
    places: dict[int, list[_Place]] = {}
    expanded: set[int] = set()
    count = 0

    def visit(name: str, module: nn.Module, parent: _Place | None, path: frozenset[int]) -> _Place:
        nonlocal count
        count += 1
        depth = 0 if parent is None else parent.record.depth + 1
        scripted = isinstance(module, torch.jit.ScriptModule)
        record = ModuleRecord(
            name=name,
            type=_type_name(module, scripted),
            depth=depth,
            is_leaf=not any(child is not None for child in module._modules.values()),
            shared=registrations[id(module)] > 1,
            scripted=scripted,
            module=module,
        )
        place = _Place(record=record, module=module, parent=parent)
        place.lineage = (place, *(parent.lineage if parent else ()))
        places.setdefault(id(module), []).append(place)
        if id(module) in path or (count > _MAX_PLACES and id(module) in expanded):
            return place
        expanded.add(id(module))
        inner = path | {id(module)}
        for child_name, child in module._modules.items():
            if child is not None:
                place.children.append(visit(f"{name}.{child_name}" if name else child_name, child, place, inner))
        return place

    root = visit("", model, None, frozenset())
    return root, places


def _type_name(module: nn.Module, scripted: bool) -> str:
    # TorchScript wraps every module in one class; the class the user wrote is kept as original_name.
    original = getattr(module, "original_name", None) if scripted else None
    return original if isinstance(original, str) else type(module).__name__


def _fill_uncalled(place: _Place, train: bool = False) -> None:
    """Give a place that never ran itself (a ModuleList, a namespace module) the work of its descendants that ran.

    It is listed where its first descendant ran, with the MACs that ran inside any of them, counted once.
    """
    for child in place.children:
        _fill_uncalled(child, train)
    record = place.record
    if not train or not training_step_supported():
        record.backward_macs = None
    if record.calls:
        return
    firsts = [child.record.first_call for child in place.children if child.record.first_call >= 0]
    if firsts:
        record.first_call = min(firsts)
        record.macs = place.subtree_macs
        record.ops = place.subtree_ops
        if record.backward_macs is not None:
            record.backward_macs = place.subtree_backward_macs
    elif record.scripted:
        record.macs = record.backward_macs = None


def _shown_rows(root: _Place, places: dict[int, list[_Place]]) -> list[ModuleRecord]:
    """The places that ran (or hold something that ran), every place of a shared module that ran anywhere, and the
    scripted modules inside a shown scripted one; in tree order, siblings in the order they first ran."""
    ran = {key for key, group in places.items() if any(p.record.calls for p in group)}
    rows: list[ModuleRecord] = []

    def visit(place: _Place) -> None:
        rows.append(place.record)
        shown = [
            child
            for child in place.children
            if child.record.first_call >= 0
            or (child.record.shared and id(child.module) in ran)
            or (child.record.scripted and place.record.scripted)
        ]
        for child in sorted(shown, key=lambda c: c.record.first_call if c.record.first_call >= 0 else math.inf):
            visit(child)

    visit(root)
    return rows


def _choose_place(group: list[_Place], stack: list[_Place]) -> _Place:
    """The place whose parent is running (the innermost such parent), else the first place."""
    if len(group) == 1:
        return group[0]
    level = {id(place): index for index, place in enumerate(stack)}
    candidates = [(level[id(p.parent)], -order, p) for order, p in enumerate(group) if id(p.parent) in level]
    return max(candidates, key=lambda c: c[:2])[2] if candidates else group[0]


@contextlib.contextmanager
def _module_hooks(places: dict[int, list[_Place]], counter: _MacCounter, memory: _NewMemory) -> Iterator[None]:
    """Keep the stack of running places and capture each one's outputs; hooks are removed in any case.

    The hooks are global (every module call from Python passes them) and act on this model's modules only:
    TorchScript modules refuse hooks of their own, yet a call to one from Python passes the global ones. Calls
    made inside TorchScript code pass no hook at all.
    """
    order = itertools.count()
    handles = []
    # Where each place's first call sits on the stack until it returns (a re-entered module's returns last).
    first_call_at: dict[int, int] = {}

    def pre_hook(module, args):
        group = places.get(id(module))
        if group is None or group[0].module is not module:
            return
        place = _choose_place(group, counter.stack)
        record = place.record
        if not record.calls:
            record.first_call = next(order)
            first_call_at[id(place)] = len(counter.stack)
        record.calls += 1
        counter.push(place)

    def post_hook(module, args, kwargs, output):
        stack = counter.stack
        index = next((i for i in range(len(stack) - 1, -1, -1) if stack[i].module is module), None)
        if index is None:
            return
        place = stack[index]
        counter.pop(module)
        tensors = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
        record = place.record
        if first_call_at.get(id(place)) == index:
            del first_call_at[id(place)]
            record.output_shapes = [tuple(t.shape) for t in tensors]
        record.output_bytes += sum(memory.new_bytes(t) for t in tensors)
        record.input_bytes += _tensor_bytes((args, kwargs))
        record.output_traffic += _tensor_bytes(tensors)

    try:
        handles.append(register_module_forward_pre_hook(pre_hook))
        handles.append(register_module_forward_hook(post_hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _no_hidden_fast_paths() -> Iterator[None]:
    """Route attention and TorchScript through code paths whose work is visible to the counter.

    nn.MultiheadAttention's inference fast path calls one fused native op, and SDPA picks fused kernels by
    device; both would hide their matmuls. The math backend spells attention out as two batched matmuls.
    TorchScript runs its graphs as written: its optimising executor fuses, and its first, profiling run of a graph
    with a tensor constant fails under any dispatch mode (torch's own FlopCounterMode included).
    """
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), torch.jit.optimized_execution(False):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _describe_failure(stack: list[_Place], exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    layers = [p.record for p in stack if p.record.name]
    if not layers:
        return f"the forward pass failed: {reason}"
    failing = layers[-1]
    return f"the forward pass failed in layer '{failing.name}' ({failing.type}): {reason}"
