"""`rl multilabel`: multi-label recognition with CSRA heads, attention maps, and mAP evaluation.

Checkpoints: the authors' released files (torchvision ResNet keys without ``fc``, heads under
``classifier.multi_head.{i}.head.weight``) or rlcli's self-describing ones. The number of heads, classes and the
ResNet depth are read from the keys; lambda is not stored in the official files, so it comes from --lam, from an
rlcli checkpoint, from a ``_lam0.1_`` part of the file name as the authors name their files, or from the
dataset's official value.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlcli.core.checkpoints import load_checkpoint, load_into
from rlcli.core.devices import resolve_device, resolve_dtype
from rlcli.core.images import ImageBatch, InputProblem, Preprocess
from rlcli.core.meta import build_on_meta
from rlcli.errors import CheckpointError, RlError, UsageError
from rlcli.models.csra import OFFICIAL_LAMBDA, TEMPERATURES, head_count, infer_resnet_depth
from rlcli.tasks.classify import LoadedClassifier, RunOptions, forward_batches

# --- class lists ---------------------------------------------------------------------------------------------

VOC2007 = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# The 80 COCO categories in category-id order (ids 1..90 with gaps), as the COCO-trained heads index them.
COCO = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip

CLASS_LISTS = {"voc2007": VOC2007, "coco": COCO}


def resolve_classes(choice: str | None, count: int, stored: list[str] | None) -> tuple[list[str], str | None]:
    """Class names and the dataset they come from: --classes (built-in name or file), the checkpoint's own, or the
    built-in list whose size matches the head."""
    if choice in CLASS_LISTS:
        names, dataset = list(CLASS_LISTS[choice]), choice
    elif choice is not None:
        from rlcli.tasks.classify import read_class_names

        names, dataset = read_class_names(Path(choice)), None
    elif stored:
        names, dataset = list(stored), None
    else:
        matching = [key for key, names in CLASS_LISTS.items() if len(names) == count]
        dataset = matching[0] if matching else None
        names = list(CLASS_LISTS[dataset]) if dataset else [f"class {i}" for i in range(count)]
    if len(names) != count:
        raise CheckpointError(f"{len(names)} class names for a head with {count} classes")
    return names, dataset


# --- loading -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CSRASettings:
    arch: str
    depth: int
    num_heads: int
    num_classes: int
    lam: float
    lam_source: str


def load_csra(
    weights: str,
    *,
    model: str | None = None,
    lam: float | None = None,
    classes: str | None = None,
    device: str = "auto",
    dtype: str = "float32",
    preprocess: Preprocess | None = None,
) -> tuple[LoadedClassifier, CSRASettings]:
    """A CSRA model from an official or rlcli checkpoint, ready for `forward_batches`.

    Example:
        >>> clf, settings = load_csra("resnet101_voc07_head1_lam0.1_94.7.pth")
        >>> settings.num_heads, settings.lam
        (1, 0.1)
    """
    from rlcli.models.registry import get_spec

    path = Path(weights).expanduser()
    checkpoint = load_checkpoint(path)
    state, info = checkpoint.state_dict, checkpoint.info
    heads = head_count(state)
    if heads == 0:
        found = ", ".join(sorted({k.split(".")[0] for k in state})[:8])
        raise CheckpointError(
            f"{path}: no CSRA heads (expected classifier.multi_head.0.head.weight ...); top-level names: {found}"
        )
    if heads not in TEMPERATURES:
        raise CheckpointError(f"{path}: {heads} heads; CSRA defines 1, 2, 4, 6 or 8")
    head = state["classifier.multi_head.0.head.weight"]
    num_classes = int(head.shape[0])
    depth = infer_resnet_depth(state)
    arch = model or (info.arch if info and info.arch else None) or (f"csra_resnet{depth}" if depth else None)
    if arch is None:
        raise CheckpointError(f"{path}: the backbone is not a torchvision ResNet I recognise: give --model")
    spec = get_spec(arch)
    if spec.family != "csra":
        raise UsageError(f"{arch} is not a CSRA model (rl models csra lists them)")
    names, dataset = resolve_classes(classes, num_classes, info.class_names if info else None)
    chosen_lam, lam_source = _choose_lambda(lam, info, path, dataset)
    net = build_on_meta(lambda: spec.build(num_classes=num_classes, num_heads=heads, lam=chosen_lam))
    load_into(net, state, source=str(path), assign=True)
    target, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    net = net.to(device=target, dtype=torch_dtype).eval().to(memory_format=torch.channels_last)
    if preprocess is None:
        preprocess = Preprocess.for_model(spec)
        if info and info.extra.get("preprocess"):
            preprocess = Preprocess(**info.extra["preprocess"])
    clf = LoadedClassifier(
        arch=arch,
        model=net,
        preprocess=preprocess,
        class_names=names,
        weights=str(path),
        device=target,
        dtype=torch_dtype,
        channels_last=True,
        info=info,
    )
    settings = CSRASettings(arch, net.depth, heads, num_classes, chosen_lam, lam_source)
    return clf, settings


def _choose_lambda(lam: float | None, info, path: Path, dataset: str | None) -> tuple[float, str]:
    if lam is not None:
        if not lam >= 0:
            raise UsageError(f"--lam must be >= 0, not {lam}")
        return lam, "--lam"
    if info and "lam" in info.extra:
        return float(info.extra["lam"]), "checkpoint"
    named = re.search(r"_lam([0-9]*\.?[0-9]+)", path.name)
    if named:
        return float(named.group(1)), "file name"
    if dataset in OFFICIAL_LAMBDA:
        return OFFICIAL_LAMBDA[dataset], f"official value for {dataset}"
    return 0.1, "default"


# --- predictions and attention maps --------------------------------------------------------------------------


@dataclass
class LabelSet:
    path: str
    position: int
    size: tuple[int, int]
    indices: list[int]
    labels: list[str]
    scores: list[float]  # sigmoid of the logits
    all_scores: list[float] = field(repr=False, default_factory=list)
    maps: torch.Tensor | None = field(repr=False, default=None)  # [classes, h, w] when attention maps were asked


@dataclass
class Problem:
    path: str
    position: int
    reason: str


def recognise(
    clf: LoadedClassifier,
    inputs: list[Path | InputProblem],
    *,
    threshold: float = 0.5,
    top_k: int | None = None,
    with_maps: bool = False,
    options: RunOptions | None = None,
) -> Iterator[LabelSet | Problem]:
    """Labels whose sigmoid score is >= ``threshold`` (or the ``top_k`` best), best first, in input order."""
    if not 0 <= threshold <= 1:
        raise UsageError(f"--threshold must be within [0, 1], not {threshold}")
    if top_k is not None and top_k < 1:
        raise UsageError("--top-k must be at least 1")
    forward = clf.model.forward_with_maps if with_maps else None
    for batch, outputs in forward_batches(clf, inputs, options or RunOptions(), forward=forward):
        results: list[LabelSet | Problem] = [Problem(p.path, i, p.reason) for i, p in batch.problems]
        if outputs is not None:
            logits, maps = outputs if with_maps else (outputs, None)
            results.extend(_label_sets(clf, batch, logits.sigmoid(), maps, threshold, top_k))
        yield from sorted(results, key=lambda r: r.position)


def _label_sets(clf, batch: ImageBatch, scores, maps, threshold, top_k) -> Iterator[LabelSet]:
    for row, (position, path, size) in enumerate(zip(batch.positions, batch.paths, batch.sizes, strict=True)):
        ordered = scores[row].argsort(descending=True, stable=True).tolist()
        chosen = ordered[:top_k] if top_k else [i for i in ordered if scores[row, i] >= threshold]
        yield LabelSet(
            path=path,
            position=position,
            size=size,
            indices=chosen,
            labels=[clf.class_names[i] for i in chosen],
            scores=[float(scores[row, i]) for i in chosen],
            all_scores=scores[row].tolist(),
            maps=maps[row] if maps is not None else None,
        )


def write_attention_png(result: LabelSet, folder: Path, max_side: int = 1024) -> Path:
    """One PNG per image: a panel per predicted label, the class's attention map over the (upright) image.

    Panels have the image's size, scaled down so that the longer side is at most ``max_side``; an image with no
    predicted label gets the plain picture. The map is the class score s_j^i, min-max scaled per panel.
    """
    from PIL import Image, ImageDraw

    from rlcli.core.files import atomic_path
    from rlcli.core.images import open_rgb

    image = open_rgb(result.path)
    scale = min(1.0, max_side / max(image.size))
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    image = image.resize(size, Image.BILINEAR)
    panels = [image] if not result.indices else [_overlay(image, result.maps[i]) for i in result.indices]
    sheet = Image.new("RGB", (size[0] * len(panels), size[1]))
    for index, panel in enumerate(panels):
        sheet.paste(panel, (index * size[0], 0))
    draw = ImageDraw.Draw(sheet)
    for index, (label, score) in enumerate(zip(result.labels, result.scores, strict=True)):
        text = f"{label} {score:.2f}"
        x = index * size[0] + 4
        draw.rectangle([x - 2, 2, x + 7 * len(text) + 2, 16], fill=(0, 0, 0))
        draw.text((x, 4), text, fill=(255, 255, 255))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{Path(result.path).stem}_{result.position:05d}.png"
    with atomic_path(target) as temp:
        sheet.save(temp, format="PNG")
    return target


def _overlay(image, score_map: torch.Tensor):
    """The score map upsampled to the image, coloured dark-blue (low) to yellow (high), blended at 50 %."""
    from PIL import Image

    low, high = score_map.min(), score_map.max()
    normalised = (score_map - low) / (high - low) if high > low else torch.zeros_like(score_map)
    upsampled = torch.nn.functional.interpolate(
        normalised[None, None].float(), size=(image.size[1], image.size[0]), mode="bilinear", align_corners=False
    )[0, 0]
    colours = _colour_map(upsampled.clamp(0, 1))
    heat = Image.fromarray((colours * 255).round().to(torch.uint8).numpy())
    return Image.blend(image, heat, 0.5)


def _colour_map(values: torch.Tensor) -> torch.Tensor:
    """A perceptually ordered ramp (dark blue -> teal -> yellow, like viridis) for values in [0, 1]: [H, W, 3]."""
    stops = torch.tensor([[0.27, 0.00, 0.33], [0.23, 0.32, 0.55], [0.13, 0.57, 0.55], [0.37, 0.79, 0.38],
                          [0.99, 0.91, 0.14]])  # fmt: skip
    position = values * (len(stops) - 1)
    lower = position.floor().long().clamp(max=len(stops) - 2)
    weight = (position - lower)[..., None]
    return stops[lower] * (1 - weight) + stops[lower + 1] * weight


# --- evaluation ----------------------------------------------------------------------------------------------


def read_labels(path: Path, class_names: list[str]) -> dict[Path, set[int]]:
    """CSV rows ``image,class,class,...`` -> {resolved image path: positive class indices}.

    Relative image paths are taken relative to the CSV's folder, as dataset lists usually are.
    """
    index = {name: i for i, name in enumerate(class_names)}
    labels: dict[Path, set[int]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for line_number, row in enumerate(csv.reader(handle), start=1):
                cells = [cell.strip() for cell in row]
                if not cells or not cells[0] or cells[0].startswith("#"):
                    continue
                unknown = [c for c in cells[1:] if c and c not in index]
                if unknown:
                    raise RlError(f"{path}:{line_number}: unknown class {unknown[0]!r}")
                image = Path(cells[0])
                image = image if image.is_absolute() else path.parent / image
                labels[image.resolve()] = {index[c] for c in cells[1:] if c}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RlError(f"cannot read labels from {path}: {exc}") from exc
    if not labels:
        raise RlError(f"{path} holds no labelled images")
    return labels


@dataclass
class Evaluation:
    images: int
    threshold: float
    average_precision: dict[str, float | None]  # None: no positive example of the class
    mAP: float
    CP: float
    CR: float
    CF1: float
    OP: float
    OR: float
    OF1: float
    classes_without_positives: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def average_precision(scores: list[float], positives: list[bool]) -> float | None:
    """Non-interpolated AP: the mean, over positives, of the precision at the rank of each positive.

    Tied scores form one step: every image of a tie block is counted before precision is read, so the result does
    not depend on the input order (the same definition as scikit-learn's ``average_precision_score``). Without
    ties it equals the official code's AP. None when there is no positive.
    """
    total_positives = sum(positives)
    if total_positives == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ap, seen, hits, start = 0.0, 0, 0, 0
    while start < len(order):
        end = start
        while end < len(order) and scores[order[end]] == scores[order[start]]:
            end += 1
        block_hits = sum(positives[order[i]] for i in range(start, end))
        seen += end - start
        hits += block_hits
        ap += block_hits * (hits / seen)
        start = end
    return ap / total_positives


def evaluate(
    scores: list[list[float]], truth: list[set[int]], class_names: list[str], threshold: float = 0.5
) -> Evaluation:
    """Per-class AP and mAP, with the paper's precision/recall/F1 at ``threshold``.

    CP and CR average per-class precision and recall (a class with no prediction has precision 0, as in the
    official code); classes with no positive example have no AP or recall and are left out of mAP and CR.
    OP and OR pool all classes' counts. F1 is the harmonic mean of the matching P and R.
    """
    classes = len(class_names)
    aps: dict[str, float | None] = {}
    tp, predicted, positive = [0] * classes, [0] * classes, [0] * classes
    for c in range(classes):
        column = [row[c] for row in scores]
        labels = [c in t for t in truth]
        aps[class_names[c]] = average_precision(column, labels)
        for score, label in zip(column, labels, strict=True):
            predicted[c] += score >= threshold
            positive[c] += label
            tp[c] += label and score >= threshold
    with_positives = [c for c in range(classes) if positive[c]]
    valid = [ap for ap in aps.values() if ap is not None]
    cp = sum(tp[c] / max(predicted[c], 1) for c in range(classes)) / classes
    cr = sum(tp[c] / positive[c] for c in with_positives) / len(with_positives) if with_positives else 0.0
    op = sum(tp) / max(sum(predicted), 1)
    o_r = sum(tp) / sum(positive) if sum(positive) else 0.0
    return Evaluation(
        images=len(scores),
        threshold=threshold,
        average_precision=aps,
        mAP=sum(valid) / len(valid) if valid else math.nan,
        CP=cp,
        CR=cr,
        CF1=_f1(cp, cr),
        OP=op,
        OR=o_r,
        OF1=_f1(op, o_r),
        classes_without_positives=[class_names[c] for c in range(classes) if not positive[c]],
    )


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0
