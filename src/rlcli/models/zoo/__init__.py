"""Model zoos users already have, read by prefix: ``timm/NAME`` (timm's registry) and ``hf/NAME`` (transformers'
AutoModel from a config.json). Each is an optional extra, imported only by the code path that needs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from rlcli.errors import RlError

TIMM_PREFIX = "timm/"
HF_PREFIX = "hf/"


def require(module: str, extra: str, what: str) -> ModuleType:
    """``import module``, or one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RlError(f"{what} needs the {module} package: pip install 'rlcli[{extra}]'") from None
