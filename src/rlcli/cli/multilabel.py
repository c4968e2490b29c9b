"""`rl multilabel IMG...`: multi-label recognition with CSRA heads; attention maps; mAP on labelled sets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from typer.core import TyperCommand

from rlcli.cli._batch import (
    FROM_LIST,
    GPUS_PER_WORKER,
    LIST_COLUMN,
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
    note,
    parse_floats,
    print_json,
    print_table,
    progress_bar,
    report_problem,
    widest,
)
from rlcli.cli._completion import complete_model_name
from rlcli.core.inputs import Problem

if TYPE_CHECKING:
    from rlcli.tasks.multilabel import CSRASettings, LabelSet, Truth

HELP = """Multi-label recognition with CSRA (class-specific residual attention) heads on ResNet and ViT backbones.

Loads the authors' released checkpoints as they are (e.g. resnet101_voc07_head1_lam0.1_94.7.pth) and rlcli's own;
heads, classes and backbone come from the checkpoint. Prints every label whose sigmoid score reaches --threshold, best
first (or the --top-k best). --cam DIR writes a PNG per image with each predicted label's attention map.
--labels FILE (CSV: image path, then its class names; 'name?' marks a class difficult in that image, left out of
its figures as VOC2007 does; an image on several rows gets all their labels) evaluates instead: per-class AP, mAP,
CP, CR, CF1, OP, OR, OF1. Inputs, batching, errors and output formats are those of `rl classify`.
`rl multilabel train DATA -o model.pt` trains CSRA heads on your own labelled images (see its --help); a file or
folder named train is given as ./train.

Examples:

\b
  rl multilabel photos/ -w resnet101_voc07_head1_lam0.1_94.7.pth
  rl multilabel street.jpg -w resnet101_coco_head4_lam0.5_83.3.pth --cam maps/
  rl multilabel -w voc.pth --labels voc_test.csv --json
  rl multilabel train labels.csv -o mine.pt -m csra_resnet50 --heads 4
"""


def register(app: typer.Typer) -> None:
    app.command("multilabel", help=HELP, cls=_MultilabelCommand)(multilabel_command)


class _MultilabelCommand(TyperCommand):
    """`rl multilabel IMG...`, and `rl multilabel train ...` when the first argument is the word ``train`` (a file
    or folder named train is ``./train``)."""

    def make_context(self, info_name, args, parent=None, **extra):
        if args and args[0] == "train":
            from rlcli.cli.multilabel_train import train_click_command

            return train_click_command().make_context(f"{info_name} train", list(args[1:]), parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


def multilabel_command(
    images: list[str] | None = typer.Argument(None, metavar="IMG", help="Files, folders, globs, or - for stdin."),
    weights: Path | None = typer.Option(
        None, "--weights", "-w", help="CSRA checkpoint (official or rlcli; an rlcli one may be given as --model)."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="csra_resnet*, csra_vit_*, csra_tiny (default: read from the checkpoint), or the checkpoint itself.",
        autocompletion=complete_model_name,
    ),
    lam: float | None = typer.Option(None, "--lam", help="lambda (default: checkpoint, file name, dataset's)."),
    classes: str | None = typer.Option(None, "--classes", help="voc2007, coco, or a file with one name per line."),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        "-t",
        help="Sigmoid score needed to report a label (default: the checkpoint's per-class thresholds, else 0.5).",
    ),
    top_k: int | None = typer.Option(None, "--top-k", "-k", min=1, help="Report the k best labels instead."),
    cam: Path | None = typer.Option(None, "--cam", help="Write attention-map PNGs into this folder."),
    labels: Path | None = typer.Option(
        None, "--labels", help="Evaluate against this CSV (path, class, ...; 'class?' marks a difficult one)."
    ),
    tune_thresholds: bool = typer.Option(
        False, "--tune-thresholds", help="With --labels: each class's best-F1 threshold, written with -o."
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="A folder of shards and a manifest.json; with --tune-thresholds, the checkpoint to write.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace --output if it exists."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Images per forward pass."),
    workers: int = typer.Option(
        None, "--workers", "-j", min=0, help="Decoding processes (default: 1 per core, max 4)."
    ),
    device: Device = typer.Option(Device.auto, "--device", help="auto picks cuda when available."),
    dtype: DType = typer.Option(DType.float32, "--dtype", help="Model and input dtype."),
    resize: int | None = typer.Option(None, "--resize", min=1, help="Square input size (official: 448)."),
    mean: str | None = typer.Option(None, "--mean", help="Normalisation mean (official: none)."),
    std: str | None = typer.Option(None, "--std", help="Normalisation std (official: none)."),
    draft: bool = typer.Option(
        False, "--draft/--no-draft", help="Fast, inexact decoding of large JPEGs (reduced DCT scale). Default: exact."
    ),
    json_out: bool = typer.Option(False, "--json", help="JSON Lines per image (a document with --labels)."),
    csv_out: bool = typer.Option(False, "--csv", help="CSV: one row per image and label."),
    from_list: Path | None = FROM_LIST,
    list_column: str = LIST_COLUMN,
    shard_format: ShardFormat = SHARD_FORMAT,
    shard_size: int = SHARD_SIZE,
    resume: bool = RESUME,
    ray: bool = RAY,
    gpus_per_worker: float = GPUS_PER_WORKER,
) -> None:
    from rlcli.core.files import ensure_output_folder
    from rlcli.core.inference import RunOptions
    from rlcli.errors import UsageError
    from rlcli.tasks.classify import PreprocessOverrides
    from rlcli.tasks.multilabel import check_selection, load_csra, read_labels, recognise

    fmt = choose_format(json_out, csv_out)
    if weights is None and model is not None and Path(model).expanduser().is_file():
        weights, model = Path(model), None  # `--model trained.pt`: a checkpoint that names its architecture
    if weights is None:
        raise UsageError("give the checkpoint: -w FILE (or --model FILE for one that names its architecture)")
    if not images and labels is None and from_list is None:
        raise UsageError("give images, --from-list FILE, or --labels FILE to evaluate on the images it lists")
    check_selection(threshold, top_k)
    if tune_thresholds and (labels is None or output is None):
        raise UsageError("--tune-thresholds needs --labels FILE (the tuning set) and -o FILE (where to write them)")
    shards = output if not tune_thresholds else None  # -o DIR: predictions in shards (rlcli.tasks.batch)
    check_batch_options(ray=ray, output=shards, resume=resume, stdout_format=fmt.value)
    if shards is not None and (labels is not None or cam is not None):
        raise UsageError("-o DIR writes labels; --labels and --cam run without it (or -o FILE with --tune-thresholds)")
    if output is not None and tune_thresholds:
        from rlcli.core.files import check_output_file

        check_output_file(output, force=force)
    overrides = PreprocessOverrides(resize, resize, parse_floats(mean, "--mean"), parse_floats(std, "--std"))
    clf, settings = load_csra(
        str(weights), model=model, lam=lam, classes=classes, device=device.value, dtype=dtype.value
    )
    clf.runner.preprocess = overrides.apply(clf.runner.preprocess)
    if settings.input_side and clf.runner.preprocess.crop != settings.input_side:
        raise UsageError(
            f"{settings.arch} takes {settings.input_side} x {settings.input_side} inputs: --resize cannot change that"
        )
    if cam is not None:
        ensure_output_folder(cam)
    note(
        f"{settings.arch}: {settings.num_heads} head(s), {settings.num_classes} classes, "
        f"lambda {settings.lam:g} ({settings.lam_source})"
    )
    if threshold is None and settings.thresholds and top_k is None:
        note("labels chosen at each class's threshold stored in the checkpoint (--threshold overrides)")
    chosen = threshold if threshold is not None else list(settings.thresholds) if settings.thresholds else 0.5
    truth = read_labels(labels, clf.class_names) if labels else None
    arguments = list(images or []) or [str(p) for p in (truth or {})]
    inputs = read_image_inputs(arguments, from_list, list_column)
    if shards is not None:
        from rlcli.tasks.batch import ImageJob

        loader = {"weights": str(weights), "model": model, "lam": lam, "classes": classes, "dtype": dtype.value}
        job = ImageJob("multilabel", {**loader, "device": device.value}, overrides, top_k, chosen)
        run_image_batch(
            job,
            clf,
            inputs,
            output=shards,
            shard_format=shard_format,
            shard_size=shard_size,
            resume=resume,
            ray=ray,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            batch_size=batch_size,
            draft=draft,
            verb="recognised",
        )
        return
    options = RunOptions(batch_size=batch_size, workers=default_workers() if workers is None else workers, draft=draft)
    writer = label_writer(fmt, inputs) if truth is None else None
    collected: list[tuple[list[float], Truth]] = []
    failed = 0
    with progress_bar(len(inputs) > 1) as report:
        options.on_progress = lambda done, total: report("recognising", done, total)
        for result in recognise(clf, inputs, threshold=chosen, top_k=top_k, with_maps=cam is not None, options=options):
            if isinstance(result, Problem):
                failed += 1
                report_problem(result.path, result.reason)
                continue
            if cam is not None and not _write_map(result, cam):
                failed += 1
            if truth is None:
                write_labels(writer, result)
                continue
            positives = truth.get(Path(result.path).resolve())
            if positives is None:
                failed += 1
                report_problem(result.path, f"not listed in {labels}")
                continue
            collected.append((result.all_scores, positives))
    if tune_thresholds:
        chosen = write_tuned(collected, clf, settings, chosen, str(weights), output, force, fmt.value)
    if truth is not None:
        print_evaluation(collected, clf.class_names, chosen, settings, fmt.value)
    if failed:
        raise typer.Exit(1)


def _write_map(result: LabelSet, folder: Path) -> bool:
    """One image's attention-map PNG; a failure is that image's problem, and the run goes on."""
    from rlcli.errors import RlError
    from rlcli.tasks.multilabel import write_attention_png

    try:
        write_attention_png(result, folder)
    except OSError as exc:
        report_problem(result.path, f"cannot write its attention map: {exc.strerror or exc}")
        return False
    except RlError as exc:
        report_problem(result.path, f"its attention map: {exc}")
        return False
    return True


def write_tuned(collected, clf, settings: CSRASettings, current, weights: str, output: Path, force: bool, fmt: str):
    """Tune each class's threshold on the collected scores, write the checkpoint with them, report the change;
    returns the new thresholds (the evaluation that follows uses them)."""
    from rlcli.errors import RlError
    from rlcli.tasks.multilabel import save_with_thresholds, tune_thresholds

    if not collected:
        raise RlError("no labelled image could be scored: nothing to tune on")
    tuned = tune_thresholds([s for s, _ in collected], [t for _, t in collected], clf.class_names, current)
    thresholds = [t.threshold for t in tuned]
    written = save_with_thresholds(weights, output, clf, settings, thresholds, force)
    note(f"per-class thresholds (best F1 on {len(collected)} images) written with the weights to {written.path}")
    if fmt != "json":

        def shown(value):
            return "-" if value is None else f"{100 * value:.2f}"

        rows = [
            [t.name, f"{t.previous_threshold:.4f}", f"{t.threshold:.4f}", shown(t.previous_f1), shown(t.f1)]
            for t in tuned
        ]
        columns = [Column("Class"), Column("Was", "right"), Column("Threshold", "right"), Column("F1 % was", "right"),
                   Column("F1 %", "right")]  # fmt: skip
        print_table(columns, rows, footer=["Classes without a positive example keep their threshold ('-')."])
    return thresholds


def print_evaluation(collected, class_names, threshold, settings: CSRASettings, fmt: str) -> None:
    from rlcli.errors import RlError
    from rlcli.tasks.multilabel import evaluate

    if not collected:
        raise RlError("no labelled image could be evaluated")
    truths = [t for _, t in collected]
    result = evaluate([s for s, _ in collected], truths, class_names, threshold)
    if fmt == "json":
        from dataclasses import asdict

        print_json({"model": asdict(settings), **result.to_dict()})
        return
    positives = [sum(c in t.positives for t in truths) for c in range(len(class_names))]
    rows = [
        [name, "-" if ap is None else f"{100 * ap:.2f}", str(count)]
        for (name, ap), count in zip(result.average_precision.items(), positives, strict=True)
    ]
    evaluated = len(result.classes_evaluated)
    at = f"threshold {threshold:g}" if isinstance(threshold, (int, float)) else "each class's threshold"
    footer = [
        f"mAP {100 * result.mAP:.2f} over {result.images} images; at {at}: "
        f"CP {100 * result.CP:.2f}  CR {100 * result.CR:.2f}  CF1 {100 * result.CF1:.2f}  "
        f"OP {100 * result.OP:.2f}  OR {100 * result.OR:.2f}  OF1 {100 * result.OF1:.2f}",
        f"mAP, CP, CR and CF1 average over the {evaluated} of {len(class_names)} classes with a positive example "
        "(classes without one show '-'); OP, OR and OF1 pool every class's counts.",
        "AP is non-interpolated, ties counted as one step."
        + (
            f" {result.difficult_excluded} difficult labels left out of their class."
            if result.difficult_excluded
            else ""
        ),
    ]
    print_table([Column("Class"), Column("AP %", "right"), Column("Positives", "right")], rows, footer=footer)


def label_writer(fmt: OutputFormat, inputs: list) -> StreamingWriter:
    columns = [Column("Image"), Column("Labels (sigmoid score)")]
    widths = [widest((str(getattr(i, "path", i)) for i in inputs), 5), 0]
    return StreamingWriter(fmt, columns, widths, ["path", "label", "index", "score"])


def write_labels(writer: StreamingWriter, result: LabelSet) -> None:
    pairs = list(zip(result.indices, result.labels, result.scores, strict=True))
    document = {
        "path": result.path,
        "labels": [{"label": label, "index": i, "score": round(s, 6)} for i, label, s in pairs],
    }
    csv_rows = [[result.path, label, i, f"{s:.6f}"] for i, label, s in pairs]
    shown = ", ".join(f"{label} {s:.3f}" for _, label, s in pairs) or "-"
    writer.write(document, csv_rows, [[result.path, shown]])
