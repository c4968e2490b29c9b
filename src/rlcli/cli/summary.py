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
)
from rlcli.cli._completion import complete_model_name

if TYPE_CHECKING:
    from rlcli.tasks.summary import ModelSummary

HELP = """Show a model's layers, parameters, MACs/FLOPs and memory, counted without allocating weights.

MODEL is a name from `rl models`, a `package.module:callable` or a `path/to/file.py:callable` that returns an
nn.Module. The model is built on the meta device: vit_h_14 costs no more memory than resnet18. A forward pass
that reads tensor values (.item(), nonzero) is counted on the CPU instead, and the footer says why and at what cost.
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


class Counter(str, Enum):
    rlcli = "rlcli"
    fvcore = "fvcore"


def register(app: typer.Typer) -> None:
    app.command("summary", help=HELP)(summary_command)


def summary_command(
    models: list[str] = typer.Argument(
        ...,
        metavar="MODEL",
        help="Model names or module:callable references.",
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
        help="rlcli: torchvision's convention, on meta; fvcore: fvcore's, on the CPU.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document with every layer."),
    csv_out: bool = typer.Option(False, "--csv", help="Print the layer table as CSV."),
) -> None:
    from rlcli.tasks.summary import summarize

    fmt = choose_format(json_out, csv_out)
    summaries = [
        summarize(name, input_size=input_size, inputs=inputs, batch_size=batch_size, depth=depth, counter=counter.value)
        for name in models
    ]
    if fmt == OutputFormat.json:
        print_json({"rlcli": __version__, "models": [s.to_dict() for s in summaries]})
    elif fmt == OutputFormat.csv:
        print_csv(*layer_csv(summaries))
    else:
        for summary in summaries:
            print_table(layer_columns(summary), layer_rows(summary), title=title(summary), footer=footer(summary))
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
    if not _shows_calls(summary):
        return LAYER_COLUMNS
    return [*LAYER_COLUMNS[:3], Column("Calls", "right"), *LAYER_COLUMNS[3:]]


def layer_rows(summary: ModelSummary) -> list[list[str]]:
    rows = []
    calls = _shows_calls(summary)
    for layer in summary.layers:
        label = summary.model if layer.depth == 0 else "  " * layer.depth + layer.name
        share = f"{100 * layer.macs / summary.macs:.1f}%" if summary.macs and layer.macs is not None else "-"
        macs = si(layer.macs) if layer.macs is not None else "-"
        row = [label, _type(layer), _shape(layer.output_shape), thousands(layer.params), macs, share]
        if calls:
            row.insert(3, str(layer.calls) if layer.calls else "-")
        rows.append(row)
    return rows


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
        *_per_token(summary),
        f"Counted by {summary.counter} on {where}. Params and MACs of a row include its submodules.",
        *_value_step_lines(summary.value_steps),
        *_measured_lines(summary),
        *_table_marks(summary),
        f"Convention: {summary.convention}.",
    ]
    if summary.uncounted_ops:
        lines.append(f"Not counted by fvcore: {', '.join(summary.uncounted_ops)}.")
    return lines


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
    rows = [
        [
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
        ]
        for s in summaries
        for layer in s.layers
    ]
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
