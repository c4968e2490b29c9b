"""`rl multilabel`: multi-label recognition with CSRA heads, attention maps, and mAP evaluation.

Checkpoints: the authors' released files (torchvision ResNet keys without ``fc``, or the official ViT-CSRA's keys;
heads under ``classifier.multi_head.{i}.head.weight``) or rlcli's self-describing ones. The number of heads, classes,
the ResNet depth or ViT variant and its input side are read from the keys; lambda is not stored in the official
files, so it comes from --lam, from an rlcli checkpoint, from a ``_lam0.1_`` part of the file name as the authors
name their files, or from the dataset's official value.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rlcli.core.checkpoints import load_checkpoint
from rlcli.core.devices import resolve_device, resolve_dtype
from rlcli.core.images import ImageBatch
from rlcli.core.inference import InferenceModel, RunOptions, forward_batches
from rlcli.core.inputs import Input, Problem
from rlcli.errors import CheckpointError, RlError, UsageError
from rlcli.models.heads.csra import (
    OFFICIAL_LAMBDA,
    TEMPERATURES,
    WIDER_ATTRIBUTES,
    head_count,
    infer_resnet_depth,
    infer_vit_variant,
    official_preprocess,
)
from rlcli.tasks.classify import Classifier

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

CLASS_LISTS = {"voc2007": VOC2007, "coco": COCO, "wider": WIDER_ATTRIBUTES}


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
    depth: int | None  # a ResNet backbone's depth (None for other backbones)
    num_heads: int
    num_classes: int
    lam: float
    lam_source: str
    input_side: int | None = None  # the one input side the backbone takes (a ViT's), None when any side works
    thresholds: tuple[float, ...] | None = None  # per-class thresholds stored in the checkpoint (tuned)


def load_csra(
    weights: str,
    *,
    model: str | None = None,
    lam: float | None = None,
    classes: str | None = None,
    device: str = "auto",
    dtype: str = "float32",
) -> tuple[Classifier, CSRASettings]:
    """A CSRA model from an official or rlcli checkpoint, ready for the shared runner.

    Example:
        >>> clf, settings = load_csra("resnet101_voc07_head1_lam0.1_94.7.pth")
        >>> settings.num_heads, settings.lam
        (1, 0.1)
    """
    from rlcli.models.loading import architecture_of, build_with_weights, preprocess_for

    path = Path(weights).expanduser()
    checkpoint = load_checkpoint(path)
    state, info, source = checkpoint.state_dict, checkpoint.info, str(path)
    heads = head_count(state)
    if heads == 0:
        found = ", ".join(sorted({k.split(".")[0] for k in state})[:8])
        raise CheckpointError(
            f"{path}: no CSRA heads (expected classifier.multi_head.0.head.weight ...); top-level names: {found}"
        )
    if heads not in TEMPERATURES:
        raise CheckpointError(f"{path}: {heads} heads; CSRA defines 1, 2, 4, 6 or 8")
    num_classes = int(state["classifier.multi_head.0.head.weight"].shape[0])

    def by_keys() -> str | None:
        if "pos_embed" in state:
            variant = infer_vit_variant(state)
            if variant is None:
                raise CheckpointError(f"{path}: a ViT that is neither ViT-B/16 nor ViT-L/16: give --model")
            return f"csra_vit_{variant}"
        depth = infer_resnet_depth(state)
        if depth is None:
            raise CheckpointError(f"{path}: the backbone is not a torchvision ResNet I recognise: give --model")
        return f"csra_resnet{depth}"

    spec = architecture_of(model, info, source, guess=by_keys)
    if spec.card.family != "csra":
        raise UsageError(f"{spec.card.name} is not a CSRA model (rl models csra lists them)")
    names, dataset = resolve_classes(classes, num_classes, info.class_names if info else None)
    chosen_lam, lam_source = _choose_lambda(lam, info, path, dataset)
    inferred = {"num_classes": num_classes, "num_heads": heads}
    net = build_with_weights(spec, state, info, source, inferred=inferred, overrides={"lam": chosen_lam})
    side = getattr(net, "grid", None) and net.grid * 16
    stored_preprocess = info is not None and info.extra.get("preprocess") is not None
    preprocess = (None if stored_preprocess else official_preprocess(dataset, side)) or preprocess_for(
        spec, info, source
    )
    if side and preprocess.crop != side:
        preprocess = replace(preprocess, resize=side, crop=side)
    runner = InferenceModel.prepare(
        spec.card.name,
        net,
        preprocess,
        device=resolve_device(device),
        dtype=resolve_dtype(dtype),
        channels_last=spec.card.channels_last,
    )
    depth = getattr(net, "depth", None)
    thresholds = _stored_thresholds(info, names, path)
    settings = CSRASettings(spec.card.name, depth, heads, num_classes, net.lam, lam_source, side or None, thresholds)
    return Classifier(runner=runner, class_names=names, weights=source, info=info), settings


def _stored_thresholds(info, names: list[str], path: Path) -> tuple[float, ...] | None:
    stored = info.extra.get("thresholds") if info else None
    if stored is None:
        return None
    if not isinstance(stored, dict) or set(stored) != set(names):
        raise CheckpointError(f"{path}: its stored thresholds do not name each of its classes once")
    values = [stored[name] for name in names]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
        raise CheckpointError(f"{path}: its stored thresholds are not all numbers within [0, 1]")
    return tuple(float(v) for v in values)


def save_with_thresholds(
    weights: str, output: Path, clf: Classifier, settings: CSRASettings, thresholds: list[float], force: bool
):
    """A copy of the checkpoint ``weights`` as a self-describing rl checkpoint with these per-class thresholds (the
    authors' files gain their architecture, heads, lambda, classes and preprocessing on the way)."""
    from rlcli.core.checkpoints import CheckpointInfo, save_checkpoint

    checkpoint = load_checkpoint(Path(weights).expanduser())
    info = checkpoint.info or CheckpointInfo()
    model_args = {"num_classes": settings.num_classes, "num_heads": settings.num_heads, "lam": settings.lam}
    if settings.input_side and "image_size" in _accepted(settings.arch):
        model_args["image_size"] = settings.input_side
    info = CheckpointInfo(
        arch=settings.arch,
        model_args={**info.model_args, **model_args} if info.arch == settings.arch else model_args,
        class_names=list(clf.class_names),
        extra={
            **info.extra,
            "preprocess": clf.runner.preprocess.to_mapping(),
            "lam": settings.lam,
            "thresholds": dict(zip(clf.class_names, thresholds, strict=True)),
        },
    )
    return save_checkpoint(output, checkpoint.state_dict, info, overwrite=force)


def _accepted(arch: str) -> dict:
    from rlcli.models.registry import get_spec

    return get_spec(arch).accepted_arguments()


def _choose_lambda(lam: float | None, info, path: Path, dataset: str | None) -> tuple[float, str]:
    if lam is not None:
        if not (math.isfinite(lam) and lam >= 0):
            raise UsageError(f"--lam must be a finite number >= 0, not {lam}")
        return lam, "--lam"
    stored = info.model_args.get("lam", info.extra.get("lam")) if info else None
    if stored is not None:
        if isinstance(stored, bool) or not isinstance(stored, (int, float)) or not math.isfinite(stored) or stored < 0:
            raise CheckpointError(f"{path}: its stored lambda is not a finite number >= 0 ({stored!r})")
        return float(stored), "checkpoint"
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


Thresholds = float | list[float]  # one for every class, or one per class


def check_selection(threshold: float | None, top_k: int | None) -> None:
    """Usage errors for a label selection that cannot mean anything (checked before the model loads)."""
    if threshold is not None and not 0 <= threshold <= 1:  # also false for nan
        raise UsageError(f"--threshold must be within [0, 1], not {threshold}")
    if top_k is not None and top_k < 1:
        raise UsageError("--top-k must be at least 1")


def recognise(
    clf: Classifier,
    inputs: list[Input],
    *,
    threshold: Thresholds = 0.5,
    top_k: int | None = None,
    with_maps: bool = False,
    options: RunOptions | None = None,
) -> Iterator[LabelSet | Problem]:
    """Labels whose sigmoid score is >= ``threshold`` (or their class's, given one per class; or the ``top_k``
    best), best first, in input order."""
    check_selection(threshold if isinstance(threshold, (int, float)) else None, top_k)
    forward = clf.runner.model.forward_with_maps if with_maps else None
    for batch, outputs in forward_batches(clf.runner, inputs, options or RunOptions(), forward=forward):
        results: list[LabelSet | Problem] = list(batch.problems)
        if outputs is not None:
            logits, maps = outputs if with_maps else (outputs, None)
            results.extend(label_sets(clf, batch, logits.sigmoid(), maps, threshold, top_k))
        yield from sorted(results, key=lambda r: r.position)


def _of_class(threshold: Thresholds, c: int) -> float:
    return threshold if isinstance(threshold, (int, float)) else threshold[c]


def label_sets(clf, batch: ImageBatch, scores, maps, threshold, top_k) -> Iterator[LabelSet]:
    """Each image's labels from its class scores: the top_k, else every class at or above its threshold."""
    for row, (position, path, size) in enumerate(zip(batch.positions, batch.paths, batch.sizes, strict=True)):
        ordered = scores[row].argsort(descending=True, stable=True).tolist()
        chosen = ordered[:top_k] if top_k else [i for i in ordered if scores[row, i] >= _of_class(threshold, i)]
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

# In a labels file, a class name followed by this marks the class as "difficult" in that image (all its instances
# are), which VOC2007's official evaluation leaves out of that class's figures.
DIFFICULT_MARK = "?"


@dataclass
class Truth:
    """An image's ground truth: positive classes, and classes present only as difficult instances."""

    positives: set[int] = field(default_factory=set)
    difficult: set[int] = field(default_factory=set)

    def merge(self, other: Truth) -> None:
        self.positives |= other.positives
        # As VOC's annotation tools decide: a class with any non-difficult instance is a plain positive.
        self.difficult = (self.difficult | other.difficult) - self.positives


def read_labels(path: Path, class_names: list[str]) -> dict[Path, Truth]:
    """CSV rows ``image,class,class?,...`` -> {resolved image path: Truth}.

    Relative image paths are taken relative to the CSV's folder, as dataset lists usually are. A class followed by
    ``?`` is difficult in that image. An image on several rows gets the union of their labels (files that list
    one label per row are common).
    """
    labels: dict[Path, Truth] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for line_number, row in enumerate(csv.reader(handle), start=1):
                cells = [cell.strip() for cell in row]
                if not cells or not cells[0] or cells[0].startswith("#"):
                    continue
                truth = _truth_of(cells[1:], class_names, f"{path}:{line_number}")
                image = Path(cells[0])
                image = (image if image.is_absolute() else path.parent / image).resolve()
                labels.setdefault(image, Truth()).merge(truth)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RlError(f"cannot read labels from {path}: {exc}") from exc
    if not labels:
        raise RlError(f"{path} holds no labelled images")
    return labels


def _truth_of(cells: list[str], class_names: list[str], where: str) -> Truth:
    index = {name: i for i, name in enumerate(class_names)}
    truth = Truth()
    for cell in filter(None, cells):
        if cell in index:
            truth.positives.add(index[cell])
        elif cell.endswith(DIFFICULT_MARK) and cell[:-1].strip() in index:
            truth.difficult.add(index[cell[:-1].strip()])
        else:
            raise RlError(f"{where}: unknown class {cell!r}")
    truth.difficult -= truth.positives
    return truth


@dataclass
class Evaluation:
    images: int
    threshold: float | dict[str, float]  # one for all classes, or each class's own
    average_precision: dict[str, float | None]  # None: no positive example of the class
    mAP: float
    CP: float
    CR: float
    CF1: float
    OP: float
    OR: float
    OF1: float
    classes_evaluated: list[str]  # the classes that mAP, CP and CR average over
    classes_without_positives: list[str]
    difficult_excluded: int  # (image, class) pairs left out as difficult

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


@dataclass
class _ClassCounts:
    ap: float | None
    true_positives: int
    predicted: int
    positives: int


def _count_class(c: int, scores: list[list[float]], truths: list[Truth], threshold: Thresholds) -> _ClassCounts:
    """One class's AP and counts at ``threshold``, over the images where the class is not difficult."""
    kept = [
        (row[c], c in truth.positives) for row, truth in zip(scores, truths, strict=True) if c not in truth.difficult
    ]
    column, labels = [score for score, _ in kept], [label for _, label in kept]
    predicted = [score >= _of_class(threshold, c) for score in column]
    return _ClassCounts(
        ap=average_precision(column, labels),
        true_positives=sum(p and label for p, label in zip(predicted, labels, strict=True)),
        predicted=sum(predicted),
        positives=sum(labels),
    )


def evaluate(
    scores: list[list[float]], truths: list[Truth], class_names: list[str], threshold: Thresholds = 0.5
) -> Evaluation:
    """Per-class AP and mAP, with the paper's precision/recall/F1 at ``threshold``, as the official code computes
    them (``utils/evaluation/cal_PR.py`` and ``cal_mAP.py`` of the CSRA repository).

    One class set for every per-class average: the classes with at least one positive example. On a full test set
    that is every class and the figures equal the official ones; on a subset the official code would divide by
    zero for the others. OP and OR pool the counts of every class, so false alarms of absent classes count there;
    OP divides by the predictions actually made (the official code counts a never-predicted class as one
    prediction there, a side effect of its guard against dividing by zero in CP). A class difficult in an image is
    left out of that class's figures for that image (VOC2007's rule).
    """
    counts = [_count_class(c, scores, truths, threshold) for c in range(len(class_names))]
    evaluated = [c for c, n in enumerate(counts) if n.positives]
    # The official code counts a class that was never predicted as precision 0 (it divides by max(predicted, 1)).
    cp = _mean([counts[c].true_positives / max(counts[c].predicted, 1) for c in evaluated])
    cr = _mean([counts[c].true_positives / counts[c].positives for c in evaluated])
    tp = sum(n.true_positives for n in counts)
    predicted = sum(n.predicted for n in counts)
    positives = sum(n.positives for n in counts)
    op = tp / max(predicted, 1)
    o_r = tp / positives if positives else 0.0
    return Evaluation(
        images=len(scores),
        threshold=threshold if isinstance(threshold, (int, float)) else dict(zip(class_names, threshold, strict=True)),
        average_precision={name: n.ap for name, n in zip(class_names, counts, strict=True)},
        mAP=_mean([counts[c].ap for c in evaluated]),
        CP=cp,
        CR=cr,
        CF1=_f1(cp, cr),
        OP=op,
        OR=o_r,
        OF1=_f1(op, o_r),
        classes_evaluated=[class_names[c] for c in evaluated],
        classes_without_positives=[class_names[c] for c, n in enumerate(counts) if not n.positives],
        difficult_excluded=sum(len(t.difficult) for t in truths),
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


# --- per-class thresholds ------------------------------------------------------------------------------------


def class_f1(scores: list[list[float]], truths: list[Truth], c: int, threshold: float) -> float | None:
    """Class ``c``'s F1 at ``threshold`` over the images where it is not difficult; None without a positive."""
    counts = _count_class(c, scores, truths, threshold)
    if not counts.positives:
        return None
    return 2 * counts.true_positives / (counts.predicted + counts.positives)


@dataclass
class TunedThreshold:
    name: str
    threshold: float
    f1: float | None  # on the tuning set, at the new threshold
    previous_threshold: float
    previous_f1: float | None


def tune_thresholds(
    scores: list[list[float]], truths: list[Truth], class_names: list[str], current: Thresholds = 0.5
) -> list[TunedThreshold]:
    """Each class's threshold for the best F1 on this set; a class keeps its current threshold when no other does
    better (so no class's F1 goes down) and when it has no positive example. A new threshold lies halfway between
    the lowest score it accepts and the next lower one, so that it selects exactly the images that won on this set."""
    tuned = []
    for c, name in enumerate(class_names):
        previous = _of_class(current, c)
        before = class_f1(scores, truths, c, previous)
        best, best_f1 = previous, before
        if before is not None:
            pairs = [(row[c], c in t.positives) for row, t in zip(scores, truths, strict=True) if c not in t.difficult]
            for candidate, lower, f1 in _f1_sweep(pairs):
                if f1 > best_f1:
                    middle = (lower + candidate) / 2
                    best, best_f1 = (middle if lower < middle < candidate else candidate), f1
        tuned.append(TunedThreshold(name, best, best_f1, previous, before))
    return tuned


def _f1_sweep(pairs: list[tuple[float, bool]]) -> Iterator[tuple[float, float, float]]:
    """For each distinct score s, highest first: (s, the next lower score or 0, F1 when predicting score >= s)."""
    positives = sum(label for _, label in pairs)
    ordered = sorted(pairs, key=lambda pair: -pair[0])
    hits = seen = 0
    for index, (score, label) in enumerate(ordered):
        hits, seen = hits + label, seen + 1
        following = ordered[index + 1][0] if index + 1 < len(ordered) else None
        if following == score:
            continue  # tied scores are accepted together
        yield score, following if following is not None else 0.0, 2 * hits / (seen + positives)
