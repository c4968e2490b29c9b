"""From a checkpoint (and what the user typed) to a model with its weights, classes and preprocessing.

The one resolver that classify, multilabel and swa-merge's BatchNorm pass share, so that a fine-tuned head, a
checkpoint's own preprocessing or a stored class list means the same in every command. Facts are taken in this
order: the command line, then the checkpoint's own description, then the model card.

Everything read from a file is data: the recorded architecture resolves against the registry only, stored builder
arguments are checked against what the builder accepts, stored preprocessing and class names are validated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlcli.core.checkpoints import CheckpointInfo, load_checkpoint, load_into
from rlcli.core.images import Preprocess
from rlcli.core.meta import build_on_meta
from rlcli.errors import CheckpointError, ModelNotFoundError, ModelRunError, RlError, UsageError
from rlcli.models.registry import ModelSpec, get_spec, stock_torchvision_kwargs

StateDict = dict[str, torch.Tensor]


@dataclass
class LoadedModel:
    """A model with real weights (on the CPU, in the file's dtype) and what its inputs and outputs mean."""

    spec: ModelSpec
    model: nn.Module
    class_names: list[str] | None
    preprocess: Preprocess | None
    info: CheckpointInfo | None
    weights: str  # where the weights came from, for reports
    outputs: int | None = None  # scores per sample, when the model returns one [batch, classes] tensor


def architecture_of(
    typed: str | None,
    info: CheckpointInfo | None,
    source: str,
    guess: Callable[[], str | None] | None = None,
) -> ModelSpec:
    """The spec for a checkpoint: the name the user typed (user code allowed), else the one the file records
    (registry only), else ``guess()`` (e.g. CSRA's depth read from the keys)."""
    recorded = info.arch if info else None
    if typed is not None:
        if recorded and recorded != typed:
            raise UsageError(f"{source} holds a {recorded}, not a {typed}")
        return get_spec(typed, user_code=True)
    if recorded is not None:
        if not isinstance(recorded, str):
            raise CheckpointError(f"{source}: its recorded architecture is not a name ({recorded!r})")
        if ":" in recorded:
            raise CheckpointError(
                f"{source} records its architecture as {recorded!r}, a reference to Python code; rl runs code only "
                f"when you type it: give --model {recorded} if you trust this file"
            )
        try:
            return get_spec(recorded)
        except ModelNotFoundError as exc:
            raise CheckpointError(f"{source} records an architecture rl does not know: {exc}") from exc
    guessed = guess() if guess else None
    if guessed is None:
        raise UsageError(f"{source} does not name its architecture: give --model")
    return get_spec(guessed)


def build_with_weights(
    spec: ModelSpec,
    state: StateDict,
    info: CheckpointInfo | None,
    source: str,
    inferred: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    input_size: tuple[int, ...] | None = None,
) -> nn.Module:
    """``spec``'s model built around ``state`` for ``input_size`` (default: the card's): ``overrides`` (what the user
    chose), then the stored arguments (checked), then ``inferred`` ones for whatever the file does not record (a
    fine-tuned head's class count); weights are assigned without a copy."""
    arguments = builder_arguments(spec, state, info, source, inferred, overrides)
    net = _build_on_meta(spec, arguments, source, input_size)
    load_into(net, state, source=source, assign=True)
    return net


def builder_arguments(
    spec: ModelSpec,
    state: StateDict,
    info: CheckpointInfo | None,
    source: str,
    inferred: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments ``build_with_weights`` builds with (see there)."""
    stored = info.model_args if info and info.arch == spec.card.name else {}
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source}: its stored model arguments are not a mapping ({stored!r})")
    arguments = spec.checked_arguments(stored, source)
    for name, value in (inferred or {}).items():
        arguments.setdefault(name, value)
    if spec.arguments_from_state is not None:
        for name, value in spec.arguments_from_state(state).items():
            arguments.setdefault(name, value)
    arguments.update(overrides or {})
    if _sized_by_its_head(spec) and "num_classes" not in arguments:
        arguments["num_classes"] = _head_height(spec, state)
    return arguments


def _build_on_meta(spec: ModelSpec, arguments: dict[str, Any], source: str, input_size=None) -> nn.Module:
    try:
        return build_on_meta(lambda: spec.build(input_size, **arguments))
    except (ModelRunError, UsageError):
        raise
    except Exception as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items()) or "no arguments"
        raise CheckpointError(f"{source}: cannot build {spec.card.name} with {shown}: {exc}") from exc


def output_width(spec: ModelSpec, arguments: dict[str, Any], input_size: tuple[int, ...] | None) -> int | None:
    """How many scores the model returns per sample (its forward's last dimension), found by a forward pass on the
    meta device; None when the output is not one [batch, classes] tensor or the pass needs real values."""
    from torch.utils._pytree import tree_flatten

    try:
        net = build_on_meta(lambda: spec.build(input_size, **arguments)).eval()
        with torch.inference_mode():
            feed = spec.example_input(input_size, device="meta")
            outputs = net(*feed.args, **feed.kwargs)
    except (Exception, SystemExit):  # a user's forward that fails or exits fails again, reported, on real data
        return None
    tensors = [t for t in tree_flatten(outputs)[0] if isinstance(t, torch.Tensor)]
    return int(tensors[0].shape[-1]) if tensors and tensors[0].dim() == 2 else None


def _sized_by_its_head(spec: ModelSpec) -> bool:
    """An image classifier whose builder takes ``num_classes``: a fine-tuned (or 1001-class TF-slim) file sets it."""
    return spec.card.task == "image-classification" and "num_classes" in spec.accepted_arguments()


def _head_height(spec: ModelSpec, state: StateDict) -> int | None:
    """A fine-tuned torchvision model's class count: the height of its final weight matrix in the file."""
    reference = build_on_meta(lambda: spec.build())
    last = [name for name, p in reference.named_parameters() if p.dim() >= 2][-1]
    return int(state[last].shape[0]) if last in state and state[last].dim() >= 2 else None


def preprocess_for(spec: ModelSpec, info: CheckpointInfo | None, source: str) -> Preprocess | None:
    """The checkpoint's own preprocessing when it records one (validated), else the model card's."""
    stored = info.extra.get("preprocess") if info else None
    if stored is not None:
        try:
            return Preprocess.from_mapping(stored)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{source}: its stored preprocessing is invalid: {exc}") from exc
    if spec.card.preprocess is not None:
        return spec.card.preprocess
    size = spec.card.default_input
    if spec.card.input_kind == "image" and len(size) == 3:
        return Preprocess.for_crop(size[-1])
    return None


def class_names_for(spec: ModelSpec, info: CheckpointInfo | None, outputs: int | None, source: str) -> list[str]:
    """The checkpoint's class names, else the card's when their count fits the model, else numbered classes."""
    stored = info.class_names if info else None
    if stored is not None:
        if not all(isinstance(name, str) for name in stored):
            raise CheckpointError(f"{source}: its stored class names are not all strings")
        return list(stored)
    card = spec.card.classes
    if card is not None and (outputs is None or len(card) == outputs):
        return list(card)
    return [f"class {i}" for i in range(outputs or 0)]


def output_count(net: nn.Module) -> int | None:
    """The width of the model's last classifier layer (Linear, else 1x1-style Conv2d), if it has one."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1].out_features
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels if convs else None


def load_model_file(
    path: Path, typed: str | None, adjust: Callable[[Preprocess], Preprocess] | None = None
) -> LoadedModel:
    """A checkpoint file as a model: architecture, weights, classes and preprocessing resolved as above.

    ``adjust`` changes the preprocessing (the user's --crop ...); an image model is then built for the crop it
    will see, so that a network whose layout depends on the input (a ViT's position table, CSWin's stripes) fits.
    """
    checkpoint = load_checkpoint(path)
    source, info = str(path), checkpoint.info
    spec = architecture_of(typed, info, source)
    preprocess = preprocess_for(spec, info, source)
    if preprocess is not None and adjust is not None:
        preprocess = adjust(preprocess)
    size = _input_for(spec, preprocess)
    arguments = builder_arguments(spec, checkpoint.state_dict, info, source)
    net = _build_on_meta(spec, arguments, source, size)
    load_into(net, checkpoint.state_dict, source=source, assign=True)
    outputs = output_width(spec, arguments, size) or output_count(net)
    return LoadedModel(
        spec=spec,
        model=net,
        class_names=class_names_for(spec, info, outputs, source),
        preprocess=preprocess,
        info=info,
        weights=source,
        outputs=outputs,
    )


def checkpoint_spec(path: Path) -> ModelSpec:
    """A self-describing checkpoint as a model to inspect (``rl summary model.pt``): the architecture it records,
    looked up in the registries only, built with its stored arguments (checked) and the widths its weights imply,
    at the crop its preprocessing names. Named ``ARCH (FILE)``; counting needs no weights, so none are kept."""
    checkpoint = load_checkpoint(path)
    source, info = str(path), checkpoint.info
    if info is None or info.arch is None:
        raise ModelNotFoundError(
            f"{source} does not record its architecture (rl's checkpoints do); summarise the architecture by its "
            "name instead"
        )
    spec = architecture_of(None, info, source)
    arguments = builder_arguments(spec, checkpoint.state_dict, info, source)
    size = _input_for(spec, preprocess_for(spec, info, source)) or spec.card.default_input
    card = replace(spec.card, name=f"{spec.card.name} ({path.name})", default_input=size)

    def build(input_size: tuple[int, ...], **options: Any) -> nn.Module:
        return spec.builder(input_size, **{**arguments, **options})

    return replace(spec, card=card, builder=build, arguments=spec.arguments or spec.builder)


def _input_for(spec: ModelSpec, preprocess: Preprocess | None) -> tuple[int, ...] | None:
    """The input an image model will be fed: the card's channels at the preprocessing's crop."""
    default = spec.card.default_input
    if preprocess is None or spec.card.input_kind != "image" or len(default) != 3:
        return None
    return (default[0], preprocess.crop, preprocess.crop)


# --- torchvision weights from the torch hub cache -------------------------------------------------------------


def load_torchvision_weights(spec: ModelSpec, name: str) -> LoadedModel:
    """torchvision weights (``ResNet50_Weights.IMAGENET1K_V2``, ``IMAGENET1K_V2`` or ``DEFAULT``) read from the
    local torch hub cache with ``weights_only=True``; never downloaded."""
    import torchvision.models as tvm

    if spec.card.source != "torchvision":
        raise UsageError(f"{spec.card.name} has no torchvision weights: give --weights FILE")
    weights = _torchvision_weights_member(tvm.get_model_weights(spec.card.name), name, spec.card.name)
    file = cached_weights_file(weights)
    state = load_checkpoint(file).state_dict
    preprocess = Preprocess.from_torchvision(weights)
    kwargs = stock_torchvision_kwargs(spec.card.name, weights, (3, preprocess.crop, preprocess.crop))
    if spec.card.name == "googlenet":
        kwargs["aux_logits"] = True  # the file holds the auxiliary heads; torchvision drops them after loading
    net = build_on_meta(lambda: tvm.get_model(spec.card.name, **kwargs))
    load_into(net, state, source=str(file), assign=True)
    if spec.card.name == "googlenet":
        net.aux_logits, net.aux1, net.aux2 = False, None, None
    return LoadedModel(
        spec=spec,
        model=net,
        class_names=list(weights.meta["categories"]),
        preprocess=preprocess,
        info=None,
        weights=f"{type(weights).__name__}.{weights.name}",
        outputs=len(weights.meta["categories"]),
    )


# --- timm weights from the local Hugging Face cache -------------------------------------------------------------


def load_timm_weights(spec: ModelSpec, name: str = "DEFAULT") -> LoadedModel:
    """A ``timm/NAME`` model with the weights of its tag's Hub repository, read from the local Hugging Face cache
    (``config.json`` and ``model.safetensors``, or ``pytorch_model.bin`` with ``weights_only=True``); never
    downloaded. The model, its preprocessing (timm's data config) and its classes come from that config.json."""
    from rlcli.models.zoo.timm import cached_timm_model

    if name != "DEFAULT":
        raise UsageError(
            f"{spec.card.name} takes its weights from the local Hugging Face cache (leave out --weights) or from a "
            f"file (--weights FILE); '{name}' is neither"
        )
    cached = cached_timm_model(spec)
    source = str(cached.weights)
    state = load_checkpoint(cached.weights).state_dict
    load_into(cached.model, state, source=source, assign=True)
    outputs = getattr(cached.model, "num_classes", None) or None
    return LoadedModel(
        spec=spec,
        model=cached.model,
        class_names=list(cached.classes) if cached.classes else [f"class {i}" for i in range(outputs or 0)],
        preprocess=cached.preprocess,
        info=None,
        weights=f"{cached.repo} ({source})",
        outputs=outputs,
    )


def _torchvision_weights_member(enum: Any, name: str, model: str) -> Any:
    member = name.rsplit(".", 1)[-1]
    if "." in name and name.split(".")[0] != enum.__name__:
        raise UsageError(f"{name} are not weights of {model} (its weights are {enum.__name__}.*)")
    try:
        return enum[member] if member != "DEFAULT" else enum.DEFAULT
    except KeyError:
        choices = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise UsageError(f"unknown weights '{name}' for {model}: choose {choices}") from None


def cached_weights_file(weights: Any) -> Path:
    """The file of torchvision ``weights`` in the torch hub cache, or an error with the one command that gets it."""
    filename = weights.url.rsplit("/", 1)[-1]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / filename
    if not path.is_file():
        qualified = f"{type(weights).__name__}.{weights.name}"
        raise RlError(
            f"weights {qualified} are not in the torch hub cache (looked for {path}); rl never downloads. "
            f'Fetch them once with: python -c "import torchvision; '
            f"torchvision.models.get_weight('{qualified}').get_state_dict(weights_only=True)\""
        )
    return path
