"""Regenerate the committed generated files: the model index, the shell completions and README's reading-list table.

    python scripts/update_generated.py

Tests fail while either is stale (tests/test_generated.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from rlcli.cli._completion import SHELLS, completion_script
from rlcli.core.files import atomic_write
from rlcli.models.catalog import INDEX_PATH
from rlcli.tasks.index import main as write_index
from rlcli.tasks.index import reading_list_table, with_reading_list

ROOT = Path(__file__).resolve().parent.parent


def write_completions() -> None:
    for shell in SHELLS:
        path = ROOT / "completions" / f"rl.{shell}"
        with atomic_write(path, "w") as handle:
            handle.write(completion_script(shell))
        print(f"wrote {path}")


def write_reading_list() -> None:
    """README's table of the reading list's papers, from the index just written."""
    readme = ROOT / "README.md"
    index = json.loads(INDEX_PATH.read_text(encoding="utf-8"))
    text = with_reading_list(readme.read_text(encoding="utf-8"), reading_list_table(index))
    with atomic_write(readme, "w") as handle:
        handle.write(text)
    print(f"wrote {readme} (reading-list table)")


if __name__ == "__main__":
    write_index()
    write_completions()
    write_reading_list()
