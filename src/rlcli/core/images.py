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


def open_rgb(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Decode an image as 8-bit RGB, upright as the camera's EXIF orientation says.

    16-bit greyscale is scaled to 8 bits; transparent pixels are composited over white (their colour values are
    undefined, and dropping alpha would expose whatever the encoder left there). With ``draft_size``, a JPEG whose
    shorter side is at least twice that is decoded at a reduced DCT scale that keeps it at least twice that size:
    several times faster for camera photos, and the antialiased resize that follows sees the same picture.
    """
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
                square=bool(keywords.get("square", False)),
            )
        return cls.for_crop(spec.default_input[-1])

    @classmethod
    def for_crop(cls, crop: int) -> Preprocess:
        """The standard ImageNet evaluation transform at ``crop`` (resize to crop / 0.875, as for 224 -> 256)."""
        return cls(resize=round(crop / 0.875), crop=crop)


# --- inputs and batches --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputProblem:
    path: str
    reason: str


def expand_inputs(arguments: Iterable[str], stdin_lines: Iterable[str] | None = None) -> list[Path | InputProblem]:
    """Files as given, folders walked recursively (image extensions only), globs expanded, ``-`` read from stdin
    (one path per line). Order is kept; a path that does not exist becomes an InputProblem, not an exception."""
    import glob

    expanded: list[Path | InputProblem] = []
    for argument in arguments:
        if argument == "-":
            lines = stdin_lines if stdin_lines is not None else []
            expanded.extend(expand_inputs([line.rstrip("\n") for line in lines if line.strip()]))
            continue
        path = Path(argument)
        if path.is_dir():
            expanded.extend(find_images(path))
        elif path.exists():
            expanded.append(path)
        elif any(ch in argument for ch in "*?["):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                expanded.append(InputProblem(argument, "no file matches this pattern"))
            expanded.extend(expand_inputs(matches))
        else:
            expanded.append(InputProblem(argument, "no such file or folder"))
    return expanded


@dataclass
class ImageBatch:
    """Decoded images of one batch (input order) and the inputs of that stretch that could not be read."""

    positions: list[int]  # index of each image in the input list
    paths: list[str]
    sizes: list[tuple[int, int]]  # (width, height) of each decoded, upright image
    pixels: torch.Tensor | None  # [n, 3, H, W], None when every input of the stretch failed
    problems: list[tuple[int, InputProblem]]


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, inputs: list[Path | InputProblem], preprocess: Preprocess, draft: bool) -> None:
        self.inputs, self.preprocess, self.draft = inputs, preprocess, draft

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int):
        item = self.inputs[index]
        if isinstance(item, InputProblem):
            return index, item, None, None
        try:
            image = open_rgb(item, self.preprocess.resize if self.draft else None)
            return index, str(item), image.size, self.preprocess(image)
        except Exception as exc:  # any decoder failure is this one file's problem, never the batch's
            return index, InputProblem(str(item), describe_image_error(exc)), None, None


def describe_image_error(exc: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return f"truncated or corrupt image data ({exc})"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return f"{type(exc).__name__}: {exc}"


def _collate(items) -> ImageBatch:
    good = [(i, p, s, t) for i, p, s, t in items if t is not None]
    return ImageBatch(
        positions=[i for i, *_ in good],
        paths=[p for _, p, _, _ in good],
        sizes=[s for _, _, s, _ in good],
        pixels=torch.stack([t for *_, t in good]) if good else None,
        problems=[(i, p) for i, p, _, t in items if t is None],
    )


def image_batches(
    inputs: list[Path | InputProblem], preprocess: Preprocess, *, batch_size: int, workers: int, draft: bool = True
) -> Iterator[ImageBatch]:
    """Decode and preprocess in ``workers`` processes while the caller runs the model; batches come in input order.

    Memory stays flat: at most ``2 x workers`` batches are decoded ahead of the one in use.
    """
    import warnings

    loader = torch.utils.data.DataLoader(
        _ImageDataset(inputs, preprocess, draft),
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


def batches(paths: Iterable[Path], preprocess: Preprocess, batch_size: int, workers: int = 0) -> Iterator[torch.Tensor]:
    """Pixel batches from the same pipeline, for jobs where every image must count (BatchNorm statistics): full
    decodes, and an unreadable image is an error rather than a skipped row."""
    for batch in image_batches(list(paths), preprocess, batch_size=batch_size, workers=workers, draft=False):
        if batch.problems:
            _, problem = batch.problems[0]
            raise RlError(f"{problem.path}: {problem.reason}")
        if batch.pixels is not None:
            yield batch.pixels
