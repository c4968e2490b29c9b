"""`rl compare`: ResNet vs ResNeXt vs MobileNet at one compute budget, or any named models, side by side.

Scaling: each family's width knob is found by bisection on MACs counted on the meta device (no weights, a few
hundred milliseconds per try), to land within 2 % of the budget. Where a family's channel rounding leaves a gap
around the budget, a second stated knob takes over: ResNeXt's channels per path, MobileNet's input resolution.
Timing, when asked, builds real weights and measures on the chosen device with the chosen threads.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from rlcli.errors import ModelRunError, RlError, UsageError

FAMILIES = ("resnet", "resnext", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3")
TOLERANCE = 0.02
WIDTH_RANGE = (0.05, 12.0)

#: Where a network stops waiting on memory, in MACs per byte moved (core.flops.BYTES_DEFINITION): the ridge point
#: of the roofline of a typical desktop CPU (8 AVX2 cores with two float32 FMA units each at 3 GHz: 384 GMAC/s,
#: fed by about 40 GB/s of DRAM bandwidth: 9.6 MACs/byte), rounded.
RIDGE_MACS_PER_BYTE = 10.0
RIDGE_NOTE = (
    f"a network below {RIDGE_MACS_PER_BYTE:g} MACs/byte (the roofline ridge of a typical desktop CPU: 8 AVX2 cores, "
    "384 GMAC/s float32, over about 40 GB/s of DRAM) waits on memory, above it on arithmetic; intensity = MACs / "
    "bytes moved layer by layer, as `rl summary` counts them"
)


def parse_macs(text: str) -> int:
    """``4.1G``, ``300M``, ``2.5e9`` or ``4100000000`` -> MACs."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kmgt]?)\s*(?:macs?)?\s*", text.lower())
    if not match:
        raise UsageError(f"invalid budget '{text}': expected e.g. 4.1G, 300M or 2.5e9 (MACs)")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[match.group(2)]
    if value <= 0:
        raise UsageError(f"invalid budget '{text}': must be positive")
    return round(value)


@dataclass
class Entry:
    """One row of the comparison."""

    name: str
    family: str
    knob: str  # how the model was scaled, or "stock"
    input_size: list[int]
    params: int
    macs: int
    flops: int
    activation_bytes: int
    weight_bytes: int
    stock: str | None = None  # the torchvision model this is, exactly
    top1: float | None = None  # published ImageNet-1k accuracy of its default weights (stock configs only)
    top5: float | None = None
    latency_ms: float | None = None  # batch 1, median (of a training step's forward + backward with --train)
    latency_p10_ms: float | None = None
    latency_p90_ms: float | None = None
    throughput: float | None = None  # images/s at the timing batch size
    bytes_moved: int = 0  # layer by layer, at the comparison's dtype (core.flops.TOTAL_BYTES_DEFINITION)
    intensity: float | None = None  # MACs per byte moved
    reading: str = ""  # one line: bandwidth- or compute-bound by RIDGE_MACS_PER_BYTE, and the MAC rate achieved
    pareto: bool = False  # no other row is as good on every objective of Comparison.pareto_objectives, better on one


@dataclass
class Timing:
    device: str
    threads: int
    warmup: int
    repeats: int
    batch_size: int
    dtype: str = "float32"  # of the weights and the input
    channels_last: bool | None = None  # None: channels-last for convolutional families and cards that ask for it
    train: bool = False  # time a training step (forward + backward of the sum of the logits) instead of inference


@dataclass
class Comparison:
    budget: int | None
    entries: list[Entry]
    timing: Timing | None
    convention: str
    notes: list[str] = field(default_factory=list)
    dtype: str = "float32"  # of every memory figure (weights, activations, bytes moved)
    pareto_objectives: list[str] = field(default_factory=list)
    ridge: float = RIDGE_MACS_PER_BYTE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- building at a budget ------------------------------------------------------------------------------------


def count_macs(build: Callable[[], Any], input_size: tuple[int, ...]) -> tuple[int, Any]:
    """MACs of one image, counted on the meta device, and the (meta) model."""
    import torch

    from rlcli.core.flops import profile_forward
    from rlcli.core.meta import build_on_meta

    net = build_on_meta(build).eval()
    return profile_forward(net, (torch.empty(1, *input_size, device="meta"),)).total_macs, net


def scale_family(family: str, budget: int, input_size: tuple[int, ...], groups: int = 32):
    """The family member closest to ``budget`` (within 2 %): its config, input size and MACs."""
    from rlcli.models.scaled import FamilyConfig

    if family not in FAMILIES:
        raise UsageError(f"unknown family '{family}': choose from {', '.join(FAMILIES)}")
    variants: list[tuple[dict[str, Any], tuple[int, ...]]] = [({}, input_size)]
    if family == "resnext":
        variants = [({"width_per_group": d}, input_size) for d in (4, 3, 5, 2, 6, 8)]
    elif family.startswith("mobilenet"):
        side = input_size[-1]
        variants += [({}, (input_size[0], side + step, side + step)) for step in (8, -8, 16, -16, 24, -24)]
    best = None
    for extra, size in variants:
        options = {"groups": groups if family == "resnext" else 1, **extra}
        if family == "resnext" and "width_per_group" not in options:
            options["width_per_group"] = 4
        found = _bisect_width(lambda w, o=options: FamilyConfig(family, w, **o), budget, size)
        if found is None:
            continue
        config, macs = found
        error = abs(macs - budget) / budget
        if best is None or error < best[3]:
            best = (config, size, macs, error)
        if error <= TOLERANCE:
            break
    if best is None or best[3] > TOLERANCE:
        low, high = _reachable(family, input_size, groups)
        raise RlError(
            f"cannot scale {family} to {budget / 1e9:.3g} GMACs within 2 % at {input_size[-1]} px "
            f"(its width knob reaches {low / 1e9:.3g} to {high / 1e9:.3g} GMACs)"
        )
    return best[0], best[1], best[2]


def _bisect_width(make, budget: int, size: tuple[int, ...]):
    stock = _macs_or_none(make(1.0), size)
    if stock is not None and abs(stock - budget) / budget <= TOLERANCE:
        return make(1.0), stock  # the published configuration itself is within the budget: prefer it
    low, high = WIDTH_RANGE
    low_macs, high_macs = _macs_or_none(make(low), size), _macs_or_none(make(high), size)
    while low_macs is None and low < high:  # too narrow to build: move the lower end up
        low *= 1.5
        low_macs = _macs_or_none(make(low), size)
    if low_macs is None or high_macs is None or not low_macs <= budget <= high_macs:
        return None
    best = min(((make(low), low_macs), (make(high), high_macs)), key=lambda c: abs(c[1] - budget))
    for _ in range(40):
        middle = round((low + high) / 2, 6)
        config = make(middle)
        macs = _macs_or_none(config, size)
        if macs is None:
            break
        if abs(macs - budget) < abs(best[1] - budget):
            best = (config, macs)
        if abs(macs - budget) / budget <= TOLERANCE / 4 or high - low < 1e-4:
            break
        low, high = (middle, high) if macs < budget else (low, middle)
    return best


def _macs_or_none(config, size) -> int | None:
    try:
        return count_macs(config.build, size)[0]
    except (ValueError, RuntimeError):
        return None


def _reachable(family: str, input_size: tuple[int, ...], groups: int) -> tuple[int, int]:
    from rlcli.models.scaled import FamilyConfig

    options = {"groups": groups, "width_per_group": 4} if family == "resnext" else {}
    low = WIDTH_RANGE[0]
    while (low_macs := _macs_or_none(FamilyConfig(family, low, **options), input_size)) is None:
        low *= 1.5
    return low_macs, _macs_or_none(FamilyConfig(family, WIDTH_RANGE[1], **options), input_size) or 0


# --- entries -------------------------------------------------------------------------------------------------


def _entry_from_summary(summary, *, name: str, family: str, knob: str, stock: str | None) -> Entry:
    top1 = top5 = None
    import torchvision.models as tvm

    if stock in tvm.list_models(module=tvm):  # published accuracy: torchvision's weights only
        metrics = tvm.get_model_weights(stock).DEFAULT.meta.get("_metrics", {}).get("ImageNet-1K", {})
        top1, top5 = metrics.get("acc@1"), metrics.get("acc@5")
    return Entry(
        name=name,
        family=family,
        knob=knob,
        input_size=list(summary.input_size),
        params=summary.params,
        macs=summary.macs,
        flops=summary.flops,
        activation_bytes=summary.activation_bytes,
        weight_bytes=sum(summary.param_bytes.values()),
        stock=stock,
        top1=top1,
        top5=top5,
        bytes_moved=summary.bytes_moved,
        intensity=summary.intensity,
    )


def scaled_entries(
    families: list[str], budget: int, input_size: tuple[int, ...], groups: int, dtype: str = "float32"
) -> list[tuple]:
    """(Entry, FamilyConfig, input size) for each family scaled to ``budget``: the configuration and size say how
    to build the member again (``scaled_spec``), so a cached search can time it without searching."""
    from rlcli.tasks.summary import summarize_spec

    rows = []
    for family in families:
        config, size, _ = scale_family(family, budget, input_size, groups)
        stock = config.stock_name() if size == input_size and input_size[-1] == 224 else None
        summary = summarize_spec(scaled_spec(config, size), size, depth=0, dtype=dtype)
        knob = config.describe() + ("" if size == input_size else f", input {size[-1]} px")
        entry = _entry_from_summary(summary, name=_scaled_name(config), family=family, knob=knob, stock=stock)
        rows.append((entry, config, size))
    return rows


def scaled_spec(config, size: tuple[int, ...]):
    """A family member as a model spec (not registered), built from its configuration at ``size``."""
    from rlcli.models.cards import ModelCard
    from rlcli.models.registry import ModelSpec

    card = ModelCard(
        name=_scaled_name(config), family=config.family, source="rlcli", task="image-classification", default_input=size
    )
    return ModelSpec(card=card, builder=lambda input_size, c=config, **kw: c.build(**kw))


def default_budget(size: tuple[int, ...]) -> tuple[int, str]:
    """ResNet-50's MACs at ``size``, and the note that says the budget is that."""
    from rlcli.models.scaled import FamilyConfig

    return count_macs(FamilyConfig("resnet", 1.0).build, size)[0], "budget: ResNet-50's MACs at this input size"


def time_rows(rows: list[tuple], timing: Timing, progress: Callable[[str, int, int], None] | None) -> None:
    """Time each (Entry, spec) row on ``timing.threads`` threads (restored afterwards)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(timing.threads)
    try:
        for entry, spec in rows:
            time_model(spec, entry, timing, progress)
    finally:
        torch.set_num_threads(previous)


def _scaled_name(config) -> str:
    from rlcli.models.scaled import scaled_group_width

    if config.stock_name():
        return config.stock_name()
    if config.family == "resnext":
        return f"resnext50-{config.groups}x{scaled_group_width(config)}d-w{config.width:.3f}"
    if config.family == "resnet":
        return f"resnet50-w{config.width:.3f}"
    return f"{config.family.replace('_', '-')}-w{config.width:.3f}"


def named_entries(names: list[str], input_size: str | None, dtype: str = "float32") -> list[tuple]:
    """(Entry, spec) for registry models as they are; figures are exactly `rl summary`'s."""
    from rlcli.models.registry import get_spec
    from rlcli.tasks.summary import summarize

    rows = []
    for name in names:
        spec = get_spec(name, user_code=True)  # typed on the command line
        if spec.card.task not in ("image-classification", "unknown"):
            raise UsageError(f"{name} is a {spec.card.task} model; rl compare times image classifiers")
        summary = summarize(name, input_size=input_size, depth=0, dtype=dtype)
        stock = name if spec.card.source == "torchvision" and input_size is None else None
        entry = _entry_from_summary(summary, name=name, family=spec.card.family, knob="stock", stock=stock)
        rows.append((entry, spec))
    return rows


# --- timing --------------------------------------------------------------------------------------------------


def time_model(spec, entry: Entry, timing: Timing, progress: Callable[[str, int, int], None] | None = None) -> None:
    """Latency at batch 1 (median, 10th and 90th percentiles) and throughput at ``timing.batch_size``: of inference,
    or with ``timing.train`` of a training step (forward in training mode, backward of the logits' sum)."""
    import torch

    device = torch.device(timing.device)
    dtype = getattr(torch, timing.dtype)
    size = tuple(entry.input_size)
    torch.manual_seed(0)
    net = spec.build(size).train(timing.train).to(device=device, dtype=dtype)
    channels_last = timing.channels_last
    if channels_last is None:
        channels_last = spec.card.channels_last or entry.family in FAMILIES
    memory_format = torch.channels_last if channels_last and len(size) == 3 else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    single = torch.randn(1, *size, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    batch = torch.randn(timing.batch_size, *size, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    steps = timing.warmup + timing.repeats + timing.warmup + max(3, timing.repeats // 2)
    done = 0

    def run(x):
        nonlocal done
        started = time.perf_counter()
        if timing.train:
            net(x).sum().backward()
            net.zero_grad(set_to_none=True)
        else:
            net(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        done += 1
        if progress:
            progress(f"timing {entry.name}", done, steps)
        return time.perf_counter() - started

    try:
        with torch.enable_grad() if timing.train else torch.inference_mode():
            for _ in range(timing.warmup):
                run(single)
            latencies = sorted(run(single) * 1000 for _ in range(timing.repeats))
            for _ in range(timing.warmup):
                run(batch)
            seconds = [run(batch) for _ in range(max(3, timing.repeats // 2))]
    except (RuntimeError, ValueError) as exc:  # a training step at batch 1 that batch norm refuses, for one
        what = "a training step" if timing.train else "inference"
        raise ModelRunError(f"cannot time {what} of {entry.name} at input {'x'.join(map(str, size))}: {exc}") from exc
    entry.latency_ms = statistics.median(latencies)
    entry.latency_p10_ms = _percentile(latencies, 0.1)
    entry.latency_p90_ms = _percentile(latencies, 0.9)
    entry.throughput = timing.batch_size / statistics.median(seconds)


def _percentile(ordered: list[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- the whole comparison ------------------------------------------------------------------------------------


def compare(
    models: list[str] | None = None,
    *,
    budget: str | None = None,
    families: list[str] | None = None,
    groups: int = 32,
    input_size: str | None = None,
    timing: Timing | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    dtype: str = "float32",
) -> Comparison:
    """Named models as they are, or one member of each family at ``budget`` (default: ResNet-50's MACs).

    ``dtype``: of the weights for every memory figure (and of the timing, which ``timing.dtype`` states)."""
    from rlcli.core.flops import CONVENTION
    from rlcli.core.shapes import parse_input_size

    if groups < 1:
        raise UsageError("--groups must be at least 1")
    notes = []
    if models:
        if budget is not None or families:
            raise UsageError("name models, or give --macs/--families, not both")
        rows = named_entries(models, input_size, dtype)
        target = None
    else:
        size = parse_input_size(input_size, (3, 224, 224)) if input_size else (3, 224, 224)
        chosen = families or list(FAMILIES)
        unknown = [f for f in chosen if f not in FAMILIES]
        if unknown:
            raise UsageError(f"unknown family '{unknown[0]}': choose from {', '.join(FAMILIES)}")
        if budget is None:
            target, note = default_budget(size)
            notes.append(note)
        else:
            target = parse_macs(budget)
        rows = [(e, scaled_spec(c, s)) for e, c, s in scaled_entries(chosen, target, size, groups, dtype)]
    if timing is not None:
        time_rows(rows, timing, progress)
    result = Comparison(
        budget=target, entries=[e for e, _ in rows], timing=timing, convention=CONVENTION, notes=notes, dtype=dtype
    )
    return annotate(result)


# --- reading the result --------------------------------------------------------------------------------------


def annotate(result: Comparison) -> Comparison:
    """Each row's one-line reading and the Pareto-optimal rows (idempotent: a cached search is annotated after
    timing)."""
    for entry in result.entries:
        entry.reading = reading(entry, result.timing)
    result.pareto_objectives = pareto_objectives(result.entries)
    for entry, optimal in zip(result.entries, pareto_optimal(result.entries, result.pareto_objectives), strict=True):
        entry.pareto = optimal
    return result


def reading(entry: Entry, timing: Timing | None) -> str:
    """``bandwidth-bound: 4.6 MACs/byte`` (by RIDGE_MACS_PER_BYTE), with the MAC rate achieved when timed."""
    if entry.intensity is None:
        return ""
    bound = "bandwidth-bound" if entry.intensity < RIDGE_MACS_PER_BYTE else "compute-bound"
    text = f"{bound}: {entry.intensity:.1f} MACs/byte"
    if entry.latency_ms and not (timing is not None and timing.train):
        text += f", {entry.macs / entry.latency_ms / 1e6:.1f} GMAC/s achieved at batch 1"
    return text


#: The objectives a row can be Pareto-optimal on: the attribute, the direction and the words for it.
OBJECTIVES = {
    "latency": ("latency_ms", min),
    "top-1": ("top1", max),
    "MACs": ("macs", min),
    "params": ("params", min),
}


def pareto_objectives(entries: list[Entry]) -> list[str]:
    """Latency when timed and top-1 when every row has one; MACs beside either alone; MACs and params without."""
    chosen = []
    if entries and all(e.latency_ms is not None for e in entries):
        chosen.append("latency")
    if entries and all(e.top1 is not None for e in entries):
        chosen.append("top-1")
    if len(chosen) < 2:
        chosen.append("MACs")
    if len(chosen) < 2:
        chosen.append("params")
    return chosen


def pareto_optimal(entries: list[Entry], objectives: list[str]) -> list[bool]:
    """For each row: whether no other row is at least as good on every objective and better on one."""

    def key(entry: Entry) -> list[float]:
        values = []
        for name in objectives:
            attribute, best = OBJECTIVES[name]
            value = getattr(entry, attribute)
            values.append(value if best is min else -value)
        return values

    def dominates(other: list[float], mine: list[float]) -> bool:
        return other != mine and all(o <= m for o, m in zip(other, mine, strict=True))

    keys = [key(e) for e in entries]
    return [not any(dominates(other, mine) for other in keys) for mine in keys]
