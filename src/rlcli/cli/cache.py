"""`rl cache info|clear`: the result cache of `rl summary` and `rl compare` (``core.resultcache``)."""

from __future__ import annotations

import sys

import typer

from rlcli.cli._common import note, print_json, printable, size_bytes

HELP = """Show or clear the result cache of `rl summary` and `rl compare`.

`rl summary` keeps the full result of each model of `rl models` it counted, and `rl compare` each family search,
in $XDG_CACHE_HOME/rlcli (default ~/.cache/rlcli), so that the same question asked again is answered from disk,
without importing torch. An entry is used only for exactly its question, asked of the same versions of rl, torch,
torchvision and the other counting libraries; any other entry is ignored and replaced. --no-cache on either
command bypasses it.

Examples:

\b
  rl cache info
  rl cache info --json
  rl cache clear
"""

cache_app = typer.Typer(
    name="cache",
    help=HELP,
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")


@cache_app.command("info", help="Print where the cache is, how many entries it holds and their size.")
def info_command(json_out: bool = typer.Option(False, "--json", help="Print one JSON document.")) -> None:
    from dataclasses import asdict

    from rlcli.core.resultcache import ResultCache

    info = ResultCache().info()
    if json_out:
        print_json(asdict(info))
        return
    kinds = ", ".join(f"{kind} {count}" for kind, count in info.by_kind.items())
    location = printable(info.location) + ("" if info.exists else " (not created yet)")
    entries = f"{info.entries} ({kinds})" if kinds else str(info.entries)
    sys.stdout.write(f"Location: {location}\nEntries: {entries}\nSize: {size_bytes(info.bytes)}\n")


@cache_app.command("clear", help="Remove every entry of the cache.")
def clear_command() -> None:
    from rlcli.core.resultcache import ResultCache

    cache = ResultCache()
    entries, removed = cache.clear()
    noun = "entry" if entries == 1 else "entries"
    note(f"removed {entries} {noun} ({size_bytes(removed)}) from {cache.folder}")
