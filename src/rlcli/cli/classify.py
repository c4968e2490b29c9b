"""`rl classify IMG...`: top-k labels for images from files, folders, globs and stdin."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rlcli.cli._batch import (
    FROM_LIST,
    GPUS_PER_WORKER,
    LIST_COLUMN,
    OUTPUT,
    RAY,
    RESUME,
    SHARD_FORMAT,
    SHARD_SIZE,
    ShardFormat,
    check_batch_options,
    read_image_inputs,
    run_image_batch,
)
from rlcli.cli._common import (
    Column,
    Device,
    DType,
    OutputFormat,
    StreamingWriter,
    choose_format,
    default_workers,
    parse_floats,
    progress_bar,
    report_problem,
    widest,
)
from rlcli.cli._completion import complete_model_name
from rlcli.core.inputs import Problem

if TYPE_CHECKING:
    from rlcli.tasks.classify import Prediction

HELP = """Classify images with any registry model: top-k labels and probabilities, streamed in input order.

IMG is a file, a folder (searched recursively for images), a glob, or '-' for paths on stdin, one per line.
Weights: --weights FILE (a state dict, a training checkpoint, or an rlcli checkpoint that also names the model and
its classes, so --model may be left out), or torchvision weights such as ResNet50_Weights.IMAGENET1K_V2 or DEFAULT,
read from the local torch hub cache ($TORCH_HOME/hub/checkpoints). rl never downloads. Images are preprocessed
exactly as the weights were evaluated (--draft trades that for faster JPEG decoding); a file that cannot be read
is reported on stderr and the rest go on (exit code 1 at the end).

Examples:

\b
  rl classify photos/ -m resnet50 -w ResNet50_Weights.IMAGENET1K_V2
  rl classify cat.jpg dog.png -m mobilenet_v3_large --top-k 3
  find shots -name '*.jpg' | rl classify - -w runs/shapes.safetensors --json
  rl classify 'data/**/*.png' -m efficientnet_b0 --csv > labels.csv
  rl classify --from-list files.txt -m resnet50 -o labels/ --ray --workers 4

-o DIR writes shards (--format jsonl, csv or parquet, --shard-size inputs each, each written in one step) and a
manifest.json last; --resume completes an interrupted run without redoing its complete shards. --ray runs the
same preprocessing and model on a Ray cluster (RAY_ADDRESS, else a local instance): decoding as Ray Data tasks,
the model in --workers actors with --gpus-per-worker GPUs each.
"""


def register(app: typer.Typer) -> None:
    app.command("classify", help=HELP)(classify_command)


def classify_command(
    images: list[str] | None = typer.Argument(None, metavar="IMG", help="Files, folders, globs, or - for stdin."),
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
        None,
        "--workers",
        "-j",
        min=0,
        help="Decoding processes (default: 1 per core, max 4); with --ray, model actors (default 1).",
    ),
    device: Device = typer.Option(Device.auto, "--device", help="auto picks cuda when available."),
    dtype: DType = typer.Option(DType.float32, "--dtype", help="Model and input dtype."),
    resize: int | None = typer.Option(None, "--resize", min=1, help="Resize the shorter side to this."),
    crop: int | None = typer.Option(None, "--crop", min=1, help="Centre crop size."),
    mean: str | None = typer.Option(None, "--mean", help="Normalisation mean, e.g. 0.485,0.456,0.406."),
    std: str | None = typer.Option(None, "--std", help="Normalisation std, e.g. 0.229,0.224,0.225."),
    draft: bool = typer.Option(
        False, "--draft/--no-draft", help="Fast, inexact decoding of large JPEGs (reduced DCT scale). Default: exact."
    ),
    json_out: bool = typer.Option(False, "--json", help="JSON Lines: one object per image."),
    csv_out: bool = typer.Option(False, "--csv", help="CSV: one row per image and rank."),
    from_list: Path | None = FROM_LIST,
    list_column: str = LIST_COLUMN,
    output: Path | None = OUTPUT,
    shard_format: ShardFormat = SHARD_FORMAT,
    shard_size: int = SHARD_SIZE,
    resume: bool = RESUME,
    ray: bool = RAY,
    gpus_per_worker: float = GPUS_PER_WORKER,
) -> None:
    from rlcli.core.inference import RunOptions
    from rlcli.errors import UsageError
    from rlcli.tasks.classify import PreprocessOverrides, classify, load_classifier

    fmt = choose_format(json_out, csv_out)
    check_batch_options(ray=ray, output=output, resume=resume, stdout_format=fmt.value)
    if not images and from_list is None:
        raise UsageError("give images (files, folders, globs, or - for stdin), or --from-list FILE")
    overrides = PreprocessOverrides(resize, crop, parse_floats(mean, "--mean"), parse_floats(std, "--std"))
    settings = {"model": model, "weights": weights, "classes_file": classes, "dtype": dtype.value}
    clf = load_classifier(**settings, device="cpu" if ray else device.value, overrides=overrides)
    inputs = read_image_inputs(list(images or []), from_list, list_column)
    if output is not None:
        from rlcli.tasks.batch import ImageJob

        job = ImageJob("classify", {**settings, "device": device.value}, overrides, top_k)
        run_image_batch(
            job,
            clf,
            inputs,
            output=output,
            shard_format=shard_format,
            shard_size=shard_size,
            resume=resume,
            ray=ray,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            batch_size=batch_size,
            draft=draft,
            verb="classified",
        )
        return
    writer = prediction_writer(fmt, inputs, clf.class_names)
    failed = 0
    with progress_bar(len(inputs) > 1) as report:
        options = RunOptions(
            batch_size=batch_size,
            workers=default_workers() if workers is None else workers,
            draft=draft,
            on_progress=lambda done, total: report("classifying", done, total),
        )
        for result in classify(clf, inputs, top_k, options):
            if isinstance(result, Problem):
                failed += 1
                report_problem(result.path, result.reason)
            else:
                write_prediction(writer, result)
    if failed:
        raise typer.Exit(1)


def prediction_writer(fmt: OutputFormat, inputs: list, class_names: list[str]) -> StreamingWriter:
    columns = [Column("Image"), Column("#", "right"), Column("Label"), Column("Probability", "right")]
    widths = [widest((str(getattr(i, "path", i)) for i in inputs), 5), 2, widest(class_names, 5), 11]
    return StreamingWriter(fmt, columns, widths, ["path", "rank", "label", "index", "probability"])


def write_prediction(writer: StreamingWriter, result: Prediction) -> None:
    ranks = list(enumerate(zip(result.indices, result.labels, result.probabilities, strict=True), start=1))
    document = {
        "path": result.path,
        "top_k": [
            {"rank": rank, "label": label, "index": index, "probability": round(p, 6)}
            for rank, (index, label, p) in ranks
        ],
    }
    csv_rows = [[result.path, rank, label, index, f"{p:.6f}"] for rank, (index, label, p) in ranks]
    table_rows = [[result.path if rank == 1 else "", str(rank), label, f"{p:.4f}"] for rank, (index, label, p) in ranks]
    writer.write(document, csv_rows, table_rows)
