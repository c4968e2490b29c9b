"""What every command shares: consoles, output formats, number formatting and the error boundary.

Data goes to stdout (a rich table on a terminal, aligned plain text when piped, JSON or CSV on request); messages
and progress go to stderr. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    stderr_console().print(f"[dim]{_escape(printable(message))}[/dim]", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    stderr_console().print(f"[yellow]warning:[/yellow] {_escape(printable(message))}", highlight=False, soft_wrap=True)


def report_problem(path: str, reason: str) -> None:
    """One input that could not be used: an `error:` line on stderr, and the work goes on."""
    sys.stderr.write(f"error: {printable(path)}: {printable(reason)}\n")
    sys.stderr.flush()


_VISIBLE_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\n``, ``\\x1b``): a newline in a file name must not
    split a table row or an error line, and an escape sequence must not reach the terminal."""
    if text.isprintable():
        return text
    return "".join(_visible(ch) for ch in text)


def _visible(ch: str) -> str:
    if ch.isprintable() or ch == " ":
        return ch
    if ch in _VISIBLE_ESCAPES:
        return _VISIBLE_ESCAPES[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: East Asian wide characters take two, combining marks none."""
    from rich.cells import cell_len

    return cell_len(text)


def pad(text: str, width: int, align: str = "left") -> str:
    """``text`` padded with spaces to ``width`` terminal columns."""
    fill = " " * max(0, width - display_width(text))
    return fill + text if align == "right" else text + fill


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# --- output formats ------------------------------------------------------------------------------------------


def default_workers() -> int:
    """Decoding processes for image commands: one per core, up to 4.

    On 2 cores, 2 workers beside the model's own threads measured 67 img/s for mobilenet_v3_large against 57 with
    1 (benchmarks/classify.py); heavier models barely notice.
    """
    return min(4, os.cpu_count() or 1)


def parse_floats(text: str | None, option: str, count: int = 3) -> tuple[float, ...] | None:
    """``0.485,0.456,0.406`` -> three finite floats, or a usage error naming ``option``."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not a comma-separated list of numbers", param_hint=option) from None
    if len(values) != count:
        raise typer.BadParameter(f"give one value per channel ({count})", param_hint=option)
    if not all(math.isfinite(v) for v in values):
        raise typer.BadParameter(f"'{text}': every value must be a finite number", param_hint=option)
    return values


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
    """A rich table on a terminal; aligned plain text (no box drawing, no colour) when piped, and also on a
    terminal too narrow for the table, where rich would cut every cell down to an ellipsis."""
    if stdout_is_terminal() and _fits_terminal(columns, rows):
        _print_rich_table(columns, rows, title, footer)
    else:
        sys.stdout.write(plain_table(columns, rows, title=title, footer=footer))
        sys.stdout.flush()


def _fits_terminal(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> bool:
    widths = [display_width(c.header) for c in columns]
    for row in rows:
        widths = [max(w, display_width(printable(cell))) for w, cell in zip(widths, row, strict=True)]
    return sum(w + 2 for w in widths) <= stdout_console().width  # rich pads each cell by one space a side


def _print_rich_table(columns, rows, title, footer) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, title_style="bold")
    for column in columns:
        table.add_column(column.header, justify=column.align, no_wrap=True)
    for row in rows:
        table.add_row(*(_escape(printable(cell)) for cell in row))
    console = stdout_console()
    console.print(table)
    for line in footer:
        console.print(_escape(printable(line)), highlight=False, soft_wrap=True)
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
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [display_width(c.header) for c in columns]
    for row in rows:
        widths = [max(w, display_width(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [pad(cell, width, column.align) for cell, width, column in zip(cells, widths, columns, strict=True)]
        return "  ".join(parts).rstrip() + "\n"

    out = [f"{printable(title)}\n"] if title else []
    out.append(line([c.header for c in columns]))
    out.extend(line(row) for row in rows)
    out.extend(f"{printable(text)}\n" for text in footer)
    if title or footer:
        out.append("\n")
    return "".join(out)


class StreamingWriter:
    """Results written as they arrive, one writer for every streaming command: JSON Lines, CSV (header once), or
    an aligned table whose column widths are fixed up front (the rows cannot be measured before they exist)."""

    def __init__(self, fmt: OutputFormat, table: Sequence[Column], widths: Sequence[int], csv_header: Sequence[str]):
        self.fmt = fmt
        self.table = list(table)
        self.widths = [max(w, display_width(c.header)) for w, c in zip(widths, table, strict=True)]
        self.csv_header = list(csv_header)
        self.started = False

    def write(self, document: Any, csv_rows: Sequence[Sequence[Any]], table_rows: Sequence[Sequence[str]]) -> None:
        if self.fmt == OutputFormat.json:
            sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
        elif self.fmt == OutputFormat.csv:
            writer = csv.writer(sys.stdout, lineterminator="\n")
            if not self.started:
                writer.writerow(self.csv_header)
            writer.writerows(csv_rows)
        else:
            lines = [] if self.started else [self._line([c.header for c in self.table])]
            lines.extend(self._line(row) for row in table_rows)
            sys.stdout.write("".join(lines))
        sys.stdout.flush()
        self.started = True

    def _line(self, cells: Sequence[str]) -> str:
        parts = [
            pad(printable(cell), width, column.align)
            for cell, width, column in zip(cells, self.widths, self.table, strict=True)
        ]
        return "  ".join(parts).rstrip() + "\n"


def widest(texts: Iterable[str], at_least: int = 0) -> int:
    """The display width of the widest of ``texts`` as a table shows them."""
    return max([at_least, *(display_width(printable(t)) for t in texts)])


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
