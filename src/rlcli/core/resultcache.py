"""Results kept on disk: one JSON entry per key under the user cache folder, never trusted past its own key.

A counted result (a summary, a family search) depends only on what was asked and on the code that counted it, so
a repeated question can be answered from disk without importing torch. The key names both: the request, and the
versions of rl, torch, torchvision and the other libraries that count (read with ``importlib.metadata``, which
imports none of them), with the size and modification time of every file of the rl package, so that an edited
checkout never answers from an entry written by other code.

An entry is ``{"schema", "kind", "key", "result"}``, its file named by the key's SHA-256. It is used only when it
parses, its schema is this module's and its stored key equals the key asked for; anything else (a truncated file,
another program's JSON, a hash collision, an entry of another rl) is a miss, and the fresh result replaces it.
Entries are written to a temporary file and published in one step (``core.files.atomic_write``); a cache that
cannot be written (a read-only home) is no error: the result is simply not kept.

Results are stored as tagged JSON (``encode``/``decode``): dataclasses with their class and fields, tuples and
dicts marked, so that a decoded result is the same object tree as the one stored. Only the classes the caller
names are rebuilt as themselves; any other dataclass comes back as a plain record with the same name and fields
(attributes and ``dataclasses.asdict`` work, no code of the stored class runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import keyword
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The layout of an entry and of its tagged result; a change makes every older entry a miss.
SCHEMA = 1

#: The distributions whose versions key every entry: rl, and the libraries that build or count models.
VERSIONED = ("rlcli", "torch", "torchvision", "timm", "transformers", "fvcore", "torchinfo")

ENTRY_SUFFIX = ".json"


def cache_folder() -> Path:
    """rl's cache folder (``core.hub.rl_cache_dir``: ``$XDG_CACHE_HOME/rlcli``, else ``~/.cache/rlcli``)."""
    from rlcli.core.hub import rl_cache_dir

    return rl_cache_dir()


def versions() -> dict[str, str | None]:
    """The installed version of each VERSIONED distribution (None: not installed), without importing any."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def package_fingerprint() -> str:
    """SHA-256 over the path, size and modification time of every file of the rl package (``__pycache__`` left
    out): a checkout edited since an entry was written has another fingerprint."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
        for name in sorted(files):
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                stat = os.stat(path)
                digest.update(f"{os.path.relpath(path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def code_key() -> dict[str, Any]:
    """What every key holds besides the request: the versions and the package fingerprint."""
    return {"versions": versions(), "rlcli_files": package_fingerprint()}


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CacheInfo:
    """What ``rl cache info`` reports: the folder, its entries (by kind) and their bytes on disk."""

    location: str
    exists: bool
    entries: int
    bytes: int
    by_kind: dict[str, int]


class ResultCache:
    """Entries under ``folder`` (default: ``cache_folder()``), one sub-folder per kind of result."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder) if folder is not None else cache_folder()

    def path(self, kind: str, key: dict[str, Any]) -> Path:
        return self.folder / kind / (_key_digest(kind, key) + ENTRY_SUFFIX)

    def get(self, kind: str, key: dict[str, Any], decode: Callable[[Any], Any] = lambda result: result) -> Any:
        """The decoded result stored under ``key``, or None: absent, unreadable, foreign or not decodable."""
        try:
            entry = json.loads(self.path(kind, key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("schema") != SCHEMA or entry.get("kind") != kind:
            return None
        if entry.get("key") != _normal(key) or "result" not in entry:
            return None
        try:
            return decode(entry["result"])
        except Exception:  # an entry that does not rebuild is a miss, whatever it broke
            return None

    def put(self, kind: str, key: dict[str, Any], result: Any) -> bool:
        """Store ``result`` (JSON-able: ``encode`` it first) under ``key``; False where the cache cannot be
        written (the result is then simply not kept)."""
        from rlcli.core.files import atomic_write
        from rlcli.errors import RlError

        path = self.path(kind, key)
        text = json.dumps({"schema": SCHEMA, "kind": kind, "key": key, "result": result}, separators=(",", ":"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, "w") as handle:
                handle.write(text)
        except (OSError, RlError):
            return False
        return True

    def info(self) -> CacheInfo:
        by_kind: dict[str, int] = {}
        size = 0
        for path in self._files():
            size += _size(path)
            if _is_entry(path):
                by_kind[path.parent.name] = by_kind.get(path.parent.name, 0) + 1
        return CacheInfo(
            location=str(self.folder),
            exists=self.folder.is_dir(),
            entries=sum(by_kind.values()),
            bytes=size,
            by_kind=dict(sorted(by_kind.items())),
        )

    def clear(self) -> tuple[int, int]:
        """Remove every entry (and temporary files left by interrupted writes): (entries, bytes) removed."""
        entries = size = 0
        for path in self._files():
            length = _size(path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                entries += _is_entry(path)
                size += length
        for kind in self._kinds():
            with contextlib.suppress(OSError):
                kind.rmdir()
        return entries, size

    def _kinds(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return []

    def _files(self) -> Iterable[Path]:
        # Only what rl writes: entry files and its temporary files, one level down; nothing else is touched.
        for kind in self._kinds():
            with contextlib.suppress(OSError):
                for path in sorted(kind.iterdir()):
                    if path.is_file() and not path.is_symlink() and (_is_entry(path) or _is_temporary(path)):
                        yield path


def _is_entry(path: Path) -> bool:
    return path.suffix == ENTRY_SUFFIX and not path.name.startswith(".") and len(path.stem) == 64


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")  # core.files.atomic_path's names


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _normal(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparing a stored key with a fresh one."""
    return json.loads(json.dumps(value))


def _key_digest(kind: str, key: dict[str, Any]) -> str:
    text = json.dumps({"kind": kind, "key": key}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --- tagged JSON for results ------------------------------------------------------------------------------------

_DATACLASS, _TUPLE, _DICT = "__dataclass__", "__tuple__", "__dict__"


class NotCacheable(TypeError):
    """A result holds a value that tagged JSON cannot represent exactly (it is then not cached)."""


def encode(value: Any) -> Any:
    """``value`` as tagged JSON: dataclass instances with their class and fields in order, tuples and dicts
    marked (a dict as its items, so keys of any JSON type and their order survive); lists, strings, numbers,
    booleans and None as they are. Anything else raises NotCacheable."""
    if value is None or isinstance(value, (bool, int, float, str)):
        if type(value) not in (type(None), bool, int, float, str):  # an Enum or other subclass: not exact
            raise NotCacheable(f"cannot store a {type(value).__name__}")
        return value
    if isinstance(value, list) and type(value) is list:
        return [encode(v) for v in value]
    if type(value) is tuple:
        return {_TUPLE: [encode(v) for v in value]}
    if type(value) is dict:
        return {_DICT: [[encode(k), encode(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {_DATACLASS: f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    raise NotCacheable(f"cannot store a {type(value).__name__}")


def decode(data: Any, classes: Iterable[type] = ()) -> Any:
    """The value ``encode`` made ``data`` from. Dataclasses among ``classes`` are rebuilt as themselves, and only
    when the stored fields are exactly the class's (else ValueError: the entry is of other code); any other
    dataclass as a record with the same name and fields."""
    known = {f"{cls.__module__}:{cls.__qualname__}": cls for cls in classes}
    return _decode(data, known)


def _decode(data: Any, known: dict[str, type]) -> Any:
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [_decode(v, known) for v in data]
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise ValueError("not a tagged value")
    if _TUPLE in data and len(data) == 1:
        return tuple(_decode(v, known) for v in _list(data[_TUPLE]))
    if _DICT in data and len(data) == 1:
        items = [_list(item) for item in _list(data[_DICT])]
        if any(len(item) != 2 for item in items):
            raise ValueError("a dict item is not a pair")
        return {_decode(k, known): _decode(v, known) for k, v in items}
    if _DATACLASS in data and isinstance(data.get("fields"), dict) and isinstance(data[_DATACLASS], str):
        values = {name: _decode(v, known) for name, v in data["fields"].items()}
        cls = known.get(data[_DATACLASS])
        return _instance(cls, values) if cls is not None else _record(data[_DATACLASS], values)
    raise ValueError("not a tagged value")


def _list(value: Any) -> list:
    if not isinstance(value, list):
        raise ValueError("expected a list")
    return value


def _instance(cls: type, values: dict[str, Any]) -> Any:
    fields = dataclasses.fields(cls)
    if [f.name for f in fields] != list(values):
        raise ValueError(f"stored fields of {cls.__qualname__} are not this version's")
    made = cls(**{f.name: values[f.name] for f in fields if f.init})
    for f in fields:
        if not f.init:
            object.__setattr__(made, f.name, values[f.name])
    return made


def _record(path: str, values: dict[str, Any]) -> Any:
    """A stand-in for a class that is not rebuilt: same name and fields, frozen, no behaviour."""
    qualname = path.partition(":")[2]
    if not all(name.isidentifier() and not keyword.iskeyword(name) for name in values):
        raise ValueError("a field name is not an identifier")
    cls = _record_class(qualname.rpartition(".")[2] or "Record", tuple(values))
    return cls(**values)


_RECORD_CLASSES: dict[tuple[str, tuple[str, ...]], type] = {}


def _record_class(name: str, fields: tuple[str, ...]) -> type:
    key = (name if name.isidentifier() else "Record", fields)
    if key not in _RECORD_CLASSES:
        _RECORD_CLASSES[key] = dataclasses.make_dataclass(key[0], [(f, Any) for f in fields], frozen=True)
    return _RECORD_CLASSES[key]


def dataclasses_of(*modules: str) -> list[type]:
    """The dataclasses defined in the named modules (imported here): the classes a caller lets ``decode``
    rebuild as themselves."""
    import importlib

    found = []
    for name in modules:
        module = sys.modules.get(name) or importlib.import_module(name)
        found += [
            value
            for value in vars(module).values()
            if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == name
        ]
    return found
