"""Model names -> builders: torchvision's classification models and rlcli's own architectures.

Torchvision models come from torchvision's own ``list_models``/``get_model``, never from a hand-kept list. rlcli's
architectures register themselves with ``@register_model``. A user's own network is named ``pkg.module:callable``
or ``path/to/file.py:callable`` (see ``rlcli.models.user``) — and only when the user typed that reference: a name
read from a file (a checkpoint's recorded architecture) resolves against the registry alone, so a checkpoint can
never make rl import or call code.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from torch import nn

from rlcli.core.feeds import Feed, InputSpec
from rlcli.core.images import Preprocess
from rlcli.errors import CheckpointError, ModelNotFoundError
from rlcli.models.cards import ModelCard, Paper, Published
from rlcli.models.catalog import suggest

# Packages holding rlcli's own architectures, one file per paper; every module in them is imported on first use of
# the registry so that it can register (a new paper file needs no line here).
_OWN_MODEL_PACKAGES: tuple[str, ...] = ("rlcli.models.vision", "rlcli.models.language", "rlcli.models.heads")

Builder = Callable[..., nn.Module]

# Builder arguments that fetch or name weights. A checkpoint's stored arguments never include them: torchvision
# downloads when it sees weights="DEFAULT", and weights come from the file itself anyway.
_WEIGHT_ARGUMENTS = frozenset({"weights", "weights_backbone", "pretrained", "pretrained_backbone", "progress"})


@dataclass(frozen=True)
class ModelSpec:
    """A model card and the means to build the model it describes.

    ``builder(input_size, **kwargs)`` returns the module; kwargs left as None keep the model's defaults.
    ``arguments`` is the callable whose keyword parameters the builder forwards (the builder itself when None):
    its signature says which stored arguments a checkpoint may set.
    """

    card: ModelCard
    builder: Builder = field(repr=False, compare=False)
    arguments: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    # Builder arguments read off a state dict's shapes (e.g. SwinIR's training patch from its stored masks), for
    # files that do not record them; used when the user and the file give no value.
    arguments_from_state: Callable[[dict[str, torch.Tensor]], dict[str, Any]] | None = field(
        default=None, repr=False, compare=False
    )
    # The input for a size, when the model takes more than one tensor of the card's dtype (see core/feeds.py).
    inputs: Callable[[tuple[int, ...]], InputSpec] | None = field(default=None, repr=False, compare=False)

    def build(self, input_size: tuple[int, ...] | None = None, **kwargs: Any) -> nn.Module:
        """Build the model for ``input_size`` (default: the model's own); unset (None) options are dropped."""
        options = {key: value for key, value in kwargs.items() if value is not None}
        return self.builder(input_size or self.card.default_input, **options)

    def inputs_for(self, input_size: tuple[int, ...] | None = None) -> InputSpec:
        """What the model is fed for one sample of ``input_size`` (default: the card's): the spec's own ``inputs``
        (token ids with a mask, lists of images, image pairs), else one tensor of the card's dtype."""
        size = tuple(input_size or self.card.default_input)
        if self.inputs is not None:
            return self.inputs(size)
        return InputSpec.single(size, self.card.input_dtype)

    def example_input(
        self, input_size: tuple[int, ...] | None = None, batch_size: int = 1, device: str = "meta"
    ) -> Feed:
        """A placeholder batch of ``inputs_for(input_size)``: empty on meta, seeded values elsewhere."""
        return self.inputs_for(input_size).feed(batch_size, device=device)

    def accepted_arguments(self) -> dict[str, Any]:
        """Keyword arguments a stored checkpoint may pass to the builder, with their defaults."""
        if self.card.source == "torchvision":
            return _torchvision_arguments(self.card.name)
        return _keyword_defaults(self.arguments or self.builder)

    def checked_arguments(self, stored: Mapping[str, Any], source: str) -> dict[str, Any]:
        """``stored`` builder arguments (read from a file) after checking each against what the builder accepts.

        A name the builder does not take, a weights-related name, or a value of another type than the default's is
        a CheckpointError: stored data never reaches a builder unchecked.
        """
        accepted = self.accepted_arguments()
        checked = {}
        for name, value in stored.items():
            if name in _WEIGHT_ARGUMENTS:
                raise CheckpointError(
                    f"{source}: stored argument {name!r} is refused: weights come from the file itself, and rl never "
                    f"fetches any"
                )
            if name not in accepted:
                known = ", ".join(sorted(accepted)) or "none"
                raise CheckpointError(f"{source}: {self.card.name} takes no argument {name!r} (it takes: {known})")
            if not _same_kind(value, accepted[name]):
                raise CheckpointError(
                    f"{source}: stored argument {name}={value!r} is not a {_kind_name(accepted[name])} "
                    f"(the default is {accepted[name]!r})"
                )
            checked[name] = value
        return checked


def _keyword_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {
        p.name: p.default
        for p in parameters
        if p.default is not inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in _WEIGHT_ARGUMENTS
        and _is_plain_data(p.default)
    }


def _is_plain_data(value: Any) -> bool:
    """JSON-representable defaults only: a parameter whose default is a class or a function is no setting."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(_is_plain_data(v) for v in value)


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if default is None:
        return _is_plain_data(value)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple)) and _is_plain_data(value)
    return False


def _kind_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true/false"
    if isinstance(default, (int, float)):
        return "number" if isinstance(default, float) else "whole number"
    if isinstance(default, str):
        return "string"
    if isinstance(default, (list, tuple)):
        return "list"
    return "plain value"


_OWN_MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    family: str,
    task: str,
    default_input: tuple[int, ...],
    input_kind: str = "image",
    preprocess: Preprocess | None = None,
    classes: tuple[str, ...] | None = None,
    paper: Paper | None = None,
    published: Published | None = None,
    arguments: Callable[..., Any] | None = None,
    arguments_from_state: Callable[[dict[str, torch.Tensor]], dict[str, Any]] | None = None,
    inputs: Callable[[tuple[int, ...]], InputSpec] | None = None,
) -> Callable[[Builder], Builder]:
    """Register one of rlcli's own architectures under ``name`` (timm's ``@register_model`` pattern)."""

    def decorator(builder: Builder) -> Builder:
        if name in _OWN_MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        card = ModelCard(
            name=name,
            family=family,
            source="rlcli",
            task=task,
            default_input=default_input,
            input_kind=input_kind,
            preprocess=preprocess,
            classes=classes,
            paper=paper,
            published=published,
        )
        _OWN_MODELS[name] = ModelSpec(
            card=card, builder=builder, arguments=arguments, arguments_from_state=arguments_from_state, inputs=inputs
        )
        return builder

    return decorator


def model_names() -> list[str]:
    """All registered model names, sorted."""
    return sorted({*_torchvision_specs(), *_own_specs()})


def get_spec(name: str, *, user_code: bool = False) -> ModelSpec:
    """The spec of a registered name, or — with ``user_code`` — of a user reference (``module:callable``,
    ``file.py:callable``).

    Pass ``user_code=True`` only for a name the user typed on the command line: importing a reference runs its
    code. Names read from files are looked up in the registry and nowhere else.
    """
    specs = {**_torchvision_specs(), **_own_specs()}
    if name in specs:
        return specs[name]
    if ":" in name and user_code:
        from rlcli.models.user import user_model_spec

        return user_model_spec(name)
    if ":" in name:
        raise ModelNotFoundError(
            f"'{name}' is not a registered model but a reference to Python code, which rl runs only when you type "
            f"it yourself: pass --model {name} if you trust it"
        )
    if user_code:  # a Hugging Face model folder or cached Hub name: its config.json is read as data, never run
        from rlcli.models.language.hf_config import spec_from_hf

        if (folder_spec := spec_from_hf(name)) is not None:
            return folder_spec
    close = suggest(name, list(specs))
    hint = f"; did you mean {', '.join(close)}?" if close else "; `rl models` lists them"
    raise ModelNotFoundError(f"unknown model '{name}'{hint}")


@cache
def _own_specs() -> dict[str, ModelSpec]:
    for package in _OWN_MODEL_PACKAGES:
        for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{module.name}")
    return dict(_OWN_MODELS)


@cache
def _torchvision_specs() -> dict[str, ModelSpec]:
    import torchvision.models as tvm

    specs = {}
    for name in tvm.list_models(module=tvm):
        weights = tvm.get_model_weights(name).DEFAULT
        preprocess = Preprocess.from_torchvision(weights)
        categories = weights.meta.get("categories")
        card = ModelCard(
            name=name,
            family=torchvision_family(name, tvm.get_model_builder(name).__module__),
            source="torchvision",
            task="image-classification",
            default_input=(3, preprocess.crop, preprocess.crop),
            preprocess=preprocess,
            classes=tuple(categories) if categories else None,
        )
        specs[name] = ModelSpec(card=card, builder=_torchvision_builder(name, weights))
    return specs


def _torchvision_builder(name: str, weights: Any) -> Builder:
    def build(input_size: tuple[int, ...], **kwargs: Any) -> nn.Module:
        import torchvision.models as tvm

        options = {**stock_torchvision_kwargs(name, weights, input_size), **kwargs}
        return tvm.get_model(name, **options)

    return build


@cache
def _torchvision_arguments(name: str) -> dict[str, Any]:
    """Keyword settings of the class a torchvision builder constructs (``num_classes``, ``dropout`` ...).

    torchvision's builders forward ``**kwargs`` to the model's class; the class is found by building the stock
    model on the meta device (milliseconds, no weights).
    """
    from rlcli.core.meta import build_on_meta

    spec = _torchvision_specs()[name]
    model = build_on_meta(lambda: spec.build())
    return _keyword_defaults(type(model).__init__)


def stock_torchvision_kwargs(name: str, weights: Any, input_size: tuple[int, ...]) -> dict[str, Any]:
    """The constructor arguments torchvision's builder sets when it loads ``weights``.

    Building with these and no weights gives the architecture exactly as shipped (so params and MACs equal the
    weights' metadata): GoogLeNet drops its auxiliary heads, Inception and GoogLeNet normalise their input in the
    model, and ViT's position embedding is sized for the image.
    """
    kwargs: dict[str, Any] = {}
    if weights.meta.get("categories"):
        kwargs["num_classes"] = len(weights.meta["categories"])
    if name.startswith("vit_"):
        kwargs["image_size"] = input_size[-1]
    if name in ("googlenet", "inception_v3"):
        kwargs.update(transform_input=True, init_weights=False)
    if name == "googlenet":
        kwargs["aux_logits"] = False
    return kwargs


_FAMILY_BY_MODULE = {
    "vision_transformer": "vit",
    "swin_transformer": "swin",
    "mobilenetv2": "mobilenet_v2",
    "mobilenetv3": "mobilenet_v3",
    "shufflenetv2": "shufflenet_v2",
}


def torchvision_family(name: str, module: str) -> str:
    """A family name from the torchvision module that defines the model (resnet.py holds ResNeXt too)."""
    for prefix in ("resnext", "wide_resnet"):
        if name.startswith(prefix):
            return prefix
    stem = module.rsplit(".", 1)[-1]
    return _FAMILY_BY_MODULE.get(stem, stem)
