"""Generated, committed files stay current: the model index and the shell completions.

Regenerate both with:  python scripts/update_generated.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlcli.cli._completion import SHELLS, completion_script
from rlcli.models.catalog import INDEX_PATH
from rlcli.tasks.index import build_index

ROOT = Path(__file__).resolve().parent.parent


def test_model_index_is_current():
    committed = json.loads(INDEX_PATH.read_text(encoding="utf-8"))
    fresh = build_index()
    assert committed["convention"] == fresh["convention"]
    assert [m["name"] for m in committed["models"]] == [m["name"] for m in fresh["models"]], (
        "the model list changed: run python scripts/update_generated.py"
    )
    stale = [
        f"{old['name']}: {old} != {new}"
        for old, new in zip(committed["models"], fresh["models"], strict=True)
        if old != new
    ]
    assert not stale, "stale index (run python scripts/update_generated.py):\n" + "\n".join(stale[:5])


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_scripts_are_current(shell):
    committed = (ROOT / "completions" / f"rl.{shell}").read_text(encoding="utf-8")
    assert committed == completion_script(shell), "run python scripts/update_generated.py"


def test_readme_reading_list_is_current():
    from rlcli.tasks.index import README_END, README_START, reading_list_table

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index(README_START) + len(README_START) : readme.index(README_END)]
    committed = json.loads(INDEX_PATH.read_text(encoding="utf-8"))
    assert table.strip() == reading_list_table(committed).strip(), "run python scripts/update_generated.py"
