"""`rl models [PATTERN]`: the models rl knows, read from the static index (no torch import)."""

from __future__ import annotations

import typer

from rlcli.cli._common import Column, choose_format, print_csv, print_json, print_table, si, thousands
from rlcli.errors import RlError

HELP = """List the models rl knows, with parameters and MACs at their default input.

PATTERN is a shell glob (resnet*) or a plain substring (mobilenet); it matches names and families.

Examples:

\b
  rl models
  rl models 'resnet*'
  rl models swin --json
"""


def register(app: typer.Typer) -> None:
    app.command("models", help=HELP)(models_command)


def models_command(
    pattern: str | None = typer.Argument(None, help="Glob or substring to filter names and families."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV."),
) -> None:
    from rlcli.models.catalog import find_models, load_index

    fmt = choose_format(json_out, csv_out)
    index = load_index()
    entries = find_models(pattern)
    if not entries:
        raise RlError(f"no model matches '{pattern}'")
    fields = ("name", "family", "source", "task", "params", "macs", "input_size")
    if fmt == "json":
        print_json(
            {
                "convention": index.convention,
                "versions": index.versions,
                "models": [{key: getattr(e, key) for key in fields} for e in entries],
            }
        )
    elif fmt == "csv":
        print_csv(fields, [[getattr(e, key) for key in fields] for e in entries])
    else:
        columns = [
            Column("Model"),
            Column("Family"),
            Column("Task"),
            Column("Params", "right"),
            Column("MACs", "right"),
            Column("Input"),
        ]
        rows = [[e.name, e.family, e.task, thousands(e.params), si(e.macs), e.input_size] for e in entries]
        footer = [
            f"{len(entries)} models. MACs at batch 1 and the default input; {index.convention}.",
            "`rl summary MODEL` shows the layers; any pkg.module:callable or file.py:callable works there too.",
        ]
        print_table(columns, rows, footer=footer)
