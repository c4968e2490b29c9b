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

COUNTERS = ("rlcli", "fvcore")

FVCORE_CONVENTION = (
    "fvcore's convention: one fused multiply-add counts as one flop; convolutions, linear layers, matmuls and "
    "einsum, plus normalisation layers, upsampling and adaptive pooling; operators fvcore does not know "
    "(scaled_dot_product_attention among them) count as zero"
)


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
    uncounted_ops: list[str] = field(default_factory=list)
    tokens: int | None = None  # for language models: tokens per sequence in the example input
    macs_per_token: int | None = None
    cpu_fallback: CpuFallback | None = None  # set when the forward pass needed real values
    value_steps: ValueStepsRun | None = None  # set for a model whose steps that depend on values ran as it declares
    paper: Any = None  # a models.cards.PaperComparison when the model has a paper card
    measured: list[Any] = field(default_factory=list)  # the card's models.cards.Measured: its source's own figures

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    model: str,
    *,
    input_size: str | None = None,
    inputs: str | None = None,
    batch_size: int = 1,
    depth: int | None = 3,
    counter: str = "rlcli",
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
        counter: ``"rlcli"`` (meta device, torchvision's convention) or ``"fvcore"`` (fvcore's, on the CPU).

    Example:
        >>> summarize("resnet18").macs
        1814073344
    """
    if batch_size < 1:
        raise UsageError(f"invalid batch size {batch_size}: must be at least 1")
    if depth is not None and depth < 0:
        raise UsageError(f"invalid depth {depth}: must be 0 or more")
    if counter not in COUNTERS:
        raise UsageError(f"unknown counter '{counter}': choose from {', '.join(COUNTERS)}")

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
    return summarize_spec(spec, size, inputs=feeds, batch_size=batch_size, depth=depth, counter=counter)


def summarize_spec(
    spec,
    size: tuple[int, ...],
    *,
    inputs=None,
    batch_size: int = 1,
    depth: int | None = 3,
    counter: str = "rlcli",
) -> ModelSummary:
    """``summarize`` for a spec that need not be registered (``rl compare`` builds scaled family members).

    ``inputs`` (a ``core.feeds.InputSpec``) replaces what the spec would feed at ``size``.
    """
    feeds = inputs or spec.inputs_for(size)
    feeds.check(batch_size)
    where = f"{spec.card.name} at input {feeds.label(batch_size)}"
    if counter == "fvcore":
        return _summarize_with_fvcore(spec, size, feeds, batch_size, depth, where)

    from rlcli.core.flops import CONVENTION, NeedsRealValues
    from rlcli.core.meta import MetaBuildError, build_on_meta

    try:
        net = _eval(_build(lambda: build_on_meta(lambda: spec.build(size)), where))
    except MetaBuildError as exc:
        return _summarize_on_cpu(
            spec, size, feeds, batch_size, depth, where, f"building it on the meta device failed ({exc.reason})"
        )
    try:
        profile, steps = _profile_on_meta(spec, net, feeds.feed(batch_size), where)
    except NeedsRealValues as exc:
        return _summarize_on_cpu(spec, size, feeds, batch_size, depth, where, exc.reason, meta_net=net)
    macs_by_module = {record.name: record.macs for record in profile.modules}
    summary = _assemble(
        spec, net, size, feeds, batch_size, depth, profile, macs_by_module, "rlcli", CONVENTION, "meta", []
    )
    summary.value_steps = steps
    return summary


def _profile_on_meta(spec, net, feed, where: str):
    """The meta-device pass; a model that declares its steps that depend on values has them run as it says (its
    selections at their caps, value-reading steps on real tensors), measuring the peak memory that took."""
    from rlcli.core.flops import NeedsRealValues, profile_forward

    if spec.value_steps is None:
        return _run(lambda: profile_forward(net, feed), where, NeedsRealValues), None
    from rlcli.core.meta import value_steps_on_meta
    from rlcli.core.resources import peak_rss_increase

    with peak_rss_increase() as peak, value_steps_on_meta(spec.value_steps) as ran:
        profile = _run(lambda: profile_forward(net, feed), where, NeedsRealValues)
    caps = spec.value_steps.caps(net) if spec.value_steps.caps else []
    return profile, ValueStepsRun(caps, [step for step in ran if step.calls], peak.increase)


def _summarize_on_cpu(spec, size, feeds, batch_size, depth, where, reason, meta_net=None) -> ModelSummary:
    """Count on real CPU tensors: random weights (seed 0), a random-normal float input or zeros for integers.

    The weights must fit in the memory available now (checked on the meta model when there is one); the cost is
    reported as the weights' bytes and the rise of the peak resident memory.
    """
    import torch

    from rlcli.core.flops import CONVENTION, profile_forward

    if meta_net is not None:
        _check_weights_fit(meta_net, where, reason)
        del meta_net
    from rlcli.core.resources import peak_rss_increase

    where = f"{where} (on the CPU, because {reason})"
    with torch.random.fork_rng(devices=[]), peak_rss_increase() as peak:
        torch.manual_seed(0)
        net = _eval(_build(lambda: spec.build(size), where))
        profile = _run(lambda: profile_forward(net, feeds.feed(batch_size, device="cpu")), where)
    fallback = CpuFallback(
        reason=reason,
        weights="random",
        input=feeds.fills(),
        weight_bytes=_tensor_bytes(net),
        peak_rss_increase_bytes=peak.increase,
    )
    macs_by_module = {record.name: record.macs for record in profile.modules}
    return _assemble(
        spec, net, size, feeds, batch_size, depth, profile, macs_by_module, "rlcli", CONVENTION, "cpu", [], fallback
    )


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


def _summarize_with_fvcore(spec, size, feeds, batch_size, depth, where) -> ModelSummary:
    import torch
    from fvcore.nn import FlopCountAnalysis

    from rlcli.core.flops import profile_forward

    # fvcore traces with torch.jit, which needs real tensors: the weights are allocated on the CPU here.
    net = _eval(_build(lambda: spec.build(size), where))
    feed = feeds.feed(batch_size, device="cpu")
    if feed.kwargs:
        raise UsageError(f"{where}: --counter fvcore takes positional inputs only (fvcore traces with torch.jit)")
    profile = _run(lambda: profile_forward(net, feed), where)
    with torch.inference_mode():
        analysis = FlopCountAnalysis(net, feed.args)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        macs_by_module = dict(_run(analysis.by_module, where))
        uncounted = sorted(analysis.unsupported_ops())
    profile.total_macs = macs_by_module.get("", 0)
    return _assemble(
        spec,
        net,
        size,
        feeds,
        batch_size,
        depth,
        profile,
        macs_by_module,
        "fvcore",
        FVCORE_CONVENTION,
        "cpu",
        uncounted,
    )


def _assemble(
    spec,
    net,
    size,
    feeds,
    batch_size,
    depth,
    profile,
    macs_by_module,
    counter,
    convention,
    counted_on,
    uncounted,
    fallback=None,
) -> ModelSummary:
    from rlcli.core.flops import ACTIVATION_DEFINITION

    params = _unique_parameters(net)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    param_bytes: Counter[str] = Counter()
    for p in params:
        param_bytes[str(p.dtype).removeprefix("torch.")] += p.numel() * p.element_size()
    buffers = {id(b): b for b in net.buffers()}.values()
    layers = [
        LayerRow(
            name=record.name,
            type=record.type,
            depth=record.depth,
            output_shape=[list(shape) for shape in record.output_shapes],
            params=sum(p.numel() for p in record.module.parameters()),
            macs=_macs_of(record, macs_by_module),
            calls=record.calls,
            shared=record.shared,
            scripted=record.scripted,
        )
        for record in profile.modules
        if depth is None or record.depth <= depth
    ]
    tokens = size[0] * batch_size if spec.card.input_kind == "tokens" else None
    from rlcli.models.cards import compare_with_paper

    # Papers state one sample's cost with torchvision's convention; fvcore's counts are not comparable.
    per_sample = int(profile.total_macs) // batch_size if counter == "rlcli" else None
    return ModelSummary(
        paper=compare_with_paper(spec.card, tuple(size), total, per_sample),
        tokens=size[0] if tokens else None,
        macs_per_token=int(profile.total_macs) // tokens if tokens else None,
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
        convention=convention,
        params=total,
        trainable_params=trainable,
        non_trainable_params=total - trainable,
        param_bytes=dict(sorted(param_bytes.items())),
        buffer_bytes=sum(b.numel() * b.element_size() for b in buffers),
        macs=int(profile.total_macs),
        flops=2 * int(profile.total_macs),
        activation_bytes=profile.activation_bytes,
        activation_definition=ACTIVATION_DEFINITION,
        counted_on=counted_on,
        layers=layers,
        uncounted_ops=list(uncounted),
        cpu_fallback=fallback,
        measured=list(spec.card.measured),
    )


def _macs_of(record, macs_by_module: dict[str, int | None]) -> int | None:
    macs = macs_by_module.get(record.name, 0)
    return None if macs is None else int(macs)


def _unique_parameters(net) -> list:
    # Tied weights (GPT-2's LM head shares the token embedding) are one tensor and count once.
    return list({id(p): p for p in net.parameters()}.values())


def _eval(net):
    """``net.eval()``; a module registered as its own descendant sends ``eval`` round the cycle, so there the flag
    is set on each module once."""
    try:
        return net.eval()
    except RecursionError:
        for module in net.modules():
            module.training = False
        return net


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
