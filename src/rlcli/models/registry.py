"""Model names -> builders: torchvision's classification models and rlcli's own architectures.

Torchvision models come from torchvision's own ``list_models``/``get_model``, never from a hand-kept list. rlcli's
architectures register themselves with ``@register_model``. A user's own network is named ``pkg.module:callable``
or ``path/to/file.py:callable`` (see ``rlcli.models.user``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from torch import nn

from rlcli.errors import ModelNotFoundError
from rlcli.models.catalog import suggest

# Modules holding rlcli's own architectures; imported on first use of the registry so that they can register.
_OWN_MODEL_MODULES: tuple[str, ...] = ("rlcli.models.gpt2", "rlcli.models.csra")

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model and feed it an example input.

    ``builder(input_size, **kwargs)`` returns the module; kwargs left as None keep the model's defaults.
    """

    name: str
    family: str
    source: str  # "torchvision", "rlcli" or "user"
    task: str  # "image-classification", "multi-label" or "language-model"
    default_input: tuple[int, ...]  # (C, H, W) for images, (T,) for token sequences
    builder: Builder = field(repr=False, compare=False)
    input_kind: str = "image"  # "image" or "tokens"
    # Evaluation preprocessing of the default weights (torchvision's ImageClassification arguments), if known.
    transform: dict[str, Any] | None = field(default=None, compare=False)

    def build(self, input_size: tuple[int, ...] | None = None, **kwargs: Any) -> nn.Module:
        """Build the model for ``input_size`` (default: the model's own); unset (None) options are dropped."""
        options = {key: value for key, value in kwargs.items() if value is not None}
        return self.builder(input_size or self.default_input, **options)

    def example_input(
        self, input_size: tuple[int, ...] | None = None, batch_size: int = 1, device: str = "meta"
    ) -> tuple[torch.Tensor, ...]:
        """A placeholder batch of the right shape and dtype (empty on the meta device)."""
        size = input_size or self.default_input
        if self.input_kind == "tokens":
            return (torch.zeros((batch_size, *size), dtype=torch.long, device=device),)
        return (torch.zeros((batch_size, *size), device=device),)


_OWN_MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    family: str,
    task: str,
    default_input: tuple[int, ...],
    input_kind: str = "image",
    transform: dict[str, Any] | None = None,
) -> Callable[[Builder], Builder]:
    """Register one of rlcli's own architectures under ``name`` (timm's ``@register_model`` pattern)."""

    def decorator(builder: Builder) -> Builder:
        if name in _OWN_MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _OWN_MODELS[name] = ModelSpec(
            name=name,
            family=family,
            source="rlcli",
            task=task,
            default_input=default_input,
            builder=builder,
            input_kind=input_kind,
            transform=transform,
        )
        return builder

    return decorator


def model_names() -> list[str]:
    """All registered model names, sorted."""
    return sorted({*_torchvision_specs(), *_own_specs()})


def get_spec(name: str) -> ModelSpec:
    """The spec for a registered name or a user reference (``module:callable``, ``file.py:callable``)."""
    if ":" in name:
        from rlcli.models.user import user_model_spec

        return user_model_spec(name)
    specs = {**_torchvision_specs(), **_own_specs()}
    if name in specs:
        return specs[name]
    close = suggest(name, list(specs))
    hint = f"; did you mean {', '.join(close)}?" if close else "; `rl models` lists them"
    raise ModelNotFoundError(f"unknown model '{name}'{hint}")


@cache
def _own_specs() -> dict[str, ModelSpec]:
    for module in _OWN_MODEL_MODULES:
        importlib.import_module(module)
    return dict(_OWN_MODELS)


@cache
def _torchvision_specs() -> dict[str, ModelSpec]:
    import torchvision.models as tvm

    specs = {}
    for name in tvm.list_models(module=tvm):
        weights = tvm.get_model_weights(name).DEFAULT
        crop = int(weights.transforms.keywords.get("crop_size", 224))
        specs[name] = ModelSpec(
            name=name,
            family=torchvision_family(name, tvm.get_model_builder(name).__module__),
            source="torchvision",
            task="image-classification",
            default_input=(3, crop, crop),
            builder=_torchvision_builder(name, weights),
            transform=dict(weights.transforms.keywords),
        )
    return specs


def _torchvision_builder(name: str, weights: Any) -> Builder:
    def build(input_size: tuple[int, ...], **kwargs: Any) -> nn.Module:
        import torchvision.models as tvm

        options = {**stock_torchvision_kwargs(name, weights, input_size), **kwargs}
        return tvm.get_model(name, **options)

    return build


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
