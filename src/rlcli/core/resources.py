"""What this machine can hold: a cost is checked up front, so that an absurd option fails in a line, not an OOM kill.

No torch here: the checks run before anything heavy is imported or allocated.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from rlcli.errors import UsageError


def available_memory_bytes() -> int | None:
    """Memory the kernel says a new allocation can have (``MemAvailable``), else physical memory, else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def human_bytes(value: float) -> str:
    """Binary units, as the OS and torch report memory: ``24.0 GiB``."""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(amount) < 1024 or unit == "PiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def check_fits_in_memory(needed: float, what: str) -> None:
    """A usage error (exit 2) when ``needed`` bytes exceed the memory available now.

    Args:
        needed: bytes the request would allocate at least.
        what: the request in the user's words, e.g. "--num-samples 100000 (the KV cache)".
    """
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise UsageError(
            f"{what} needs at least {human_bytes(needed)} of memory; this machine has {human_bytes(available)} "
            f"available"
        )


class PeakMemory:
    """Filled in when the measured block ends: bytes the peak RSS rose by, or None where it cannot be read."""

    increase: int | None = None


@contextlib.contextmanager
def peak_rss_increase() -> Iterator[PeakMemory]:
    """Measure how far the peak resident memory rises above the current RSS (Linux: reset the peak through
    ``/proc/self/clear_refs``, then read VmHWM)."""
    probe = PeakMemory()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
        before = _proc_status_bytes("VmRSS")
    except OSError:
        before = None
    try:
        yield probe
    finally:
        peak = _proc_status_bytes("VmHWM") if before is not None else None
        probe.increase = max(0, peak - before) if peak is not None and before is not None else None


def _proc_status_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(f"{field_name}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
