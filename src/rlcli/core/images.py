"""Decoding and preprocessing images the way torchvision's evaluation transforms do, in batches."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps

from rlcli.core.inputs import Input, Problem

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_rgb(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Decode an image as 8-bit RGB, upright as the camera's EXIF orientation says.

    16-bit greyscale is scaled to 8 bits; transparent pixels are composited over white (their colour values are
    undefined, and dropping alpha would expose whatever the encoder left there). Exact by default. With
    ``draft_size`` (the opt-in fast path), a JPEG whose shorter side is at least twice that is decoded at a reduced
    DCT scale that keeps it at least twice that size: several times faster for camera photos, but the pixels differ
    slightly from a full decode (the README gives the measured difference).
    """
    with warnings.catch_warnings():
        # Large photos are what rl is asked to read; Pillow's bomb warning would only be noise on stderr. Images
        # beyond twice its limit still fail (DecompressionBombError), as a problem of that one file.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            if draft_size and image.format == "JPEG" and min(image.size) >= 2 * draft_size:
                image.draft(image.mode, (2 * draft_size, 2 * draft_size))
            image.load()
            image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit_grey(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    """16-bit (I;16*, and I as 16-bit PNGs open) and float greyscale to 8 bits, full range to full range."""
    import numpy as np

    values = np.asarray(image).astype(np.float64)
    peak = 65535.0
    if image.mode == "F":
        peak = 1.0 if values.max(initial=0) <= 1.0 else 255.0
    scaled = np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
MAX_SIDE = 1 << 16  # resize and crop sides beyond this are typos, not images (65,536 px is beyond any sensor)


@dataclass(frozen=True)
class Preprocess:
    """Resize (shorter side) -> centre crop -> [0, 1] -> normalise: torchvision's ``ImageClassification``."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    square: bool = False  # resize to resize x resize, ignoring the aspect ratio (CSRA's official evaluation)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        size = [self.resize, self.resize] if self.square else [self.resize]
        image = F.resize(image, size, interpolation=InterpolationMode(self.interpolation), antialias=True)
        image = F.center_crop(image, [self.crop])
        tensor = F.convert_image_dtype(F.pil_to_tensor(image), torch.float)
        return F.normalize(tensor, mean=list(self.mean), std=list(self.std))

    def problem(self) -> str | None:
        """What is wrong with these settings, in words, or None: every source of settings is checked the same way."""
        for name in ("crop", "resize"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
                return f"{name} must be a whole number of pixels from 1 to {MAX_SIDE}, not {value!r}"
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != 3 or not all(_is_finite_number(v) for v in values):
                return f"{name} must be three finite numbers (one per channel), not {values!r}"
        if any(v <= 0 for v in self.std):
            return f"std must be positive (it divides the pixels), not {self.std!r}"
        if self.interpolation not in INTERPOLATIONS:
            return f"interpolation must be one of {', '.join(INTERPOLATIONS)}, not {self.interpolation!r}"
        if not isinstance(self.square, bool):
            return f"square must be true or false, not {self.square!r}"
        return None

    @classmethod
    def from_mapping(cls, data: object) -> Preprocess:
        """Settings stored as JSON (a checkpoint's ``preprocess``); ValueError says what is wrong with them."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping of settings, not {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown setting {unknown[0]!r}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        preprocess = cls(**values)
        problem = preprocess.problem()
        if problem:
            raise ValueError(problem)
        return preprocess

    def to_mapping(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def for_crop(cls, crop: int) -> Preprocess:
        """The standard ImageNet evaluation transform at ``crop`` (resize to crop / 0.875, as for 224 -> 256)."""
        return cls(resize=round(crop / 0.875), crop=crop)

    @classmethod
    def from_torchvision(cls, weights) -> Preprocess:
        """What torchvision's ``weights.transforms()`` does (``ImageClassification`` with the weights' arguments)."""
        keywords = weights.transforms.keywords
        interpolation = keywords.get("interpolation")
        return cls(
            resize=int(keywords.get("resize_size", 256)),
            crop=int(keywords["crop_size"]),
            mean=tuple(keywords.get("mean", IMAGENET_MEAN)),
            std=tuple(keywords.get("std", IMAGENET_STD)),
            interpolation=str(getattr(interpolation, "value", "bilinear")),
        )

    def batch_bytes(self, batch_size: int) -> int:
        """Bytes of one batch of preprocessed float32 pixels."""
        return batch_size * 3 * self.crop * self.crop * 4


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- batches -------------------------------------------------------------------------------------------------


@dataclass
class ImageBatch:
    """Decoded images of one batch (input order) and the inputs of that stretch that could not be read."""

    positions: list[int]  # index of each image in the input list
    paths: list[str]
    sizes: list[tuple[int, int]]  # (width, height) of each decoded, upright image
    pixels: torch.Tensor | None  # [n, 3, H, W], None when every input of the stretch failed
    problems: list[Problem]


class ImageDataset(torch.utils.data.Dataset):
    """Inputs decoded and preprocessed one by one (a DataLoader's workers, or Ray Data's decoding tasks)."""

    def __init__(self, inputs: list[Input], preprocess: Preprocess, draft: bool) -> None:
        self.inputs, self.preprocess, self.draft = inputs, preprocess, draft

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int):
        item = self.inputs[index]
        if isinstance(item, Problem):
            return index, Problem(item.path, item.reason, index), None, None
        try:
            image = open_rgb(item, self.preprocess.resize if self.draft else None)
            return index, str(item), image.size, self.preprocess(image)
        except Exception as exc:  # any decoder failure is this one file's problem, never the batch's
            return index, Problem(str(item), describe_image_error(exc), index), None, None


def describe_image_error(exc: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(exc, Image.DecompressionBombError):
        return f"too large to decode safely ({exc})"
    if isinstance(exc, IsADirectoryError):
        return "is a folder"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return f"truncated or corrupt image data ({exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() if exc.strerror[:1].isupper() else exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _collate(items) -> ImageBatch:
    good = [(i, p, s, t) for i, p, s, t in items if t is not None]
    return ImageBatch(
        positions=[i for i, *_ in good],
        paths=[p for _, p, _, _ in good],
        sizes=[s for _, _, s, _ in good],
        pixels=torch.stack([t for *_, t in good]) if good else None,
        problems=[p for _, p, _, t in items if t is None],
    )


def image_batches(
    inputs: list[Input], preprocess: Preprocess, *, batch_size: int, workers: int, draft: bool = False
) -> Iterator[ImageBatch]:
    """Decode and preprocess in ``workers`` processes while the caller runs the model; batches come in input order.

    Memory stays flat: at most ``2 x workers`` batches are decoded ahead of the one in use.
    """
    loader = torch.utils.data.DataLoader(
        ImageDataset(inputs, preprocess, draft),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False,
    )
    with warnings.catch_warnings():
        # More workers than cores is the user's explicit choice (--workers); torch's advice would only add noise.
        warnings.filterwarnings("ignore", message=".*worker processes in total.*")
        yield from loader
