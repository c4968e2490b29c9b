"""`rl swa-merge`: Stochastic Weight Averaging of checkpoints (Izmailov et al., 2018), streaming.

w_swa = sum_i a_i w_i / sum_i a_i, with a_i = 1 for the paper's uniform average. One checkpoint is in memory at a
time (memory-mapped where the format allows) beside one float64 accumulator, so peak memory does not grow with the
number of inputs. Integer and bool tensors (BatchNorm's ``num_batches_tracked``) are counters, not weights: they
are taken from the last checkpoint with a non-zero weight. Floating tensors stored in different dtypes are written
in their type promotion. Averaged weights make BatchNorm statistics stale; with image data they are recomputed in
one pass, as ``torch.optim.swa_utils.update_bn`` does.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlcli.core.checkpoints import (
    SAFETENSORS_SUFFIX,
    TORCH_SUFFIXES,
    Checkpoint,
    CheckpointInfo,
    describe_mismatch,
    drop_mapped_pages,
    find_state_dict,
    list_some,
    load_checkpoint,
    save_checkpoint,
    save_torch_file,
    strip_wrapper_prefixes,
)
from rlcli.core.files import WrittenFile, cannot_write, check_output_file
from rlcli.errors import CheckpointError, RlError, UsageError

Progress = Callable[[str, int, int], None]
CHECKPOINT_SUFFIXES = (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)


@dataclass
class MergeReport:
    inputs: list[str]
    weights: list[float]  # normalised to sum to 1
    weighted: bool
    ema: bool  # every input's EMA weights were averaged (--ema, and they all have them)
    averaged: int  # floating tensors averaged in float64
    copied: list[str]  # integer/bool tensors taken from the last input with a non-zero weight
    output: str
    output_format: str
    output_bytes: int
    sha256: str
    keep_structure: bool
    bn_recomputed: bool = False
    bn_layers: int = 0
    bn_images: int = 0
    notes: list[str] = field(default_factory=list)
    # Floating tensors whose dtype differs between inputs: name -> {"inputs": dtypes in order of appearance,
    # "written": their type promotion}.
    promoted: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_inputs(arguments: list[str]) -> list[Path]:
    """Files as given, folders expanded to the checkpoints directly inside them, quoted globs expanded; order
    kept, natural within a folder or glob (``epoch_2`` before ``epoch_10``). Any unusable argument is an error:
    an average over fewer checkpoints than asked would be silently wrong."""
    from rlcli.core.inputs import Problem, expand_inputs

    found = expand_inputs(arguments, suffixes=frozenset(CHECKPOINT_SUFFIXES), recursive=False, what="checkpoints")
    problems = [item for item in found if isinstance(item, Problem)]
    if problems:
        raise RlError(f"{problems[0].path}: {problems[0].reason}")
    return [item for item in found if isinstance(item, Path)]


def parse_weights(text: str | None, count: int) -> list[float] | None:
    """``"0.2,0.3,0.5"`` -> raw (not yet normalised) weights, one per input."""
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"invalid --weights '{text}': expected numbers separated by commas") from None
    if len(values) != count:
        raise UsageError(f"--weights has {len(values)} values for {count} checkpoints")
    check_weights(values)
    return values


def check_weights(values: list[float]) -> None:
    """Every weight finite and non-negative, their sum positive and finite (it divides the sums: 1e308 + 1e308
    overflows to inf, and the average would become zeros or NaN)."""
    if not all(math.isfinite(v) for v in values) or not math.isfinite(sum(values)):
        raise UsageError("--weights must be finite numbers with a finite sum")
    if any(v < 0 for v in values) or sum(values) <= 0:
        raise UsageError("--weights must be non-negative with a positive sum")


def merge_checkpoints(
    inputs: list[Path],
    output: Path,
    *,
    weights: list[float] | None = None,
    prefer_ema: bool = False,
    keep_structure: bool = False,
    force: bool = False,
    bn_data: Path | None = None,
    model: str | None = None,
    bn_batch_size: int = 32,
    progress: Progress | None = None,
) -> MergeReport:
    """Average ``inputs`` into ``output``; every check runs before any work, and nothing is written on failure.

    Example:
        >>> merge_checkpoints(sorted(Path("ckpt").glob("*.pt")), Path("swa.pt")).sha256
        '3f1c...'
    """
    report = _noop if progress is None else progress
    if not inputs:
        raise UsageError("no checkpoints given")
    raw_weights = weights or [1.0] * len(inputs)
    if len(raw_weights) != len(inputs):
        raise UsageError(f"{len(raw_weights)} weights for {len(inputs)} checkpoints")
    check_weights(raw_weights)
    _check_output(output, inputs, force=force, keep_structure=keep_structure)
    if bn_data is not None:
        bn_images = _bn_images(bn_data)

    merged = _accumulate(inputs, raw_weights, prefer_ema, report)
    layout, source = merged.layout, merged.source
    copied = [name for name, (_, dtype) in layout.items() if not dtype.is_floating_point]
    counters = {name: source.state_dict[name].clone() for name in copied}
    info = source.info
    structure = source if keep_structure else None
    # The source's pages were all read while adding it; letting it go now keeps them out of the peak.
    del source
    merged.source = None
    averaged = _finish_average(merged.sums, sum(raw_weights), layout, counters)
    notes = []
    if weights is not None:
        total = sum(raw_weights)
        notes.append(f"weights normalised to sum to 1 (divided by {total:g})")
    if copied:
        notes.append(f"{len(copied)} integer/bool tensors taken from the last input with a non-zero weight")
    if prefer_ema and not merged.ema:
        notes.append("--ema: no input has EMA weights; their raw weights were averaged")

    result = {"bn_layers": 0, "bn_images": 0}
    if bn_data is not None:
        if model is None and not (info and info.arch):
            raise UsageError("--bn-data needs the architecture: pass --model, or merge rlcli checkpoints")
        result = _recompute_batchnorm(averaged, model, info, bn_images, bn_batch_size, report)

    written, replaced = _write(output, averaged, info, structure, prefer_ema, overwrite=force)
    if replaced:
        notes.append(
            f"--keep-structure --ema: the raw weights under {replaced[0]!r} were replaced by the average written "
            f"under {replaced[1]!r} (the last input's raw weights are not kept), so that every reader of the file, "
            f"rl included, gets the average"
        )
    total = sum(raw_weights)
    return MergeReport(
        inputs=[str(p) for p in inputs],
        weights=[w / total for w in raw_weights],
        weighted=weights is not None,
        ema=merged.ema,
        averaged=len(layout) - len(copied),
        copied=copied,
        promoted=merged.promoted,
        output=str(output),
        output_format="safetensors" if output.suffix == SAFETENSORS_SUFFIX else "torch",
        output_bytes=written.size,
        sha256=written.sha256,
        keep_structure=keep_structure,
        bn_recomputed=bn_data is not None,
        bn_layers=result["bn_layers"],
        bn_images=result["bn_images"],
        notes=notes,
    )


def _noop(stage: str, done: int, total: int) -> None:
    return None


def _check_output(output: Path, inputs: list[Path], *, force: bool, keep_structure: bool) -> None:
    if output.suffix not in CHECKPOINT_SUFFIXES:
        raise UsageError(f"output {output}: use .safetensors or one of {', '.join(TORCH_SUFFIXES)}")
    if keep_structure and output.suffix == SAFETENSORS_SUFFIX:
        raise UsageError("--keep-structure needs a torch output (.pt/.pth): safetensors holds flat tensors only")
    if not force and any(output.resolve() == p.resolve() for p in inputs):
        raise cannot_write(output, "it is one of the inputs (use --force to replace it)")
    # A folder that refuses new files, a folder in the way, an existing output: said now, not after the work.
    check_output_file(output, force=force)


Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]


@dataclass
class _Accumulated:
    layout: Layout  # the tensors to write: shapes, and dtypes promoted over all inputs
    sums: dict[str, torch.Tensor]  # weighted float64 sums of the floating tensors
    promoted: dict[str, dict[str, Any]]  # see MergeReport.promoted
    # The last input with a non-zero weight: the counters, the rlcli description and --keep-structure's nesting
    # come from it, never from an input that does not count towards the average.
    source: Checkpoint | None
    ema: bool  # the inputs' EMA weights were averaged


def _accumulate(inputs: list[Path], weights: list[float], prefer_ema: bool, report: Progress) -> _Accumulated:
    """Check every checkpoint against the first and add its floating tensors, weighted, into float64 sums.

    Each file is unpickled once (the safe unpickler dominates load time). While one checkpoint is being read and
    checked, a worker thread adds the previous one into the sums (``add_`` releases the GIL), so at most two
    checkpoints are open at a time besides the source (see ``_Accumulated``); torch files are memory-mapped and
    only read as they are added. An input with weight 0 is checked but not added (0 * inf would be NaN). A
    mismatch stops everything before anything is written.
    """
    reference: Layout = {}
    sums: dict[str, torch.Tensor] = {}
    source: Checkpoint | None = None
    floating: dict[str, list[torch.dtype]] = {}  # each floating tensor's dtypes, in order of appearance
    with_ema: list[Path] = []
    with ThreadPoolExecutor(max_workers=1) as adder:
        pending: Future | None = None
        for index, (path, weight) in enumerate(zip(inputs, weights, strict=True)):
            checkpoint = load_checkpoint(path, prefer_ema=prefer_ema)
            if prefer_ema:
                with_ema += [path] if checkpoint.from_ema else []
                if with_ema and len(with_ema) != index + 1:
                    _refuse_mixed_ema(inputs, with_ema, index)
            layout = {name: (tuple(t.shape), t.dtype) for name, t in checkpoint.state_dict.items()}
            if index == 0:
                reference = layout
                sums = {
                    n: torch.zeros(shape, dtype=torch.float64)
                    for n, (shape, dt) in layout.items()
                    if dt.is_floating_point
                }
            else:
                _compare_layouts(inputs[0], reference, path, layout)
            for name, (_, dtype) in layout.items():
                if dtype.is_floating_point and dtype not in floating.setdefault(name, []):
                    floating[name].append(dtype)
            if weight == 0:
                report("averaging", index + 1, len(inputs))
                continue
            if pending is not None:
                pending.result()  # bound memory: the previous checkpoint is fully added before this one starts
            source = None  # and then let it go, mapped pages and all
            pending = adder.submit(_add_into, sums, checkpoint, weight)
            source = checkpoint
            report("averaging", index + 1, len(inputs))
        if pending is not None:
            pending.result()
    assert source is not None  # check_weights: the sum of the weights is positive
    layout, promoted = _promote(reference, floating)
    return _Accumulated(layout, sums, promoted, source, ema=bool(with_ema))


def _refuse_mixed_ema(inputs: list[Path], with_ema: list[Path], index: int) -> None:
    """Some inputs have EMA weights and some do not: the average would mix two different kinds of weights.
    The inputs not yet read are opened too (unpickled, not averaged), so that the message names all of them."""
    for path in inputs[index + 1 :]:
        if load_checkpoint(path, prefer_ema=True).from_ema:
            with_ema.append(path)
    without = [p.name for p in inputs if p not in with_ema]
    having = [p.name for p in with_ema]
    raise CheckpointError(
        f"--ema: {list_some(having)} {'has' if len(having) == 1 else 'have'} EMA weights and {list_some(without)} "
        f"{'has' if len(without) == 1 else 'have'} none; averaging EMA weights with raw ones would mix two kinds of "
        f"weights (merge without --ema to average the raw weights); nothing written"
    )


def _promote(layout: Layout, floating: dict[str, list[torch.dtype]]) -> tuple[Layout, dict[str, dict[str, Any]]]:
    """A floating tensor stored in several dtypes is written in their type promotion (``torch.promote_types``:
    float16 + float32 -> float32, bfloat16 + float16 -> float32), which holds every input's values without
    loss; the others keep their dtype."""
    promoted: dict[str, dict[str, Any]] = {}
    result = dict(layout)
    for name, dtypes in floating.items():
        if len(dtypes) > 1:
            written = functools.reduce(torch.promote_types, dtypes)
            result[name] = (layout[name][0], written)
            promoted[name] = {"inputs": [_dtype_name(d) for d in dtypes], "written": _dtype_name(written)}
    return result, promoted


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_floating_point:
        return "floating"
    return "complex" if dtype.is_complex else "integer"


def _add_into(sums: dict[str, torch.Tensor], checkpoint: Checkpoint, weight: float) -> None:
    for name, total in sums.items():
        # add_ promotes each float32/16 tensor into the float64 sum without a temporary copy.
        total.add_(checkpoint.state_dict[name], alpha=weight)
        drop_mapped_pages(checkpoint, checkpoint.state_dict[name])  # so that a whole checkpoint is never resident


def _compare_layouts(first: Path, reference: Layout, path: Path, layout: Layout) -> None:
    """Same names and shapes as the first checkpoint, and each tensor of the same kind: floating tensors are
    averaged and integer/bool ones copied, so a tensor that is floating in one input and not in another has no
    meaning as either. Floating dtypes may differ (see ``_promote``)."""
    expected = {name: shape for name, (shape, _) in reference.items()}
    found = {name: shape for name, (shape, _) in layout.items()}
    problems = describe_mismatch(expected, found, f"{{found}} here vs {{expected}} in {first.name}")
    kinds = [
        f"{name}: {_dtype_name(dtype)} here vs {_dtype_name(reference[name][1])} in {first.name}"
        for name, (_, dtype) in layout.items()
        if name in reference and _kind(dtype) != _kind(reference[name][1])
    ]
    if kinds:
        problems = "; ".join([*([problems] if problems else []), f"dtype mismatch {len(kinds)} ({list_some(kinds)})"])
    if problems:
        raise CheckpointError(f"{path} does not match {first}: {problems}; nothing written")


def _finish_average(
    sums: dict[str, torch.Tensor], weight_sum: float, layout: Layout, counters: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Divide the sums and cast back to each tensor's dtype; integer and bool tensors are ``counters``."""
    averaged: dict[str, torch.Tensor] = {}
    non_finite = []
    for name, (_, dtype) in layout.items():
        if name in sums:
            # Converting entry by entry frees each float64 sum as its output tensor is made: peak stays ~2x.
            value = sums.pop(name).div_(weight_sum).to(dtype)
            if not torch.isfinite(value).all():
                non_finite.append(name)
        else:
            value = counters[name]
        averaged[name] = value
    if non_finite:
        raise CheckpointError(f"the average has non-finite values in {list_some(non_finite)}; nothing written")
    return averaged


def _bn_images(folder: Path) -> list[Path]:
    from rlcli.core.images import IMAGE_SUFFIXES
    from rlcli.core.inputs import Problem, expand_inputs

    found = expand_inputs([str(folder)], suffixes=IMAGE_SUFFIXES, what="images")
    problems = [item for item in found if isinstance(item, Problem)]
    if problems:
        raise RlError(f"--bn-data {problems[0].path}: {problems[0].reason}")
    return [item for item in found if isinstance(item, Path)]


def _recompute_batchnorm(
    state: dict[str, torch.Tensor],
    arch: str | None,
    info: CheckpointInfo | None,
    images: list[Path],
    batch_size: int,
    report: Progress,
) -> dict[str, int]:
    """Reset BN statistics and re-estimate them with one pass over ``images``, as ``update_bn`` does: cumulative
    averages (momentum None) in training mode, the model and its preprocessing resolved exactly as `rl classify`
    resolves them (a fine-tuned head, the checkpoint's own preprocessing)."""
    from torch import nn

    from rlcli.core.inference import InferenceModel, RunOptions, forward_batches
    from rlcli.models.loading import architecture_of, build_with_weights, preprocess_for

    source = "the averaged weights"
    spec = architecture_of(arch, info, source)
    net = build_with_weights(spec, state, info, source)
    norms = {name: m for name, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if not norms:
        raise RlError(f"--bn-data given, but {spec.card.name} has no BatchNorm layers")
    preprocess = preprocess_for(spec, info, source)
    if preprocess is None:
        raise RlError(f"--bn-data given, but {spec.card.name} does not take images")
    for norm in norms.values():
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over every batch, as update_bn computes it
    runner = InferenceModel.prepare(
        spec.card.name,
        net,
        preprocess,
        device=torch.device("cpu"),
        dtype=torch.float32,
        channels_last=False,
        train=True,
    )
    options = RunOptions(
        batch_size=batch_size,
        workers=min(4, os.cpu_count() or 1),  # decoding overlaps the BN forward passes, as in rl classify
        on_progress=lambda done, total: report("batchnorm", done, total),
    )
    for batch, _ in forward_batches(runner, list(images), options):
        if batch.problems:
            # Every image must count towards the statistics: a skipped one would change them silently.
            raise RlError(f"--bn-data {batch.problems[0].path}: {batch.problems[0].reason}")
    fresh = net.state_dict()
    for name in norms:
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            key = f"{name}.{buffer}"
            if key in state:
                state[key] = fresh[key].to(state[key].dtype)
    return {"bn_layers": len(norms), "bn_images": len(images)}


def _write(
    output: Path,
    state: dict[str, torch.Tensor],
    info: CheckpointInfo | None,
    structure_from: Checkpoint | None,
    prefer_ema: bool,
    *,
    overwrite: bool,
) -> tuple[WrittenFile, tuple[str, str] | None]:
    """Write the average; with a structure, in its nesting. Returns the file, and (raw key, EMA key) when the
    structure's raw weights were replaced by the averaged EMA weights."""
    # Published only if the output is still free (unless --force): a file that appeared since the check before
    # the work, such as another run's result, is never replaced.
    if structure_from is None or structure_from.raw is None or structure_from.container_key is None:
        return save_checkpoint(output, state, info, overwrite=overwrite), None
    # Keep the source's nesting and its own key names (prefixes included); swap in the averaged tensors.
    original, key = find_state_dict(structure_from.raw, prefer_ema=prefer_ema)
    payload = dict(structure_from.raw)
    payload[key] = _in_names_of(original, state) or state
    replaced = None
    raw, raw_key = find_state_dict(structure_from.raw)
    if raw_key != key and raw_key is not None:
        # rl (load_checkpoint) and most training code read the raw weights first: left as they are, they would be
        # the source's own weights and the EMA average would be invisible. They get the same average.
        payload[raw_key] = _in_names_of(raw, state) or payload[key]
        replaced = (raw_key, key)
    return save_torch_file(output, payload, overwrite=overwrite), replaced


def _in_names_of(original: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict | None:
    """``state`` under ``original``'s own key names (``module.`` prefixes and all), or None if its tensors are
    not the same set."""
    names = {stripped: name for name, stripped in zip(original, strip_wrapper_prefixes(original), strict=True)}
    if set(names) != set(state):
        return None
    return {names[name]: tensor for name, tensor in state.items()}
