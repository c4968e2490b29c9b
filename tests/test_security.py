"""Checkpoints are data: a file can neither make rl run code nor make it reach the network.

Each test writes a real malicious file in a temporary folder and asserts that no code ran (a payload that would
leave a marker file) and that no connection was attempted (sockets and torch's download helper are watched).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image

from rlcli.core.checkpoints import CheckpointInfo, save_checkpoint
from tiny_models import BatchNormNet

PAYLOAD = """
from pathlib import Path
Path(__file__).with_name("IMPORTED").write_text("the payload module was imported")

def make():
    Path(__file__).with_name("CALLED").write_text("the payload factory was called")
    from torch import nn
    return nn.Linear(2, 2)
"""


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to reach a network or download is recorded and refused (local Unix sockets, which torch's
    worker processes use among themselves, are let through)."""
    attempts: list[str] = []
    connect = socket.socket.connect

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network use in a test")

    def connect_locally_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return refuse(sock, address)
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect_locally_only)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return attempts


@pytest.fixture
def trap(tmp_path, monkeypatch):
    """A folder holding payload.py and an image; the working directory, so `payload.py:make` would resolve."""
    (tmp_path / "payload.py").write_text(PAYLOAD)
    Image.new("RGB", (40, 30), (120, 30, 200)).save(tmp_path / "image.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_no_code_ran(folder):
    assert not (folder / "IMPORTED").exists(), "rl imported code named by a checkpoint"
    assert not (folder / "CALLED").exists(), "rl called code named by a checkpoint"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_classify_never_imports_the_architecture_a_checkpoint_names(rl, trap, no_network, suffix):
    info = CheckpointInfo(arch="payload.py:make", class_names=["a", "b"])
    weights = save_checkpoint(trap / f"evil{suffix}", torch.nn.Linear(2, 2).state_dict(), info).path
    result = rl("classify", "image.png", "-w", str(weights))
    assert result.code == 1
    assert "a reference to Python code" in result.stderr and "--model payload.py:make" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert_no_code_ran(trap)
    assert no_network == []


def test_a_checkpoint_naming_os_abort_does_not_kill_rl(trap):
    weights = save_checkpoint(trap / "abort.safetensors", {"w": torch.zeros(2)}, CheckpointInfo(arch="os:abort")).path
    done = subprocess.run(
        [sys.executable, "-m", "rlcli", "classify", "image.png", "-w", str(weights)],
        capture_output=True,
        text=True,
        cwd=trap,
    )
    assert done.returncode == 1, done.stderr  # os.abort() would end the process with SIGABRT (-6)
    assert done.stderr.startswith("error: ") and "'os:abort', a reference to Python code" in done.stderr


def test_multilabel_architecture_lookup_never_runs_code(rl, trap, no_network):
    state = {"classifier.multi_head.0.head.weight": torch.randn(20, 512, 1, 1)}
    weights = save_checkpoint(trap / "csra.pt", state, CheckpointInfo(arch="payload.py:make")).path
    result = rl("multilabel", "image.png", "-w", str(weights))
    assert result.code == 1 and "a reference to Python code" in result.stderr
    assert_no_code_ran(trap)


def test_swa_batchnorm_pass_never_runs_code_a_checkpoint_names(rl, trap, no_network):
    info = CheckpointInfo(arch="payload.py:make")
    paths = [save_checkpoint(trap / f"{i}.pt", BatchNormNet().state_dict(), info).path for i in range(2)]
    (trap / "images").mkdir()
    Image.new("RGB", (20, 20)).save(trap / "images" / "a.png")
    result = rl("swa-merge", *map(str, paths), "-o", "out.pt", "--bn-data", "images")
    assert result.code == 1 and "a reference to Python code" in result.stderr
    assert not (trap / "out.pt").exists()
    assert_no_code_ran(trap)


def test_typed_references_still_run_user_code(rl, trap):
    """The user's own command line is trusted: the same reference typed as --model runs."""
    info = CheckpointInfo(arch="payload.py:make", class_names=["a", "b"], extra={"preprocess": {"crop": 8}})
    weights = save_checkpoint(trap / "mine.safetensors", torch.nn.Linear(2, 2).state_dict(), info).path
    rl("classify", "image.png", "-w", str(weights), "-m", "payload.py:make")
    assert (trap / "CALLED").exists()


@pytest.fixture(scope="module")
def stock_state():
    """A complete mobilenet_v3_small state (1000 classes): with these shapes torchvision would happily download."""
    import torchvision

    return torchvision.models.mobilenet_v3_small().state_dict()


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        ({"weights": "DEFAULT"}, "stored argument 'weights' is refused"),
        ({"weights": "IMAGENET1K_V1", "num_classes": 1000}, "stored argument 'weights' is refused"),
        ({"progress": True}, "stored argument 'progress' is refused"),
        ({"num_classes": "DEFAULT"}, "num_classes='DEFAULT' is not a whole number"),
        ({"depth": 50}, "mobilenet_v3_small takes no argument 'depth'"),
        ({"dropout": "high"}, "dropout='high' is not a number"),
        ({"dropout": float("nan")}, "dropout=nan is not a number"),
    ],
)
def test_stored_builder_arguments_are_checked_before_building(rl, trap, no_network, stock_state, stored, message):
    info = CheckpointInfo(arch="mobilenet_v3_small", model_args=stored)
    weights = save_checkpoint(trap / "args.safetensors", stock_state, info).path
    result = rl("classify", "image.png", "-w", str(weights))
    assert no_network == []
    assert result.code == 1, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_valid_stored_arguments_still_build(rl, trap, no_network):
    import torchvision

    state = torchvision.models.resnet18(num_classes=3).state_dict()
    info = CheckpointInfo(arch="resnet18", model_args={"num_classes": 3}, class_names=["x", "y", "z"])
    weights = save_checkpoint(trap / "fine.safetensors", state, info).path
    result = rl("classify", "image.png", "-w", str(weights), "--json", "-j", "0")
    assert result.code == 0, result.stderr
    assert [entry["label"] for entry in json.loads(result.stdout)["top_k"]] in (
        [a, b, c] for a in "xyz" for b in "xyz" for c in "xyz" if len({a, b, c}) == 3
    )
    assert no_network == []
