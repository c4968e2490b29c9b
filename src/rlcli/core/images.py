"""Finding, decoding and preprocessing images the way torchvision's evaluation transforms do."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps

from rlcli.errors import RlError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_images(folder: str | Path) -> list[Path]:
    """Image files below ``folder`` (recursive, by extension, case-insensitive), in a stable sorted order."""
    root = Path(folder)
    if not root.is_dir():
        raise RlError(f"not a folder: {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image as 8-bit RGB, upright as the camera's EXIF orientation says.

    16-bit and 32-bit greyscale are scaled to 8 bits; transparent pixels are composited over white (their colour
    values are undefined, and dropping alpha would expose whatever the encoder left there).
    """
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        scale = 1 / 257 if image.mode.startswith("I;16") else 1 / 16843009  # 65535 -> 255, 2**32-1 -> 255
        image = image.point(lambda value: value * scale).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side) -> centre crop -> [0, 1] -> normalise: torchvision's ``ImageClassification``."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        image = F.resize(image, [self.resize], interpolation=InterpolationMode(self.interpolation), antialias=True)
        image = F.center_crop(image, [self.crop])
        tensor = F.convert_image_dtype(F.pil_to_tensor(image), torch.float)
        return F.normalize(tensor, mean=list(self.mean), std=list(self.std))

    @classmethod
    def for_model(cls, spec) -> Preprocess:
        """The evaluation transform of the model's default weights, else the ImageNet one at its input size."""
        if spec.transform:
            keywords = spec.transform
            return cls(
                resize=int(keywords.get("resize_size", 256)),
                crop=int(keywords["crop_size"]),
                mean=tuple(keywords.get("mean", IMAGENET_MEAN)),
                std=tuple(keywords.get("std", IMAGENET_STD)),
                interpolation=str(getattr(keywords.get("interpolation"), "value", "bilinear")),
            )
        return cls.for_crop(spec.default_input[-1])

    @classmethod
    def for_crop(cls, crop: int) -> Preprocess:
        """The standard ImageNet evaluation transform at ``crop`` (resize to crop / 0.875, as for 224 -> 256)."""
        return cls(resize=round(crop / 0.875), crop=crop)


def batches(paths: Iterable[Path], preprocess: Preprocess, batch_size: int) -> Iterator[torch.Tensor]:
    """Decoded, preprocessed images in batches (used where throughput does not matter, e.g. BN statistics)."""
    batch: list[torch.Tensor] = []
    for path in paths:
        try:
            batch.append(preprocess(open_rgb(path)))
        except (OSError, ValueError, SyntaxError) as exc:
            raise RlError(f"{path}: cannot read image ({exc})") from exc
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)
