"""`rl multilabel IMG...`: multi-label recognition with CSRA heads; attention maps; mAP on labelled sets."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rlcli.cli._common import (
    Column,
    Device,
    DType,
    choose_format,
    note,
    print_json,
    print_json_line,
    print_table,
    progress_bar,
)
from rlcli.cli._completion import complete_model_name
from rlcli.cli.classify import default_workers, parse_floats, report_problem

if TYPE_CHECKING:
    from rlcli.tasks.multilabel import CSRASettings, LabelSet

HELP = """Multi-label recognition with CSRA (class-specific residual attention) heads on ResNet backbones.

Loads the authors' released checkpoints as they are (e.g. resnet101_voc07_head1_lam0.1_94.7.pth) and rlcli's own;
heads, classes and depth come from the checkpoint. Prints every label whose sigmoid score reaches --threshold, best
first (or the --top-k best). --cam DIR writes a PNG per image with each predicted label's attention map.
--labels FILE (CSV: image path, then its class names) evaluates instead: per-class AP, mAP, CP, CR, CF1, OP, OR,
OF1. Inputs, batching, errors and output formats are those of `rl classify`.

Examples:

\b
  rl multilabel photos/ -w resnet101_voc07_head1_lam0.1_94.7.pth
  rl multilabel street.jpg -w resnet101_coco_head4_lam0.5_83.3.pth --cam maps/
  rl multilabel -w voc.pth --labels voc_test.csv --json
"""


def register(app: typer.Typer) -> None:
    app.command("multilabel", help=HELP)(multilabel_command)


def multilabel_command(
    images: list[str] | None = typer.Argument(None, metavar="IMG", help="Files, folders, globs, or - for stdin."),
    weights: Path = typer.Option(..., "--weights", "-w", help="CSRA checkpoint (official or rlcli)."),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="csra_resnet* (default: read from the checkpoint).",
        autocompletion=complete_model_name,
    ),
    lam: float | None = typer.Option(None, "--lam", help="lambda (default: checkpoint, file name, dataset's)."),
    classes: str | None = typer.Option(None, "--classes", help="voc2007, coco, or a file with one name per line."),
    threshold: float = typer.Option(0.5, "--threshold", "-t", help="Sigmoid score needed to report a label."),
    top_k: int | None = typer.Option(None, "--top-k", "-k", min=1, help="Report the k best labels instead."),
    cam: Path | None = typer.Option(None, "--cam", help="Write attention-map PNGs into this folder."),
    labels: Path | None = typer.Option(None, "--labels", help="Evaluate against this CSV (path, class, ...)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Images per forward pass."),
    workers: int = typer.Option(
        None, "--workers", "-j", min=0, help="Decoding processes (default: 1 per core, max 4)."
    ),
    device: Device = typer.Option(Device.auto, "--device", help="auto picks cuda when available."),
    dtype: DType = typer.Option(DType.float32, "--dtype", help="Model and input dtype."),
    resize: int | None = typer.Option(None, "--resize", min=1, help="Square input size (official: 448)."),
    mean: str | None = typer.Option(None, "--mean", help="Normalisation mean (official: none)."),
    std: str | None = typer.Option(None, "--std", help="Normalisation std (official: none)."),
    no_draft: bool = typer.Option(False, "--no-draft", help="Decode large JPEGs at full size (bit-exact)."),
    json_out: bool = typer.Option(False, "--json", help="JSON Lines per image (a document with --labels)."),
    csv_out: bool = typer.Option(False, "--csv", help="CSV: one row per image and label."),
) -> None:
    from dataclasses import replace

    from rlcli.core.images import expand_inputs
    from rlcli.errors import UsageError
    from rlcli.tasks.classify import RunOptions
    from rlcli.tasks.multilabel import load_csra, read_labels, recognise

    fmt = choose_format(json_out, csv_out)
    if not images and labels is None:
        raise UsageError("give images, or --labels FILE to evaluate on the images it lists")
    clf, settings = load_csra(
        str(weights), model=model, lam=lam, classes=classes, device=device.value, dtype=dtype.value
    )
    changes = {
        "resize": resize,
        "crop": resize,
        "mean": parse_floats(mean, "--mean"),
        "std": parse_floats(std, "--std"),
    }
    clf.preprocess = replace(clf.preprocess, **{k: v for k, v in changes.items() if v is not None})
    note(
        f"{settings.arch}: {settings.num_heads} head(s), {settings.num_classes} classes, "
        f"lambda {settings.lam:g} ({settings.lam_source})"
    )
    truth = read_labels(labels, clf.class_names) if labels else None
    arguments = list(images or []) or [str(p) for p in (truth or {})]
    inputs = expand_inputs(arguments, sys.stdin if "-" in arguments else None)
    options = RunOptions(
        batch_size=batch_size, workers=default_workers() if workers is None else workers, draft=not no_draft
    )
    writer = LabelWriter(fmt.value, inputs) if truth is None else None
    collected: list[tuple[list[float], set[int]]] = []
    failed = 0
    with progress_bar(len(inputs) > 1) as report:
        options.on_progress = lambda done, total: report("recognising", done, total)
        for result in recognise(
            clf, inputs, threshold=threshold, top_k=top_k, with_maps=cam is not None, options=options
        ):
            if hasattr(result, "reason"):
                failed += 1
                report_problem(result)
                continue
            if cam is not None:
                from rlcli.tasks.multilabel import write_attention_png

                write_attention_png(result, cam)
            if truth is None:
                writer.write(result)
                continue
            positives = truth.get(Path(result.path).resolve())
            if positives is None:
                failed += 1
                sys.stderr.write(f"error: {result.path}: not listed in {labels}\n")
                continue
            collected.append((result.all_scores, positives))
    if truth is not None:
        print_evaluation(collected, clf.class_names, threshold, settings, fmt.value)
    if failed:
        raise typer.Exit(1)


def print_evaluation(collected, class_names, threshold, settings: CSRASettings, fmt: str) -> None:
    from rlcli.errors import RlError
    from rlcli.tasks.multilabel import evaluate

    if not collected:
        raise RlError("no labelled image could be evaluated")
    result = evaluate([s for s, _ in collected], [t for _, t in collected], class_names, threshold)
    if fmt == "json":
        from dataclasses import asdict

        print_json({"model": asdict(settings), **result.to_dict()})
        return
    positives = {name: sum(class_names.index(name) in t for _, t in collected) for name in class_names}
    rows = [
        [name, "-" if ap is None else f"{100 * ap:.2f}", str(positives[name])]
        for name, ap in result.average_precision.items()
    ]
    footer = [
        f"mAP {100 * result.mAP:.2f} over {result.images} images; at threshold {threshold:g}: "
        f"CP {100 * result.CP:.2f}  CR {100 * result.CR:.2f}  CF1 {100 * result.CF1:.2f}  "
        f"OP {100 * result.OP:.2f}  OR {100 * result.OR:.2f}  OF1 {100 * result.OF1:.2f}",
        "AP is non-interpolated, ties counted as one step; classes without positives ('-') are left out of mAP and CR.",
    ]
    print_table([Column("Class"), Column("AP %", "right"), Column("Positives", "right")], rows, footer=footer)


class LabelWriter:
    """Writes each image's labels as they arrive: aligned rows, JSON Lines or CSV."""

    def __init__(self, fmt: str, inputs: list) -> None:
        self.fmt = fmt
        self.width = max([len(str(getattr(i, "path", i))) for i in inputs] + [5])
        self.started = False

    def write(self, result: LabelSet) -> None:
        pairs = list(zip(result.indices, result.labels, result.scores, strict=True))
        if self.fmt == "json":
            entries = [{"label": label, "index": i, "score": round(s, 6)} for i, label, s in pairs]
            print_json_line({"path": result.path, "labels": entries})
        elif self.fmt == "csv":
            writer = csv.writer(sys.stdout, lineterminator="\n")
            if not self.started:
                writer.writerow(["path", "label", "index", "score"])
            writer.writerows([result.path, label, i, f"{s:.6f}"] for i, label, s in pairs)
            sys.stdout.flush()
        else:
            if not self.started:
                sys.stdout.write(f"{'Image':<{self.width}}  Labels (sigmoid score)\n")
            shown = ", ".join(f"{label} {s:.3f}" for _, label, s in pairs) or "-"
            sys.stdout.write(f"{result.path:<{self.width}}  {shown}\n")
            sys.stdout.flush()
        self.started = True
