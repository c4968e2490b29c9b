"""Generated images: coloured shapes for a model trained in the tests, and files in awkward formats."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {"circle": (220, 30, 30), "square": (30, 160, 40), "triangle": (30, 60, 220)}


def draw_shape(shape: str, size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    extent = rng.randint(size // 3, size // 2)
    x, y = rng.randint(0, size - extent), rng.randint(0, size - extent)
    colour = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in COLOURS[shape])
    if shape == "circle":
        draw.ellipse([x, y, x + extent, y + extent], fill=colour)
    elif shape == "square":
        draw.rectangle([x, y, x + extent, y + extent], fill=colour)
    else:
        draw.polygon([(x + extent / 2, y), (x, y + extent), (x + extent, y + extent)], fill=colour)
    return image


def write_shapes(folder: Path, per_class: int, seed: int, size: int = 48) -> list[tuple[Path, str]]:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for shape in SHAPES:
        for index in range(per_class):
            path = folder / f"{shape}_{index}.png"
            draw_shape(shape, size, rng).save(path)
            written.append((path, shape))
    return written
