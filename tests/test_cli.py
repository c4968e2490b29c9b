"""The entry point and the output layer every command shares: exit codes, stderr hygiene, awkward text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from rlcli.cli import _common
from rlcli.core.checkpoints import CheckpointInfo, save_checkpoint
from tiny_models import ShapeNet

SHAPENET = "tiny_models:ShapeNet"
TESTS = Path(__file__).parent


def rl_process(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "rlcli", *args], env=env, **kwargs)


@pytest.fixture(scope="module")
def shapenet_file(tmp_path_factory):
    torch.manual_seed(0)
    info = CheckpointInfo(
        class_names=["circle", "square", "triangle"], extra={"preprocess": {"resize": 32, "crop": 32}}
    )
    return save_checkpoint(tmp_path_factory.mktemp("net") / "shapes.safetensors", ShapeNet().state_dict(), info).path


def test_a_closed_pipe_exits_141_without_a_word(tmp_path):
    """`rl ... | head` stops reading: the shell convention is 128 + SIGPIPE, and stderr stays clean (typer used
    to turn EPIPE into exit 1)."""
    process = rl_process("models", "--csv", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before rl writes its first line
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 141
    assert stderr == b""


def test_library_warnings_stay_off_stderr(tmp_path, shapenet_file):
    """Pillow's decompression-bomb warning (a 90-megapixel image) and torch's warnings are not rl's words."""
    big = tmp_path / "panorama.png"
    Image.new("1", (9500, 9500)).save(big)  # 90.25 M pixels: above Pillow's warning limit, below its error limit
    process = rl_process(
        "classify", str(big), "-m", SHAPENET, "-w", str(shapenet_file), "-j", "0", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert stderr == "" and '"path"' in stdout


def test_control_characters_in_paths_never_split_lines(rl, tmp_path, shapenet_file):
    tricky = tmp_path / "two\nlines\x1b[31m.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tricky)
    missing = tmp_path / "gone\r\n.png"
    result = rl("classify", str(tricky), str(missing), "-m", SHAPENET, "-w", str(shapenet_file), "-k", "1", "-j", "0")
    assert result.code == 1
    rows = result.stdout.splitlines()
    assert len(rows) == 2 and rows[1].startswith(str(tmp_path / "two\\nlines\\x1b[31m.png"))
    assert "\x1b" not in result.stdout + result.stderr
    assert result.stderr == f"error: {tmp_path}/gone\\r\\n.png: no such file or folder\n"


def test_wide_characters_keep_table_columns_aligned(rl, tmp_path, shapenet_file):
    from rich.cells import cell_len

    names = ["猫の写真.png", "a.png", "éclair.png"]
    for name in names:
        Image.new("RGB", (40, 40), (30, 30, 200)).save(tmp_path / name)
    paths = [str(tmp_path / name) for name in names]
    result = rl("classify", *paths, "-m", SHAPENET, "-w", str(shapenet_file), "-k", "1", "-j", "0")
    assert result.code == 0, result.stderr
    rows = result.stdout.splitlines()
    # The rank column starts at the same terminal column on every row, whatever the width of the characters.
    starts = {cell_len(row[: row.index("  1  ")]) for row in rows[1:]}
    header = rows[0]
    assert starts == {cell_len(header[: header.index(" #")]) - 1}


def test_a_narrow_terminal_gets_a_readable_layout_not_ellipses(rl, monkeypatch):
    monkeypatch.setattr(_common, "stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "20")
    _common.stdout_console.cache_clear()
    try:
        result = rl("models", "resnet18")
    finally:
        _common.stdout_console.cache_clear()
    assert result.code == 0
    assert "…" not in result.stdout
    assert "resnet18" in result.stdout and "11,689,512" in result.stdout
