"""The list of timm's model names that shell completion reads (torch-free: timm's registry imports torch).

rl writes it on the first use of a ``timm/`` model, once per installed timm version, to ``$XDG_CACHE_HOME/rlcli``
(``~/.cache/rlcli``): architectures and pretrained tags, one a line.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from types import ModuleType

from rlcli.core.hub import rl_cache_dir
from rlcli.errors import RlError


def names_cache_path(version: str) -> Path:
    """The names file for timm ``version``."""
    return rl_cache_dir() / f"timm-{version}-models.txt"


def cached_timm_names() -> list[str]:
    """The installed timm's names as rl last wrote them, or none (timm not installed, or not used yet)."""
    try:
        path = names_cache_path(metadata.version("timm"))
        return path.read_text(encoding="utf-8").split()
    except (metadata.PackageNotFoundError, OSError, UnicodeDecodeError):
        return []


def write_timm_names(timm: ModuleType) -> None:
    """Write the imported ``timm``'s architecture and pretrained-tag names, unless already written (best effort)."""
    path = names_cache_path(timm.__version__)
    if path.is_file():
        return
    names = sorted({*timm.list_models(), *timm.list_pretrained()})
    try:
        from rlcli.core.files import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w") as handle:
            handle.write("\n".join(names) + "\n")
    except (OSError, RlError):  # a read-only home: completion just offers no timm/ names
        pass
