"""Regenerate the committed generated files: the model index and the shell completions.

    python scripts/update_generated.py

Tests fail while either is stale (tests/test_generated.py).
"""

from __future__ import annotations

from pathlib import Path

from rlcli.cli._completion import SHELLS, completion_script
from rlcli.core.files import atomic_write
from rlcli.tasks.index import main as write_index

ROOT = Path(__file__).resolve().parent.parent


def write_completions() -> None:
    for shell in SHELLS:
        path = ROOT / "completions" / f"rl.{shell}"
        with atomic_write(path, "w") as handle:
            handle.write(completion_script(shell))
        print(f"wrote {path}")


if __name__ == "__main__":
    write_index()
    write_completions()
