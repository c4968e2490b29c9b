"""What the batch options of rl classify, rl multilabel and rl generate share: --ray, -o DIR, --resume, the progress
line and the summary line on stderr. The engine is ``rlcli.tasks.batch``; nothing here imports torch or ray."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from rlcli.cli._common import note, report_problem


class ShardFormat(str, Enum):
    jsonl = "jsonl"
    csv = "csv"
    parquet = "parquet"


# The batch options of rl classify and rl multilabel, declared once.
FROM_LIST = typer.Option(
    None, "--from-list", help="Image paths, one per line, or the --list-column of a .csv/.parquet file."
)
LIST_COLUMN = typer.Option("path", "--list-column", help="The column of a CSV/Parquet --from-list.")
OUTPUT = typer.Option(None, "--output", "-o", help="Write shards and a manifest.json into this folder.")
SHARD_FORMAT = typer.Option(ShardFormat.jsonl, "--format", help="Shard format with -o.")
SHARD_SIZE = typer.Option(1000, "--shard-size", min=1, help="Inputs per shard with -o.")
RESUME = typer.Option(False, "--resume", help="Complete an interrupted -o run: skip its complete shards.")
RAY = typer.Option(
    False, "--ray", help="Run on a Ray cluster (RAY_ADDRESS, else a local instance); needs -o and rlcli[ray]."
)
GPUS_PER_WORKER = typer.Option(0.0, "--gpus-per-worker", min=0, help="GPUs per --ray model actor.")


def check_batch_options(*, ray: bool, output: Path | None, resume: bool, stdout_format: str) -> None:
    """Usage errors for batch options that do not go together (before any work)."""
    if ray and output is None:
        raise typer.BadParameter("--ray writes its results into a folder: give -o DIR", param_hint="--ray")
    if resume and output is None:
        raise typer.BadParameter("--resume completes the run in -o DIR: give -o DIR", param_hint="--resume")
    if output is not None and stdout_format != "table":
        raise typer.BadParameter("-o DIR writes shards in --format; --json/--csv are for stdout", param_hint="-o")
    if ray:
        from rlcli.tasks.batch import import_ray

        import_ray()  # a missing extra is found before any work


def read_image_inputs(arguments: list[str], from_list: Path | None, column: str) -> list:
    """The inputs of IMG arguments (as the local path always expands them), then those of --from-list."""
    from rlcli.core.images import IMAGE_SUFFIXES
    from rlcli.core.inputs import expand_inputs
    from rlcli.errors import RlError

    stdin = sys.stdin if "-" in arguments else None
    inputs = expand_inputs(arguments, suffixes=IMAGE_SUFFIXES, stdin_lines=stdin, what="images")
    if from_list is not None:
        from rlcli.tasks.batch import read_path_list

        listed = read_path_list(from_list, column)
        if not listed:
            raise RlError(f"--from-list {from_list} holds no paths")
        inputs = [*inputs, *expand_inputs(listed, suffixes=IMAGE_SUFFIXES, what="images")]
    return inputs


def run_image_batch(
    job,
    clf,
    inputs: list,
    *,
    output: Path,
    shard_format: ShardFormat,
    shard_size: int,
    resume: bool,
    ray: bool,
    workers: int | None,
    gpus_per_worker: float,
    batch_size: int,
    draft: bool,
    verb: str,
) -> None:
    """-o DIR, locally (``workers`` decoding processes) or with --ray (``workers`` model actors, default 1)."""
    from rlcli.cli._common import STATE, default_workers
    from rlcli.core.inference import RunOptions
    from rlcli.tasks.batch import RayOptions

    local = RunOptions(batch_size=batch_size, workers=default_workers() if workers is None else workers, draft=draft)
    ray_options = RayOptions(workers or 1, gpus_per_worker, batch_size, draft, not STATE.debug) if ray else None
    run_sharded(
        job,
        clf,
        inputs,
        output=output,
        fmt=shard_format,
        shard_size=shard_size,
        resume=resume,
        ray_options=ray_options,
        local_options=local,
        verb=verb,
    )


def progress_reporter(verb: str) -> Callable[[Any], None]:
    """A progress line on stderr (rows done, rows/s, failures): redrawn on a terminal, every 10 s otherwise."""
    terminal = sys.stderr.isatty()
    last = [time.monotonic()]

    def report(progress) -> None:
        now = time.monotonic()
        if now - last[0] < (0.5 if terminal else 10.0) and progress.done < progress.total:
            return
        last[0] = now
        line = (
            f"{verb} {progress.done:,}/{progress.total:,} rows, {progress.rate:.1f} rows/s, {progress.failed:,} failed"
        )
        sys.stderr.write(f"\r{line}\x1b[K" if terminal else f"{line}\n")
        if terminal and progress.done >= progress.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return report


def run_sharded(
    job,
    clf,
    inputs: list,
    *,
    output: Path,
    fmt: ShardFormat,
    shard_size: int,
    resume: bool,
    ray_options,
    local_options,
    verb: str,
) -> None:
    """Run an image job into -o DIR (on Ray when ``ray_options`` is given), report failures per input as they
    come, then write the manifest and one summary line; exit 1 when any input failed."""
    from rlcli.errors import RlError
    from rlcli.tasks.batch import (
        Progress,
        ShardedOutput,
        input_names,
        plan_shards,
        prepare_folder,
        run_images_locally,
        run_images_on_ray,
        weights_digest,
    )

    plan = plan_shards(input_names(inputs), shard_size, fmt.value)
    sharded = ShardedOutput(output, plan, job.rows_format, done=prepare_folder(output, plan, resume))
    positions = sharded.positions_to_run()
    progress = Progress(len(positions), report=progress_reporter(verb))

    def sink(position: int, row: dict) -> None:
        if sharded.add(position, row):
            failed = row.get("error") is not None
            if failed:
                report_problem(row["path"], row["error"])
            progress.count(failed)

    if ray_options is not None:
        run_images_on_ray(job, clf.preprocess, inputs, positions, ray_options, sink)
    else:
        run_images_locally(job, clf, inputs, positions, local_options, sink)
    if sharded.missing():
        raise RlError(f"{sharded.missing()} inputs came back without a result; the shards written are complete")
    about = {
        "task": job.task,
        "engine": "ray" if ray_options is not None else "local",
        "model": clf.runner.name,
        "weights": clf.weights,
        "weights_sha256": weights_digest(clf.weights),
    }
    manifest = sharded.write_manifest(about)
    finish(progress, manifest["rows"], manifest["failed"], len(sharded.done), output / "manifest.json")


def finish(progress, rows: int, failed: int, skipped_shards: int, where: Path, noun: str = "inputs") -> None:
    """The summary line on stderr; exit 1 when any input failed."""
    resumed = f"; {skipped_shards} shards were complete already (--resume)" if skipped_shards else ""
    note(
        f"{rows:,} {noun}: {rows - failed:,} succeeded, {failed:,} failed; this run did {progress.done:,} at "
        f"{progress.rate:.1f} rows/s{resumed}; {where}"
    )
    if failed:
        raise typer.Exit(1)
