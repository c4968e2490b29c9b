"""Generated multi-label images: a few coloured shapes per picture, at random places, with their boxes."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

# class -> (shape, colour)
CLASSES = {
    "red_circle": ("circle", (215, 40, 40)),
    "green_square": ("square", (40, 170, 60)),
    "blue_triangle": ("triangle", (40, 70, 220)),
    "yellow_bar": ("bar", (230, 200, 30)),
}


def draw_scene(rng: random.Random, size: int = 64) -> tuple[Image.Image, dict[str, tuple[int, int, int, int]]]:
    """An image with one to three of the classes, each once, in distinct quadrants (jittered): returns the image and
    each class's box (x0, y0, x1, y1)."""
    image = Image.new("RGB", (size, size), tuple(rng.randint(200, 250) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    present = rng.sample(sorted(CLASSES), rng.randint(1, 3))
    quadrants = rng.sample([(0, 0), (1, 0), (0, 1), (1, 1)], len(present))
    boxes = {}
    half = size // 2
    for name, (qx, qy) in zip(present, quadrants, strict=True):
        shape, colour = CLASSES[name]
        extent = rng.randint(size // 5, size // 3)
        x0 = qx * half + rng.randint(0, half - extent)
        y0 = qy * half + rng.randint(0, half - extent)
        x1, y1 = x0 + extent, y0 + extent
        fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in colour)
        if shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        elif shape == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
        else:
            y0, y1 = (y0 + y1) // 2 - extent // 5, (y0 + y1) // 2 + extent // 5
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        boxes[name] = (x0, y0, x1, y1)
    return image, boxes


def write_scenes(folder: Path, count: int, seed: int, csv_name: str = "labels.csv") -> tuple[Path, list[dict]]:
    """``count`` scenes as PNGs in ``folder`` and a labels CSV naming each image's classes; returns the CSV and the
    boxes of each image."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, boxes = [], []
    for index in range(count):
        image, found = draw_scene(rng)
        name = f"scene_{seed}_{index:04d}.png"
        image.save(folder / name)
        rows.append(",".join([name, *sorted(found)]))
        boxes.append(found)
    labels = folder / csv_name
    labels.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return labels, boxes
