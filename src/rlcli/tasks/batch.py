"""Batch inference into a folder of shards, on this machine or on a Ray cluster (``--ray``, ``-o DIR``, ``--resume``).

The engine behind ``rl classify``/``rl multilabel -o DIR`` and ``rl generate --prompts``. The model code is the
local path's own: workers load the model with ``load_classifier``/``load_csra``/``load_language_model``, decode
with ``core.images`` (the very dataset the local DataLoader reads), run ``core.inference``'s batch forward and turn
outputs into results with ``tasks.classify.predictions`` and ``tasks.multilabel``'s label selection.

Exactly once: inputs are numbered by their place in the expanded input list and cut into shards of ``shard_size``
consecutive inputs. Every result comes back to the driver, which keeps the first result per input (a task that Ray
runs again after a worker died may deliver twice) and writes a shard, atomically, only once all of its inputs are
there, with their predictions or their error. A shard file on disk is therefore complete, and ``--resume`` skips the
shards that exist after checking that the folder's plan (``_plan.json``: how many inputs, their hash, the shard size
and format) is this run's. ``manifest.json`` is written last.

Ray is optional (``pip install 'rlcli[ray]'``) and imported only inside the ``--ray`` paths.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlcli.core.files import atomic_write, ensure_output_folder, sha256_file
from rlcli.core.inputs import Input, Problem
from rlcli.errors import RlError, UsageError

FORMATS = ("jsonl", "csv", "parquet")
PLAN_FILE = "_plan.json"
MANIFEST_FILE = "manifest.json"
SHARD_PREFIX = "part-"
RAY_EXTRA = "pip install 'rlcli[ray]'"
# Test hook: a file path; the first model worker to reach its second batch creates the file and exits at once
# (os._exit, as a crash would), so that tests can check that a dying worker loses and duplicates nothing.
EXIT_ONCE_ENV = "RL_RAY_TEST_EXIT_ONCE"

Row = dict[str, Any]
RowSink = Callable[[int, Row], None]


# --- shards and the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardPlan:
    """Which inputs go to which shard: ``shard_size`` consecutive inputs each, in input order."""

    inputs: int
    shard_size: int
    digest: str  # sha256 of the input names, one per line: a resumed run must have the same inputs
    fmt: str

    @property
    def shards(self) -> int:
        return -(-self.inputs // self.shard_size)

    def shard_of(self, position: int) -> int:
        return position // self.shard_size

    def positions(self, shard: int) -> range:
        return range(shard * self.shard_size, min(self.inputs, (shard + 1) * self.shard_size))

    def file_name(self, shard: int) -> str:
        return f"{SHARD_PREFIX}{shard:05d}.{self.fmt}"

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "shard_size": self.shard_size, "inputs_sha256": self.digest, "format": self.fmt}


def plan_shards(names: Sequence[str], shard_size: int, fmt: str) -> ShardPlan:
    if shard_size < 1:
        raise UsageError("--shard-size must be at least 1")
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format '{fmt}': choose {', '.join(FORMATS)}")
    digest = hashlib.sha256("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()
    return ShardPlan(len(names), shard_size, digest, fmt)


def input_names(inputs: Sequence[Input]) -> list[str]:
    return [item.path if isinstance(item, Problem) else str(item) for item in inputs]


def prepare_folder(folder: Path, plan: ShardPlan, resume: bool) -> set[int]:
    """Check (and create) the output folder before any work; the shards already complete when resuming."""
    ensure_output_folder(folder)
    plan_path = folder / PLAN_FILE
    if not resume:
        if plan_path.exists() or any(p.name.startswith(SHARD_PREFIX) for p in folder.iterdir()):
            raise RlError(f"{folder} holds shards of another run: --resume completes that run; use an empty folder")
        with atomic_write(plan_path, "w") as handle:
            json.dump(plan.to_dict(), handle, indent=2)
        return set()
    try:
        stored = json.loads(plan_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RlError(f"--resume: {folder} has no {PLAN_FILE}, so no run to resume there") from None
    except (OSError, ValueError) as exc:
        raise RlError(f"--resume: cannot read {plan_path}: {exc}") from exc
    if stored != plan.to_dict():
        changed = ", ".join(k for k, v in plan.to_dict().items() if stored.get(k) != v)
        raise RlError(f"--resume: {folder} holds a run with other settings ({changed} differ): use the same inputs")
    return {shard for shard in range(plan.shards) if (folder / plan.file_name(shard)).exists()}


# --- rows in files -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowFormat:
    """How one task's rows look in CSV (flattened: ``csv_rows``) and Parquet (``arrow_fields``)."""

    list_field: str  # "top_k" or "labels": the row's list of results
    item_fields: tuple[tuple[str, str], ...]  # (name, arrow type: int64 | double | string) of each list item

    def csv_header(self) -> list[str]:
        return ["input", "path", *(name for name, _ in self.item_fields), "error"]

    def csv_rows(self, row: Row) -> list[list[Any]]:
        if row.get("error") is not None:
            return [[row["input"], row["path"], *([""] * len(self.item_fields)), row["error"]]]
        return [
            [row["input"], row["path"], *(item[name] for name, _ in self.item_fields), ""]
            for item in row[self.list_field]
        ]

    def arrow_schema(self):
        import pyarrow as pa

        types = {"int64": pa.int64(), "double": pa.float64(), "string": pa.string()}
        item = pa.struct([(name, types[kind]) for name, kind in self.item_fields])
        return pa.schema(
            [("input", pa.int64()), ("path", pa.string()), (self.list_field, pa.list_(item)), ("error", pa.string())]
        )


CLASSIFY_ROWS = RowFormat(
    "top_k", (("rank", "int64"), ("label", "string"), ("index", "int64"), ("probability", "double"))
)
MULTILABEL_ROWS = RowFormat("labels", (("label", "string"), ("index", "int64"), ("score", "double")))


def write_shard(path: Path, rows: list[Row], fmt: str, rows_format: RowFormat) -> None:
    """One shard in one step: a temporary file beside it, renamed into place when complete."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=rows_format.arrow_schema())
        with atomic_write(path, "wb") as handle:
            pq.write_table(table, handle)
        return
    with atomic_write(path, "w") as handle:
        if fmt == "jsonl":
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        else:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(rows_format.csv_header())
            for row in rows:
                writer.writerows(rows_format.csv_rows(row))


def read_shard_status(path: Path, fmt: str) -> dict[int, bool]:
    """Input number -> failed, for a shard written earlier (``--resume`` counts its rows for the manifest)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["input", "error"]).to_pydict()
        return {i: e is not None for i, e in zip(table["input"], table["error"], strict=True)}
    text = path.read_text(encoding="utf-8")
    if fmt == "jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line]
        return {row["input"]: row.get("error") is not None for row in rows}
    return {int(r["input"]): bool(r["error"]) for r in csv.DictReader(io.StringIO(text))}


@dataclass
class ShardedOutput:
    """Collects rows as they arrive, in any order and possibly twice, and writes each shard once it is complete."""

    folder: Path
    plan: ShardPlan
    rows_format: RowFormat
    done: set[int] = field(default_factory=set)  # shards already on disk (--resume)
    pending: dict[int, dict[int, Row]] = field(default_factory=dict)
    written: dict[int, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0

    def positions_to_run(self) -> list[int]:
        return [p for shard in range(self.plan.shards) if shard not in self.done for p in self.plan.positions(shard)]

    def add(self, position: int, row: Row) -> bool:
        """Keep ``row`` unless this input already has one; False for a duplicate."""
        shard = self.plan.shard_of(position)
        bucket = self.pending.setdefault(shard, {}) if shard not in self.done and shard not in self.written else None
        if bucket is None or position in bucket:
            self.duplicates += 1
            return False
        bucket[position] = {"input": position, **row}
        if len(bucket) == len(self.plan.positions(shard)):
            self._write(shard, self.pending.pop(shard))
        return True

    def _write(self, shard: int, bucket: dict[int, Row]) -> None:
        rows = [bucket[p] for p in sorted(bucket)]
        path = self.folder / self.plan.file_name(shard)
        write_shard(path, rows, self.plan.fmt, self.rows_format)
        self.written[shard] = _shard_entry(path, {r["input"]: r.get("error") is not None for r in rows})

    def missing(self) -> int:
        return len(self.positions_to_run()) - sum(len(self.plan.positions(s)) for s in self.written)

    def write_manifest(self, about: dict[str, Any]) -> dict[str, Any]:
        """``manifest.json``, last: every shard with its row counts, and what produced them."""
        from rlcli import __version__

        shards = dict(self.written)
        for shard in self.done:
            path = self.folder / self.plan.file_name(shard)
            shards[shard] = _shard_entry(path, read_shard_status(path, self.plan.fmt))
        entries = [shards[s] for s in sorted(shards)]
        manifest = {
            "rl_version": __version__,
            **about,
            **self.plan.to_dict(),
            "rows": sum(e["rows"] for e in entries),
            "failed": sum(e["failed"] for e in entries),
            "shards": entries,
        }
        with atomic_write(self.folder / MANIFEST_FILE, "w") as handle:
            json.dump(manifest, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        return manifest


def _shard_entry(path: Path, status: dict[int, bool]) -> dict[str, Any]:
    return {
        "file": path.name,
        "rows": len(status),
        "failed": sum(status.values()),
        "first_input": min(status),
        "last_input": max(status),
        "sha256": sha256_file(path),
    }


def weights_digest(weights: str) -> str | None:
    """SHA-256 of a weights file (None for a name such as torchvision's DEFAULT, resolved in the cache)."""
    path = Path(weights).expanduser()
    return sha256_file(path) if path.is_file() else None


def read_path_list(path: Path, column: str = "path") -> list[str]:
    """``--from-list``: one path per line, or ``column`` of a CSV (header row) or Parquet file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if column not in table.column_names:
                raise RlError(f"--from-list {path} has no column '{column}' (columns: {', '.join(table.column_names)})")
            return [str(v) for v in table.column(column).to_pylist() if v is not None and str(v).strip()]
        text = path.read_text(encoding="utf-8-sig")
    except ImportError:
        raise RlError(f"--from-list reads Parquet with pyarrow: {RAY_EXTRA}") from None
    except FileNotFoundError:
        raise RlError(f"--from-list {path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RlError(f"--from-list {path}: cannot read it: {exc}") from exc
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if column not in (reader.fieldnames or []):
            raise RlError(f"--from-list {path} has no column '{column}' (header: {', '.join(reader.fieldnames or [])})")
        return [row[column] for row in reader if row[column] and row[column].strip()]
    # Windows-made lists end their lines in CRLF; a path never legitimately ends in a carriage return.
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


# --- image jobs ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageJob:
    """Everything a worker needs to load the model once and turn its outputs into rows; sent to Ray workers.

    ``task`` is ``classify`` (``load`` = ``load_classifier(**settings)``) or ``multilabel`` (``load_csra``).
    """

    task: str
    settings: dict[str, Any]
    overrides: Any  # tasks.classify.PreprocessOverrides
    top_k: int | None
    threshold: float | list[float] = 0.5  # one for every class, or one per class (rl multilabel)

    @property
    def rows_format(self) -> RowFormat:
        return CLASSIFY_ROWS if self.task == "classify" else MULTILABEL_ROWS

    def load(self, device: str | None = None):
        """The Classifier, as the local command loads it (``device`` replaces the command line's)."""
        settings = self.settings if device is None else {**self.settings, "device": device}
        if self.task == "classify":
            from rlcli.tasks.classify import load_classifier

            return load_classifier(**settings, overrides=self.overrides)
        from rlcli.tasks.multilabel import load_csra

        clf, _ = load_csra(**settings)
        clf.runner.preprocess = self.overrides.apply(clf.runner.preprocess)
        return clf

    def results(self, clf, inputs: list[Input], options) -> Iterator[Any]:
        """The local path: predictions and problems in input order."""
        if self.task == "classify":
            from rlcli.tasks.classify import classify

            return classify(clf, inputs, self.top_k, options)
        from rlcli.tasks.multilabel import recognise

        return recognise(clf, inputs, threshold=self.threshold, top_k=self.top_k, options=options)

    def batch_results(self, clf, batch, outputs) -> list[Any]:
        """One decoded batch's results from the model's outputs (None when no image of it decoded)."""
        if self.task == "classify":
            from rlcli.tasks.classify import predictions

            return predictions(clf, batch, outputs, self.top_k)
        from rlcli.tasks.multilabel import label_sets

        results = list(batch.problems)
        if outputs is not None:
            results.extend(label_sets(clf, batch, outputs.sigmoid(), None, self.threshold, self.top_k))
        return sorted(results, key=lambda r: r.position)

    def row(self, result) -> Row:
        """The row of one result: what ``--json`` prints for it locally, or its path and error."""
        if isinstance(result, Problem):
            return {"path": result.path, "error": result.reason}
        if self.task == "classify":
            ranked = zip(result.indices, result.labels, result.probabilities, strict=True)
            return {
                "path": result.path,
                "top_k": [
                    {"rank": rank, "label": label, "index": index, "probability": round(p, 6)}
                    for rank, (index, label, p) in enumerate(ranked, start=1)
                ],
            }
        pairs = zip(result.indices, result.labels, result.scores, strict=True)
        return {"path": result.path, "labels": [{"label": n, "index": i, "score": round(s, 6)} for i, n, s in pairs]}


@dataclass
class Progress:
    """Rows done and failed so far; ``report`` is called after each result."""

    total: int
    report: Callable[[Progress], None] | None = None
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.perf_counter)

    def count(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        if self.report is not None:
            self.report(self)

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


def run_images_locally(job: ImageJob, clf, inputs: list[Input], positions: list[int], options, sink: RowSink):
    """The local runner over the inputs at ``positions``; each row goes to ``sink`` with its input number."""
    subset = [inputs[p] for p in positions]
    for result in job.results(clf, subset, options):
        sink(positions[result.position], job.row(result))


# --- Ray -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayOptions:
    workers: int = 1  # model actors
    gpus_per_worker: float = 0.0
    batch_size: int = 32
    draft: bool = False
    quiet: bool = True  # Ray's own log lines off stderr (--debug lets them through)


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise RlError(f"--ray needs Ray Data, an optional extra: {RAY_EXTRA}") from None
    return ray


def connect_ray(quiet: bool = True):
    """Ray, connected to the cluster at RAY_ADDRESS, or to a local instance started here (no dashboard, no usage
    statistics sent); a connection made earlier in this process is reused. ``quiet`` keeps Ray's own log lines
    (notices, deprecations, its C++ core's warnings) off stderr, which carries rl's messages only."""
    ray = import_ray()
    if quiet:
        import logging

        # Ray Data logs a failed task at ERROR before raising it; rl reports the failure itself, in one line.
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    if not ray.is_initialized():
        import logging

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if quiet:
            # Ray's C++ core logs each restartable actor's creation as an error (ray-project/ray#53727).
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        address = os.environ.get("RAY_ADDRESS") or None
        local = {} if address else {"include_dashboard": False}
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=False, **local)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray


def check_cluster(ray, options: RayOptions, *, decoding: bool) -> None:
    """Model workers take one CPU each (and their GPUs); decoding tasks need at least one CPU beside them."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    needed_gpus = options.workers * options.gpus_per_worker
    if needed_gpus > gpus:
        raise UsageError(
            f"--workers {options.workers} x --gpus-per-worker {options.gpus_per_worker:g} needs {needed_gpus:g} "
            f"GPUs; the Ray cluster has {gpus:g}"
        )
    needed_cpus = options.workers + decoding
    if needed_cpus > cpus:
        beside = " and decoding needs one more" if decoding else ""
        raise UsageError(
            f"--workers {options.workers} takes {options.workers} CPUs for the model{beside}; "
            f"the Ray cluster has {cpus:g}"
        )


def _ray_failure(exc: BaseException) -> RlError:
    """The rl error inside a Ray task's failure (one line), or the failure's first line."""
    seen = exc
    while seen is not None:
        if isinstance(seen, RlError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    text = str(exc).strip().splitlines()
    return RlError(f"the Ray run failed: {type(exc).__name__}: {text[-1] if text else ''}")


def decode_images(batch: dict, preprocess, draft: bool) -> dict:
    """A Ray Data task: read and preprocess one batch of images exactly as the local DataLoader does."""
    import numpy as np

    from rlcli.core.images import ImageDataset

    items = [
        Problem(str(path), str(problem)) if problem else Path(file)
        for path, file, problem in zip(batch["path"], batch["file"], batch["problem"], strict=True)
    ]
    dataset = ImageDataset(items, preprocess, draft)
    n, crop = len(items), preprocess.crop
    pixels = np.zeros((n, 3, crop, crop), dtype=np.float32)
    ok, reasons, sizes = np.zeros(n, dtype=bool), [""] * n, np.zeros((n, 2), dtype=np.int64)
    for i in range(n):
        _, outcome, size, tensor = dataset[i]
        if tensor is None:
            reasons[i] = outcome.reason
        else:
            ok[i], sizes[i], pixels[i] = True, size, tensor.numpy()
    return {
        "input": batch["input"],
        "path": batch["path"],
        "ok": ok,
        "reason": np.array(reasons, dtype=object),
        "size": sizes,
        "pixels": pixels,
    }


def _exit_once(marker: str | None, batches: int) -> None:
    """The test hook of EXIT_ONCE_ENV: exactly one worker of a run dies, at its second batch."""
    if not marker or batches != 2:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)


class ImageWorker:
    """A Ray actor: loads the model once, then runs the decoded batches it is given."""

    def __init__(self, job: ImageJob, device: str, exit_once: str | None = None) -> None:
        self.job, self.exit_once, self.batches = job, exit_once, 0
        self.clf, self.failure = _load_or_failure(job, device)

    def __call__(self, batch: dict) -> dict:
        if self.failure is not None:
            return _fatal(self.failure)
        try:
            return self._run(batch)
        except RlError as exc:
            return _fatal(exc)

    def _run(self, batch: dict) -> dict:
        import numpy as np
        import torch

        from rlcli.core.images import ImageBatch
        from rlcli.core.inference import run_batch

        self.batches += 1
        _exit_once(self.exit_once, self.batches)
        ok = batch["ok"]
        good = np.flatnonzero(ok)
        image_batch = ImageBatch(
            positions=[int(batch["input"][i]) for i in good],
            paths=[str(batch["path"][i]) for i in good],
            sizes=[tuple(int(v) for v in batch["size"][i]) for i in good],
            pixels=torch.from_numpy(np.ascontiguousarray(batch["pixels"][good])) if len(good) else None,
            problems=[
                Problem(str(batch["path"][i]), str(batch["reason"][i]), int(batch["input"][i]))
                for i in np.flatnonzero(~ok)
            ],
        )
        outputs = None
        if image_batch.pixels is not None:
            with torch.inference_mode():
                outputs = run_batch(self.clf.runner, self.clf.runner.model, image_batch)
        results = self.job.batch_results(self.clf, image_batch, outputs)
        return {
            "input": np.array([r.position for r in results], dtype=np.int64),
            "row": np.array([json.dumps(self.job.row(r), ensure_ascii=False) for r in results], dtype=object),
        }


FATAL = -1  # the input number of a row that carries a worker's RlError, which ends the run


def _load_or_failure(job, device: str) -> tuple[Any, RlError | None]:
    """The worker's model, or the rl error of loading it (a file missing on that node): kept to be sent back as the
    run's error, since an actor that fails to start is restarted by Ray, again and again."""
    try:
        return job.load(device), None
    except RlError as exc:
        return None, exc


def _fatal(exc: RlError) -> dict:
    """An rl error inside a worker, sent back as a row: Ray would hand the driver its traceback, not its words."""
    import numpy as np

    row = json.dumps({"error": str(exc), "kind": type(exc).__name__}, ensure_ascii=False)
    return {"input": np.array([FATAL], dtype=np.int64), "row": np.array([row], dtype=object)}


def run_images_on_ray(
    job: ImageJob, preprocess, inputs: list[Input], positions: list[int], options: RayOptions, sink: RowSink
) -> None:
    """Decoding as Ray Data tasks, the model in a pool of ``options.workers`` actors; rows stream back to ``sink``.

    The inputs are cut into the batches the local runner would form (``batch_size`` consecutive inputs, problems
    included), one Ray block each, and each block stays one batch through decoding and the model: a convolution
    may round differently for another batch size, and the rows must equal the local run's.
    """
    import pyarrow as pa

    items = [_image_item(position, inputs[position]) for position in positions]
    if not items:
        return  # --resume of a complete run: nothing to start Ray for
    ray = connect_ray(options.quiet)
    check_cluster(ray, options, decoding=True)
    size = options.batch_size
    blocks = [pa.Table.from_pylist(items[start : start + size]) for start in range(0, len(items), size)]
    dataset = ray.data.from_arrow(blocks)
    # Each decoding task reserves the memory of its batch of pixels; being unlike the actors' request, that also
    # keeps Ray from fusing decoding into the model actors, so decoding scales over every node's CPUs while the
    # actors hold the model.
    dataset = dataset.map_batches(
        decode_images,
        fn_kwargs={"preprocess": preprocess, "draft": options.draft},
        batch_size=None,
        batch_format="numpy",
        num_cpus=1,
        memory=_decoding_bytes(preprocess, size),
    )
    device = "cuda" if options.gpus_per_worker > 0 else "cpu"
    dataset = dataset.map_batches(
        ImageWorker,
        fn_constructor_kwargs={"job": job, "device": device, "exit_once": os.environ.get(EXIT_ONCE_ENV)},
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        batch_size=None,
        batch_format="numpy",
        num_cpus=1,
        num_gpus=options.gpus_per_worker or None,
    )
    _drain(dataset, sink)


def _image_item(position: int, item: Input) -> dict[str, Any]:
    if isinstance(item, Problem):  # found before any reading (a missing file): its error travels with its batch
        return {"input": position, "path": item.path, "file": "", "problem": item.reason}
    # Absolute: a worker's working folder is not the driver's.
    return {"input": position, "path": str(item), "file": os.path.abspath(item), "problem": ""}


def _decoding_bytes(preprocess, batch_size: int) -> int:
    """A decoding task's batch of float32 pixels, plus one resized 8-bit picture (as ``core.inference`` counts)."""
    return preprocess.batch_bytes(batch_size) + 3 * preprocess.resize * preprocess.resize


def _rl_error(row: Row) -> RlError:
    """A worker's error as its own class (a usage error keeps exit code 2)."""
    from rlcli import errors

    kind = getattr(errors, row.get("kind", ""), RlError)
    return (kind if isinstance(kind, type) and issubclass(kind, RlError) else RlError)(row["error"])


def _drain(dataset, sink: RowSink) -> None:
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for position, text in zip(batch["input"], batch["row"], strict=True):
                if position == FATAL:
                    raise _rl_error(json.loads(text))
                sink(int(position), json.loads(text))
    except RlError:
        raise
    except Exception as exc:
        raise _ray_failure(exc) from exc


# --- rl generate --prompts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptLine:
    id: Any
    prompt: str | None
    error: str | None = None


def read_prompts(path: Path) -> list[PromptLine]:
    """JSON Lines: ``{"prompt": "...", "id": ...}`` per line (id defaults to the line number, from 1); a line that is
    not such an object is that prompt's error, and the others go on."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RlError(f"--prompts {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RlError(f"--prompts {path}: cannot read it: {exc}") from exc
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            prompts.append(PromptLine(number, None, f"line {number} is not JSON ({exc})"))
            continue
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            prompts.append(PromptLine(number, None, f'line {number} has no "prompt" string'))
            continue
        prompts.append(PromptLine(data.get("id", number), data["prompt"]))
    if not prompts:
        raise RlError(f"--prompts {path} holds no prompts")
    return prompts


@dataclass(frozen=True)
class GenerateJob:
    """A language model and sampling options; each prompt gives one row (id, text, tokens, finish reason).

    ``options.seed`` is set (the driver draws one when the user gave none): the prompt at position ``k`` samples
    with ``tasks.generate.prompt_seed(seed, k)``, so a row does not depend on the batch or the worker it ran in.
    """

    model: str
    dtype: str
    device: str
    options: Any  # tasks.generate.SamplingOptions

    def load(self, device: str | None = None):
        from rlcli.tasks.generate import Generator, load_language_model

        return Generator(load_language_model(self.model, dtype=self.dtype, device=device or self.device))

    def rows(self, generator, lines: list[tuple[int, PromptLine]]) -> list[Row]:
        """The rows of ``lines`` ((position, line) pairs), their prompts decoded together as one batch."""
        from rlcli.tasks.generate import prompt_seed

        runnable = [(position, line) for position, line in lines if line.error is None]
        samples = generator.generate_batch(
            [line.prompt for _, line in runnable],
            self.options,
            [prompt_seed(self.options.seed, position) for position, _ in runnable],
        )
        outcome = {position: sample for (position, _), sample in zip(runnable, samples, strict=True)}
        return [self._row(line, outcome.get(position)) for position, line in lines]

    @staticmethod
    def _row(line: PromptLine, sample) -> Row:
        if line.error is not None:
            return {"id": line.id, "error": line.error}
        if isinstance(sample, RlError):
            return {"id": line.id, "error": str(sample)}
        return {"id": line.id, "text": sample.text, "tokens": sample.token_ids, "finish_reason": sample.finish_reason}


def generate_locally(
    job: GenerateJob, generator, prompts: list[PromptLine], sink: RowSink, batch_size: int = 8
) -> None:
    """The prompts in batches of ``batch_size`` consecutive ones (the batches of ``generate_on_ray``'s tasks)."""
    for start in range(0, len(prompts), batch_size):
        lines = list(enumerate(prompts[start : start + batch_size], start=start))
        for (position, _), row in zip(lines, job.rows(generator, lines), strict=True):
            sink(position, row)


class GenerateWorker:
    """A Ray actor holding one loaded language model."""

    def __init__(self, job: GenerateJob, device: str, exit_once: str | None = None) -> None:
        self.job, self.exit_once, self.batches = job, exit_once, 0
        self.generator, self.failure = _load_or_failure(job, device)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        if self.failure is not None:
            return _fatal(self.failure)
        self.batches += 1
        _exit_once(self.exit_once, self.batches)
        lines = [(int(p), PromptLine(**json.loads(t))) for p, t in zip(batch["input"], batch["line"], strict=True)]
        rows = [json.dumps(row, ensure_ascii=False) for row in self.job.rows(self.generator, lines)]
        return {"input": np.asarray(batch["input"], dtype=np.int64), "row": np.array(rows, dtype=object)}


def generate_on_ray(job: GenerateJob, prompts: list[PromptLine], options: RayOptions, sink: RowSink) -> None:
    """Prompts spread over a pool of ``options.workers`` actors, ``options.batch_size`` consecutive prompts per task
    (``generate_locally``'s batches), each task's prompts decoded together."""
    ray = connect_ray(options.quiet)
    check_cluster(ray, options, decoding=False)
    items = [{"input": i, "line": json.dumps(vars(line), ensure_ascii=False)} for i, line in enumerate(prompts)]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // options.batch_size)))
    device = "cuda" if options.gpus_per_worker > 0 else "cpu"
    dataset = dataset.map_batches(
        GenerateWorker,
        fn_constructor_kwargs={"job": job, "device": device, "exit_once": os.environ.get(EXIT_ONCE_ENV)},
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        batch_size=options.batch_size,
        batch_format="numpy",
        num_cpus=1,
        num_gpus=options.gpus_per_worker or None,
    )
    _drain(dataset, sink)


def write_jsonl(path: Path, rows: list[Row], *, overwrite: bool) -> None:
    with atomic_write(path, "w", overwrite=overwrite) as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
