"""Writing files so that a reader never sees half of one: temp file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rlcli.errors import RlError


def cannot_write(path: str | os.PathLike[str], reason: str | BaseException) -> RlError:
    """The one message for an output that cannot be written: ``cannot write OUT: <reason>``."""
    if isinstance(reason, OSError):
        reason = reason.strerror or str(reason)
        reason = reason[:1].lower() + reason[1:]
    return RlError(f"cannot write {path}: {reason}")


def check_output_file(path: str | os.PathLike[str], *, force: bool = False) -> None:
    """Before any work: ``path`` can be created (its folder exists and takes new files), is not a folder, and
    exists only if ``force`` allows replacing it. Raises RlError (``cannot write OUT: ...``)."""
    target = Path(path)
    if target.is_dir():
        raise cannot_write(target, "it is a folder")
    if target.exists() and not force:
        raise cannot_write(target, "it exists (use --force to replace it)")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise cannot_write(target, f"no folder {folder}" if not folder.exists() else f"{folder} is not a folder")
    _probe_folder(folder, target)


def ensure_output_folder(folder: str | os.PathLike[str]) -> Path:
    """Before any work: ``folder`` exists (created with its parents if needed) and takes new files."""
    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise cannot_write(target, "it is a file, not a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(target, exc) from exc
    _probe_folder(target, target)
    return target


def _probe_folder(folder: Path, shown: Path) -> None:
    """Create and remove a file in ``folder``: the only test of writability that holds for root, read-only
    mounts and ACLs alike (``os.access`` answers for none of them)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".rl-probe-", dir=folder)
    except OSError as exc:
        raise cannot_write(shown, exc) from exc
    os.close(fd)
    os.unlink(probe)


def _default_mode(target: Path) -> int:
    """Keep an existing file's permissions; new files get the usual 0o666 less the umask (mkstemp uses 0o600)."""
    if target.exists():
        return target.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one rename, on error it vanishes.

    Example:
        >>> with atomic_write("avg.pt") as f:
        ...     torch.save(state, f)
    """
    with atomic_path(path) as temp, open(temp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
        yield handle


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary file name beside ``path`` for writers that want a name (safetensors, Pillow); when the block
    ends, its content is flushed to disk and renamed over ``path``; on error the temporary file is removed."""
    target = Path(path)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    os.close(fd)
    try:
        yield Path(temp_name)
        with open(temp_name, "rb+") as written:
            os.fsync(written.fileno())  # durable before it becomes visible under the real name
        os.chmod(temp_name, _default_mode(target))
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    size: int
    sha256: str


class HashingWriter:
    """A write-only file wrapper that hashes what passes through, so a file need not be read back to hash it."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
