from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
GOLDEN = TESTS / "golden"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def rl(capsys, monkeypatch):
    """Run `rl ARGS...` in-process through the real entry point (error boundary included)."""
    from rlcli.cli import _common, main

    def run(*args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["rl", *args])
        monkeypatch.setattr(_common.STATE, "debug", False)
        capsys.readouterr()
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def check_golden(name: str, text: str, update: bool = False) -> None:
    """Compare with tests/golden/NAME; RL_UPDATE_GOLDEN=1 rewrites the file instead."""
    import os

    path = GOLDEN / name
    if update or os.environ.get("RL_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path}; run with RL_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8")
