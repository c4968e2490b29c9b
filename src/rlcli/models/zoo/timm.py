"""timm's models by name: ``timm/NAME`` is any ``timm.list_models()`` architecture, with or without a pretrained tag
(``timm/resnet50``, ``timm/convnext_tiny.in12k_ft_in1k``), built by ``timm.create_model(NAME, pretrained=False)``.

The card is timm's ``pretrained_cfg`` for the tag (the architecture's default tag when none is given): the default
input is its ``input_size``; the preprocessing is exactly timm's evaluation transform of its data config
(``resolve_data_config`` + ``create_transform``: resize to floor(size / crop_pct), ``center`` or ``squash`` crop,
interpolation, mean and std); the classes are its label names, else the ImageNet subset timm infers from the class
count. timm's published figures (its results tables' params and GMACs, copied by scripts/timm_results.py) go on
the card like a paper's, with timm's counting convention stated.

Weights for ``rl classify`` come from the local Hugging Face cache, in timm's Hub layout (``config.json`` with its
``pretrained_cfg``, ``model.safetensors``), never downloaded: the model is built from that config.json by timm's
own ``local-dir:`` reader (data only: an architecture name that must be in timm's registry, and keyword values),
the weights read by rl as data.

Names read from files (a checkpoint's recorded architecture) may be ``timm/NAME``: building one imports nothing but
timm and runs nothing but timm's registered builders; no path or repository is read for it.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from rlcli.core.hub import download_command, find_hf_snapshot, hf_hub_cache, repo_folder
from rlcli.core.images import Preprocess
from rlcli.errors import CheckpointError, ModelNotFoundError, RlError, UsageError
from rlcli.models.cards import ModelCard, Paper, Published
from rlcli.models.catalog import suggest
from rlcli.models.registry import ModelSpec
from rlcli.models.zoo import TIMM_PREFIX, require
from rlcli.models.zoo.names import write_timm_names

SOURCE = "timm"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
RESULTS_PATH = Path(__file__).with_name("timm_results.json")

# A timm registry name with an optional tag: letters, digits, '_', '-' and '.'; no source prefix (hf-hub:, which
# downloads; local-dir:, which reads a folder) and no path.
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")

TIMM_RESULTS = Paper(
    title="PyTorch Image Models, results tables",
    authors="Ross Wightman",
    year=2019,
    url="https://github.com/huggingface/pytorch-image-models/tree/main/results",
)

TIMM_CONVENTION = (
    "timm's GMACs come from its own profiler (benchmark.py: DeepSpeed's flops profiler when installed, else fvcore, "
    "whose count adds normalisation, upsampling and adaptive pooling to convolutions, linear layers and matmuls), "
    "rounded to 0.01 G; params in millions to 0.01 M"
)


def import_timm() -> ModuleType:
    timm = require("timm", "timm", "a timm/ model")
    write_timm_names(timm)  # for shell completion, which cannot import timm (it imports torch)
    return timm


def timm_spec(name: str) -> ModelSpec:
    """The spec of ``timm/NAME`` (the prefix included), from timm's registry.

    Example:
        >>> timm_spec("timm/resnet50.a1_in1k").card.default_input
        (3, 224, 224)
    """
    model = name.removeprefix(TIMM_PREFIX)
    timm = import_timm()
    cfg = _pretrained_cfg(timm, model, name)
    full = f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else cfg["architecture"]
    default_input = tuple(int(d) for d in cfg.get("input_size") or (3, 224, 224))
    classes = class_names(cfg) if cfg.get("num_classes") else None
    published = _published(timm, model, full, default_input)
    card = ModelCard(
        name=name,
        family=_family(timm, cfg["architecture"]),
        source=SOURCE,
        task="image-classification" if cfg.get("num_classes") else "feature-extraction",
        default_input=default_input,
        input_kind="image",
        preprocess=preprocess_from_data_config(_data_config(timm, cfg)) if cfg.get("num_classes") else None,
        classes=classes,
        paper=TIMM_RESULTS if published else None,
        published=published,
    )
    return ModelSpec(card=card, builder=_builder(full, cfg), class_arguments=True)


def _pretrained_cfg(timm: ModuleType, model: str, typed: str) -> dict[str, Any]:
    if not _NAME.match(model):
        raise ModelNotFoundError(f"'{typed}' is not a timm model name (timm/ARCH or timm/ARCH.TAG)")
    arch, tag = timm.models.split_model_name_tag(model)
    if not timm.is_model(arch):
        close = suggest(arch, timm.list_models())
        hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise ModelNotFoundError(f"unknown timm model '{arch}' (timm {timm.__version__}){hint}")
    try:
        cfg = timm.models.get_pretrained_cfg(model)
    except RuntimeError:
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")]
        raise ModelNotFoundError(
            f"timm's {arch} has no pretrained tag '{tag}' (its tags: {', '.join(tags) or 'none'})"
        ) from None
    data = cfg.to_dict() if cfg is not None else {}
    data.setdefault("architecture", arch)
    return data


def _family(timm: ModuleType, arch: str) -> str:
    """timm's own grouping: the module that registers the architecture (resnet, convnext, vision_transformer)."""
    return timm.models.model_entrypoint(arch).__module__.rsplit(".", 1)[-1]


def _builder(full: str, cfg: dict[str, Any]):
    fixed = bool(cfg.get("fixed_input_size"))
    default = tuple(cfg.get("input_size") or (3, 224, 224))

    def build(input_size: tuple[int, ...] | None, **kwargs: Any):
        import timm

        # Models with a fixed input (a ViT's position table, Swin's windows) are built for the size they will see,
        # and every model for the channels it will see (timm's in_chans).
        if fixed and input_size and tuple(input_size[1:]) != tuple(default[1:]) and "img_size" not in kwargs:
            height, width = input_size[1:]
            kwargs["img_size"] = height if height == width else (height, width)
        if input_size and input_size[0] != default[0] and "in_chans" not in kwargs:
            kwargs["in_chans"] = input_size[0]
        return timm.create_model(full, pretrained=False, **kwargs)

    return build


# --- preprocessing and classes ----------------------------------------------------------------------------------


def _data_config(timm: ModuleType, cfg: dict[str, Any]) -> dict[str, Any]:
    return timm.data.resolve_data_config(pretrained_cfg=cfg)


def preprocess_from_data_config(config: dict[str, Any]) -> Preprocess | None:
    """rl's Preprocess doing exactly what ``timm.data.create_transform(**config)`` does at evaluation, or None for
    what it cannot express: the ``border`` crop mode and non-square inputs (in timm 1.0.31 only models without a
    classifier use them).

    timm resizes to ``floor(size / crop_pct)`` — the shorter side (``center``) or both sides (``squash``) — then
    centre-crops to ``size``, scales to [0, 1] and normalises: Preprocess's ``resize``, ``square`` and ``crop``.
    """
    _, height, width = config["input_size"]
    mode = config.get("crop_mode") or "center"
    if height != width or mode not in ("center", "squash"):
        return None
    crop_pct = config.get("crop_pct") or 0.875  # timm.data.DEFAULT_CROP_PCT
    return Preprocess(
        resize=math.floor(height / crop_pct),
        crop=int(height),
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        interpolation=config.get("interpolation") or "bilinear",
        square=mode == "squash",
    )


def class_names(cfg: dict[str, Any]) -> tuple[str, ...] | None:
    """The config's label names (described where it describes them), else the descriptions of the ImageNet subset
    timm infers from the class count (``infer_imagenet_subset``), else None."""
    names, descriptions = cfg.get("label_names"), cfg.get("label_descriptions")
    if names:
        if isinstance(descriptions, dict):
            return tuple(str(descriptions.get(n, n)) for n in names)
        return tuple(str(n) for n in names)
    from timm.data import infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": cfg.get("num_classes")})
    if subset is None or cfg.get("label_offset"):
        return None
    return _imagenet_descriptions(subset)


@functools.cache
def _imagenet_descriptions(subset: str) -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo(subset).label_descriptions())


# --- timm's published figures --------------------------------------------------------------------------------


@functools.cache
def _results() -> dict[str, Any]:
    return json.loads(RESULTS_PATH.read_text(encoding="utf-8"))


def _published(timm: ModuleType, typed: str, full: str, size: tuple[int, ...]) -> Published | None:
    """timm's printed figures for the model as rl builds it, at its default input: the benchmark's params and
    GMACs where the model is the architecture as benchmarked (its default tag), else the validation table's
    params for the tag."""
    results, arch = _results(), full.split(".", 1)[0]
    default = timm.models.get_pretrained_cfg(arch)
    side = size[-1] if len(size) == 3 and size[1] == size[2] else None
    if "." not in typed or (default is not None and f"{arch}.{default.tag}" == full):
        for img, params, gmacs in results["benchmark_rows"].get(arch, []):
            if img == side:
                return Published(
                    input_size=(size[0], img, img),
                    source=f"{results['benchmark']} ({arch})",
                    params=f"{params}M",
                    macs=f"{gmacs}G",
                    convention=TIMM_CONVENTION,
                )
    for img, params in results["validation_rows"].get(full, []):
        if img == side:
            return Published(
                input_size=(size[0], img, img),
                source=f"{results['validation']} ({full})",
                params=f"{params}M",
                convention=TIMM_CONVENTION,
            )
    return None


# --- weights from the local Hugging Face cache -------------------------------------------------------------------


@dataclass
class CachedTimmModel:
    """A timm model built from its Hub snapshot's config.json, with the weights file beside it."""

    model: Any  # nn.Module on the meta device
    weights: Path
    preprocess: Preprocess
    classes: tuple[str, ...] | None
    repo: str


def hub_repo(spec: ModelSpec) -> str:
    """The Hub repository that holds the weights of a timm/ spec's tag (``timm/resnet50.a1_in1k``)."""
    timm = import_timm()
    cfg = _pretrained_cfg(timm, spec.card.name.removeprefix(TIMM_PREFIX), spec.card.name)
    repo = cfg.get("hf_hub_id")
    full = f"{cfg['architecture']}.{cfg.get('tag')}" if cfg.get("tag") else cfg["architecture"]
    if not repo:
        raise UsageError(f"timm publishes no Hub weights for {full}: give --weights FILE")
    if cfg.get("custom_load") or cfg.get("hf_hub_filename"):
        raise UsageError(
            f"timm's weights for {full} are not in its Hub layout ({cfg.get('hf_hub_filename') or 'custom loader'}): "
            f"timm converts them as it loads; save the model with timm and give --weights FILE"
        )
    return repo.split("@", 1)[0]


def cached_timm_model(spec: ModelSpec) -> CachedTimmModel:
    """The tag's model, preprocessing and classes from its snapshot in the local Hugging Face cache; an error
    naming the ``hf download`` command when the snapshot is missing. Weights are not read here."""
    from rlcli.core.meta import build_on_meta

    repo = hub_repo(spec)
    snapshot, weights = _snapshot(repo, spec.card.name)
    timm = import_timm()
    config = snapshot / "config.json"
    try:
        json.loads(config.read_text(encoding="utf-8"))  # a readable error for a broken file, before timm reads it
        net = build_on_meta(lambda: timm.create_model(f"local-dir:{snapshot}", pretrained=False))
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, AssertionError) as exc:
        raise CheckpointError(f"{config}: not a timm model config ({type(exc).__name__}: {exc})") from None
    data_config = timm.data.resolve_data_config(model=net)
    preprocess = preprocess_from_data_config(data_config)
    if preprocess is None:
        raise UsageError(f"{spec.card.name}: timm's {data_config.get('crop_mode')} crop is not one rl classify runs")
    cfg = dict(net.pretrained_cfg)
    cfg["num_classes"] = getattr(net, "num_classes", cfg.get("num_classes"))
    return CachedTimmModel(net, weights, preprocess, class_names(cfg), repo)


def _snapshot(repo: str, name: str) -> tuple[Path, Path]:
    for weights in WEIGHT_FILES:
        found = find_hf_snapshot(repo, ("config.json", weights))
        if found.snapshot is not None:
            return found.snapshot, found.snapshot / weights
    looked = hf_hub_cache() / repo_folder(repo)
    raise RlError(
        f"{name}: its weights are not in the local Hugging Face cache (looked in {looked}); rl never downloads. "
        f"Fetch them once with: {download_command(repo, ('config.json', WEIGHT_FILES[0]))}"
    )
