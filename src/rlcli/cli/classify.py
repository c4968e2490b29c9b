"""`rl classify IMG...`: top-k labels for images from files, folders, globs and stdin."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rlcli.cli._common import Device, DType, choose_format, print_json_line, progress_bar
from rlcli.cli._completion import complete_model_name

if TYPE_CHECKING:
    from rlcli.tasks.classify import Prediction, Problem

HELP = """Classify images with any registry model: top-k labels and probabilities, streamed in input order.

IMG is a file, a folder (searched recursively for images), a glob, or '-' for paths on stdin, one per line.
Weights: --weights FILE (a state dict, a training checkpoint, or an rlcli checkpoint that also names the model and
its classes, so --model may be left out), or torchvision weights such as ResNet50_Weights.IMAGENET1K_V2 or DEFAULT,
read from the local torch hub cache ($TORCH_HOME/hub/checkpoints). rl never downloads. Images are preprocessed
exactly as the weights were evaluated; a file that cannot be read is reported on stderr and the rest go on
(exit code 1 at the end).

Examples:

\b
  rl classify photos/ -m resnet50 -w ResNet50_Weights.IMAGENET1K_V2
  rl classify cat.jpg dog.png -m mobilenet_v3_large --top-k 3
  find shots -name '*.jpg' | rl classify - -w runs/shapes.safetensors --json
  rl classify 'data/**/*.png' -m efficientnet_b0 --csv > labels.csv
"""


def default_workers() -> int:
    # One decoding process per core, up to 4: on 2 cores, 2 workers beside the model's own threads measured
    # 67 img/s for mobilenet_v3_large against 57 with 1 (benchmarks/classify.py); heavier models barely notice.
    return min(4, os.cpu_count() or 1)


def register(app: typer.Typer) -> None:
    app.command("classify", help=HELP)(classify_command)


def classify_command(
    images: list[str] = typer.Argument(..., metavar="IMG", help="Files, folders, globs, or - for stdin."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Registry model (rl models).", autocompletion=complete_model_name
    ),
    weights: str | None = typer.Option(
        None, "--weights", "-w", help="Checkpoint file, or torchvision weights (NAME_Weights.X or DEFAULT)."
    ),
    classes: Path | None = typer.Option(None, "--classes", help="Class names, one per line."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Labels per image."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Images per forward pass."),
    workers: int = typer.Option(
        None, "--workers", "-j", min=0, help="Decoding processes (default: 1 per core, max 4)."
    ),
    device: Device = typer.Option(Device.auto, "--device", help="auto picks cuda when available."),
    dtype: DType = typer.Option(DType.float32, "--dtype", help="Model and input dtype."),
    resize: int | None = typer.Option(None, "--resize", min=1, help="Resize the shorter side to this."),
    crop: int | None = typer.Option(None, "--crop", min=1, help="Centre crop size."),
    mean: str | None = typer.Option(None, "--mean", help="Normalisation mean, e.g. 0.485,0.456,0.406."),
    std: str | None = typer.Option(None, "--std", help="Normalisation std, e.g. 0.229,0.224,0.225."),
    no_draft: bool = typer.Option(False, "--no-draft", help="Decode large JPEGs at full size (bit-exact)."),
    json_out: bool = typer.Option(False, "--json", help="JSON Lines: one object per image."),
    csv_out: bool = typer.Option(False, "--csv", help="CSV: one row per image and rank."),
) -> None:
    from rlcli.core.images import expand_inputs
    from rlcli.tasks.classify import PreprocessOverrides, RunOptions, classify, load_classifier

    fmt = choose_format(json_out, csv_out)
    overrides = PreprocessOverrides(resize, crop, parse_floats(mean, "--mean"), parse_floats(std, "--std"))
    inputs = expand_inputs(images, sys.stdin if "-" in images else None)
    clf = load_classifier(
        model, weights, classes_file=classes, device=device.value, dtype=dtype.value, overrides=overrides
    )
    writer = ResultWriter(fmt.value, inputs, max(len(n) for n in clf.class_names))
    failed = 0
    with progress_bar(len(inputs) > 1) as report:
        options = RunOptions(
            batch_size=batch_size,
            workers=default_workers() if workers is None else workers,
            draft=not no_draft,
            on_progress=lambda done, total: report("classifying", done, total),
        )
        for result in classify(clf, inputs, top_k, options):
            if hasattr(result, "reason"):
                failed += 1
                report_problem(result)
            else:
                writer.write(result)
    if failed:
        raise typer.Exit(1)


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not a comma-separated list of numbers", param_hint=option) from None
    if len(values) != 3:
        raise typer.BadParameter("give one value per channel (3)", param_hint=option)
    return values


def report_problem(problem: Problem) -> None:
    sys.stderr.write(f"error: {problem.path}: {problem.reason}\n")
    sys.stderr.flush()


class ResultWriter:
    """Writes each prediction as it arrives: an aligned table (widths known up front), JSON Lines or CSV."""

    def __init__(self, fmt: str, inputs: list, label_width: int) -> None:
        self.fmt = fmt
        self.path_width = max([len(str(getattr(i, "path", i))) for i in inputs] + [5])
        self.label_width = max(label_width, 5)
        self.started = False

    def write(self, result: Prediction) -> None:
        if self.fmt == "json":
            ranks = zip(result.indices, result.labels, result.probabilities, strict=True)
            print_json_line(
                {
                    "path": result.path,
                    "top_k": [
                        {"rank": r + 1, "label": label, "index": index, "probability": round(p, 6)}
                        for r, (index, label, p) in enumerate(ranks)
                    ],
                }
            )
            return
        rows = [
            [result.path, rank + 1, label, index, f"{p:.6f}"]
            for rank, (index, label, p) in enumerate(
                zip(result.indices, result.labels, result.probabilities, strict=True)
            )
        ]
        if self.fmt == "csv":
            writer = csv.writer(sys.stdout, lineterminator="\n")
            if not self.started:
                writer.writerow(["path", "rank", "label", "index", "probability"])
            writer.writerows(rows)
            sys.stdout.flush()
        else:
            self._table_rows(rows)
        self.started = True

    def _table_rows(self, rows) -> None:
        out = []
        if not self.started:
            out.append(self._line("Image", "#", "Label", "Probability"))
        for path, rank, label, _, p in rows:
            out.append(self._line(path if rank == 1 else "", str(rank), label, f"{float(p):.4f}"))
        sys.stdout.write("".join(out))
        sys.stdout.flush()

    def _line(self, path: str, rank: str, label: str, probability: str) -> str:
        return f"{path:<{self.path_width}}  {rank:>2}  {label:<{self.label_width}}  {probability:>11}\n"
