"""`rl summary MODEL...`: layer table, parameters, MACs/FLOPs and memory."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

import typer

from rlcli import __version__
from rlcli.cli._common import (
    Column,
    OutputFormat,
    choose_format,
    print_csv,
    print_json,
    print_table,
    si,
    size_bytes,
    thousands,
    warn,
)
from rlcli.cli._completion import complete_model_name

if TYPE_CHECKING:
    from rlcli.tasks.summary import ModelSummary

HELP = """Show a model's layers, parameters, MACs/FLOPs and memory, counted without allocating weights.

MODEL is a name from `rl models`, timm/NAME or hf/NAME (the optional zoos), a Hugging Face model folder, an rl
checkpoint file (model.pt, model.safetensors: the architecture, arguments and input it records), or a
`package.module:callable` or `path/to/file.py:callable` that returns an nn.Module. The model is built on the meta
device: vit_h_14 costs no more memory than resnet18. A forward pass that reads tensor values (.item(), nonzero) is
counted on the CPU instead, and the footer says why and at what cost.
torchvision's detectors stay on the meta device: their selections (score thresholds, NMS) keep every candidate, so
heads are counted at the model's caps, and the steps that read values (pasting masks) run on real tensors; the
footer says which, and what they cost in memory.

Examples:

\b
  rl summary swin_t
  rl summary vit_b_16 --input-size 3x384x384 --depth 2
  rl summary resnet50 resnext50_32x4d mobilenet_v3_large --depth 0
  rl summary maskrcnn_resnet50_fpn --input-size 3x512x512
  rl summary mynets.py:TinyNet --input-size 1x28x28 --json
"""


# Result cache (issue 17): what --no-cache bypasses.
CACHE_HELP = (
    "Count afresh, neither reading nor writing the result cache. Results of models of `rl models` are kept in "
    "$XDG_CACHE_HOME/rlcli (default ~/.cache/rlcli), keyed by every option but --depth and by the versions of "
    "rl, torch and torchvision, so a repeated summary needs no torch import; your own models (module:callable, "
    "file.py:callable), Hugging Face folders and timm/ names are never cached. `rl cache info|clear` manages it."
)


class Counter(str, Enum):
    rlcli = "rlcli"
    fvcore = "fvcore"
    all = "all"


class MemoryDType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Optimizer(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


def register(app: typer.Typer) -> None:
    app.command("summary", help=HELP)(summary_command)


def summary_command(
    models: list[str] = typer.Argument(
        ...,
        metavar="MODEL",
        help="Model names, timm/ or hf/ names, folders, rl checkpoint files, or module:callable references.",
        autocompletion=complete_model_name,
    ),
    input_size: str | None = typer.Option(
        None,
        "--input-size",
        "-i",
        help="One sample's shape, without the batch: C x H x W for image models (3x384x384, or 384 for a square), "
        "tokens for language models, and exactly the shape given for your own model (10, 16x8, 1x28x28); "
        "default: the model's own.",
    ),
    inputs: str | None = typer.Option(
        None,
        "--inputs",
        help="Several inputs instead, space-separated [NAME=]SHAPE[:DTYPE] per sample ([SHAPE] = a list of one "
        "tensor per sample), e.g. 'input_ids=128:int64 attention_mask=128:int64'; or a .json file.",
    ),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Batch of the example input."),
    depth: int = typer.Option(3, "--depth", "-d", min=0, help="Deepest module level shown (0 = totals only)."),
    counter: Counter = typer.Option(
        Counter.rlcli,
        "--counter",
        help="rlcli: torchvision's convention, on meta; fvcore: fvcore's, on the CPU; all: rl's count beside "
        "fvcore's, torch's FlopCounterMode's and torchinfo's (when installed) per row, with the ops each ignores.",
    ),
    dtype: MemoryDType = typer.Option(
        MemoryDType.float32,
        "--dtype",
        help="The weights' and float inputs' dtype: every memory figure (weights, activations, bytes moved, "
        "gradients, optimizer state) is counted at it.",
    ),
    train: bool = typer.Option(
        False,
        "--train",
        help="The cost of one training step: backward MACs (counted on meta), gradient and optimizer-state memory, "
        "per row and in total.",
    ),
    optimizer: Optimizer | None = typer.Option(
        None, "--optimizer", help="The optimizer whose state --train counts (default adamw)."
    ),
    by_op: bool = typer.Option(False, "--by-op", help="A second table by aten operator: calls, MACs, share."),
    row: str | None = typer.Option(
        None,
        "--row",
        metavar="NAME",
        help="With --by-op: the operators of this row only (as named in the Layer column).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document with every layer."),
    csv_out: bool = typer.Option(False, "--csv", help="Print the layer table as CSV."),
    # Result cache (issue 17, tasks/cached.py): the option, and the call through summarize_cached below, which
    # keys the cache by every keyword it passes on to summarize (all but depth).
    no_cache: bool = typer.Option(False, "--no-cache", help=CACHE_HELP),
) -> None:
    from rlcli.tasks.cached import summarize_cached

    fmt = choose_format(json_out, csv_out)
    summaries = [
        summarize_cached(
            name,
            use_cache=not no_cache,
            input_size=input_size,
            inputs=inputs,
            batch_size=batch_size,
            depth=depth,
            counter=counter.value,
            dtype=dtype.value,
            train=train,
            optimizer=optimizer.value if optimizer else None,
            by_op=by_op or row is not None,
            op_row=row,
        )
        for name in models
    ]
    for summary in summaries:
        _warn_no_formula(summary)
    if fmt == OutputFormat.json:
        print_json({"rlcli": __version__, "models": [s.to_dict() for s in summaries]})
    elif fmt == OutputFormat.csv:
        print_csv(*layer_csv(summaries))
    else:
        for summary in summaries:
            print_table(layer_columns(summary), layer_rows(summary), title=title(summary), footer=footer(summary))
            if summary.by_op is not None:
                print_table(*op_table(summary), title=op_title(summary))
        if len(summaries) > 1:
            print_table(COMPARISON_COLUMNS, comparison_rows(summaries), footer=[summaries[0].convention + "."])


LAYER_COLUMNS = [
    Column("Layer"),
    Column("Type"),
    Column("Output shape"),
    Column("Params", "right"),
    Column("MACs", "right"),
    Column("Share", "right"),
]

COMPARISON_COLUMNS = [
    Column("Model"),
    Column("Input"),
    Column("Params", "right"),
    Column("MACs", "right"),
    Column("FLOPs", "right"),
    Column("Weights", "right"),
    Column("Activations", "right"),
]


def title(summary: ModelSummary) -> str:
    origin = "your model" if summary.source == "user" else f"{summary.source}, {summary.family}"
    return f"{summary.model} ({origin}) at input {_input(summary)}"


def _shows_calls(summary: ModelSummary) -> bool:
    """A Calls column only where some module ran other than once (repeated, or a container that never ran)."""
    return any(layer.calls != 1 for layer in summary.layers)


def layer_columns(summary: ModelSummary) -> list[Column]:
    if summary.counter == "all":
        return [Column("Layer"), Column("Type"), *(Column(c.counter, "right") for c in summary.counters)]
    columns = [*LAYER_COLUMNS, *BYTES_COLUMNS]
    if _shows_calls(summary):
        columns.insert(3, Column("Calls", "right"))
    if summary.training is not None:
        columns += TRAINING_COLUMNS
    return columns


BYTES_COLUMNS = [Column("Bytes", "right"), Column("MACs/B", "right")]

TRAINING_COLUMNS = [Column("Backward MACs", "right"), Column("Grads", "right"), Column("Opt. state", "right")]


def layer_rows(summary: ModelSummary) -> list[list[str]]:
    rows = []
    calls = _shows_calls(summary)
    for layer in summary.layers:
        label = summary.model if layer.depth == 0 else "  " * layer.depth + layer.name
        if summary.counter == "all":
            rows.append([label, _type(layer), *(_macs((layer.counts or {}).get(c.counter)) for c in summary.counters)])
            continue
        share = f"{100 * layer.macs / summary.macs:.1f}%" if summary.macs and layer.macs is not None else "-"
        row = [label, _type(layer), _shape(layer.output_shape), thousands(layer.params), _macs(layer.macs), share]
        if calls:
            row.insert(3, str(layer.calls) if layer.calls else "-")
        row += [_bytes(layer.bytes_moved), _intensity(layer.intensity)]
        if summary.training is not None:
            row += [_macs(layer.backward_macs), _bytes(layer.grad_bytes), _bytes(layer.optimizer_bytes)]
        rows.append(row)
    return rows


def _macs(value: int | None) -> str:
    return si(value) if value is not None else "-"


def _bytes(value: int | None) -> str:
    return size_bytes(value) if value is not None else "-"


def _intensity(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def footer(summary: ModelSummary) -> list[str]:
    weights = sum(summary.param_bytes.values())
    dtypes = ", ".join(f"{dtype} {size_bytes(n)}" for dtype, n in summary.param_bytes.items()) or "none"
    where = "the meta device (no weights allocated)" if summary.counted_on == "meta" else "the CPU (weights allocated)"
    if summary.cpu_fallback is not None:
        where = _fallback(summary.cpu_fallback)
    lines = [
        f"Params: {thousands(summary.params)} (trainable {thousands(summary.trainable_params)}, "
        f"non-trainable {thousands(summary.non_trainable_params)})",
        f"Weights: {size_bytes(weights)} ({dtypes}); buffers {size_bytes(summary.buffer_bytes)}",
        f"MACs: {thousands(summary.macs)} ({si(summary.macs)}); FLOPs: {thousands(summary.flops)} "
        f"({si(summary.flops)}), FLOPs = 2 x MACs",
        *paper_lines(summary.paper, summary.input_size),
        f"Activations: {size_bytes(summary.activation_bytes)} ({summary.activation_definition})",
        *_bytes_lines(summary),
        *_per_token(summary),
        *_training_lines(summary.training),
        f"Counted by {_counted_by(summary)} on {where}. Params and MACs of a row include its submodules.",
        *_value_step_lines(summary.value_steps),
        *_measured_lines(summary),
        *_table_marks(summary),
        f"Convention: {summary.convention}.",
        *_uncounted_lines(summary),
        *_counter_lines(summary),
    ]
    return lines


def _counted_by(summary: ModelSummary) -> str:
    return "rlcli" if summary.counter == "all" else summary.counter  # --counter all: the table's figures are rl's


def _bytes_lines(summary: ModelSummary) -> list[str]:
    if summary.counter == "fvcore":
        return []
    intensity = f"{summary.intensity:.1f} MACs/byte" if summary.intensity is not None else "-"
    return [
        f"Bytes moved: {size_bytes(summary.bytes_moved)} at {summary.dtype}, arithmetic intensity {intensity} "
        f"(Bytes, MACs/B: {summary.bytes_definition})"
    ]


def _ops(calls: dict[str, int]) -> str:
    return ", ".join(f"{op} {count}" for op, count in calls.items())


def _uncounted_lines(summary: ModelSummary) -> list[str]:
    """The operators that ran without MACs under the convention, and those rl has no formula for (a warning)."""
    lines = []
    if summary.not_counted:
        lines.append(f"Not counted (ran, no MACs by the convention; calls): {_ops(summary.not_counted)}.")
    if summary.no_formula:
        lines.append(f"Warning: {NO_FORMULA_WARNING}: {_ops(summary.no_formula)}.")
    return lines


#: What an operator without a formula means for the count.
NO_FORMULA_WARNING = "rl has no formula for these operators, so any work they do is missing from the MACs (calls)"


def _warn_no_formula(summary: ModelSummary) -> None:
    ops = dict(summary.no_formula)
    if summary.training is not None:
        ops.update(summary.training.backward_no_formula)
    if ops:
        warn(f"{summary.model}: {NO_FORMULA_WARNING}: {_ops(ops)}")


def _training_lines(step) -> list[str]:
    if step is None:
        return []
    lines = [
        f"Training step: forward {thousands(step.forward_macs)} + backward {thousands(step.backward_macs)} = "
        f"{thousands(step.step_macs)} MACs ({si(step.step_macs)}); {step.mode}; {step.loss}.",
        f"Training memory: weights {size_bytes(step.weight_bytes)} + gradients {size_bytes(step.grad_bytes)} + "
        f"{step.optimizer} state {size_bytes(step.optimizer_bytes)} = {size_bytes(step.memory_bytes)}, without the "
        f"activations kept for the backward pass ({step.optimizer}: {step.optimizer_formula}).",
    ]
    if step.backward_not_counted:
        lines.append(f"Not counted in the backward pass (calls): {_ops(step.backward_not_counted)}.")
    if step.backward_no_formula:
        lines.append(f"Warning: in the backward pass, {NO_FORMULA_WARNING}: {_ops(step.backward_no_formula)}.")
    return lines


def _counter_lines(summary: ModelSummary) -> list[str]:
    """For --counter fvcore and all: each counter's total, convention and the operators it ignores."""
    if summary.counter == "rlcli":
        return []
    lines = []
    for result in summary.counters:
        name = f"{result.counter} {result.version}" if result.version else result.counter
        if result.error:
            lines.append(f"{name}: no figures: {result.error}.")
            continue
        if summary.counter == "all":
            lines.append(f"{name}: {thousands(result.macs)} MACs ({si(result.macs)}); {result.convention}.")
        indent = "  " if summary.counter == "all" else ""
        if result.ignored:
            lines.append(f"{indent}Ignored by {result.counter} ({result.ignored_note}; calls): {_ops(result.ignored)}.")
        elif summary.counter == "all":
            lines.append(f"{indent}Ignored by {result.counter}: nothing ({result.ignored_note}).")
    return lines


def op_title(summary: ModelSummary) -> str:
    table = summary.by_op
    where = f"row {table.row}" if table.row else summary.model
    return f"Operators of {where}: calls and MACs by aten operator (Kind: counted, not counted, no formula)"


def op_table(summary: ModelSummary) -> tuple[list[Column], list[list[str]]]:
    table = summary.by_op
    columns = [Column("Operator"), Column("Kind"), Column("Calls", "right"), Column("MACs", "right")]
    columns.append(Column("Share", "right"))
    training = table.backward_macs is not None
    if training:
        columns += [Column("Backward calls", "right"), Column("Backward MACs", "right")]
    rows = []
    for op in table.ops:
        share = f"{100 * op.macs / table.macs:.1f}%" if table.macs else "-"
        row = [op.op, op.kind, thousands(op.calls), si(op.macs), share]
        if training:
            row += [thousands(op.backward_calls or 0), si(op.backward_macs or 0)]
        rows.append(row)
    return columns, rows


def paper_lines(comparison, input_size: list[int]) -> list[str]:
    """The paper's own figures beside rl's count: what a reader of the paper checks first."""
    if comparison is None:
        return []
    paper, published = comparison.paper, comparison.published
    if published is None:
        return [f"Paper: {paper.title} ({paper.cite()}): no published figures on its card."]
    at = "x".join(map(str, published.input_size))
    figures = [_figure("params", comparison.params)]
    if comparison.macs_compared:
        figures += [_figure("MACs", comparison.macs), _figure("FLOPs", comparison.flops)]
    else:
        printed = published.macs or published.flops
        if printed:
            counted = "x".join(map(str, input_size))
            figures.append(f"MACs/FLOPs {printed} at {at}: not compared (this count is at {counted})")
    lines = [
        f"Paper: {paper.title} ({paper.cite()}), {published.source}, input {at}: " + "; ".join(f for f in figures if f)
    ]
    if published.convention:
        lines.append(f"  Paper's convention: {published.convention}.")
    if published.note:
        lines.append(f"  Difference explained: {published.note}.")
    return lines


def _figure(name: str, check) -> str:
    if check is None:
        return ""
    rounding = ", within rounding" if check.within_rounding else ""
    return f"{name} {check.printed} vs rl {thousands(check.rl)} ({100 * check.difference:+.1f} %{rounding})"


def _per_token(summary: ModelSummary) -> list[str]:
    if summary.macs_per_token is None:
        return []
    return [
        f"MACs per token: {thousands(summary.macs_per_token)} ({si(summary.macs_per_token)}) at sequence length "
        f"{summary.tokens}, full forward pass (attention grows with length; `--input-size N` sets it)"
    ]


def _fallback(fallback) -> str:
    peak = fallback.peak_rss_increase_bytes
    memory = f"peak memory (RSS) +{size_bytes(peak)}" if peak is not None else "peak memory not measured (Linux only)"
    tensors = (
        f"{fallback.weights} weights and a {fallback.input} input (seed 0)"
        if fallback.input.startswith("random")
        else f"{fallback.weights} weights (seed 0) and an all-{fallback.input} input"
    )
    return (
        f"the CPU because {fallback.reason}: {tensors}, so work that depends on values is this input's; it cost "
        f"{size_bytes(fallback.weight_bytes)} of weights, {memory}"
    )


def _value_step_lines(steps) -> list[str]:
    """What a meta-device pass did where the forward depends on values: selections at the caps, real steps' cost."""
    if steps is None:
        return []
    lines = [
        "Selections (score thresholds, NMS) kept every candidate, so the work after them is at the model's caps: "
        + ", ".join(steps.caps)
        + "."
    ]
    if not steps.ran_for_real:
        return [*lines, "Ran for real: nothing; every step ran on the meta device."]
    ran = [
        f"{step.function.rpartition(':')[2]} ({step.calls} call{'s' if step.calls > 1 else ''}: "
        f"{', '.join(_shape([shape]) for shape in step.input_shapes)} -> "
        f"{', '.join(_shape([shape]) for shape in step.output_shapes)}; {size_bytes(step.tensor_bytes)} of tensors)"
        for step in steps.ran_for_real
    ]
    peak = steps.peak_rss_increase_bytes
    memory = f"peak memory (RSS) +{size_bytes(peak)}" if peak is not None else "peak memory not measured (Linux only)"
    which = "it" if len(ran) == 1 else "them"
    return [
        *lines,
        f"Ran for real on the CPU, on zeros of the shapes that reached {which}: {', '.join(ran)}; {memory}.",
    ]


def _measured_lines(summary: ModelSummary) -> list[str]:
    """The source's own published figures where they count other work than this count, and how to reproduce them."""
    lines = []
    for measured in summary.measured:
        at = "x".join(str(d) for d in measured.input_size)
        arguments = ", ".join(f"{name}={value}" for name, value in measured.arguments)
        lines.append(
            f"{summary.source}'s {measured.figure} ({measured.weights}) are rl's count at {at}"
            f"{' with ' + arguments if arguments else ''}: {measured.note}."
        )
    return lines


def _table_marks(summary: ModelSummary) -> list[str]:
    """What the marks in the table mean, for the marks it shows."""
    lines = []
    if _shows_calls(summary):
        lines.append(
            "Calls: how often a module ran (output shape: the first call's; MACs: all calls'); "
            "- : never called itself (a container, or a scripted module called by TorchScript)."
        )
    if any(layer.shared for layer in summary.layers):
        lines.append(
            "(shared): one module registered at several places; each call is listed where its parent was running, "
            "and its params count once in the totals."
        )
    if any(layer.scripted for layer in summary.layers):
        lines.append(
            "(scripted): a TorchScript module. Hooks see only calls made from Python; one that TorchScript code "
            "calls shows MACs -: its work counts in its nearest ancestor called from Python, its outputs as that "
            "ancestor's."
        )
    return lines


def comparison_rows(summaries: list[ModelSummary]) -> list[list[str]]:
    return [
        [
            s.model,
            _input(s),
            thousands(s.params),
            si(s.macs),
            si(s.flops),
            size_bytes(sum(s.param_bytes.values())),
            size_bytes(s.activation_bytes),
        ]
        for s in summaries
    ]


def layer_csv(summaries: list[ModelSummary]) -> tuple[list[str], list[list[object]]]:
    header = ["model", "layer", "type", "depth", "output_shape", "calls", "shared", "scripted", "params", "macs"]
    header += ["weight_bytes", "input_bytes", "output_bytes", "bytes_moved", "intensity"]
    training = any(s.training is not None for s in summaries)
    if training:
        header += ["backward_macs", "grad_bytes", "optimizer_bytes"]
    counters = list(dict.fromkeys(c.counter for s in summaries if s.counter == "all" for c in s.counters))
    header += [f"macs_{counter}" for counter in counters]
    rows = []
    for s in summaries:
        for layer in s.layers:
            row = [
                s.model,
                layer.name,
                layer.type,
                layer.depth,
                _shape(layer.output_shape),
                layer.calls,
                layer.shared,
                layer.scripted,
                layer.params,
                layer.macs,
                layer.weight_bytes,
                layer.input_bytes,
                layer.output_bytes,
                layer.bytes_moved,
                layer.intensity,
            ]
            if training:
                row += [layer.backward_macs, layer.grad_bytes, layer.optimizer_bytes]
            row += [(layer.counts or {}).get(counter) for counter in counters]
            rows.append(row)
    return header, rows


def _input(summary: ModelSummary) -> str:
    """``1x3x224x224 (float32)`` for one plain tensor, else every tensor fed: ``input_ids 1x128 int64, ...``."""
    [first, *others] = summary.inputs
    if others or first["name"] or first["list_of"]:
        return summary.input_description
    return f"{'x'.join(str(d) for d in summary.input_shape)} ({summary.input_dtype})"


def _type(layer) -> str:
    marks = [mark for mark, on in (("shared", layer.shared), ("scripted", layer.scripted)) if on]
    return f"{layer.type} ({', '.join(marks)})" if marks else layer.type


def _shape(shapes: list[list[int]]) -> str:
    if not shapes:
        return "-"
    text = "[" + ", ".join(str(d) for d in shapes[0]) + "]"
    return text if len(shapes) == 1 else f"{text} +{len(shapes) - 1}"
