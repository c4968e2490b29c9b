"""What the local caches hold that rl can run (``rl models --cached``), read without importing torch.

A Hugging Face repository counts when its main snapshot's ``config.json`` is one rl reads: timm's Hub layout
(``architecture`` and ``pretrained_cfg``; a ``timm/`` repository is ``rl classify --model timm/NAME`` when its
weights file is there too), or a transformers config (``model_type``: ``hf/REPO`` for summary, and GPT-2's weights
for ``rl generate``). A torch hub checkpoint is a file ``--weights FILE`` reads, named after the torchvision model
its file name starts with when there is one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rlcli.core.hub import CachedRepository, scan_caches
from rlcli.models.zoo import HF_PREFIX, TIMM_PREFIX

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's and transformers' Hub weights
_MAX_CONFIG_BYTES = 1 << 20
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class CachedModel:
    """One runnable thing in a cache: the name rl takes for it, where it is, its size, and the commands for it."""

    cache: str  # "huggingface" or "torch"
    name: str  # what to type: timm/NAME or hf/REPO for --model, or the checkpoint's path for --weights
    location: str  # the repository id, or the file
    size_bytes: int
    commands: tuple[str, ...]  # rl commands that run it: summary, classify, generate
    architecture: str | None = None  # a torch hub file's torchvision model (give it as --model)


@dataclass(frozen=True)
class CachedModels:
    hf_cache: Path
    torch_checkpoints: Path
    models: list[CachedModel]
    skipped: list[str] = field(default_factory=list)  # repositories whose config rl does not read
    warnings: list[str] = field(default_factory=list)


def cached_models(torchvision_names: frozenset[str] = frozenset()) -> CachedModels:
    """The caches' runnable models; ``torchvision_names`` (from rl's index) name the torch hub files."""
    scan = scan_caches()
    models, skipped = [], []
    for repo in scan.repositories:
        found = _hub_model(repo)
        if found is None:
            skipped.append(repo.repo)
        else:
            models.append(found)
    for checkpoint in scan.checkpoints:
        if checkpoint.path.suffix not in _CHECKPOINT_SUFFIXES:
            continue
        stem = checkpoint.path.stem.rsplit("-", 1)[0]  # torchvision's files: resnet50-11ad3fa6.pth
        architecture = stem if stem in torchvision_names else None
        path = str(checkpoint.path)
        models.append(CachedModel("torch", path, path, checkpoint.size_bytes, ("classify",), architecture))
    return CachedModels(scan.hf_cache, scan.torch_checkpoints_folder, models, skipped, scan.warnings)


def _hub_model(repo: CachedRepository) -> CachedModel | None:
    config = _read_config(repo)
    if config is None:
        return None
    has_weights = any(f in repo.snapshot_files for f in WEIGHT_FILES)
    if "architecture" in config and "pretrained_cfg" in config:
        if not repo.repo.startswith(TIMM_PREFIX):  # timm/ names resolve to timm's own repositories only
            return None
        commands = ("summary", "classify") if has_weights else ("summary",)
        return CachedModel("huggingface", repo.repo, repo.repo, repo.size_bytes, commands)
    if isinstance(config.get("model_type"), str):
        commands = ("summary", "generate") if config["model_type"] == "gpt2" and has_weights else ("summary",)
        return CachedModel("huggingface", HF_PREFIX + repo.repo, repo.repo, repo.size_bytes, commands)
    return None


def _read_config(repo: CachedRepository) -> dict | None:
    if repo.snapshot is None or "config.json" not in repo.snapshot_files:
        return None
    path = repo.snapshot / "config.json"
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None
