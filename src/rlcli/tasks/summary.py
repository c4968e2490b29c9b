"""`rl summary`: layers, parameters, MACs and memory of a model, counted on the meta device.

A pipeline in torchinfo's manner: resolve the model -> build it without weights -> run one forward pass under the
counter -> gather statistics into a plain object. Rendering is the CLI's job.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from rlcli.core.shapes import parse_input_size
from rlcli.errors import ModelRunError, UsageError

COUNTERS = ("rlcli", "fvcore", "all")

#: The dtypes the memory figures can be counted at (weights, activations, bytes moved, gradients, optimizer state).
DTYPES = ("float32", "bfloat16", "float16")

FVCORE_CONVENTION = (
    "fvcore's convention: one fused multiply-add counts as one flop; convolutions, linear layers, matmuls and "
    "einsum, plus normalisation layers, upsampling and adaptive pooling; operators fvcore does not know "
    "(scaled_dot_product_attention among them) count as zero"
)

#: The optimizers whose state a training step's memory includes, with the formula of that state.
OPTIMIZERS = {
    "sgd": (
        "SGD with momentum (torch.optim.SGD, momentum > 0): one momentum buffer per trainable parameter, in its "
        "dtype = 1 x the trainable weights' bytes (plain SGD, momentum 0, keeps no state)"
    ),
    "adamw": (
        "AdamW (torch.optim.AdamW): exp_avg and exp_avg_sq per trainable parameter, in its dtype, and a float32 "
        "step count per parameter tensor = 2 x the trainable weights' bytes + 4 bytes per tensor"
    ),
}

#: How a training step runs, in words.
TRAINING_MODE = (
    "one step: the forward pass in training mode (model.train(): batch statistics, dropout on), then the backward "
    "pass, run on the meta device like the forward pass"
)


def optimizer_state_bytes(parameters, optimizer: str) -> int:
    """Bytes of ``torch.optim`` state for ``parameters`` (the trainable ones, each tensor once) by OPTIMIZERS."""
    tensors = [p for p in {id(p): p for p in parameters}.values() if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in tensors)
    if optimizer == "sgd":
        return weights
    if optimizer == "adamw":
        return 2 * weights + 4 * len(tensors)
    raise UsageError(f"unknown optimizer '{optimizer}': choose from {', '.join(OPTIMIZERS)}")


@dataclass
class LayerRow:
    """One place a module is registered at. Params and MACs include its submodules; params count each tensor once.

    ``output_shape`` is that of the first of ``calls`` calls (0 for a container that never runs itself);
    ``shared``: the same module object is registered at other places too. ``scripted``: a TorchScript module; one
    that TorchScript code called has ``macs`` None, its work counted in its nearest ancestor called from Python.
    """

    name: str
    type: str
    depth: int
    output_shape: list[list[int]]
    params: int
    macs: int | None
    calls: int = 1
    shared: bool = False
    scripted: bool = False
    # Bytes it must move at least (core.flops.BYTES_DEFINITION) at the summary's dtype; None where it never ran.
    weight_bytes: int = 0
    input_bytes: int | None = None
    output_bytes: int | None = None
    bytes_moved: int | None = None
    intensity: float | None = None  # MACs per byte moved
    # A training step (--train): backward MACs, gradient and optimizer-state bytes of its parameters.
    backward_macs: int | None = None
    grad_bytes: int | None = None
    optimizer_bytes: int | None = None
    # --counter all: each counter's MACs for this row (None: that counter has no figure for it).
    counts: dict[str, int | None] | None = None


@dataclass
class OpRow:
    """One operator in the table by operator: calls and MACs (backward ones for a training step); ``kind``:
    ``counted``, ``not counted`` (no MACs under the convention) or ``no formula`` (rl cannot count it)."""

    op: str
    kind: str
    calls: int
    macs: int
    backward_calls: int | None = None
    backward_macs: int | None = None


@dataclass
class OpTable:
    """The operators of the whole model (``row`` "") or of one row, with the MACs their shares are of."""

    row: str
    macs: int
    backward_macs: int | None
    ops: list[OpRow]


@dataclass
class TrainingStep:
    """The cost of one training step (TRAINING_MODE): MACs of both passes and the memory training adds.

    ``memory_bytes`` = weights + gradients + optimizer state; the activations autograd keeps for the backward
    pass are not included. ``backward_not_counted`` / ``backward_no_formula``: as the summary's, for the backward.
    """

    mode: str
    loss: str
    optimizer: str
    optimizer_formula: str
    forward_macs: int
    backward_macs: int
    step_macs: int
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    memory_bytes: int
    backward_not_counted: dict[str, int]
    backward_no_formula: dict[str, int]


@dataclass
class CounterResult:
    """One counter's figures for the same model (``--counter all``, or ``--counter fvcore``).

    ``by_layer``: its MACs per row name. ``ignored``: operators that ran with work this counter counts as zero,
    with their calls, as it names them; ``ignored_note`` says what they are for this counter. ``error``: why it
    has no figures (it failed, or cannot take this input).
    """

    counter: str
    version: str | None
    convention: str
    counted_on: str
    macs: int | None
    by_layer: dict[str, int | None] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)
    ignored_note: str = ""
    error: str | None = None


@dataclass
class CpuFallback:
    """Why a summary was counted on real CPU tensors instead of the meta device, and what that cost.

    ``weights`` and ``input`` say what the tensors held (random weights from the constructors' own initialisation,
    seed 0; a random-normal float input or an all-zeros integer one): work that depends on values is this input's.
    ``peak_rss_increase_bytes`` is the rise of the process's peak resident memory during the build and the pass
    (None where it cannot be measured: Linux only).
    """

    reason: str
    weights: str
    input: str
    weight_bytes: int
    peak_rss_increase_bytes: int | None


@dataclass
class ValueStepsRun:
    """How a pass on the meta device ran the steps whose results depend on values (see ``core.meta.ValueSteps``).

    Selections kept every candidate, so the work after them is at ``caps`` (the model's own limits, in words).
    ``ran_for_real`` are the steps that ran on real CPU tensors (zero-filled, of the shapes that reached them; a
    ``core.meta.RealStep`` each); ``peak_rss_increase_bytes`` is the rise of the process's peak resident memory
    during the pass (None where it cannot be measured: Linux only).
    """

    caps: list[str]
    ran_for_real: list[Any]
    peak_rss_increase_bytes: int | None


@dataclass
class ModelSummary:
    model: str
    family: str
    source: str
    input_size: list[int]
    batch_size: int
    input_shape: list[int]  # the first tensor fed: (batch_size, *input_size)
    input_dtype: str
    inputs: list[dict[str, Any]]  # every tensor fed: name (None: positional), shape with the batch, list_of, dtype
    input_description: str  # the same in words, for headers: "input_ids 1x128 int64, attention_mask 1x128 int64"
    counter: str
    convention: str
    params: int
    trainable_params: int
    non_trainable_params: int
    param_bytes: dict[str, int]
    buffer_bytes: int
    macs: int
    flops: int
    activation_bytes: int
    activation_definition: str
    counted_on: str
    layers: list[LayerRow] = field(default_factory=list)
    dtype: str = "float32"  # of the weights and float inputs, so of every memory figure
    # Operators that ran, by rl's convention (core.opkinds): no MACs under it, and no formula at all (a warning).
    not_counted: dict[str, int] = field(default_factory=dict)
    no_formula: dict[str, int] = field(default_factory=dict)
    bytes_moved: int = 0  # layer by layer (core.flops.TOTAL_BYTES_DEFINITION)
    intensity: float | None = None  # MACs per byte moved
    bytes_definition: str = ""
    by_op: OpTable | None = None  # --by-op
    training: TrainingStep | None = None  # --train
    counters: list[CounterResult] = field(default_factory=list)  # --counter all (rl's first), --counter fvcore
    tokens: int | None = None  # for language models: tokens per sequence in the example input
    macs_per_token: int | None = None
    cpu_fallback: CpuFallback | None = None  # set when the forward pass needed real values
    value_steps: ValueStepsRun | None = None  # set for a model whose steps that depend on values ran as it declares
    paper: Any = None  # a models.cards.PaperComparison when the model has a paper card
    measured: list[Any] = field(default_factory=list)  # the card's models.cards.Measured: its source's own figures

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Request:
    """What one summary counts, past the model: the options of ``summarize_spec``."""

    spec: Any
    size: tuple[int, ...]
    feeds: Any  # a core.feeds.InputSpec, at the dtype
    batch_size: int
    depth: int | None
    dtype: str
    train: bool
    optimizer: str
    by_op: bool
    op_row: str | None
    where: str


def summarize(
    model: str,
    *,
    input_size: str | None = None,
    inputs: str | None = None,
    batch_size: int = 1,
    depth: int | None = 3,
    counter: str = "rlcli",
    dtype: str = "float32",
    train: bool = False,
    optimizer: str | None = None,
    by_op: bool = False,
    op_row: str | None = None,
) -> ModelSummary:
    """Summarise a registered model or a ``module:callable`` reference.

    Args:
        model: a registry name (`rl models` lists them) or a user reference.
        input_size: one sample's shape, e.g. ``"3x384x384"`` (``"384"`` for a registered image model); for a user's
            model exactly the shape given (``"10"``, ``"16x8"``). Default: the model's (the weights' crop size).
        inputs: every tensor the forward takes (``--inputs``: ``"input_ids=128:int64 attention_mask=128:int64"``,
            ``"[3x800x800]"``, or a .json file; see ``rlcli.core.feeds``), instead of the model's own input.
        batch_size: the batch of the example input; MACs and activation memory scale with it.
        depth: deepest module level in ``layers`` (0 = the model alone, None = every level).
        counter: ``"rlcli"`` (meta device, torchvision's convention), ``"fvcore"`` (fvcore's, on the CPU) or
            ``"all"`` (rl's count, with fvcore's, torch's FlopCounterMode's and torchinfo's beside it per row).
        dtype: the weights' and float inputs' dtype for every memory figure (``float32``, ``bfloat16``, ``float16``).
        train: count one training step (``TRAINING_MODE``): backward MACs, gradients and optimizer state.
        optimizer: the optimizer whose state a training step keeps (``OPTIMIZERS``; default adamw).
        by_op: a table by operator (``by_op``), of the whole model or of the row ``op_row`` names.

    Example:
        >>> summarize("resnet18").macs
        1814073344
    """
    if batch_size < 1:
        raise UsageError(f"invalid batch size {batch_size}: must be at least 1")
    if depth is not None and depth < 0:
        raise UsageError(f"invalid depth {depth}: must be 0 or more")
    _check_options(counter, dtype, train, optimizer)

    from rlcli.models.registry import get_spec

    spec = get_spec(model, user_code=True)  # a name the user typed: their own code may run
    # rl cannot know what a user's network takes: their size is the sample shape as given, never a shorthand.
    exact = spec.card.source == "user"
    size = parse_input_size(input_size, spec.card.default_input, exact=exact) if input_size else spec.card.default_input
    feeds = None
    if inputs is not None:
        from rlcli.core.feeds import parse_inputs

        feeds = parse_inputs(inputs)
        if input_size is None and exact:
            size = feeds.primary.shape
    return summarize_spec(
        spec,
        size,
        inputs=feeds,
        batch_size=batch_size,
        depth=depth,
        counter=counter,
        dtype=dtype,
        train=train,
        optimizer=optimizer,
        by_op=by_op,
        op_row=op_row,
    )


def _check_options(counter: str, dtype: str, train: bool, optimizer: str | None) -> None:
    if counter not in COUNTERS:
        raise UsageError(f"unknown counter '{counter}': choose from {', '.join(COUNTERS)}")
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{dtype}': choose from {', '.join(DTYPES)}")
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer '{optimizer}': choose from {', '.join(OPTIMIZERS)}")
    if optimizer is not None and not train:
        raise UsageError("--optimizer sets the state of a training step: give --train too")
    if train and counter != "rlcli":
        raise UsageError(f"--train counts with rl's counter; --counter {counter} counts forward passes only")


def summarize_spec(
    spec,
    size: tuple[int, ...],
    *,
    inputs=None,
    batch_size: int = 1,
    depth: int | None = 3,
    counter: str = "rlcli",
    dtype: str = "float32",
    train: bool = False,
    optimizer: str | None = None,
    by_op: bool = False,
    op_row: str | None = None,
) -> ModelSummary:
    """``summarize`` for a spec that need not be registered (``rl compare`` builds scaled family members).

    ``inputs`` (a ``core.feeds.InputSpec``) replaces what the spec would feed at ``size``.
    """
    _check_options(counter, dtype, train, optimizer)
    feeds = _feeds_at(inputs or spec.inputs_for(size), dtype)
    feeds.check(batch_size)
    where = f"{spec.card.name} at input {feeds.label(batch_size)}" + (f" in {dtype}" if dtype != "float32" else "")
    request = _Request(
        spec=spec,
        size=tuple(size),
        feeds=feeds,
        batch_size=batch_size,
        depth=depth,
        dtype=dtype,
        train=train,
        optimizer=optimizer or "adamw",
        by_op=by_op or op_row is not None,
        op_row=op_row,
        where=where + (" (a training step)" if train else ""),
    )
    if counter == "fvcore":
        return _summarize_with_fvcore(request)
    summary = _summarize_with_rl(request)
    if counter == "all":
        from rlcli.tasks.counters import other_counters

        summary.counter = "all"
        summary.counters = [_rl_counter(summary), *other_counters(request, summary)]
        for layer in summary.layers:
            layer.counts = {result.counter: result.by_layer.get(layer.name) for result in summary.counters}
    return summary


def _summarize_with_rl(request: _Request) -> ModelSummary:
    from rlcli.core.flops import NeedsRealValues
    from rlcli.core.meta import MetaBuildError, build_on_meta

    spec, size = request.spec, request.size
    try:
        net = _prepared(_build(lambda: build_on_meta(lambda: spec.build(size)), request.where), request)
    except MetaBuildError as exc:
        return _summarize_on_cpu(request, f"building it on the meta device failed ({exc.reason})")
    try:
        profile, steps = _profile_on_meta(request, net)
    except NeedsRealValues as exc:
        return _summarize_on_cpu(request, exc.reason, meta_net=net)
    summary = _assemble(request, net, profile, counted_on="meta")
    summary.value_steps = steps
    return summary


def _feeds_at(feeds, dtype: str):
    """The input with its floating-point tensors at ``dtype`` (integer ids and boolean masks stay as they are)."""
    if dtype == "float32":
        return feeds
    from dataclasses import replace

    from rlcli.core.feeds import InputSpec

    floating = ("float32", "float16", "bfloat16", "float64")
    return InputSpec(tuple(replace(t, dtype=dtype) if t.dtype in floating else t for t in feeds.tensors))


def _prepared(net, request: _Request):
    """The built model in eval mode (training mode for a step), its floating-point weights at the dtype."""
    _set_mode(net, training=request.train)
    if request.dtype != "float32":
        _to_dtype(net, request.dtype)
    return net


def _to_dtype(net, dtype: str) -> None:
    """``net.to(dtype)`` for floating-point parameters and buffers, each module once (cycles included)."""
    import torch

    target = getattr(torch, dtype)
    for module in net.modules():
        for parameter in module._parameters.values():
            if parameter is not None and parameter.is_floating_point() and parameter.dtype != target:
                parameter.data = parameter.data.to(target)
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != target:
                module._buffers[name] = buffer.to(target)


def _profile_on_meta(request: _Request, net):
    """The meta-device pass; a model that declares its steps that depend on values has them run as it says (its
    selections at their caps, value-reading steps on real tensors), measuring the peak memory that took."""
    from rlcli.core.flops import NeedsRealValues

    spec, feed = request.spec, request.feeds.feed(request.batch_size)
    if spec.value_steps is None:
        return _run(lambda: _profile(request, net, feed), request.where, NeedsRealValues), None
    from rlcli.core.meta import value_steps_on_meta
    from rlcli.core.resources import peak_rss_increase

    with peak_rss_increase() as peak, value_steps_on_meta(spec.value_steps) as ran:
        profile = _run(lambda: _profile(request, net, feed), request.where, NeedsRealValues)
    caps = spec.value_steps.caps(net) if spec.value_steps.caps else []
    return profile, ValueStepsRun(caps, [step for step in ran if step.calls], peak.increase)


def _profile(request: _Request, net, feed):
    from rlcli.core.flops import profile_forward

    return profile_forward(net, feed, train=request.train, op_rows=request.op_row is not None)


def _summarize_on_cpu(request: _Request, reason: str, meta_net=None) -> ModelSummary:
    """Count on real CPU tensors: random weights (seed 0), a random-normal float input or zeros for integers.

    The weights must fit in the memory available now (checked on the meta model when there is one); the cost is
    reported as the weights' bytes and the rise of the peak resident memory.
    """
    import torch

    if meta_net is not None:
        _check_weights_fit(meta_net, request.where, reason)
        del meta_net
    from rlcli.core.resources import peak_rss_increase

    spec, size = request.spec, request.size
    where = f"{request.where} (on the CPU, because {reason})"
    with torch.random.fork_rng(devices=[]), peak_rss_increase() as peak:
        torch.manual_seed(0)
        net = _prepared(_build(lambda: spec.build(size), where), request)
        profile = _run(lambda: _profile(request, net, request.feeds.feed(request.batch_size, device="cpu")), where)
    fallback = CpuFallback(
        reason=reason,
        weights="random",
        input=request.feeds.fills(),
        weight_bytes=_tensor_bytes(net),
        peak_rss_increase_bytes=peak.increase,
    )
    summary = _assemble(request, net, profile, counted_on="cpu")
    summary.cpu_fallback = fallback
    return summary


def _weights_of(module) -> tuple[int, int]:
    """The parameters (elements) and the bytes of parameters and buffers of ``module`` and its submodules, each
    tensor once: ``parameters()`` and ``_tensor_bytes`` in one walk (the default table asks for both per row)."""
    seen: set[int] = set()
    params = size = 0
    for submodule in module.modules():
        for tensors, is_parameter in ((submodule._parameters, True), (submodule._buffers, False)):
            for tensor in tensors.values():
                if tensor is None or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                size += tensor.numel() * tensor.element_size()
                params += tensor.numel() if is_parameter else 0
    return params, size


def _tensor_bytes(net) -> int:
    tensors = {id(t): t for t in (*net.parameters(), *net.buffers())}.values()
    return sum(t.numel() * t.element_size() for t in tensors)


def _check_weights_fit(meta_net, where: str, reason: str) -> None:
    from rlcli.core.resources import available_memory_bytes, human_bytes

    needed, available = _tensor_bytes(meta_net), available_memory_bytes()
    if available is not None and needed > available:
        raise ModelRunError(
            f"{where}: {reason}, and counting on the CPU instead would allocate {human_bytes(needed)} of weights, "
            f"more than the {human_bytes(available)} available"
        )


def cpu_model(request: _Request):
    """The model with real weights on the CPU (seed 0, the constructors' initialisation) at the dtype, in eval mode,
    and its input (the fills ``core.feeds`` states); the weights must fit in the memory available."""
    import torch

    from rlcli.core.meta import MetaBuildError, build_on_meta

    spec, size = request.spec, request.size
    try:
        meta_net = _build(lambda: build_on_meta(lambda: spec.build(size)), request.where)
    except MetaBuildError:
        meta_net = None  # cannot be sized without building it: built below as it is
    if meta_net is not None:
        _prepared(meta_net, request)
        _check_weights_fit(meta_net, request.where, "counting with other tools needs real weights")
        del meta_net
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = _prepared(_build(lambda: spec.build(size), request.where), request)
    return net, request.feeds.feed(request.batch_size, device="cpu")


def _summarize_with_fvcore(request: _Request) -> ModelSummary:
    from rlcli.tasks.counters import fvcore_count

    # fvcore traces with torch.jit, which needs real tensors: the weights are allocated on the CPU here.
    net, feed = cpu_model(request)
    profile = _run(lambda: _profile(request, net, feed), request.where)
    result = fvcore_count(net, feed, [record.name for record in profile.modules], request.where)
    if result.error:
        raise ModelRunError(f"{request.where}: {result.error}")
    profile.total_macs = result.macs
    summary = _assemble(request, net, profile, counted_on="cpu", counter="fvcore", macs_by_module=result.by_layer)
    summary.convention = FVCORE_CONVENTION
    summary.not_counted, summary.no_formula = {}, {}
    summary.counters = [result]
    return summary


def _rl_counter(summary: ModelSummary) -> CounterResult:
    from rlcli import __version__

    return CounterResult(
        counter="rlcli",
        version=__version__,
        convention=summary.convention,
        counted_on=summary.counted_on,
        macs=summary.macs,
        by_layer={layer.name: layer.macs for layer in summary.layers},
        ignored=dict(summary.no_formula),
        ignored_note="operators without a formula (a warning); elementwise, normalisation and pooling operators "
        "carry no MACs by the convention",
    )


def _assemble(
    request: _Request,
    net,
    profile,
    *,
    counted_on: str,
    counter: str = "rlcli",
    macs_by_module: dict[str, int | None] | None = None,
) -> ModelSummary:
    from rlcli.core.flops import ACTIVATION_DEFINITION, BYTES_DEFINITION, CONVENTION, TOTAL_BYTES_DEFINITION

    spec, size, feeds, batch_size = request.spec, request.size, request.feeds, request.batch_size
    if macs_by_module is None:
        macs_by_module = {record.name: record.macs for record in profile.modules}
    params = _unique_parameters(net)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    param_bytes: Counter[str] = Counter()
    for p in params:
        param_bytes[str(p.dtype).removeprefix("torch.")] += p.numel() * p.element_size()
    buffers = {id(b): b for b in net.buffers()}.values()
    layers = [
        _layer_row(record, macs_by_module, request)
        for record in profile.modules
        if request.depth is None or record.depth <= request.depth
    ]
    tokens = size[0] * batch_size if spec.card.input_kind == "tokens" else None
    from rlcli.models.cards import compare_with_paper

    # Papers state one sample's inference cost with torchvision's convention; fvcore's counts (and a training-mode
    # forward pass) are not comparable.
    per_sample = int(profile.total_macs) // batch_size if counter == "rlcli" and not request.train else None
    moved = _bytes_moved(profile)
    macs = int(profile.total_macs)
    summary = ModelSummary(
        paper=compare_with_paper(spec.card, tuple(size), total, per_sample),
        tokens=size[0] if tokens else None,
        macs_per_token=macs // tokens if tokens else None,
        model=spec.card.name,
        family=spec.card.family,
        source=spec.card.source,
        input_size=list(size),
        batch_size=batch_size,
        input_shape=[batch_size, *feeds.primary.shape],
        input_dtype=feeds.primary.dtype,
        inputs=feeds.entries(batch_size),
        input_description=feeds.describe(batch_size),
        counter=counter,
        convention=CONVENTION,
        params=total,
        trainable_params=trainable,
        non_trainable_params=total - trainable,
        param_bytes=dict(sorted(param_bytes.items())),
        buffer_bytes=sum(b.numel() * b.element_size() for b in buffers),
        macs=macs,
        flops=2 * macs,
        activation_bytes=profile.activation_bytes,
        activation_definition=ACTIVATION_DEFINITION,
        counted_on=counted_on,
        layers=layers,
        dtype=request.dtype,
        not_counted=_ops_of_kind(profile.ops, "not counted"),
        no_formula=_ops_of_kind(profile.ops, "no formula"),
        bytes_moved=moved,
        intensity=macs / moved if moved else None,
        bytes_definition=f"{BYTES_DEFINITION}; total: {TOTAL_BYTES_DEFINITION}",
        measured=list(spec.card.measured),
    )
    if request.train:
        summary.training = _training_step(request, net, profile)
    if request.by_op:
        summary.by_op = _op_table(request, profile)
    return summary


def _layer_row(record, macs_by_module: dict[str, int | None], request: _Request) -> LayerRow:
    macs = _macs_of(record, macs_by_module)
    params, weights = _weights_of(record.module)
    ran = record.calls > 0
    moved = weights + record.input_bytes + record.output_traffic if ran else None
    row = LayerRow(
        name=record.name,
        type=record.type,
        depth=record.depth,
        output_shape=[list(shape) for shape in record.output_shapes],
        params=params,
        macs=macs,
        calls=record.calls,
        shared=record.shared,
        scripted=record.scripted,
        weight_bytes=weights,
        input_bytes=record.input_bytes if ran else None,
        output_bytes=record.output_traffic if ran else None,
        bytes_moved=moved,
        intensity=macs / moved if moved and macs is not None else None,
    )
    if request.train:
        trainable = [p for p in record.module.parameters() if p.requires_grad]
        row.backward_macs = record.backward_macs
        row.grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
        row.optimizer_bytes = optimizer_state_bytes(trainable, request.optimizer)
    return row


def _bytes_moved(profile) -> int:
    """core.flops.TOTAL_BYTES_DEFINITION: leaf layers (weights once per module, inputs and outputs every call) and
    the operands of counted operators outside them."""
    leaves = [record for record in profile.modules if record.is_leaf and record.calls]
    weights = {id(record.module): _tensor_bytes(record.module) for record in leaves}
    traffic = sum(record.input_bytes + record.output_traffic for record in leaves)
    return sum(weights.values()) + traffic + profile.functional_bytes


def _ops_of_kind(ops, kind: str, backward: bool = False) -> dict[str, int]:
    calls = (lambda o: o.backward_calls) if backward else (lambda o: o.calls)
    chosen = [o for o in ops if o.kind == kind and calls(o)]
    return {o.op: calls(o) for o in sorted(chosen, key=lambda o: (-calls(o), o.op))}


def _training_step(request: _Request, net, profile) -> TrainingStep:
    from rlcli.core.flops import LOSS_DEFINITION

    params = _unique_parameters(net)
    trainable = [p for p in params if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in trainable)
    state = optimizer_state_bytes(trainable, request.optimizer)
    backward = int(profile.backward_macs or 0)
    return TrainingStep(
        mode=TRAINING_MODE,
        loss=LOSS_DEFINITION,
        optimizer=request.optimizer,
        optimizer_formula=OPTIMIZERS[request.optimizer],
        forward_macs=int(profile.total_macs),
        backward_macs=backward,
        step_macs=int(profile.total_macs) + backward,
        weight_bytes=weights,
        grad_bytes=grads,
        optimizer_bytes=state,
        memory_bytes=weights + grads + state,
        backward_not_counted=_ops_of_kind(profile.ops, "not counted", backward=True),
        backward_no_formula=_ops_of_kind(profile.ops, "no formula", backward=True),
    )


def _op_table(request: _Request, profile) -> OpTable:
    """The table by operator of the whole model, or of the row ``request.op_row`` names."""
    train = request.train
    if request.op_row is None or request.op_row == "":
        ops, macs, backward = profile.ops, profile.total_macs, profile.backward_macs
        row = ""
    else:
        record = _find_row(profile, request.op_row)
        ops = sorted((record.ops or {}).values(), key=lambda o: (-(o.macs + o.backward_macs), -o.calls, o.op))
        macs, backward, row = record.macs or 0, record.backward_macs, record.name
    return OpTable(
        row=row,
        macs=int(macs),
        backward_macs=int(backward) if train and backward is not None else None,
        ops=[
            OpRow(
                op=o.op,
                kind=o.kind,
                calls=o.calls,
                macs=o.macs,
                backward_calls=o.backward_calls if train else None,
                backward_macs=o.backward_macs if train else None,
            )
            for o in ops
        ],
    )


def _find_row(profile, name: str):
    for record in profile.modules:
        if record.name == name:
            return record
    import difflib

    names = [record.name for record in profile.modules if record.name]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else " (rows are named as in the Layer column)"
    raise UsageError(f"--row: no row named '{name}' in {profile.modules[0].type}{hint}")


def _macs_of(record, macs_by_module: dict[str, int | None]) -> int | None:
    macs = macs_by_module.get(record.name, 0)
    return None if macs is None else int(macs)


def _unique_parameters(net) -> list:
    # Tied weights (GPT-2's LM head shares the token embedding) are one tensor and count once.
    return list({id(p): p for p in net.parameters()}.values())


def _set_mode(net, training: bool) -> None:
    """``net.train(training)``; a module registered as its own descendant sends ``train`` round the cycle, so there
    the flag is set on each module once."""
    try:
        net.train(training)
    except RecursionError:
        for module in net.modules():
            module.training = training


def _build(build, where: str):
    try:
        return build()
    except ModelRunError:
        raise
    except Exception as exc:
        raise ModelRunError(f"cannot build {where}: {_first_line(exc)}") from exc


def _run(step, where: str, passing: type[Exception] | tuple[type[Exception], ...] = ()):
    """``step()``, its failures named with ``where``; exceptions of the ``passing`` types go through as they are."""
    try:
        return step()
    except passing:
        raise
    except ModelRunError as exc:
        raise ModelRunError(f"{where}: {exc}") from exc
    except Exception as exc:
        raise ModelRunError(f"{where}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    """The exception's type and first line: torch appends C++ frames to some messages."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
