"""What this machine can hold: a cost is checked up front, so that an absurd option fails in a line, not an OOM kill.

No torch here: the checks run before anything heavy is imported or allocated.
"""

from __future__ import annotations

import os

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
