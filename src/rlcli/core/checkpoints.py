"""Checkpoints as data, never code: safetensors, or torch files read with ``weights_only=True``.

Training scripts wrap state dicts in many ways; this module finds the tensors (``state_dict``, ``model``, EMA
copies), strips wrapper prefixes (DataParallel's ``module.``, torch.compile's ``_orig_mod.``) and reads rlcli's
self-describing checkpoints, which also carry the architecture, its arguments and the class names so that later
commands need no extra flags.
"""

from __future__ import annotations

import ctypes
import functools
import json
import mmap
import os
import pickle
import re
import struct
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlcli.core.files import HashingWriter, WrittenFile, atomic_path, atomic_write, cannot_write, sha256_file
from rlcli.errors import CheckpointError

FORMAT_NAME = "rlcli-checkpoint"
FORMAT_VERSION = 1
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"

# Where training scripts put the weights, in the order they are looked for.
# BasicSR (SwinIR's released files) stores {"params": ..., "params_ema": ...}.
_PLAIN_KEYS = ("state_dict", "model", "module", "net", "network", "params")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema_state_dict", "ema", "params_ema")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class CheckpointInfo:
    """What rlcli writes beside the weights so that a checkpoint describes itself."""

    arch: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, **asdict(self)})

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> CheckpointInfo:
        return cls(
            arch=data.get("arch"),
            model_args=dict(data.get("model_args") or {}),
            class_names=list(data["class_names"]) if data.get("class_names") is not None else None,
            extra=dict(data.get("extra") or {}),
        )


@dataclass
class Checkpoint:
    """A loaded checkpoint: flat tensors by name, and rlcli's description when the file has one."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    info: CheckpointInfo | None = None
    container_key: str | None = None  # where the tensors were found, e.g. "state_dict_ema"; None at top level
    raw: Any = field(default=None, repr=False)  # the file's whole content, for writers that keep its structure
    # Storages (by address) that are views of the memory-mapped file, read from disk only when touched. Tensors
    # converted on loading (``dtype=``) are copies in ordinary memory and are not among them.
    file_backed: frozenset[int] = field(default=frozenset(), repr=False)

    @property
    def from_ema(self) -> bool:
        """The tensors are EMA weights (found under ``state_dict_ema``, ``model_ema``, ...)."""
        return self.container_key in _EMA_KEYS

    @property
    def memory_mapped(self) -> bool:
        """Some tensors are views of the file."""
        return bool(self.file_backed)

    def is_file_backed(self, tensor: torch.Tensor) -> bool:
        return tensor.untyped_storage().data_ptr() in self.file_backed


def load_checkpoint(
    path: str | Path, *, prefer_ema: bool = False, mmap: bool = True, dtype: torch.dtype | None = None
) -> Checkpoint:
    """Read a checkpoint safely and find its tensors.

    Args:
        path: a ``.safetensors`` file or a torch file (``.pt``, ``.pth``, ``.bin``, ``.ckpt``).
        prefer_ema: take EMA weights (``state_dict_ema``, ``model_ema``, ...) when the file has them.
        mmap: memory-map torch zip files, so that tensors are read from disk on use.
        dtype: convert floating tensors to this dtype as they are read (one tensor at a time, so that loading a
            float32 file as bfloat16 never holds the whole float32 copy).

    Example:
        >>> ckpt = load_checkpoint("resnet50_epoch90.pth")
        >>> model.load_state_dict(ckpt.state_dict)
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint file: {path}")
    if path.suffix == SAFETENSORS_SUFFIX:
        return _load_safetensors(path, dtype)
    raw, mapped = _torch_load(path, mmap=mmap)
    info = None
    if isinstance(raw, dict) and raw.get("format") == FORMAT_NAME:
        info = CheckpointInfo.from_mapping(raw)
    tensors, key = find_state_dict(raw, prefer_ema=prefer_ema, source=path)
    # Recorded before any conversion: only the storages torch.load mapped are views of the file.
    file_backed = frozenset(t.untyped_storage().data_ptr() for t in tensors.values() if t.numel()) if mapped else None
    if dtype is not None:
        tensors = {name: _convert(t, dtype) for name, t in tensors.items()}
    return Checkpoint(
        path=path,
        state_dict=strip_wrapper_prefixes(tensors),
        info=info,
        container_key=key,
        raw=raw,
        file_backed=file_backed or frozenset(),
    )


def _convert(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def _load_safetensors(path: Path, dtype: torch.dtype | None = None) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = list(handle.keys())
        tensors = {}
        for name in names:
            # One opening per tensor: safetensors reads through a memory map, whose touched pages count as this
            # process's memory until it is closed. Closing after each tensor keeps the peak at the tensors kept.
            with safe_open(str(path), framework="pt") as handle:
                tensors[name] = _convert(handle.get_tensor(name), dtype)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    info = None
    if "rlcli" in metadata:
        try:
            info = CheckpointInfo.from_mapping(json.loads(metadata["rlcli"]))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: its rlcli metadata is not valid JSON ({exc})") from exc
    return Checkpoint(path=path, state_dict=strip_wrapper_prefixes(tensors), info=info)


def _torch_file_kind(path: Path) -> str:
    """'zip' (torch >= 1.6), 'pickle' (the legacy format) or 'tar' (torch < 0.4), from the first bytes; anything
    else is not a torch file, and is refused before torch's unpickler meets it (a text file there raises
    IndexError or KeyError, or reads as a refused pickle)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle's PROTO opcode; torch.save uses 2
        return "pickle"
    if head[257:262] == b"ustar":
        return "tar"
    raise CheckpointError(
        f"{path}: not a checkpoint ({_describe_content(head)}); rl reads torch files (.pt, .pth, .bin, .ckpt) "
        f"and {SAFETENSORS_SUFFIX}"
    )


def _describe_content(head: bytes) -> str:
    if not head:
        return "the file is empty"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # a character cut at the end of the sample is still text
            return f"it starts with {head[:8]!r}"
    return "it holds text"


def _torch_load(path: Path, *, mmap: bool) -> tuple[Any, bool]:
    # Only the zip format can be memory-mapped.
    mmap = mmap and _torch_file_kind(path) == "zip"
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap), mmap
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        if "Weights only load failed" in reason or "Unsupported" in str(exc):
            raise CheckpointError(
                f"{path}: refused: the file holds Python objects beyond tensors and plain containers, and "
                f"loading it could run code. Re-save its state_dict, or convert it to safetensors"
            ) from exc
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({reason})") from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({_first_line(exc)})") from exc
    except (IndexError, KeyError, TypeError, struct.error) as exc:
        # torch's weights-only unpickler meets a malformed pickle with whatever its stack or memo raises.
        raise CheckpointError(f"{path}: not a readable torch checkpoint (malformed pickle data: {exc!r})") from exc


def find_state_dict(
    obj: Any, *, prefer_ema: bool = False, source: Path | str = "checkpoint"
) -> tuple[dict, str | None]:
    """The flat name -> tensor mapping inside ``obj``, and the key it sat under (None: ``obj`` itself)."""
    if _is_state_dict(obj):
        return dict(obj), None
    if isinstance(obj, dict):
        order = (*_EMA_KEYS, *_PLAIN_KEYS) if prefer_ema else (*_PLAIN_KEYS, *_EMA_KEYS)
        for key in order:
            if key in obj:
                found, _ = find_state_dict(obj[key], prefer_ema=prefer_ema, source=source)
                return found, key
        # Training checkpoints mix tensors with counters and config; keep the tensors when they dominate.
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors, None
    raise CheckpointError(
        f"{source}: no state dict found (looked for tensors at the top level and under "
        f"{', '.join(repr(k) for k in (*_PLAIN_KEYS, *_EMA_KEYS))}); top-level keys: {_describe_keys(obj)}"
    )


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile), however they are stacked."""
    stripped = {}
    for key, value in state_dict.items():
        name = key
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        stripped[name] = value
    return stripped


def save_checkpoint(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    info: CheckpointInfo | None = None,
    *,
    overwrite: bool = True,
) -> WrittenFile:
    """Write atomically: safetensors (``.safetensors``, info in its metadata) or a torch file (info in the dict).

    Tensors sharing storage (tied weights) are written once per name as independent copies for safetensors,
    which forbids shared storage. ``overwrite=False`` never replaces a file that exists when the new one is
    published (``atomic_path``).
    """
    path = Path(path)
    tensors = {name: t.detach().cpu().contiguous() for name, t in state_dict.items()}
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        metadata = {"rlcli": info.to_json()} if info else None
        with atomic_path(path, overwrite=overwrite) as temp:
            try:
                save_file(_unshare(tensors), str(temp), metadata=metadata)
            except SafetensorError as exc:
                raise cannot_write(path, _os_error_of(exc)) from exc
            digest = sha256_file(temp)
        return WrittenFile(path, path.stat().st_size, digest)
    if path.suffix in TORCH_SUFFIXES:
        payload: dict[str, Any] = tensors
        if info:
            payload = {**json.loads(info.to_json()), "state_dict": tensors}
        return save_torch_file(path, payload, overwrite=overwrite)
    raise CheckpointError(
        f"{path}: unknown checkpoint extension; use {SAFETENSORS_SUFFIX} or one of {', '.join(TORCH_SUFFIXES)}"
    )


def save_torch_file(path: Path, payload: Any, *, overwrite: bool = True) -> WrittenFile:
    """``torch.save`` atomically, hashing the bytes on their way to disk."""
    with atomic_write(path, overwrite=overwrite) as handle:
        writer = HashingWriter(handle)
        try:
            torch.save(payload, writer)
        except RuntimeError as exc:
            writer.reraise(path)  # torch.save hides the write's own exception behind "unexpected pos"
            if exc.__context__ is not None and not isinstance(exc.__context__, Exception):
                # A signal's exception (Ctrl-C, SIGTERM) raised as the callback was entered, before the writer
                # could record it: torch.save's closing write failed while it was propagating.
                raise exc.__context__ from None
            raise
    return WrittenFile(path, writer.size, writer.digest.hexdigest())


def _os_error_of(exc: Exception) -> OSError | str:
    """safetensors reports a failed write as text ("I/O error: File too large (os error 27)"); the OSError."""
    found = re.search(r"\(os error (\d+)\)", str(exc))
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code))
    return _first_line(exc)


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: set[int] = set()
    result = {}
    for name, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr() if tensor.numel() else -1
        result[name] = tensor.clone() if pointer in seen else tensor
        if pointer != -1:
            seen.add(pointer)
    return result


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str, assign: bool = False) -> None:
    """``model.load_state_dict`` with an error that names the missing, unexpected and mis-shaped tensors.

    Files saved before PyTorch 0.4.1 have no BatchNorm ``num_batches_tracked`` counters; as torch itself does for
    them, the counters start at zero.
    """
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state_dict = {**_missing_batch_counters(expected, state_dict), **state_dict}
    found = {name: tuple(t.shape) for name, t in state_dict.items()}
    problems = describe_mismatch(expected, found, "checkpoint {found} vs model {expected}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model: {problems}")
    model.load_state_dict(state_dict, strict=True, assign=assign)


def _missing_batch_counters(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]) -> dict:
    return {
        name: torch.zeros((), dtype=torch.long)
        for name in expected
        if name.endswith(".num_batches_tracked") and name not in state
    }


def describe_mismatch(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], shape_format: str
) -> str | None:
    """'missing N (names); unexpected N (names); shape mismatch N (name: ...)', or None when the layouts agree.

    ``shape_format`` words a conflict from ``{found}`` and ``{expected}``, e.g. "checkpoint {found} vs model ...".
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        f"{k}: " + shape_format.format(found=list(found[k]), expected=list(expected[k]))
        for k in expected
        if k in found and found[k] != expected[k]
    ]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} ({list_some(missing)})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} ({list_some(unexpected)})")
    if mismatched:
        parts.append(f"shape mismatch {len(mismatched)} ({list_some(mismatched)})")
    return "; ".join(parts) or None


def list_some(items: list[str], limit: int = 3) -> str:
    """The first few items, comma-separated, with an ellipsis when there are more."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ..."


def _describe_keys(obj: Any) -> str:
    if isinstance(obj, dict):
        return list_some([str(k) for k in obj], limit=8) or "none"
    return f"none (the file holds a {type(obj).__name__})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def drop_mapped_pages(checkpoint: Checkpoint, tensor: torch.Tensor) -> bool:
    """Tell the kernel this process is done with a memory-mapped tensor's pages (Linux ``MADV_DONTNEED``).

    The pages of a file mapping count towards the process's resident memory while they stay mapped, so streaming
    through a memory-mapped checkpoint would otherwise hold all of it. The file is only read, so the kernel can
    drop the pages; a later read faults them in again from the file, most likely from the page cache.

    Only a tensor whose storage is a view of ``checkpoint``'s file is touched: on ordinary (anonymous) memory,
    such as a tensor converted to another dtype on loading, ``MADV_DONTNEED`` would zero the data. Only pages
    wholly inside both the tensor and its storage are dropped. Elsewhere than Linux this does nothing.

    Returns:
        whether pages were dropped.
    """
    if not sys.platform.startswith("linux") or tensor.numel() == 0 or not checkpoint.is_file_backed(tensor):
        return False
    libc = _libc()
    if libc is None:
        return False
    page = mmap.PAGESIZE
    storage = tensor.untyped_storage()
    first = max(tensor.data_ptr(), storage.data_ptr())
    last = min(tensor.data_ptr() + tensor.numel() * tensor.element_size(), storage.data_ptr() + storage.nbytes())
    # Whole pages inside the tensor only: a page shared with a neighbour is left alone, whatever that neighbour is.
    start = -(-first // page) * page
    end = last // page * page
    if end <= start:
        return False
    libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)
    return True


_MADV_DONTNEED = 4


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        return libc
    except (OSError, AttributeError):
        return None
