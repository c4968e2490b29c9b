"""Offline resolution of the standard local caches. Nothing here touches the network.

Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``; a repository
``org/name`` lives in ``models--org--name/`` with ``refs/main`` naming the snapshot in ``snapshots/<revision>/``.
Torch hub cache: ``$TORCH_HOME/hub/checkpoints``, else ``$XDG_CACHE_HOME/torch/...``, else ``~/.cache/torch/...``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Repositories that moved on the Hub: the cache may hold either name.
HUB_ALIASES = {
    "gpt2": ("openai-community/gpt2", "gpt2"),
    "gpt2-medium": ("openai-community/gpt2-medium", "gpt2-medium"),
    "gpt2-large": ("openai-community/gpt2-large", "gpt2-large"),
    "gpt2-xl": ("openai-community/gpt2-xl", "gpt2-xl"),
    "distilgpt2": ("distilbert/distilgpt2", "distilgpt2"),
    **{
        name: (f"google-bert/{name}", name)
        for name in ("bert-base-uncased", "bert-large-uncased", "bert-base-cased", "bert-large-cased")
    },
}


def hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def torch_hub_checkpoints() -> Path:
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "hub" / "checkpoints"
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return cache / "torch" / "hub" / "checkpoints"


@dataclass(frozen=True)
class HubLookup:
    """Where a repository was found, or every folder that was looked at."""

    snapshot: Path | None
    looked_in: list[Path]


def find_hf_snapshot(repo: str, required: tuple[str, ...] = ("config.json",)) -> HubLookup:
    """The cached snapshot folder of ``repo`` (``gpt2``, ``openai-community/gpt2``) that holds ``required`` files.

    ``refs/main`` wins; without it, the most recently modified complete snapshot is used.
    """
    cache = hf_hub_cache()
    looked_in = []
    for name in HUB_ALIASES.get(repo, (repo,)):
        folder = cache / ("models--" + name.replace("/", "--"))
        looked_in.append(folder)
        for snapshot in _snapshots(folder):
            if all((snapshot / f).exists() for f in required):
                return HubLookup(snapshot, looked_in)
    return HubLookup(None, looked_in)


def _snapshots(folder: Path) -> list[Path]:
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return []
    ordered = []
    ref = folder / "refs" / "main"
    if ref.is_file():
        revision = ref.read_text(encoding="utf-8").strip()
        if (snapshots / revision).is_dir():
            ordered.append(snapshots / revision)
    others = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    return ordered + [p for p in others if p not in ordered]
