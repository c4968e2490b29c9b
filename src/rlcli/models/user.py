"""A user's own network, named ``package.module:callable`` or ``path/to/file.py:callable``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from torch import nn

from rlcli.errors import ModelRunError, UsageError
from rlcli.models.registry import ModelSpec

_DEFAULT_IMAGE_INPUT = (3, 224, 224)


def user_model_spec(reference: str) -> ModelSpec:
    """A spec whose builder calls the referenced callable with no arguments.

    The callable may be a class or a factory; it must return an ``nn.Module``. Images of 3x224x224 are the default
    input; ``--input-size`` sets another.
    """
    target, _, attribute = reference.rpartition(":")
    if not target or not attribute:
        raise UsageError(f"invalid model reference '{reference}': expected module:callable or file.py:callable")
    factory = getattr(_import_target(target, reference), attribute, None)
    if factory is None:
        raise ModelRunError(f"'{target}' has no attribute '{attribute}'")
    if not callable(factory):
        raise ModelRunError(f"'{reference}' is not callable")

    def build(input_size: tuple[int, ...], **kwargs: Any) -> nn.Module:
        try:
            model = factory(**kwargs)
        except Exception as exc:
            raise ModelRunError(f"'{reference}' failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(model, nn.Module):
            raise ModelRunError(f"'{reference}' returned {type(model).__name__}, not a torch.nn.Module")
        return model

    return ModelSpec(
        name=reference,
        family="user",
        source="user",
        task="unknown",
        default_input=_DEFAULT_IMAGE_INPUT,
        builder=build,
    )


def _import_target(target: str, reference: str) -> Any:
    if target.endswith(".py"):
        return _import_file(Path(target), reference)
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        # The model's own folder is where users run `rl summary mynet:Net`; make it importable as Python would.
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
            try:
                return importlib.import_module(target)
            except ImportError:
                pass
        raise ModelRunError(f"cannot import '{target}' for '{reference}': {exc}") from exc
    except Exception as exc:
        raise ModelRunError(f"importing '{target}' failed: {type(exc).__name__}: {exc}") from exc


def _import_file(path: Path, reference: str) -> Any:
    if not path.is_file():
        raise ModelRunError(f"no such file '{path}' for '{reference}'")
    module_name = f"rlcli_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelRunError(f"cannot import '{path}'")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ModelRunError(f"importing '{path}' failed: {type(exc).__name__}: {exc}") from exc
    return module
