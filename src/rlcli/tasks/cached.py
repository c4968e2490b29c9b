"""`rl summary` and `rl compare`'s family search answered from the result cache (``core.resultcache``).

What is cached, and by what:

- A summary of a model of rl's static index (``rl models``: torchvision's and rl's own models), stored at every
  depth and keyed by the name, every option that changes the result (all of ``summarize``'s but ``depth``: the
  input, batch size, counter ...), a ``--inputs`` file's SHA-256, and the code key (versions of rl, torch,
  torchvision and the other counting libraries, and rl's own files). A repeated question at any depth is answered
  from disk without importing torch. Your own models (``module:callable``, ``file.py:callable``), Hugging Face
  folders and ``timm/`` names are never cached: their result depends on code or files outside that key.
- A family search at a budget (``rl compare`` without models): the members found for the families, budget, input
  size and ResNeXt groups, with their figures and configurations. Timings are measured afresh every time.

Nothing here imports torch; the computing paths import it where they run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

from rlcli.core.resultcache import NotCacheable, ResultCache, code_key, dataclasses_of, decode, encode, file_sha256

SUMMARY_KIND = "summary"
COMPARE_KIND = "compare"

#: The model sources whose summaries depend only on what the key holds (rl's code and the versioned libraries).
CACHED_SOURCES = ("torchvision", "rlcli")

# The result classes rebuilt as themselves: the summary's, with the paper cards it holds.
# Others inside a result (core.meta's RealStep, whose module imports torch) come back as plain records.
_SUMMARY_MODULES = ("rlcli.tasks.summary", "rlcli.models.cards", "rlcli.models.catalog")


# --- rl summary ------------------------------------------------------------------------------------------------


def summary_key(model: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The cache key of ``summarize(model, **options)`` at every depth, or None when it is not cached."""
    from rlcli.models.catalog import load_index

    if model not in {entry.name for entry in load_index().entries}:
        return None
    request = {name: _plain(value) for name, value in sorted(options.items()) if name != "depth"}
    inputs = options.get("inputs")
    if isinstance(inputs, str) and os.path.isfile(inputs):
        try:
            request["inputs_sha256"] = file_sha256(inputs)
        except OSError:
            return None
    try:
        json.dumps(request)
    except (TypeError, ValueError):  # an option JSON cannot hold exactly: not keyed, not cached
        return None
    return {"model": model, "options": request, **code_key()}


def summarize_cached(
    model: str, *, depth: int | None = 3, use_cache: bool = True, cache: ResultCache | None = None, **options: Any
):
    """``tasks.summary.summarize(model, depth=depth, **options)``, answered from the cache where it holds the
    result (``use_cache=False``: computed, and nothing read or written)."""
    from rlcli.tasks.summary import summarize

    key = summary_key(model, options) if use_cache else None
    if key is None:
        return summarize(model, depth=depth, **options)
    if depth is not None and depth < 0:
        return summarize(model, depth=depth, **options)  # the task says what is wrong with the depth
    cache = cache or ResultCache()
    full = cache.get(SUMMARY_KIND, key, decode_summary)
    if full is None:
        full = summarize(model, depth=None, **options)
        if full.source in CACHED_SOURCES:
            _put(cache, SUMMARY_KIND, key, full)
    return at_depth(full, depth)


def decode_summary(data: Any):
    """A stored summary, rebuilt; ValueError when it is not one of this code's (the entry is then a miss)."""
    from rlcli.tasks.summary import ModelSummary

    summary = decode(data, dataclasses_of(*_SUMMARY_MODULES))
    if not isinstance(summary, ModelSummary):
        raise ValueError("not a summary")
    return summary


def at_depth(summary, depth: int | None):
    """The summary as ``summarize`` returns it at ``depth`` from the one counted at every depth: the rows down to
    that level, and for ``--counter all`` each counter's figures for those rows (its ``by_layer`` follows the
    table); nothing else depends on the depth."""
    if depth is None:
        return summary
    layers = [layer for layer in summary.layers if layer.depth <= depth]
    counters = summary.counters
    if summary.counter == "all":
        names = {layer.name for layer in layers}
        counters = [
            dataclasses.replace(c, by_layer={n: m for n, m in c.by_layer.items() if n in names}) for c in counters
        ]
    return dataclasses.replace(summary, layers=layers, counters=counters)


# --- rl compare ------------------------------------------------------------------------------------------------


def compare_key(
    families: list[str], budget: int | None, size: tuple[int, ...], groups: int, dtype: str = "float32"
) -> dict[str, Any]:
    """The cache key of a family search (``budget`` None: ResNet-50's MACs at ``size``)."""
    request = {"families": list(families), "budget": budget, "input_size": list(size), "groups": groups}
    if dtype != "float32":  # the keys of float32 searches stay those written before the option existed
        request["dtype"] = dtype
    return {"search": request, **code_key()}


@dataclasses.dataclass
class FamilySearch:
    """A stored family search: the untimed comparison, and the member each entry is (its configuration's fields
    and input size), for timing it again."""

    comparison: Any
    members: list[dict[str, Any]]


def compare_cached(
    *,
    budget: str | None,
    families: list[str] | None,
    groups: int,
    input_size: str | None,
    timing=None,
    progress: Callable[[str, int, int], None] | None = None,
    dtype: str = "float32",
    cache: ResultCache | None = None,
):
    """``tasks.compare.compare(None, ...)``, a family search, with the search answered from the cache where it
    holds it; timing, when asked, is measured afresh on the members found."""
    from rlcli.core.shapes import parse_input_size
    from rlcli.tasks.compare import FAMILIES, annotate, compare, parse_macs
    from rlcli.tasks.summary import DTYPES

    if groups < 1 or any(f not in FAMILIES for f in families or ()) or dtype not in DTYPES:
        return compare(None, budget=budget, families=families, groups=groups, input_size=input_size, dtype=dtype)
    size = parse_input_size(input_size, (3, 224, 224)) if input_size else (3, 224, 224)
    chosen = list(families or FAMILIES)
    target = parse_macs(budget) if budget is not None else None
    key = compare_key(chosen, target, size, groups, dtype)
    cache = cache or ResultCache()
    search = cache.get(COMPARE_KIND, key, decode_search)
    if search is None:
        search = _search(chosen, target, size, groups, dtype)
        _put(cache, COMPARE_KIND, key, search)
    result = search.comparison
    if timing is not None:
        _time(result, search.members, timing, progress)
    return annotate(result)  # readings and Pareto marks, of the timed rows


def decode_search(data: Any) -> FamilySearch:
    """A stored family search, rebuilt; ValueError when it is not one of this code's (the entry is then a miss)."""
    from rlcli.tasks.compare import Comparison

    search = decode(data, [FamilySearch, *dataclasses_of("rlcli.tasks.compare")])
    if not isinstance(search, FamilySearch) or not isinstance(search.comparison, Comparison):
        raise ValueError("not a family search")
    if search.comparison.timing is not None or len(search.members) != len(search.comparison.entries):
        raise ValueError("not an untimed family search")
    for member in search.members:
        if not isinstance(member, dict) or not {"family", "width", "input_size"} <= set(member):
            raise ValueError("not a family member")
    return search


def _search(families: list[str], target: int | None, size: tuple[int, ...], groups: int, dtype: str) -> FamilySearch:
    """``tasks.compare.compare``'s family branch, untimed, keeping each member's configuration."""
    from rlcli.core.flops import CONVENTION
    from rlcli.tasks.compare import Comparison, default_budget, scaled_entries

    notes = []
    if target is None:
        target, note = default_budget(size)
        notes.append(note)
    rows = scaled_entries(families, target, size, groups, dtype)
    comparison = Comparison(
        budget=target, entries=[e for e, _, _ in rows], timing=None, convention=CONVENTION, notes=notes, dtype=dtype
    )
    members = [{**dataclasses.asdict(config), "input_size": list(s)} for _, config, s in rows]
    return FamilySearch(comparison, members)


def _time(result, members: list[dict[str, Any]], timing, progress) -> None:
    """Time each member, as ``tasks.compare.compare`` times them, rebuilt from its stored configuration."""
    from rlcli.models.scaled import FamilyConfig
    from rlcli.tasks.compare import scaled_spec, time_rows

    specs = []
    for member in members:
        fields = {k: v for k, v in member.items() if k != "input_size"}
        specs.append(scaled_spec(FamilyConfig(**fields), tuple(member["input_size"])))
    time_rows(list(zip(result.entries, specs, strict=True)), timing, progress)
    result.timing = timing


# --- shared -----------------------------------------------------------------------------------------------------


def _put(cache: ResultCache, kind: str, key: dict[str, Any], result: Any) -> None:
    try:
        stored = encode(result)
    except NotCacheable:
        return  # a result with a value JSON cannot hold exactly is answered, not kept
    cache.put(kind, key, stored)


def _plain(value: Any) -> Any:
    """An option as the key holds it: an Enum by its value."""
    return getattr(value, "value", value)
