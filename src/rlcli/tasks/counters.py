"""Other counters beside rl's (``rl summary --counter all``): fvcore, torch's FlopCounterMode, torchinfo.

Each runs as its users run it, on the CPU with real weights (seed 0) and the summary's input, and reports its MACs
per row (by the rows' module names), its total and the operators with work it counts as zero. A counter that fails
or cannot take the input has an ``error`` instead; the others go on.
"""

from __future__ import annotations

import collections
import importlib.metadata
import warnings
from typing import Any

from rlcli.tasks.summary import FVCORE_CONVENTION, CounterResult

FLOP_COUNTER_MODE_CONVENTION = (
    "torch.utils.flop_counter.FlopCounterMode with torch's defaults on the CPU: torch's formulas (FLOPs, halved "
    "here to MACs) for matmuls, convolutions and attention kernels; an operator without a formula, after torch's "
    "own decompositions, counts as zero"
)

TORCHINFO_CONVENTION = (
    "torchinfo's convention: for each module without submodules, its parameters times its output positions (the "
    "batch for linear layers, batch x spatial positions for convolutions); work outside modules with weights "
    "(functional matmuls, attention) counts as zero"
)


def other_counters(request, summary) -> list[CounterResult]:
    """fvcore's, FlopCounterMode's and (when installed) torchinfo's figures for the summary's model and input."""
    from rlcli.tasks.summary import cpu_model

    names = [layer.name for layer in summary.layers]
    net, feed = cpu_model(request)
    results = [
        fvcore_count(net, feed, names, request.where),
        flop_counter_mode_count(net, feed, names),
    ]
    if _installed("torchinfo"):
        results.append(torchinfo_count(net, feed, names))
    return results


def _installed(package: str) -> bool:
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _failure(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def fvcore_count(net, feed, names: list[str], where: str) -> CounterResult:
    """fvcore's FlopCountAnalysis (one fused multiply-add = one flop), by module; ``ignored``: its unsupported ops."""
    result = CounterResult(
        counter="fvcore",
        version=_version("fvcore"),
        convention=FVCORE_CONVENTION,
        counted_on="cpu",
        macs=None,
        ignored_note="operators fvcore has no handle for, counted as zero",
    )
    if feed.kwargs:
        result.error = "fvcore takes positional inputs only (it traces with torch.jit)"
        return result
    import torch
    from fvcore.nn import FlopCountAnalysis

    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(net, feed.args)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            by_module = dict(analysis.by_module())
            unsupported = analysis.unsupported_ops()
    except Exception as exc:
        result.error = _failure(exc)
        return result
    result.macs = int(by_module.get("", 0))
    result.by_layer = {name: int(by_module[name]) if name in by_module else None for name in names}
    result.ignored = dict(sorted(unsupported.items(), key=lambda item: (-item[1], item[0])))
    return result


def flop_counter_mode_count(net, feed, names: list[str]) -> CounterResult:
    """torch's FlopCounterMode as users run it (no_grad, torch's default attention kernels and fast paths).

    ``ignored``: operators that ran under it (after its decompositions) without a formula in its registry and that
    do work under rl's convention (attention kernels, fused fast paths, operators rl has no formula for either).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    result = CounterResult(
        counter="FlopCounterMode",
        version=torch.__version__,
        convention=FLOP_COUNTER_MODE_CONVENTION,
        counted_on="cpu",
        macs=None,
        ignored_note="operators without a formula in torch's registry that do work (rl counts or warns of them)",
    )
    recorder = _OperatorRecorder()
    try:
        with torch.no_grad(), recorder, FlopCounterMode(display=False) as counter:
            net(*feed.args, **feed.kwargs)
    except Exception as exc:
        result.error = _failure(exc)
        return result
    counts = {module: sum(flops.values()) // 2 for module, flops in counter.get_flop_counts().items()}
    root = type(net).__name__
    result.macs = int(counts.get("Global", 0))
    result.by_layer = {name: counts.get(f"{root}.{name}" if name else root, 0) for name in names}
    if result.by_layer.get("") == 0 and result.macs:
        result.by_layer[""] = result.macs
    from rlcli.core.opkinds import NOT_COUNTED, op_kind, op_name

    ignored = collections.Counter()
    for func, calls in recorder.calls.items():
        if func._overloadpacket not in flop_registry and op_kind(func) != NOT_COUNTED:
            ignored[op_name(func)] += calls
    result.ignored = dict(sorted(ignored.items(), key=lambda item: (-item[1], item[0])))
    return result


class _OperatorRecorder:
    """A dispatch mode below FlopCounterMode: the operators that actually ran, after its decompositions."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        calls: collections.Counter[Any] = collections.Counter()

        class Recorder(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                calls[func] += 1
                return func(*args, **(kwargs or {}))

        self.calls = calls
        self._mode = Recorder()

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def torchinfo_count(net, feed, names: list[str]) -> CounterResult:
    """torchinfo's mult-adds: per row, the sum over the modules without submodules inside it (its own total)."""
    result = CounterResult(
        counter="torchinfo",
        version=_version("torchinfo"),
        convention=TORCHINFO_CONVENTION,
        counted_on="cpu",
        macs=None,
        ignored_note="torchinfo counts modules, not operators: no operator-level count",
    )
    import torchinfo

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            statistics = torchinfo.summary(
                net, input_data=list(feed.args), verbose=0, depth=10_000, device="cpu", mode="eval", **feed.kwargs
            )
    except Exception as exc:
        result.error = _failure(exc)
        return result
    by_module: collections.Counter[int] = collections.Counter()
    for layer in statistics.summary_list:
        if layer.is_leaf_layer:
            by_module[id(layer.module)] += int(layer.macs)
    result.macs = int(statistics.total_mult_adds)
    for name in names:
        module = net.get_submodule(name) if name else net
        result.by_layer[name] = sum(by_module[id(m)] for m in _distinct_modules(module))
    return result


def _distinct_modules(module) -> list:
    return list({id(m): m for m in module.modules()}.values())
