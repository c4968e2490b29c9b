"""`rl swa-merge CKPT... -o OUT`: stochastic weight averaging of checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rlcli.cli._common import Column, print_json, print_table, progress_bar, size_bytes
from rlcli.cli._completion import complete_model_name

if TYPE_CHECKING:
    from rlcli.tasks.swa import MergeReport

HELP = """Average checkpoints into one (Stochastic Weight Averaging), one checkpoint in memory at a time.

Inputs are files, folders of checkpoints (in natural order: epoch_2 before epoch_10), or globs, in any format rl
reads (safetensors, state dicts, training checkpoints with state_dict/model/EMA keys, module./_orig_mod.
prefixes), always loaded safely. Floating tensors are averaged in float64 and written in their own dtype (a tensor
stored in several floating dtypes: in their type promotion, e.g. float16 + float32 -> float32). Integer and bool
buffers, rl's metadata and --keep-structure's nesting come from the last input with a non-zero weight. A tensor
that is floating in one input and integer or bool in another is refused, as are differing names and shapes.

Examples:

\b
  rl swa-merge ckpt/epoch_16*.pt -o swa.pt
  rl swa-merge ckpt/ -o swa.safetensors --ema
  rl swa-merge a.pt b.pt c.pt --weights 0.2,0.3,0.5 -o avg.pt
  rl swa-merge ckpt/*.pth -o swa.pth --model resnet50 --bn-data images/train_subset
"""


def register(app: typer.Typer) -> None:
    app.command("swa-merge", help=HELP)(swa_merge_command)


def swa_merge_command(
    checkpoints: list[str] = typer.Argument(..., metavar="CKPT", help="Checkpoint files, folders or globs."),
    output: Path = typer.Option(..., "--output", "-o", help="Output file: .pt/.pth or .safetensors."),
    weights: str | None = typer.Option(None, "--weights", help="Comma-separated weights, one per input."),
    ema: bool = typer.Option(
        False, "--ema", help="Average the EMA weights (state_dict_ema, model_ema...); every input must have them."
    ),
    keep_structure: bool = typer.Option(
        False,
        "--keep-structure",
        help="Keep the last weighted input's nesting (e.g. {'state_dict': ..., 'epoch': ...}); with --ema its raw "
        "weights are replaced by the average too.",
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output, even an input."),
    bn_data: Path | None = typer.Option(
        None, "--bn-data", help="Folder of images: recompute BatchNorm statistics of the average on them."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Architecture for --bn-data (rlcli checkpoints carry it).",
        autocompletion=complete_model_name,
    ),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Images per batch for --bn-data."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    from rlcli.tasks.swa import merge_checkpoints, parse_weights, resolve_inputs

    inputs = resolve_inputs(checkpoints)
    with progress_bar() as report:
        result = merge_checkpoints(
            inputs,
            output,
            weights=parse_weights(weights, len(inputs)),
            prefer_ema=ema,
            keep_structure=keep_structure,
            force=force,
            bn_data=bn_data,
            model=model,
            bn_batch_size=batch_size,
            progress=report,
        )
    if json_out:
        print_json(result.to_dict())
    else:
        print_report(result)


def print_report(result: MergeReport) -> None:
    columns = [Column("#", "right"), Column("Input"), Column("Weight", "right")]
    rows = [
        [str(i + 1), path, f"{w:.4f}"] for i, (path, w) in enumerate(zip(result.inputs, result.weights, strict=True))
    ]
    kind = "weighted average" if result.weighted else "uniform average"
    source = "the last input" + (" with a non-zero weight" if result.weights[-1] == 0 else "")
    footer = [
        f"Output: {result.output} ({result.output_format}, {size_bytes(result.output_bytes)})",
        f"SHA-256: {result.sha256}",
        f"Tensors: {result.averaged} averaged ({kind} in float64, written in their own dtype"
        f"{f'; {len(result.promoted)} in a promoted one' if result.promoted else ''}), "
        f"{len(result.copied)} copied from {source}",
    ]
    if result.copied:
        footer.append(
            f"Copied (integer/bool, not averaged): {', '.join(result.copied[:6])}"
            + (", ..." if len(result.copied) > 6 else "")
        )
    if result.promoted:
        shown = [f"{name} ({', '.join(p['inputs'])} -> {p['written']})" for name, p in result.promoted.items()]
        footer.append(
            "Mixed dtypes, written as their type promotion: "
            + ", ".join(shown[:6])
            + (", ..." if len(shown) > 6 else "")
        )
    if result.ema:
        footer.append("EMA weights: every input's EMA weights were averaged.")
    if result.bn_recomputed:
        footer.append(f"BatchNorm: statistics of {result.bn_layers} layers recomputed on {result.bn_images} images.")
    footer.extend(f"Note: {note}." for note in result.notes)
    print_table(columns, rows, title=f"SWA of {len(result.inputs)} checkpoints", footer=footer)
