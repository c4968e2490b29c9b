"""One typed card per registered model: what it takes, how its inputs are prepared, what its outputs mean.

timm's ``PretrainedCfg`` is the model: every fact a task needs about a model lives here, once. classify,
multilabel, swa-merge's BatchNorm pass and summary read preprocessing and classes from the card (through
``rlcli.models.loading``), never from a second table of the same facts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rlcli.models.catalog import FigureCheck, check_figure

if TYPE_CHECKING:  # a type only: the cards load without torch, so that a cached summary renders without it
    from rlcli.core.images import Preprocess

INPUT_KINDS = ("image", "video", "tokens", "tensor")

# Convolutional families run faster on channels-last tensors (oneDNN and cuDNN prefer NHWC for convolutions).
CONVOLUTIONAL_FAMILIES = frozenset({
    "resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "regnet", "densenet",
    "vgg", "alexnet", "googlenet", "inception", "mnasnet", "shufflenet_v2", "squeezenet", "convnext", "csra",
    "mobilenet_v1", "senet", "acnet", "selecsls", "cdcn", "yolov5", "micronet_kws", "micronet_vww",
})  # fmt: skip


@dataclass(frozen=True)
class Paper:
    """The publication a model implements."""

    title: str
    authors: str
    year: int
    url: str
    arxiv: str | None = None  # the arXiv id, e.g. "1704.04861"

    def cite(self) -> str:
        """``Howard et al. 2017, arXiv 1704.04861``: the short form a table row has room for."""
        first = self.authors.split(",")[0].strip()
        who = first.split()[-1] + (" et al." if "," in self.authors else "")
        return f"{who} {self.year}" + (f", arXiv {self.arxiv}" if self.arxiv else "")


@dataclass(frozen=True)
class Published:
    """The figures a paper (or its official README) prints for one model, exactly as printed.

    ``params`` and ``macs``/``flops`` are the printed text ("4.2M", "569M", "3.87G"), so that their precision is
    known: a difference within half a unit of the last printed digit is rounding. ``macs`` are multiply-accumulates
    (most papers print these under the name "FLOPs": ``convention`` says so); ``flops`` is for a source that
    prints true floating-point operations (2 per multiply-accumulate). ``note`` is the one-line reason when rl's
    count differs by more than rounding.
    """

    input_size: tuple[int, ...]  # the input the figures refer to, one sample
    source: str  # where they are printed: "Table 8", "official README"
    params: str | None = None
    macs: str | None = None
    flops: str | None = None
    convention: str = ""
    note: str = ""


@dataclass(frozen=True)
class Measured:
    """How a model's source measured a figure it publishes, where that is other work than rl's default count.

    torchvision's ``_ops`` come from its test/common_extended_utils.py: every video model on a 16-frame clip, every
    detector with its trained weights on one random-noise image, so that the proposals and detections it counts are
    those the weights kept there (rl counts at the model's caps). ``figure`` is the published one, as published;
    rl built with ``arguments`` (builder keywords) and fed ``input_size`` counts the same work; ``note`` says why
    rl's default count differs.
    """

    weights: str  # the weights entry: "MaskRCNN_ResNet50_FPN_Weights.COCO_V1"
    figure: str  # "134.38 GFLOPS"
    input_size: tuple[int, ...]
    note: str
    arguments: tuple[tuple[str, int], ...] = ()


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order, as torchvision's weights metadata ships them (offline)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


@dataclass(frozen=True)
class ModelCard:
    """The facts about one registered model.

    ``default_input`` is one sample's shape without the batch: (C, H, W) for images, (C, T, H, W) for video clips,
    (T,) for token sequences, anything for a user's tensor model. ``preprocess`` is the evaluation transform of the
    model's default weights (None where the model takes no images, or its weights' transform is not a classifier's).
    ``classes`` are the names of the default weights' outputs, when known.
    """

    name: str
    family: str
    source: str  # "torchvision", "rlcli", "huggingface" (a config.json folder or cached Hub name) or "user"
    task: str  # "image-classification", "detection", "segmentation", "video", "optical-flow", "language-model" ...
    default_input: tuple[int, ...]
    input_kind: str = "image"
    preprocess: Preprocess | None = None
    classes: tuple[str, ...] | None = None
    paper: Paper | None = None
    published: Published | None = None
    measured: tuple[Measured, ...] = ()  # where the source's own published figures count other work (see Measured)

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


@dataclass(frozen=True)
class PaperComparison:
    """A model's paper card beside rl's count: what ``rl summary`` prints under the totals and ``rl models --paper``
    lists. MACs are compared only at the paper's own input (one sample); parameters always. ``published`` is None
    for a paper that prints no figures for the model."""

    paper: Paper
    published: Published | None
    macs_compared: bool  # False when the count is at another input than the paper's (or by another counter)
    params: FigureCheck | None
    macs: FigureCheck | None
    flops: FigureCheck | None


def compare_with_paper(
    card: ModelCard, input_size: tuple[int, ...], params: int, macs_per_sample: int | None
) -> PaperComparison | None:
    """The card's published figures against rl's ``params`` and ``macs_per_sample`` (None: not comparable)."""
    if card.paper is None:
        return None
    published = card.published
    if published is None:
        return PaperComparison(card.paper, None, macs_compared=False, params=None, macs=None, flops=None)
    comparable = macs_per_sample is not None and tuple(input_size) == tuple(published.input_size)
    return PaperComparison(
        paper=card.paper,
        published=published,
        macs_compared=comparable,
        params=check_figure(published.params, params),
        macs=check_figure(published.macs, macs_per_sample) if comparable else None,
        flops=check_figure(published.flops, 2 * macs_per_sample) if comparable else None,
    )
