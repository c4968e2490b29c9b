"""Parsing and describing input sizes. No torch here: the CLI validates sizes before importing it."""

from __future__ import annotations

import math
import re

from rlcli.errors import UsageError

_SIZE = re.compile(r"^\d+(x\d+)*$")

# torch counts a tensor's elements and its bytes in signed 64-bit integers.
_LARGEST = 2**63 - 1


def parse_input_size(text: str, default: tuple[int, ...], *, exact: bool = False) -> tuple[int, ...]:
    """Parse one sample's shape (no batch): ``3x384x384``, or ``384`` for a square image with the default channels.

    Args:
        text: the user's value.
        default: the model's default input size, which fixes how many dimensions are expected.
        exact: take the dimensions exactly as given, however many (a user's own model, whose input rl cannot know);
            otherwise the image shorthands apply and the count must match ``default``'s.

    Example:
        >>> parse_input_size("384", (3, 224, 224))
        (3, 384, 384)
        >>> parse_input_size("16x8", (3, 224, 224), exact=True)
        (16, 8)
    """
    # Sizes pasted from papers use the multiplication sign.
    cleaned = text.strip().lower().replace("\u00d7", "x").replace(",", "x")
    if not _SIZE.match(cleaned):
        raise UsageError(f"invalid input size '{text}': expected e.g. {format_size(default)}")
    dims = tuple(int(part) for part in cleaned.split("x"))
    if any(d <= 0 for d in dims):
        raise UsageError(f"invalid input size '{text}': every dimension must be positive")
    if any(d > _LARGEST for d in dims):
        raise UsageError(f"invalid input size '{text}': too large (a dimension must be below 2^63)")
    if exact:
        return dims
    if len(dims) == 1 and len(default) == 3:
        dims = (default[0], dims[0], dims[0])
    elif len(dims) == 2 and len(default) == 3:
        dims = (default[0], *dims)
    if len(dims) != len(default):
        raise UsageError(
            f"invalid input size '{text}': this model takes {len(default)} dimension{'s' if len(default) > 1 else ''}, "
            f"e.g. {format_size(default)}"
        )
    return dims


def check_tensor_size(shape: tuple[int, ...], element_size: int) -> None:
    """A usage error when no tensor of ``shape`` can exist: its element or byte count overflows 64 bits."""
    elements = math.prod(shape)
    if elements * element_size > _LARGEST:
        raise UsageError(
            f"invalid input size: a {format_size(shape)} input is too large ({elements:.3g} elements of "
            f"{element_size} bytes; a tensor holds at most 2^63 - 1 bytes)"
        )


def format_size(size: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in size)
