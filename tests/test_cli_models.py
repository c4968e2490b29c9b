"""`rl models`, `--version` and `--help`: all served without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlcli import __version__


def test_models_lists_torchvision_models_with_counts(rl):
    result = rl("models", "resnet*")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["Model", "Family", "Task", "Params", "MACs", "Input"]
    resnet50 = next(line for line in lines if line.startswith("resnet50 "))
    assert "25,557,032" in resnet50 and "4.089 G" in resnet50
    assert not any(line.startswith("resnext") for line in lines)


def test_models_substring_and_json(rl):
    result = rl("models", "mobilenet", "--task", "image-classification", "--json")
    document = json.loads(result.stdout)
    names = [m["name"] for m in document["models"]]
    assert names == [
        "mobilenet_v1", "mobilenet_v1_025", "mobilenet_v1_050", "mobilenet_v1_075",
        "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    ]  # fmt: skip
    assert "FLOPs = 2 x MACs" in document["convention"]
    everything = [m["name"] for m in json.loads(rl("models", "mobilenet", "--json").stdout)["models"]]
    assert {"ssdlite320_mobilenet_v3_large", "lraspp_mobilenet_v3_large"} <= set(everything)  # a substring


def test_models_no_match_is_an_error(rl):
    result = rl("models", "nothing-like-this")
    assert result.code == 1
    assert result.stderr == "error: no model matches 'nothing-like-this'\n"


def test_version(rl):
    assert rl("--version").stdout == f"rl {__version__}\n"


STARTUP_CHECK = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("TORCH-IMPORTED" if "torch" in sys.modules else "TORCH-FREE"))
sys.argv = {argv!r}
from rlcli.cli import main
main()
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["rl", "--help"],
        ["rl", "--version"],
        ["rl", "models"],
        ["rl", "models", "swin", "--json"],
        ["rl", "summary", "-h"],
    ],
    ids=lambda a: " ".join(a[1:]),
)
def test_startup_paths_do_not_import_torch(argv):
    done = subprocess.run(
        [sys.executable, "-c", STARTUP_CHECK.format(argv=argv)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.endswith("TORCH-FREE")


def test_shell_completion_of_model_names_does_not_import_torch():
    env_code = STARTUP_CHECK.format(argv=["rl"])
    import os

    env = {
        **os.environ,
        "_RL_COMPLETE": "complete_bash",
        "COMP_WORDS": "rl summary swin_v2_",
        "COMP_CWORD": "2",
    }
    done = subprocess.run([sys.executable, "-c", env_code], capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.split() == ["swin_v2_b", "swin_v2_s", "swin_v2_t"]
    assert done.stderr.endswith("TORCH-FREE")


def test_models_filter_by_task(rl):
    result = rl("models", "--task", "language-model", "--json")
    assert result.code == 0, result.stderr
    names = {m["name"] for m in json.loads(result.stdout)["models"]}
    assert {"gpt2", "gpt3_175b", "shakespeare"} <= names
    assert all(m["task"] == "language-model" for m in json.loads(result.stdout)["models"])
    unknown = rl("models", "--task", "juggling")
    assert unknown.code == 2 and "unknown task 'juggling': choose" in unknown.stderr
    none = rl("models", "resnet", "--task", "language-model")
    assert none.code == 1 and none.stderr == "error: no model of task language-model matches 'resnet'\n"
