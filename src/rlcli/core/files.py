"""Writing files so that a reader never sees half of one: temp file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rlcli.errors import RlError

EXISTS = "it exists (use --force to replace it)"  # the reason given for an output that is already there


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
    if os.path.lexists(target) and not force:  # lexists: a dangling link is in the way too
        raise cannot_write(target, EXISTS)
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
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", *, overwrite: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it becomes ``path`` in one step, on error it vanishes.
    ``overwrite=False`` never replaces a file that exists by then (see ``atomic_path``).

    Example:
        >>> with atomic_write("avg.pt", overwrite=False) as f:
        ...     torch.save(state, f)
    """
    with atomic_path(path, overwrite=overwrite) as temp:
        # Closed by hand below, not by `with`, so that a close that fails (the last flush) becomes cannot_write.
        handle = open(temp, mode, **({} if "b" in mode else {"encoding": "utf-8"}))  # noqa: SIM115
        try:
            yield handle
        except BaseException:
            with contextlib.suppress(OSError):
                handle.close()
            raise
        try:
            handle.close()  # flushes the last buffered bytes, where a full disk often shows first
        except OSError as exc:
            raise cannot_write(path, exc) from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """A temporary file name beside ``path`` for writers that want a name (safetensors, Pillow); when the block
    ends, its content is flushed to disk and published as ``path``; on error the temporary file is removed.

    ``overwrite=True`` renames over whatever is at ``path``. ``overwrite=False`` publishes only if nothing is
    there at that moment, checked by the file system in the same step as the publishing, so that a file created
    after any earlier check (another run writing the same output) is never replaced: RlError ``cannot write
    OUT: it exists (use --force to replace it)``.
    """
    target = Path(path)
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    except OSError as exc:
        raise cannot_write(target, exc) from exc
    os.close(fd)
    try:
        yield Path(temp_name)
        try:
            with open(temp_name, "rb+") as written:
                os.fsync(written.fileno())  # durable before it becomes visible under the real name
            os.chmod(temp_name, _default_mode(target))
            if overwrite:
                os.replace(temp_name, target)
            else:
                _publish_new(temp_name, target)
        except OSError as exc:
            raise cannot_write(target, exc) from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


# link() errors that mean "this file system has no hard links", not "something is wrong with this file".
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}


def _publish_new(temp: str, target: Path) -> None:
    """Give the complete file ``temp`` the name ``target`` unless ``target`` exists: link() fails with EEXIST
    rather than replace anything, atomically, so of two runs writing one path exactly one succeeds."""
    try:
        os.link(temp, target)
    except FileExistsError:
        raise cannot_write(target, EXISTS) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        _publish_by_claim(temp, target)
    else:
        os.unlink(temp)


def _publish_by_claim(temp: str, target: Path) -> None:
    """Where hard links are unsupported (FAT, some network and FUSE file systems): claim the name with
    O_CREAT|O_EXCL, which fails if anything is there, then rename the complete file over that empty claim.
    This still never replaces a file someone else made, and of two runs exactly one gets the name; what it gives
    up is that for the moment between claim and rename, a reader can see an empty file under the name."""
    try:
        claim = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise cannot_write(target, EXISTS) from None
    claimed = os.fstat(claim)
    os.close(claim)
    try:
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            now = os.stat(target)
            if (now.st_dev, now.st_ino) == (claimed.st_dev, claimed.st_ino):  # still our empty claim
                os.unlink(target)
        raise


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    size: int
    sha256: str


class HashingWriter:
    """A write-only file wrapper that hashes what passes through, so a file need not be read back to hash it.

    It also remembers the first exception a write raised (``error``): writers in C++ such as ``torch.save`` turn
    an exception inside the Python write callback into a RuntimeError ("unexpected pos"), losing a full disk's
    OSError, Ctrl-C's KeyboardInterrupt or SIGTERM's exception; ``reraise`` brings it back.
    """

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            written = self._handle.write(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise
        self.digest.update(data)
        self.size += len(data)
        return written

    def reraise(self, path: str | os.PathLike[str]) -> None:
        """Raise what a write raised, if one did: an OSError as ``cannot write PATH: <reason>``, anything else
        (KeyboardInterrupt, a signal's exception) as itself."""
        if isinstance(self.error, OSError):
            raise cannot_write(path, self.error) from self.error
        if self.error is not None:
            raise self.error

    def flush(self) -> None:
        self._handle.flush()


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
