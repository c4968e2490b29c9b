"""Model names -> builders: torchvision's models, rlcli's own architectures, and the zoos users already have.

Torchvision models come from torchvision's own ``list_models``/``get_model``, never from a hand-kept list. rlcli's
architectures register themselves with ``@register_model``. Prefixes name the zoos (``rlcli.models.zoo``):
``timm/NAME`` is timm's registry, ``hf/NAME`` a Hugging Face config built by transformers' AutoModel. A user's own
network is named ``pkg.module:callable`` or ``path/to/file.py:callable`` (see ``rlcli.models.user``) — and only
when the user typed that reference: a name read from a file (a checkpoint's recorded architecture) resolves against
the registries alone — rl's and timm's, whose builders are data-driven and import nothing else — so a checkpoint can
never make rl import or call code, nor read another file (``hf/`` names, like folders, are taken only when typed).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import pkgutil
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlcli.core.feeds import Feed, InputSpec, TensorSpec
from rlcli.core.images import Preprocess
from rlcli.core.meta import ValueSteps
from rlcli.errors import CheckpointError, ModelNotFoundError
from rlcli.models.cards import Measured, ModelCard, Paper, Published
from rlcli.models.catalog import suggest

# Packages holding rlcli's own architectures, one file per paper; every module in them is imported on first use of
# the registry so that it can register (a new paper file needs no line here).
_OWN_MODEL_PACKAGES: tuple[str, ...] = ("rlcli.models.vision", "rlcli.models.language", "rlcli.models.heads")

Builder = Callable[..., nn.Module]

# Builder arguments that fetch or name weights. A checkpoint's stored arguments never include them: torchvision
# downloads when it sees weights="DEFAULT", timm when it sees pretrained=True, and weights come from the file itself.
_WEIGHT_ARGUMENTS = frozenset({
    "weights", "weights_backbone", "pretrained", "pretrained_backbone", "progress",
    "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",  # timm.create_model's
})  # fmt: skip


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
    # The steps of its forward pass that depend on values, for a pass on the meta device (see core/meta.py).
    value_steps: ValueSteps | None = field(default=None, repr=False, compare=False)
    # The builder forwards its keyword arguments to the class it constructs (torchvision's and timm's builders take
    # **kwargs): the settings a checkpoint may store are that class's, found by building the model on meta.
    class_arguments: bool = field(default=False, compare=False)

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
        if self.class_arguments:
            return _class_arguments(self)
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
    code. Names read from files are looked up in the registries (rl's, timm's) and nowhere else.
    """
    for specs in (_torchvision_specs(), _own_specs()):
        if name in specs:
            return specs[name]
    from rlcli.models.zoo import HF_PREFIX, TIMM_PREFIX

    if name.startswith(TIMM_PREFIX):
        from rlcli.models.zoo.timm import timm_spec

        return timm_spec(name)
    if name.startswith(HF_PREFIX) and user_code:
        from rlcli.models.zoo.hf import hf_spec

        return hf_spec(name)
    if name.startswith(HF_PREFIX):
        raise ModelNotFoundError(
            f"'{name}' names a Hugging Face folder or cached repository, which rl reads only when you type it: "
            f"pass --model {name}"
        )
    if ":" in name and user_code:
        from rlcli.models.user import user_model_spec

        return user_model_spec(name)
    if ":" in name:
        raise ModelNotFoundError(
            f"'{name}' is not a registered model but a reference to Python code, which rl runs only when you type "
            f"it yourself: pass --model {name} if you trust it"
        )
    if user_code and _is_checkpoint_file(name):  # a file the user named, read as data: its recorded architecture
        from rlcli.models.loading import checkpoint_spec

        return checkpoint_spec(Path(name))
    if user_code:  # a Hugging Face model folder or cached Hub name: its config.json is read as data, never run
        from rlcli.models.language.hf_config import spec_from_hf

        if (folder_spec := spec_from_hf(name)) is not None:
            return folder_spec
    close = suggest(name, model_names())
    hint = f"; did you mean {', '.join(close)}?" if close else "; `rl models` lists them"
    raise ModelNotFoundError(f"unknown model '{name}'{hint}")


def _is_checkpoint_file(name: str) -> bool:
    from rlcli.core.checkpoints import SAFETENSORS_SUFFIX, TORCH_SUFFIXES

    path = Path(name)
    return path.suffix in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX) and path.is_file()


@cache
def _own_specs() -> dict[str, ModelSpec]:
    for package in _OWN_MODEL_PACKAGES:
        for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{module.name}")
    return dict(_OWN_MODELS)


# torchvision's packages of models, with the task each serves. Its quantized models (torchvision.models.quantization)
# are left out: as their weights ship they are int8 modules whose packed weights are not parameters and run on
# FBGEMM/QNNPACK kernels with no meta-device form (torchvision copies their num_params and _ops from the float
# models: its counter cannot count them either); built without weights they are those float models, already here.
_TORCHVISION_TASKS = {
    "": "image-classification",
    "detection": "detection",
    "segmentation": "segmentation",
    "video": "video",
    "optical_flow": "optical-flow",
}


class _LazySpecs(Mapping[str, ModelSpec]):
    """Specs made when first looked up: a detector's default input is read off the model built on the meta device,
    milliseconds each but a second for all of them, which listing names or summarising another model never needs."""

    def __init__(self, makers: dict[str, Callable[[], ModelSpec]]) -> None:
        self._makers, self._made = makers, {}

    def __getitem__(self, name: str) -> ModelSpec:
        if name not in self._made:
            self._made[name] = self._makers[name]()
        return self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)


@cache
def _torchvision_specs() -> Mapping[str, ModelSpec]:
    import torchvision.models as tvm

    makers = {}
    for package, task in _TORCHVISION_TASKS.items():
        for name in tvm.list_models(module=getattr(tvm, package) if package else tvm):
            makers[name] = functools.partial(_torchvision_spec, name, task)
    return _LazySpecs(makers)


def _torchvision_spec(name: str, task: str) -> ModelSpec:
    import torchvision.models as tvm

    weights = tvm.get_model_weights(name).DEFAULT
    builder = _torchvision_builder(name, weights)
    default_input = _torchvision_input(task, weights, builder)
    categories = weights.meta.get("categories")
    card = ModelCard(
        name=name,
        family=torchvision_family(name, tvm.get_model_builder(name).__module__),
        source="torchvision",
        task=task,
        default_input=default_input,
        input_kind="video" if task == "video" else "image",
        preprocess=Preprocess.from_torchvision(weights) if task == "image-classification" else None,
        classes=tuple(categories) if categories else None,
        measured=_torchvision_measured(name, task, default_input),
    )
    return ModelSpec(
        card=card,
        builder=builder,
        inputs=_TORCHVISION_INPUTS.get(task),
        value_steps=_DETECTION_STEPS if task == "detection" else None,
        class_arguments=True,
    )


def _torchvision_builder(name: str, weights: Any) -> Builder:
    def build(input_size: tuple[int, ...] | None, **kwargs: Any) -> nn.Module:
        import torchvision.models as tvm

        options = {**stock_torchvision_kwargs(name, weights, input_size), **kwargs}
        model = tvm.get_model(name, weights=None, **options)
        if name in _FROZEN_BATCH_NORM_WHEN_TRAINED:
            _freeze_batch_norm(model)
        return model

    return build


# --- what each task is fed --------------------------------------------------------------------------------------

# torchvision's test/common_extended_utils.py counts every video model's _ops on a 16-frame clip.
_TORCHVISION_CLIP = 16
# RAFT's weights document no image size (min_size 128x128; sides must be multiples of 8): rl feeds the 512x512
# pair torchvision measures _ops at.
_FLOW_INPUT = (3, 512, 512)


def _torchvision_input(task: str, weights: Any, builder: Builder) -> tuple[int, ...]:
    """One sample of the input the default weights document: the classification crop, the segmentation resize,
    the video crop over the documented evaluation clip, the image size a detector's own transform works at."""
    keywords = getattr(weights.transforms, "keywords", {})
    if task == "image-classification":
        return (3, int(keywords["crop_size"]), int(keywords["crop_size"]))
    if task == "segmentation":
        return (3, int(keywords["resize_size"]), int(keywords["resize_size"]))
    if task == "video":
        return (3, _clip_length(weights), *(int(side) for side in keywords["crop_size"]))
    if task == "optical-flow":
        return _FLOW_INPUT
    return _detector_input(builder)


def _clip_length(weights: Any) -> int:
    """Frames per clip of the weights' evaluation, as their documentation states it ("clip_len=16"), else the 16
    frames torchvision counts at."""
    match = re.search(r"clip_len=(\d+)", weights.meta.get("_docs", ""))
    return int(match.group(1)) if match else _TORCHVISION_CLIP


def _detector_input(builder: Builder) -> tuple[int, ...]:
    """The image a detector's transform leaves as it is: SSD's fixed size, else a square of the R-CNN transform's
    min_size (it resizes every image so that its short side is min_size, its long side at most max_size)."""
    from rlcli.core.meta import build_on_meta

    transform = build_on_meta(lambda: builder(None)).transform
    side = transform.fixed_size or (transform.min_size[-1], transform.min_size[-1])
    return (3, *side)


def _images_listed(size: tuple[int, ...]) -> InputSpec:
    """torchvision's detectors take a list of [3, H, W] images (any sizes); one per sample."""
    return InputSpec((TensorSpec(tuple(size), listed=True),))


def _image_pair(size: tuple[int, ...]) -> InputSpec:
    """RAFT takes the two frames it computes the flow between as two positional [N, 3, H, W] batches."""
    return InputSpec((TensorSpec(tuple(size)), TensorSpec(tuple(size))))


_TORCHVISION_INPUTS: dict[str, Callable[[tuple[int, ...]], InputSpec]] = {
    "detection": _images_listed,
    "optical-flow": _image_pair,
}


# --- detection: the steps that depend on values ---------------------------------------------------------------


def _keep_every_box(boxes: torch.Tensor, scores: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """torchvision's NMS (``nms``, ``batched_nms``) suppressing nothing: every box's index, by decreasing score."""
    return torch.argsort(scores, descending=True)


def _detection_caps(model: nn.Module) -> list[str]:
    """What bounds a detector's work after its selections, in its builder's words."""
    from torchvision.models.detection.ssd import SSD

    rpn, heads = getattr(model, "rpn", None), getattr(model, "roi_heads", None)
    if rpn is not None and heads is not None:
        return [
            f"{rpn.post_nms_top_n():,} proposals per image (rpn_post_nms_top_n_test)",
            f"{heads.detections_per_img:,} detections per image (box_detections_per_img)",
        ]
    per = "class" if isinstance(model, SSD) else "level"
    return [
        f"{model.topk_candidates:,} candidates per {per} (topk_candidates)",
        f"{model.detections_per_img:,} detections per image (detections_per_img)",
    ]


# NMS and score thresholds keep every candidate, so the proposals and detections counted are the caps the model
# sets, the same on every run; pasting masks into the image and reading keypoints off heatmaps read box corners for
# work rl does not count (interpolation), and run on real tensors.
_DETECTION_STEPS = ValueSteps(
    selections={"torchvision.ops.boxes:nms": _keep_every_box, "torchvision.ops.boxes:batched_nms": _keep_every_box},
    on_cpu=(
        "torchvision.models.detection.transform:paste_masks_in_image",
        "torchvision.models.detection.roi_heads:keypointrcnn_inference",
    ),
    caps=_detection_caps,
)

# torchvision's detection builders that give the backbone FrozenBatchNorm2d when they load weights
# (`norm_layer = misc_nn_ops.FrozenBatchNorm2d if is_trained else nn.BatchNorm2d`). Without weights they would
# build BatchNorm2d, whose scale and shift are parameters; FrozenBatchNorm2d holds them as buffers, so the shipped
# weights (and torchvision's num_params) have none. Their v2 builders and SSDlite keep BatchNorm2d.
_FROZEN_BATCH_NORM_WHEN_TRAINED = frozenset({
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "maskrcnn_resnet50_fpn",
    "keypointrcnn_resnet50_fpn",
    "retinanet_resnet50_fpn",
    "fcos_resnet50_fpn",
})  # fmt: skip


def _freeze_batch_norm(model: nn.Module) -> None:
    """Replace every BatchNorm2d with the FrozenBatchNorm2d torchvision builds for trained weights (same eps)."""
    from torchvision.ops import FrozenBatchNorm2d

    for module in list(model.modules()):
        for child_name, child in module.named_children():
            if type(child) is nn.BatchNorm2d:
                setattr(module, child_name, FrozenBatchNorm2d(child.num_features, eps=child.eps))


# --- torchvision's own figures, where they count other work than rl's default ------------------------------------

_NO_PROPOSALS = (
    "torchvision's test/common_extended_utils.py ran the trained weights on one random-noise image, where no "
    "proposal passed rpn_score_thresh 0.05, so its box head never ran; rl counts the box head at the cap of proposals "
    "per image"
)


def _kept(what: str, head: str) -> str:
    return (
        f"torchvision's test/common_extended_utils.py ran the trained weights on one random-noise image, where they "
        f"kept {what}; rl counts the {head} head at the cap of detections per image"
    )


# How torchvision's detectors were measured, found by reproducing each published figure exactly: the image fed
# (test_extended_models.py feeds keypointrcnn 1333x1333, which its transform resizes to 800x800) and the builder
# arguments under which rl counts the proposals and detections the trained weights kept.
_TORCHVISION_DETECTOR_RUNS: dict[str, tuple[tuple[int, ...], tuple[tuple[str, int], ...], str]] = {
    "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1": (
        (3, 320, 320),
        (("rpn_post_nms_top_n_test", 0),),
        _NO_PROPOSALS,
    ),
    "FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1": (
        (3, 800, 800),
        (("rpn_post_nms_top_n_test", 0),),
        _NO_PROPOSALS,
    ),
    "MaskRCNN_ResNet50_FPN_Weights.COCO_V1": (
        (3, 800, 800),
        (("box_detections_per_img", 0),),
        _kept("no detection, so its mask head never ran", "mask"),
    ),
    "KeypointRCNN_ResNet50_FPN_Weights.COCO_LEGACY": (
        (3, 1333, 1333),
        (("box_detections_per_img", 0),),
        _kept("no detection, so its keypoint head never ran", "keypoint"),
    ),
    "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1": (
        (3, 1333, 1333),
        (("box_detections_per_img", 1),),
        _kept("one detection, so its keypoint head ran once", "keypoint"),
    ),
}


def _torchvision_measured(name: str, task: str, default_input: tuple[int, ...]) -> tuple[Measured, ...]:
    """torchvision's published _ops of each weights entry, where they count other work than rl's default count."""
    import torchvision.models as tvm

    measured = []
    for weights in tvm.get_model_weights(name):
        key, figure = f"{type(weights).__name__}.{weights.name}", f"{weights.meta['_ops']} GFLOPS"
        if key in _TORCHVISION_DETECTOR_RUNS:
            size, arguments, note = _TORCHVISION_DETECTOR_RUNS[key]
            measured.append(Measured(key, figure, size, note, arguments))
        elif task == "video" and default_input[1] != _TORCHVISION_CLIP:
            size = (3, _TORCHVISION_CLIP, *default_input[2:])
            note = (
                f"torchvision's test/common_extended_utils.py counts every video model on a {_TORCHVISION_CLIP}-frame "
                f"clip; these weights are evaluated on {default_input[1]}-frame clips (their documentation), rl's "
                f"default input"
            )
            measured.append(Measured(key, figure, size, note))
    return tuple(measured)


_CLASS_ARGUMENTS: dict[tuple[str, str], dict[str, Any]] = {}


def _class_arguments(spec: ModelSpec) -> dict[str, Any]:
    """Keyword settings of the class a builder constructs (``num_classes``, ``dropout`` ...).

    torchvision's and timm's builders forward ``**kwargs`` to the model's class; the class is found by building the
    stock model on the meta device (milliseconds, no weights).
    """
    from rlcli.core.meta import build_on_meta

    key = (spec.card.source, spec.card.name)
    if key not in _CLASS_ARGUMENTS:
        model = build_on_meta(lambda: spec.build())
        _CLASS_ARGUMENTS[key] = _keyword_defaults(type(model).__init__)
    return dict(_CLASS_ARGUMENTS[key])


def stock_torchvision_kwargs(name: str, weights: Any, input_size: tuple[int, ...] | None) -> dict[str, Any]:
    """The constructor arguments torchvision's builder sets when it loads ``weights``.

    Building with these and no weights gives the architecture exactly as shipped (so params and MACs equal the
    weights' metadata): GoogLeNet drops its auxiliary heads, Inception and GoogLeNet normalise their input in the
    model, ViT's position embedding is sized for the image, FCN and DeepLabV3 keep their
    auxiliary classifier, Keypoint R-CNN predicts the weights' keypoints. ``weights_backbone`` is None: its default
    names ImageNet weights, which torchvision would download.
    """
    import torchvision.models as tvm

    parameters = inspect.signature(tvm.get_model_builder(name)).parameters
    kwargs: dict[str, Any] = {}
    if "weights_backbone" in parameters:
        kwargs["weights_backbone"] = None
    if weights.meta.get("categories"):
        kwargs["num_classes"] = len(weights.meta["categories"])
    if weights.meta.get("keypoint_names"):
        kwargs["num_keypoints"] = len(weights.meta["keypoint_names"])
    if "aux_loss" in parameters:
        kwargs["aux_loss"] = True
    if name.startswith("vit_") and input_size:
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


# Video models share module names with image classifiers (video/resnet.py, video/swin_transformer.py).
_VIDEO_FAMILY_BY_MODULE = {"resnet": "video_resnet", "swin_transformer": "swin3d"}


def torchvision_family(name: str, module: str) -> str:
    """A family name from the torchvision module that defines the model (resnet.py holds ResNeXt too)."""
    for prefix in ("resnext", "wide_resnet"):
        if name.startswith(prefix):
            return prefix
    stem = module.rsplit(".", 1)[-1]
    if module.startswith("torchvision.models.video."):
        return _VIDEO_FAMILY_BY_MODULE.get(stem, stem)
    return _FAMILY_BY_MODULE.get(stem, stem)
