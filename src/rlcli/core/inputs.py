"""Turning command-line arguments into input files: one expander for every command that reads many files.

Files are taken as given, folders are searched for the wanted suffixes, quoted globs are expanded, and ``-`` reads
one path per line from stdin. Order is the user's, and within a folder or a glob it is natural (``epoch_2`` before
``epoch_10``). Whatever cannot be read becomes a ``Problem`` in its place instead of an exception, so that one bad
argument or one unreadable sub-folder never stops the others.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """An input that could not be used, with the reason in words; ``position`` is its place in the input list."""

    path: str
    reason: str
    position: int = -1


Input = Path | Problem

_DIGITS = re.compile(r"(\d+)")


def natural_key(path: Path | str) -> tuple:
    """Sort key that orders digit runs by value: ``epoch_2.pt`` before ``epoch_10.pt``, as people number files."""
    parts = _DIGITS.split(str(path))
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts)


def expand_inputs(
    arguments: Iterable[str],
    *,
    suffixes: frozenset[str],
    stdin_lines: Iterable[str] | None = None,
    recursive: bool = True,
    what: str = "files",
) -> list[Input]:
    """Paths and problems, in order, for ``arguments``.

    Args:
        arguments: files, folders, quoted globs, and ``-`` for paths read from ``stdin_lines``.
        suffixes: lower-case suffixes that a folder's files must have to be taken (files named directly are
            always taken).
        recursive: search sub-folders too.
        what: what the files are, for messages ("images", "checkpoints").

    Example:
        >>> expand_inputs(["photos/", "extra.jpg"], suffixes=frozenset({".jpg"}))
        [PosixPath('photos/a.jpg'), PosixPath('photos/b/c.jpg'), PosixPath('extra.jpg')]
    """
    found: list[Input] = []
    for argument in arguments:
        if argument == "-":
            found.extend(_from_stdin(stdin_lines, suffixes, recursive, what))
        else:
            found.extend(_expand_one(argument, suffixes, recursive, what))
    return [_placed(item, position) for position, item in enumerate(found)]


def _placed(item: Input, position: int) -> Input:
    return Problem(item.path, item.reason, position) if isinstance(item, Problem) else item


def _from_stdin(lines: Iterable[str] | None, suffixes, recursive: bool, what: str) -> list[Input]:
    # Windows-made lists end their lines in CRLF; a path never legitimately ends in a carriage return.
    paths = [line.rstrip("\r\n") for line in (lines or [])]
    paths = [p for p in paths if p.strip()]
    if not paths:
        return [Problem("-", "no paths on standard input")]
    found: list[Input] = []
    for path in paths:
        found.extend(_expand_one(path, suffixes, recursive, what, glob_allowed=False))
    return found


def _expand_one(argument: str, suffixes, recursive: bool, what: str, glob_allowed: bool = True) -> list[Input]:
    path = Path(argument)
    if path.is_dir():
        found = _walk_folder(path, suffixes, recursive)
        if not found:
            return [Problem(argument, f"no {what} in this folder ({', '.join(sorted(suffixes))})")]
        return found
    if path.exists() or os.path.lexists(path):
        return [path]
    if glob_allowed and any(ch in argument for ch in "*?["):
        matches = sorted(glob.glob(argument, recursive=True), key=natural_key)
        if not matches:
            return [Problem(argument, "no file matches this pattern")]
        found: list[Input] = []
        for match in matches:
            found.extend(_expand_one(match, suffixes, recursive, what, glob_allowed=False))
        return found
    return [Problem(argument, "no such file or folder")]


def _walk_folder(root: Path, suffixes, recursive: bool) -> list[Input]:
    """Files below ``root`` with a wanted suffix, in natural order; an unreadable folder is a Problem in its place."""
    found: list[Input] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: natural_key(e.name))
    except OSError as exc:
        return [Problem(str(root), f"cannot read folder: {exc.strerror or exc}")]
    for entry in entries:
        path = root / entry.name
        try:
            # Linked folders inside a tree are not followed: a link back up would make the walk endless.
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    found.extend(_walk_folder(path, suffixes, recursive))
            elif entry.is_file() and path.suffix.lower() in suffixes:
                found.append(path)
        except OSError as exc:
            found.append(Problem(str(path), f"cannot read: {exc.strerror or exc}"))
    return found
