"""What every command shares: consoles, output formats, number formatting and the error boundary.

Data goes to stdout (a rich table on a terminal, aligned plain text when piped, JSON or CSV on request); messages
and progress go to stderr. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import Any

import typer


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


@dataclass
class State:
    debug: bool = False


STATE = State(debug=os.environ.get("RL_DEBUG", "") not in ("", "0"))


@cache
def stdout_console():
    from rich.console import Console

    return Console(soft_wrap=False)


@cache
def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def note(message: str) -> None:
    """An informational line on stderr (never mixed into data on stdout)."""
    stderr_console().print(f"[dim]{_escape(message)}[/dim]", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    stderr_console().print(f"[yellow]warning:[/yellow] {_escape(message)}", highlight=False, soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# --- output formats ------------------------------------------------------------------------------------------


def choose_format(json_flag: bool, csv_flag: bool) -> OutputFormat:
    if json_flag and csv_flag:
        raise typer.BadParameter("--json and --csv cannot be used together")
    if json_flag:
        return OutputFormat.json
    if csv_flag:
        return OutputFormat.csv
    return OutputFormat.table


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_json_line(document: Any) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    sys.stdout.flush()


@dataclass(frozen=True)
class Column:
    header: str
    align: str = "left"  # "left" or "right"


def print_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    footer: Sequence[str] = (),
) -> None:
    """A rich table on a terminal; aligned plain text (no box drawing, no colour) when piped."""
    if stdout_is_terminal():
        _print_rich_table(columns, rows, title, footer)
    else:
        sys.stdout.write(plain_table(columns, rows, title=title, footer=footer))
        sys.stdout.flush()


def _print_rich_table(columns, rows, title, footer) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, title_style="bold")
    for column in columns:
        table.add_column(column.header, justify=column.align, no_wrap=True)
    for row in rows:
        table.add_row(*(_escape(cell) for cell in row))
    console = stdout_console()
    console.print(table)
    for line in footer:
        console.print(_escape(line), highlight=False, soft_wrap=True)
    if footer:
        console.print()


def plain_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    footer: Sequence[str] = (),
) -> str:
    """Space-aligned text, stable for golden tests and friendly to grep, cut and awk."""
    widths = [len(c.header) for c in columns]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if column.align == "right" else cell.ljust(width)
            for cell, width, column in zip(cells, widths, columns, strict=True)
        ]
        return "  ".join(parts).rstrip() + "\n"

    out = [f"{title}\n"] if title else []
    out.append(line([c.header for c in columns]))
    out.extend(line(row) for row in rows)
    out.extend(f"{text}\n" for text in footer)
    if title or footer:
        out.append("\n")
    return "".join(out)


# --- numbers -------------------------------------------------------------------------------------------------


def si(value: float, unit: str = "", digits: int = 3) -> str:
    """``4490566656`` -> ``4.491 G``: decimal prefixes, as MACs and FLOPs are quoted in papers."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}f} {prefix}{unit}"
    return f"{value:g} {unit}".rstrip()


def size_bytes(value: int) -> str:
    """Bytes in binary units (MiB), the way memory is reported by the OS and by torch."""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def thousands(value: int) -> str:
    return f"{value:,}"


# --- progress ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A callback ``report(stage, done, total)`` drawing a rich progress bar on stderr, only on a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield lambda stage, done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    tasks: dict[str, Any] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr_console(), transient=True) as progress:

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        yield report
