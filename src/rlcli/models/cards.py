"""One typed card per registered model: what it takes, how its inputs are prepared, what its outputs mean.

timm's ``PretrainedCfg`` is the model: every fact a task needs about a model lives here, once. classify,
multilabel, swa-merge's BatchNorm pass and summary read preprocessing and classes from the card (through
``rlcli.models.loading``), never from a second table of the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlcli.core.images import Preprocess

INPUT_KINDS = ("image", "tokens", "tensor")

# Convolutional families run faster on channels-last tensors (oneDNN and cuDNN prefer NHWC for convolutions).
CONVOLUTIONAL_FAMILIES = frozenset({
    "resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "regnet", "densenet",
    "vgg", "alexnet", "googlenet", "inception", "mnasnet", "shufflenet_v2", "squeezenet", "convnext", "csra",
})  # fmt: skip


@dataclass(frozen=True)
class Paper:
    """The publication a model implements."""

    title: str
    authors: str
    year: int
    url: str


@dataclass(frozen=True)
class ModelCard:
    """The facts about one registered model.

    ``default_input`` is one sample's shape without the batch: (C, H, W) for images, (T,) for token sequences,
    anything for a user's tensor model. ``preprocess`` is the evaluation transform of the model's default weights
    (None where the model takes no images). ``classes`` are the names of the default weights' outputs, when known.
    """

    name: str
    family: str
    source: str  # "torchvision", "rlcli" or "user"
    task: str  # "image-classification", "multi-label", "language-model" or "unknown"
    default_input: tuple[int, ...]
    input_kind: str = "image"
    preprocess: Preprocess | None = None
    classes: tuple[str, ...] | None = None
    paper: Paper | None = None

    @property
    def input_dtype(self) -> str:
        """The dtype of the example input (a ``torch`` attribute name): token ids are int64, the rest float32."""
        return "int64" if self.input_kind == "tokens" else "float32"

    @property
    def channels_last(self) -> bool:
        """Whether inference should use channels-last memory (convolutional networks)."""
        return self.family in CONVOLUTIONAL_FAMILIES

    def __post_init__(self) -> None:
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {', '.join(INPUT_KINDS)}, not {self.input_kind!r}")
