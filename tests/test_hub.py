"""rl's cache resolver against the libraries that fill the caches: huggingface_hub (in a fresh process per
environment, since it reads the environment when imported) and torch.hub."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlcli.core import hub

REPO = "org/model"
VARIABLES = ("HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME", "HF_HUB_OFFLINE")

# What huggingface_hub itself answers, in a process started with the environment under test.
REFERENCE = """
import json
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError
try:
    found = hf_hub_download({repo!r}, "config.json", local_files_only=True)
except LocalEntryNotFoundError:
    found = None
print(json.dumps({{"cache": constants.HF_HUB_CACHE, "file": found, "offline": constants.HF_HUB_OFFLINE}}))
"""


def cache_repo(cache: Path, repo: str, revision: str, files=("config.json",), main: str | None = None) -> Path:
    """A repository in a hub cache, laid out as huggingface_hub writes it; ``main`` is what refs/main names."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).write_text(json.dumps({"revision": revision}))
    if main != "":
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(main or revision)
    return snapshot


@pytest.fixture
def homes(tmp_path):
    """A home folder and one candidate location per variable, each caching the repository at its own revision, so
    that the file found says which location won."""
    locations = {
        "HOME": tmp_path / "home",
        "HF_HOME": tmp_path / "hf-home",
        "HF_HUB_CACHE": tmp_path / "hub-cache",
        "XDG_CACHE_HOME": tmp_path / "xdg",
    }
    cache_repo(locations["HOME"] / ".cache" / "huggingface" / "hub", REPO, "home")
    cache_repo(locations["HF_HOME"] / "hub", REPO, "hf-home")
    cache_repo(locations["HF_HUB_CACHE"], REPO, "hub-cache")
    cache_repo(locations["XDG_CACHE_HOME"] / "huggingface" / "hub", REPO, "xdg")
    return locations


def environments(homes: dict[str, Path]) -> list[dict[str, str]]:
    """Every combination of the four variables set or unset (HF_HUB_OFFLINE set means 1)."""
    combos = []
    for chosen in itertools.product((False, True), repeat=len(VARIABLES)):
        env = {"HOME": str(homes["HOME"])}
        for name, on in zip(VARIABLES, chosen, strict=True):
            if on:
                env[name] = "1" if name == "HF_HUB_OFFLINE" else str(homes[name])
        combos.append(env)
    return combos


def reference_answers(envs: list[dict[str, str]], repo: str = REPO) -> list[dict]:
    """huggingface_hub's answer for each environment, the processes run side by side."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "XDG_", "TRANSFORMERS_"))}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", REFERENCE.format(repo=repo)],
            env={**base, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for env in envs
    ]
    answers = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        answers.append(json.loads(out))
    return answers


def rl_answer(monkeypatch, env: dict[str, str], repo: str = REPO) -> dict:
    for name in (*VARIABLES, "HOME", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    snapshot = hub.find_hf_snapshot(repo).snapshot
    return {
        "cache": str(hub.hf_hub_cache()),
        "file": os.path.normpath(snapshot / "config.json") if snapshot else None,  # as hf_hub_download returns it
        "offline": hub.hf_offline(),
    }


def test_every_combination_of_the_environment_resolves_as_huggingface_hub_does(homes, monkeypatch):
    envs = environments(homes)
    assert len(envs) == 16
    answers = reference_answers(envs)
    for env, expected in zip(envs, answers, strict=True):
        assert rl_answer(monkeypatch, env) == expected, env
    # The combinations reach every location: the test discriminates.
    assert {Path(a["file"]).parent.name for a in answers} == {"home", "hf-home", "hub-cache", "xdg"}


def test_legacy_variable_expansions_and_empty_values_as_huggingface_hub(homes, monkeypatch, tmp_path):
    envs = [
        {"HOME": str(homes["HOME"]), "HUGGINGFACE_HUB_CACHE": str(homes["HF_HUB_CACHE"])},
        {"HOME": str(homes["HOME"]), "HF_HOME": "~/../hf-home"},
        {"HOME": str(homes["HOME"]), "WHERE": str(tmp_path), "HF_HUB_CACHE": "$WHERE/hub-cache"},
        {"HOME": str(homes["HOME"]), "HF_HUB_OFFLINE": "yes", "XDG_CACHE_HOME": str(homes["XDG_CACHE_HOME"])},
        {"HOME": str(homes["HOME"]), "HF_HUB_OFFLINE": "0"},
        {"HOME": str(homes["HOME"]), "TRANSFORMERS_OFFLINE": "1"},
    ]
    for env, expected in zip(envs, reference_answers(envs), strict=True):
        monkeypatch.delenv("WHERE", raising=False)
        assert rl_answer(monkeypatch, env) == expected, env
    assert [a["offline"] for a in reference_answers(envs[3:])] == [True, False, True]


def test_snapshots_resolve_through_refs_main_and_fall_back_to_the_newest_complete_one(tmp_path, monkeypatch):
    """Where huggingface_hub finds the file offline, rl finds the same one. Where it finds none (no refs/main, or a
    main snapshot without the file), rl takes the newest snapshot that holds it, which the Hugging Face tools would
    load given its revision."""
    cache = tmp_path / "hub"
    pinned = cache_repo(cache, "org/no-main", "abc", main="")
    cache_repo(cache, "org/main-lacks-it", "old")
    newer = cache_repo(cache, "org/main-lacks-it", "new", files=("model.safetensors",))
    (newer.parent.parent / "refs" / "main").write_text("new")
    both = cache_repo(cache, "org/both", "second")
    cache_repo(cache, "org/both", "first")
    (both.parent.parent / "refs" / "main").write_text("second")
    env = {"HOME": str(tmp_path), "HF_HUB_CACHE": str(cache)}
    repos = ("org/no-main", "org/main-lacks-it", "org/both", "org/absent")
    answers = dict(zip(repos, [reference_answers([env], repo)[0]["file"] for repo in repos], strict=True))
    assert answers == {"org/no-main": None, "org/main-lacks-it": None, "org/absent": None,
                       "org/both": os.path.normpath(both / "config.json")}  # fmt: skip
    assert rl_answer(monkeypatch, env, "org/both")["file"] == answers["org/both"]
    assert hub.find_hf_snapshot("org/no-main").snapshot == pinned
    assert hub.find_hf_snapshot("org/main-lacks-it").snapshot == cache / "models--org--main-lacks-it/snapshots/old"
    assert hub.find_hf_snapshot("org/main-lacks-it", ("model.safetensors",)).snapshot == newer
    assert hub.find_hf_snapshot("org/absent").snapshot is None
    assert hub.find_hf_snapshot("not a repo id").snapshot is None


def test_moved_repositories_resolve_under_either_name(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    old = cache_repo(tmp_path, "gpt2", "r1")
    lookup = hub.find_hf_snapshot("gpt2")
    assert (lookup.snapshot, lookup.repo) == (old, "gpt2")
    assert lookup.looked_in == [tmp_path / "models--openai-community--gpt2", tmp_path / "models--gpt2"]
    new = cache_repo(tmp_path, "openai-community/gpt2", "r2")
    assert hub.find_hf_snapshot("gpt2").snapshot == new


@pytest.mark.parametrize(("torch_home", "xdg"), [(False, False), (True, False), (False, True), (True, True)])
def test_torch_hub_folder_is_torch_hub_get_dir(tmp_path, monkeypatch, torch_home, xdg):
    import torch

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, on in (("TORCH_HOME", torch_home), ("XDG_CACHE_HOME", xdg)):
        if on:
            monkeypatch.setenv(name, str(tmp_path / name.lower()))
        else:
            monkeypatch.delenv(name, raising=False)
    assert hub.torch_hub_checkpoints() == Path(torch.hub.get_dir()) / "checkpoints"


def test_download_command_says_when_downloads_are_off(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert hub.download_command("timm/resnet18.a1_in1k") == "hf download timm/resnet18.a1_in1k"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE is set here" in hub.download_command("gpt2", ("config.json",))


def test_scan_lists_model_repositories_and_torch_checkpoints_with_sizes(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache_repo(cache, "timm/resnet18.a1_in1k", "abc", files=("config.json", "model.safetensors"))
    (snapshot / "model.safetensors").write_bytes(b"\0" * 1000)
    (cache / "datasets--org--data").mkdir()
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet18-f37072fd.pth").write_bytes(b"\0" * 123)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    scan = hub.scan_caches()
    [repo] = scan.repositories
    assert (repo.repo, repo.snapshot, repo.snapshot_files) == (
        "timm/resnet18.a1_in1k",
        snapshot,
        ("config.json", "model.safetensors"),
    )
    assert repo.size_bytes == 1000 + len(json.dumps({"revision": "abc"}))
    assert [(c.path.name, c.size_bytes) for c in scan.checkpoints] == [("resnet18-f37072fd.pth", 123)]


def test_scan_of_missing_caches_is_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "none"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "none"))
    scan = hub.scan_caches()
    assert (scan.repositories, scan.checkpoints, scan.warnings) == ([], [], [])


TIMM_CONFIG = {"architecture": "resnet18", "num_classes": 1000, "pretrained_cfg": {"tag": "a1_in1k"}}


def fill_caches(tmp_path: Path) -> dict[str, str]:
    """A hub cache with a timm model, a GPT-2, a BERT config alone and a tokenizer-only repository; a torch hub
    folder with a torchvision file and another checkpoint. Returns the environment that points at them."""
    cache = tmp_path / "hub"
    snapshot = cache_repo(cache, "timm/resnet18.a1_in1k", "t1", files=("config.json", "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps(TIMM_CONFIG))
    (snapshot / "model.safetensors").write_bytes(b"\0" * 2048)
    snapshot = cache_repo(cache, "openai-community/gpt2", "g1", files=("config.json", "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    snapshot = cache_repo(cache, "google-bert/bert-base-uncased", "b1")
    (snapshot / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cache_repo(cache, "org/tokenizer", "k1", files=("tokenizer.json",))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet18-f37072fd.pth").write_bytes(b"\0" * 123)
    (checkpoints / "mine.safetensors").write_bytes(b"\0" * 45)
    return {"HF_HUB_CACHE": str(cache), "TORCH_HOME": str(tmp_path / "torch")}


def test_models_cached_lists_what_rl_runs_with_sizes(rl, tmp_path, monkeypatch):
    for name, value in fill_caches(tmp_path).items():
        monkeypatch.setenv(name, value)
    result = rl("models", "--cached", "--json")
    assert result.code == 0, result.stderr
    document = json.loads(result.stdout)
    listed = {m["name"]: (m["cache"], m["commands"], m["size_bytes"], m["architecture"]) for m in document["models"]}
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    size = len  # a file's size: its text's length (ASCII)
    assert listed == {
        "timm/resnet18.a1_in1k": ("huggingface", ["summary", "classify"], 2048 + size(json.dumps(TIMM_CONFIG)), None),
        "hf/openai-community/gpt2": (
            "huggingface", ["summary", "generate"], size('{"model_type": "gpt2"}{"revision": "g1"}'), None
        ),
        "hf/google-bert/bert-base-uncased": ("huggingface", ["summary"], size('{"model_type": "bert"}'), None),
        str(checkpoints / "mine.safetensors"): ("torch", ["classify"], 45, None),
        str(checkpoints / "resnet18-f37072fd.pth"): ("torch", ["classify"], 123, "resnet18"),
    }  # fmt: skip
    assert document["skipped"] == ["org/tokenizer"]
    table = rl("models", "--cached", "resnet18")
    assert table.code == 0, table.stderr
    rows = table.stdout.splitlines()
    assert any(r.startswith("timm/resnet18.a1_in1k ") and "summary, classify" in r for r in rows)
    assert any("resnet18-f37072fd.pth" in r and "classify -m resnet18 -w FILE" in r for r in rows)
    everything = rl("models", "--cached").stdout
    assert "summary, generate (openai-community/gpt2)" in everything  # rl generate takes the repository's name
    assert "Not listed: 1 repository without a config.json rl reads." in everything


def test_models_cached_does_not_import_torch(tmp_path):
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('TORCH-IMPORTED' if 'torch' in sys.modules else 'TORCH-FREE'))\n"
        "sys.argv = ['rl', 'models', '--cached']\n"
        "from rlcli.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, **fill_caches(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "timm/resnet18.a1_in1k" in done.stdout and done.stderr.endswith("TORCH-FREE")
