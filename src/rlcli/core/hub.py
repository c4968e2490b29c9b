"""Offline resolution of the standard local caches, as the tools that fill them resolve them. Nothing here touches
the network.

Hugging Face: the hub cache is the folder ``huggingface_hub`` uses — ``$HF_HUB_CACHE``, else the legacy
``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
``~/.cache/huggingface/hub`` (``~`` and ``$VARS`` expanded) — and a repository's files are found in it by
``huggingface_hub.try_to_load_from_cache``: ``refs/main`` names the snapshot, exactly as ``transformers`` and
``timm`` find files with ``local_files_only``. ``huggingface_hub`` reads the environment once, when it is imported;
rl reads it at each call, so that a caller that changes it (a test, a long-lived process) is answered for the
environment it has now — tests/test_hub.py checks every combination against ``huggingface_hub`` in a fresh process.
``HF_HUB_OFFLINE`` changes no lookup (rl never downloads); the download command rl suggests says when it is set.

Torch hub: ``$TORCH_HOME/hub/checkpoints``, else ``$XDG_CACHE_HOME/torch/hub/checkpoints``, else
``~/.cache/torch/hub/checkpoints`` — ``torch.hub.get_dir()``'s rule, without importing torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's constants._is_true


def _expanded(path: str) -> str:
    return os.path.expandvars(os.path.expanduser(path))


def hf_home() -> Path:
    """``$HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else ``~/.cache/huggingface`` (huggingface_hub's rule)."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "huggingface")
    return Path(_expanded(os.getenv("HF_HOME", default)))


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, as ``huggingface_hub.constants.HF_HUB_CACHE`` would be in a process
    started with the current environment (an empty variable counts as set, as there)."""
    legacy = os.getenv("HUGGINGFACE_HUB_CACHE", os.path.join(hf_home(), "hub"))
    return Path(_expanded(os.getenv("HF_HUB_CACHE", legacy)))


def hf_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids downloads in the Hugging Face tools."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.upper() in _TRUE


def torch_hub_checkpoints() -> Path:
    """Where ``torch.hub`` keeps downloaded weights (``torch.hub.get_dir()/checkpoints``), without importing torch."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def rl_cache_dir() -> Path:
    """rl's own cache (lists it derives from installed packages): ``$XDG_CACHE_HOME/rlcli``, else
    ``~/.cache/rlcli``."""
    return Path(os.path.expanduser(os.getenv("XDG_CACHE_HOME") or "~/.cache")) / "rlcli"


def download_command(repo: str, files: tuple[str, ...] = ()) -> str:
    """The one command that puts ``repo`` (or some of its ``files``) in the cache rl reads."""
    command = " ".join(("hf download", repo, *files))
    if hf_offline():
        return f"{command} (HF_HUB_OFFLINE is set here: run it where downloads are allowed)"
    return command


@dataclass(frozen=True)
class HubLookup:
    """Where a repository was found, or every folder that was looked at."""

    snapshot: Path | None
    looked_in: list[Path]
    repo: str | None = None  # the repository id that was found (an alias's current name, say)


def find_hf_snapshot(repo: str, required: tuple[str, ...] = ("config.json",)) -> HubLookup:
    """The cached snapshot folder of ``repo`` (``gpt2``, ``openai-community/gpt2``) that holds ``required`` files.

    The snapshot ``refs/main`` names wins, found as ``from_pretrained(..., local_files_only=True)`` finds it. A
    repository whose main snapshot lacks the files (or that has no ``refs/main``: a snapshot fetched at a pinned
    revision, or copied in by hand) falls back to its most recently modified snapshot that holds them all, which
    the Hugging Face tools would load only given its revision. Each alias of a moved repository is tried in turn.

    Example:
        >>> find_hf_snapshot("gpt2", ("config.json", "model.safetensors")).snapshot
        PosixPath('/home/me/.cache/huggingface/hub/models--openai-community--gpt2/snapshots/607a30d7...')
    """
    cache = hf_hub_cache()
    looked_in = []
    for name in HUB_ALIASES.get(repo, (repo,)):
        looked_in.append(cache / repo_folder(name))
        for revision in (None, *_other_revisions(cache / repo_folder(name))):
            files = [cached_file(name, filename, cache, revision) for filename in required]
            if files and all(f is not None for f in files):
                return HubLookup(_snapshot_of(files[0], required[0]), looked_in, name)
    return HubLookup(None, looked_in)


def cached_file(repo: str, filename: str, cache: Path | None = None, revision: str | None = None) -> Path | None:
    """``filename`` of ``repo`` at ``revision`` (default: main) in the local hub cache, or None: huggingface_hub's
    own lookup, ``try_to_load_from_cache``."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache or hf_hub_cache(), revision=revision)
    except ValueError:  # not a repository id (HFValidationError) or not a relative file name
        return None
    return Path(found) if isinstance(found, str) else None


def _other_revisions(folder: Path) -> list[str]:
    """The snapshots of a cached repository, newest first (the fallback when the main one does not serve)."""
    try:
        snapshots = [p for p in (folder / "snapshots").iterdir() if p.is_dir()]
    except OSError:
        return []
    return [p.name for p in sorted(snapshots, key=lambda p: p.stat().st_mtime, reverse=True)]


def repo_folder(repo: str) -> str:
    """The cache's folder name for a model repository: ``org/name`` -> ``models--org--name``."""
    return "--".join(("models", *repo.split("/")))


def _snapshot_of(file: Path, filename: str) -> Path:
    folder = file
    for _ in Path(filename).parts:
        folder = folder.parent
    return folder


def cached_repo_ids() -> list[str]:
    """Model repositories the local hub cache holds a folder for, from the folder names alone (cheap: completion)."""
    cache = hf_hub_cache()
    try:
        folders = [p.name for p in cache.iterdir() if p.is_dir() and p.name.startswith("models--")]
    except OSError:
        return []
    return sorted(f.removeprefix("models--").replace("--", "/") for f in folders)


# --- what the caches hold (rl models --cached) -----------------------------------------------------------------


@dataclass(frozen=True)
class CachedRepository:
    """One model repository of the hub cache: its size on disk and the main snapshot's files."""

    repo: str
    path: Path
    size_bytes: int
    files: int
    snapshot: Path | None  # what refs/main names; None when the repository has no main revision
    snapshot_files: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class CachedCheckpoint:
    """One file of the torch hub's checkpoints folder."""

    path: Path
    size_bytes: int


@dataclass(frozen=True)
class CacheScan:
    """What the local caches hold, and problems met while reading them (a corrupted repository, say)."""

    hf_cache: Path
    repositories: list[CachedRepository]
    torch_checkpoints_folder: Path
    checkpoints: list[CachedCheckpoint]
    warnings: list[str]


def scan_caches() -> CacheScan:
    """The model repositories of the Hugging Face hub cache (``huggingface_hub.scan_cache_dir``) and the files of
    the torch hub checkpoints folder, with their sizes on disk."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    cache, warnings, repositories = hf_hub_cache(), [], []
    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        info = None
    except OSError as exc:
        warnings.append(f"cannot read {cache}: {exc.strerror or exc}")
        info = None
    if info is not None:
        warnings += [str(w) for w in info.warnings]
        for repo in info.repos:
            if repo.repo_type != "model":
                continue
            main = next((r for r in repo.revisions if "main" in r.refs), None)
            repositories.append(
                CachedRepository(
                    repo=repo.repo_id,
                    path=repo.repo_path,
                    size_bytes=repo.size_on_disk,
                    files=repo.nb_files,
                    snapshot=main.snapshot_path if main else None,
                    snapshot_files=tuple(sorted(f.file_name for f in main.files)) if main else (),
                )
            )
    folder = torch_hub_checkpoints()
    checkpoints = []
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file():
                checkpoints.append(CachedCheckpoint(path, path.stat().st_size))
    return CacheScan(cache, sorted(repositories, key=lambda r: r.repo), folder, checkpoints, warnings)
