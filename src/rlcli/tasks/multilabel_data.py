"""Labelled multi-label image sets for `rl multilabel train`: the labels CSV that ``--labels`` reads, a VOC-style
folder (Annotations/*.xml + ImageSets/Main/SPLIT.txt + JPEGImages/), or a COCO-style instances JSON."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from rlcli.errors import RlError, UsageError
from rlcli.tasks.multilabel import DIFFICULT_MARK, VOC2007, Truth, read_labels


@dataclass
class LabelledSet:
    """Images with their ground truth over ``class_names``; ``source`` says where they came from, for messages."""

    class_names: list[str]
    images: list[Path]
    truths: list[Truth]
    source: str

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: list[int], source: str) -> LabelledSet:
        return LabelledSet(
            self.class_names, [self.images[i] for i in indices], [self.truths[i] for i in indices], source
        )


def read_labelled_set(
    source: Path, class_names: list[str] | None = None, *, split: str = "trainval", images: Path | None = None
) -> LabelledSet:
    """One of the three layouts, by what ``source`` is. ``class_names`` fixes the class order (a validation set must
    use the training set's); otherwise the CSV's classes in sorted order, VOC2007's 20 for a VOC folder whose
    objects are all VOC classes, and COCO's categories in id order."""
    if source.is_dir():
        return _read_voc(source, class_names, split)
    if source.suffix.lower() == ".json":
        return _read_coco(source, class_names, images)
    if not source.is_file():
        raise UsageError(f"{source}: no such file or folder")
    names = class_names if class_names is not None else _csv_classes(source)
    labels = read_labels(source, names)
    return LabelledSet(names, list(labels), list(labels.values()), str(source))


def _csv_classes(path: Path) -> list[str]:
    names: set[str] = set()
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                cells = [cell.strip() for cell in row]
                if cells and cells[0] and not cells[0].startswith("#"):
                    names.update(cell.removesuffix(DIFFICULT_MARK).strip() for cell in cells[1:] if cell)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RlError(f"cannot read labels from {path}: {exc}") from exc
    if not names:
        raise RlError(f"{path} names no class")
    return sorted(names)


def _read_voc(folder: Path, class_names: list[str] | None, split: str) -> LabelledSet:
    """PASCAL VOC's layout: the ids of ImageSets/Main/SPLIT.txt, their Annotations/ID.xml objects (``difficult`` 1
    marks a difficult instance) and JPEGImages/ID.jpg."""
    import xml.etree.ElementTree as ElementTree

    list_file = folder / "ImageSets" / "Main" / f"{split}.txt"
    if not (folder / "Annotations").is_dir() or not list_file.is_file():
        raise UsageError(f"{folder} is not a VOC-style folder (needs Annotations/ and ImageSets/Main/{split}.txt)")
    ids = [line.split()[0] for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    objects: list[list[tuple[str, bool]]] = []
    for image_id in ids:
        path = folder / "Annotations" / f"{image_id}.xml"
        try:
            root = ElementTree.parse(path).getroot()
        except (OSError, ElementTree.ParseError) as exc:
            raise RlError(f"cannot read {path}: {exc}") from exc
        objects.append(
            [
                ((o.findtext("name") or "").strip(), (o.findtext("difficult") or "0").strip() == "1")
                for o in root.iter("object")
            ]
        )
    found = {name for found in objects for name, _ in found}
    names = class_names or (list(VOC2007) if found <= set(VOC2007) else sorted(found))
    index = {name: i for i, name in enumerate(names)}
    truths = []
    for image_id, found_objects in zip(ids, objects, strict=True):
        truth = Truth()
        for name, difficult in found_objects:
            if name not in index:
                raise RlError(f"{folder / 'Annotations' / image_id}.xml: unknown class {name!r}")
            (truth.difficult if difficult else truth.positives).add(index[name])
        truth.difficult -= truth.positives  # a class with any plain instance is a positive (VOC's rule)
        truths.append(truth)
    images = [folder / "JPEGImages" / f"{image_id}.jpg" for image_id in ids]
    return LabelledSet(names, images, truths, f"{folder} ({split})")


def _read_coco(path: Path, class_names: list[str] | None, images: Path | None) -> LabelledSet:
    """A COCO instances JSON: an image is labelled with the categories of its annotations (crowd ones included, as
    the usual multi-label COCO conversions do); images without annotations are negatives for every class."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        categories = sorted(document["categories"], key=lambda c: c["id"])
        entries = document["images"]
        annotations = document.get("annotations", [])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise RlError(f"{path} is not a COCO instances file: {exc}") from exc
    names = class_names or [str(c["name"]) for c in categories]
    by_category = {c["id"]: names.index(c["name"]) for c in categories if c["name"] in names}
    truths = {entry["id"]: Truth() for entry in entries}
    for annotation in annotations:
        if annotation["category_id"] in by_category and annotation["image_id"] in truths:
            truths[annotation["image_id"]].positives.add(by_category[annotation["category_id"]])
    root = images or _coco_images_folder(path)
    return LabelledSet(
        names, [root / entry["file_name"] for entry in entries], [truths[e["id"]] for e in entries], str(path)
    )


def _coco_images_folder(path: Path) -> Path:
    """COCO's own layout puts annotations/instances_train2014.json beside train2014/; else the JSON's folder."""
    guess = path.parent.parent / path.stem.split("_", 1)[-1]
    return guess if path.stem.startswith("instances_") and guess.is_dir() else path.parent


def split_off(data: LabelledSet, fraction: float, seed: int) -> tuple[LabelledSet, LabelledSet]:
    """A seeded random ``fraction`` of the images held out for validation (at least one, and one left to train)."""
    if not 0 < fraction < 1:
        raise UsageError(f"--val-fraction must be between 0 and 1, not {fraction}")
    if len(data) < 2:
        raise UsageError(f"{data.source} has {len(data)} image(s): too few to hold some out; give --val")
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    held = min(len(data) - 1, max(1, round(fraction * len(data))))
    return (
        data.subset(sorted(order[held:]), f"{data.source} (training part)"),
        data.subset(sorted(order[:held]), f"{data.source} (held-out {held} images)"),
    )
