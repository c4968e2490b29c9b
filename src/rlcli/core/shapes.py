"""Parsing and describing input sizes. No torch here: the CLI validates sizes before importing it."""

from __future__ import annotations

import re

from rlcli.errors import UsageError

_SIZE = re.compile(r"^\d+(x\d+)*$")


def parse_input_size(text: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """Parse ``3x384x384`` (or ``384`` for a square image with the default channels; ``128`` tokens).

    Args:
        text: the user's value.
        default: the model's default input size, which fixes how many dimensions are expected.

    Example:
        >>> parse_input_size("384", (3, 224, 224))
        (3, 384, 384)
    """
    # Sizes pasted from papers use the multiplication sign.
    cleaned = text.strip().lower().replace("\u00d7", "x").replace(",", "x")
    if not _SIZE.match(cleaned):
        raise UsageError(f"invalid input size '{text}': expected e.g. {format_size(default)}")
    dims = tuple(int(part) for part in cleaned.split("x"))
    if any(d <= 0 for d in dims):
        raise UsageError(f"invalid input size '{text}': every dimension must be positive")
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


def format_size(size: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in size)
