"""A user's own network, named ``package.module:callable`` or ``path/to/file.py:callable``.

Only ever reached for a reference the user typed (see ``registry.get_spec``). The user's code runs as Python runs
a script: a file's own folder is importable while it loads, so its sibling modules import as they would under
``python file.py``. Whatever the code raises — ``sys.exit`` included — becomes one ModelRunError naming the
reference, never a silent exit or a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from rlcli.errors import ModelRunError, UsageError
from rlcli.models.cards import ModelCard
from rlcli.models.registry import ModelSpec

_DEFAULT_IMAGE_INPUT = (3, 224, 224)

T = TypeVar("T")


def user_model_spec(reference: str) -> ModelSpec:
    """A spec whose builder calls the referenced callable with no arguments (or a checkpoint's stored ones).

    The callable may be a class or a factory; it must return an ``nn.Module``. A float32 sample of 3x224x224 is the
    default input; ``--input-size`` gives another sample shape, taken exactly as given (``rl summary``).
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
        model = run_user_code(reference, lambda: factory(**kwargs))
        if not isinstance(model, nn.Module):
            raise ModelRunError(f"'{reference}' returned {type(model).__name__}, not a torch.nn.Module")
        return model

    card = ModelCard(
        name=reference,
        family="user",
        source="user",
        task="unknown",
        default_input=_DEFAULT_IMAGE_INPUT,
        input_kind="image",
    )
    return ModelSpec(card=card, builder=build, arguments=factory)


def run_user_code(reference: str, call: Callable[[], T], doing: str = "failed") -> T:
    """``call()``, with anything the user's code raises turned into one ModelRunError that names ``reference``."""
    try:
        return call()
    except ModelRunError:
        raise
    except SystemExit as exc:
        # A script's `sys.exit()` in a model file would otherwise end rl silently, with the script's exit code.
        raise ModelRunError(f"'{reference}' {doing}: it called sys.exit({exc.code!r})") from exc
    except Exception as exc:
        raise ModelRunError(f"'{reference}' {doing}: {type(exc).__name__}: {exc}") from exc


def _import_target(target: str, reference: str) -> Any:
    if target.endswith(".py"):
        return _import_file(Path(target), reference)
    try:
        return run_user_code(reference, lambda: importlib.import_module(target), "could not be imported")
    except ModelRunError as exc:
        if not isinstance(exc.__cause__, ImportError):
            raise
        # The model's own folder is where users run `rl summary mynet:Net`; make it importable as Python would.
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
            with contextlib.suppress(ModelRunError):
                return run_user_code(reference, lambda: importlib.import_module(target), "could not be imported")
        raise ModelRunError(f"cannot import '{target}' for '{reference}': {exc.__cause__}") from exc


def _import_file(path: Path, reference: str) -> Any:
    if not path.is_file():
        raise ModelRunError(f"no such file '{path}' for '{reference}'")
    module_name = f"rlcli_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelRunError(f"cannot import '{path}'")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # As `python file.py` does: the file's folder comes first on the path, so its sibling modules import, also
    # when the factory imports them lazily later.
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        run_user_code(reference, lambda: spec.loader.exec_module(module), "could not be imported")
    except ModelRunError:
        del sys.modules[module_name]
        raise
    return module
