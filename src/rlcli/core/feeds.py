"""What a forward pass is fed: one or several tensors, positional or by name, single tensors or lists.

Most models take one batch tensor. BERT takes token ids, an attention mask and segment ids by name; torchvision's
detection models take a list of images; RAFT takes two images. An ``InputSpec`` states all of that for one
sample, and makes the batch: empty tensors on the meta device, or real ones (for a pass that reads values).
``--inputs`` on the command line is parsed here too, without importing torch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlcli.core.shapes import check_tensor_size, format_size
from rlcli.errors import UsageError

# The dtypes an input may have, by the names torch gives them, with their sizes in bytes.
DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "uint8": 1, "bool": 1}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the input: its shape for one sample (no batch dimension) and how it is passed.

    ``listed``: a list holding one tensor of ``shape`` per sample (torchvision's detection models), instead of one
    batch tensor. ``fill`` says what real tensors hold (meta tensors hold nothing): ``normal`` (random-normal,
    seeded), ``zeros`` or ``ones``; ``auto`` is normal for floats, ones for bool (a mask that hides nothing) and
    zeros for integers (token id 0 exists in every vocabulary).
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    name: str | None = None  # a keyword argument of forward; None: positional, in order
    listed: bool = False
    fill: str = "auto"

    def describe(self, batch_size: int) -> str:
        shape = f"{batch_size} x [{format_size(self.shape)}]" if self.listed else format_size((batch_size, *self.shape))
        return f"{self.name + ' ' if self.name else ''}{shape} {self.dtype}"

    def entry(self, batch_size: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": [batch_size, *self.shape] if not self.listed else list(self.shape),
            "list_of": batch_size if self.listed else None,
            "dtype": self.dtype,
        }


@dataclass(frozen=True)
class Feed:
    """Arguments for one forward call."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InputSpec:
    """Every tensor one forward call takes, for one sample."""

    tensors: tuple[TensorSpec, ...]

    @classmethod
    def single(cls, shape: tuple[int, ...], dtype: str = "float32") -> InputSpec:
        return cls((TensorSpec(tuple(shape), dtype),))

    @property
    def primary(self) -> TensorSpec:
        return self.tensors[0]

    def describe(self, batch_size: int) -> str:
        """``input_ids 1x128 int64, attention_mask 1x128 int64``: exactly what is fed, for headers."""
        return ", ".join(t.describe(batch_size) for t in self.tensors)

    def label(self, batch_size: int) -> str:
        """``1x3x224x224`` for one plain tensor (as error messages name it), else ``describe``."""
        first = self.primary
        if len(self.tensors) == 1 and not first.name and not first.listed:
            return format_size((batch_size, *first.shape))
        return self.describe(batch_size)

    def entries(self, batch_size: int) -> list[dict[str, Any]]:
        return [t.entry(batch_size) for t in self.tensors]

    def check(self, batch_size: int) -> None:
        """A usage error when a tensor of this input cannot exist (its size overflows 64 bits)."""
        for tensor in self.tensors:
            check_tensor_size((batch_size, *tensor.shape), DTYPES[tensor.dtype])

    def nbytes(self, batch_size: int) -> int:
        return sum(batch_size * math.prod(t.shape) * DTYPES[t.dtype] for t in self.tensors)

    def feed(self, batch_size: int, device: str = "meta", seed: int = 0) -> Feed:
        """The batch: empty tensors on ``meta``, else real ones filled as each ``fill`` says (seeded)."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        args, kwargs = [], {}
        for tensor in self.tensors:
            if tensor.listed:
                value = [_make(tensor, (), device, generator) for _ in range(batch_size)]
            else:
                value = _make(tensor, (batch_size,), device, generator)
            if tensor.name is None:
                args.append(value)
            else:
                kwargs[tensor.name] = value
        return Feed(tuple(args), kwargs)

    def fills(self) -> str:
        """What real tensors hold, in words, for a report: ``random-normal`` or ``random-normal and zeros``."""
        kinds = dict.fromkeys(_fill_of(t) for t in self.tensors)
        names = {"normal": "random-normal", "zeros": "zeros", "ones": "ones"}
        return " and ".join(names[k] for k in kinds)


def _fill_of(tensor: TensorSpec) -> str:
    if tensor.fill != "auto":
        return tensor.fill
    if tensor.dtype == "bool":
        return "ones"
    return "normal" if tensor.dtype.startswith(("float", "bfloat")) else "zeros"


def _make(tensor: TensorSpec, batch: tuple[int, ...], device: str, generator):
    import torch

    shape, dtype = (*batch, *tensor.shape), getattr(torch, tensor.dtype)
    if device == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    fill = _fill_of(tensor)
    if fill == "normal":
        return torch.randn(shape, generator=generator).to(dtype=dtype, device=device)
    maker = torch.ones if fill == "ones" else torch.zeros
    return maker(shape, dtype=dtype, device=device)


# --- the --inputs option ---------------------------------------------------------------------------------------

_ITEM = re.compile(
    r"^(?:(?P<name>[A-Za-z_]\w*)=)?(?P<open>\[)?(?P<shape>\d+(?:x\d+)*)(?P<close>\])?(?::(?P<dtype>\w+))?$"
)

INPUTS_HELP = (
    "several inputs, space-separated: [NAME=]SHAPE[:DTYPE], SHAPE per sample without the batch (e.g. 128x768); "
    "NAME= passes it by keyword; [SHAPE] is a list of one such tensor per sample; DTYPE one of "
    + ", ".join(DTYPES)
    + " (default float32). Example: 'input_ids=128:int64 attention_mask=128:int64'. Or a .json file: a list of "
    '{"shape": [...], "dtype": ..., "name": ..., "list": true/false}'
)


def parse_inputs(text: str) -> InputSpec:
    """``--inputs``: a compact spec (``ids=128:int64 mask=128:bool``, ``[3x800x800]``) or a JSON file of tensors."""
    if text.strip().endswith(".json"):
        return _inputs_from_json(Path(text.strip()))
    items = [item for item in re.split(r"[\s;]+", text.strip()) if item]
    if not items:
        raise UsageError("--inputs is empty: " + INPUTS_HELP)
    return _validated(InputSpec(tuple(_parse_item(item) for item in items)))


def _parse_item(item: str) -> TensorSpec:
    match = _ITEM.match(item.replace("\u00d7", "x"))
    if not match or bool(match.group("open")) != bool(match.group("close")):
        raise UsageError(f"invalid --inputs item '{item}': expected [NAME=]SHAPE[:DTYPE], e.g. input_ids=128:int64")
    dtype = match.group("dtype") or "float32"
    if dtype not in DTYPES:
        raise UsageError(f"invalid --inputs item '{item}': unknown dtype '{dtype}' (choose {', '.join(DTYPES)})")
    shape = tuple(int(d) for d in match.group("shape").split("x"))
    return TensorSpec(shape=shape, dtype=dtype, name=match.group("name"), listed=bool(match.group("open")))


def _inputs_from_json(path: Path) -> InputSpec:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot read --inputs {path}: {exc}") from exc
    if not isinstance(data, list) or not data:
        raise UsageError(f"--inputs {path}: expected a non-empty list of tensors")
    tensors = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise UsageError(f"--inputs {path}: entry {index} needs a 'shape' list")
        unknown = set(entry) - {"shape", "dtype", "name", "list"}
        if unknown:
            raise UsageError(f"--inputs {path}: entry {index} has unknown key {sorted(unknown)[0]!r}")
        shape = entry["shape"]
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise UsageError(f"--inputs {path}: entry {index}'s shape must be whole numbers")
        tensors.append(
            TensorSpec(
                shape=tuple(shape),
                dtype=entry.get("dtype", "float32"),
                name=entry.get("name"),
                listed=bool(entry.get("list", False)),
            )
        )
    return _validated(InputSpec(tuple(tensors)))


def _validated(spec: InputSpec) -> InputSpec:
    names = [t.name for t in spec.tensors if t.name]
    if len(names) != len(set(names)):
        raise UsageError(f"--inputs names an input twice: {', '.join(sorted(names))}")
    for tensor in spec.tensors:
        if tensor.dtype not in DTYPES:
            raise UsageError(f"--inputs: unknown dtype '{tensor.dtype}' (choose {', '.join(DTYPES)})")
        if any(d <= 0 for d in tensor.shape):
            raise UsageError(f"--inputs: every dimension must be positive ({format_size(tensor.shape)})")
        check_tensor_size(tensor.shape, DTYPES[tensor.dtype])
    seen_keyword = False
    for tensor in spec.tensors:
        if tensor.name:
            seen_keyword = True
        elif seen_keyword:
            raise UsageError("--inputs: positional inputs come before named ones, as in a Python call")
    return spec
