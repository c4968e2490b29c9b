from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
GOLDEN = TESTS / "golden"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def rl(capsys, monkeypatch):
    """Run `rl ARGS...` in-process through the real entry point (error boundary included)."""
    from rlcli.cli import _common, main

    def run(*args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["rl", *args])
        monkeypatch.setattr(_common.STATE, "debug", False)
        capsys.readouterr()
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


# --- result cache (issue 17): never the real ~/.cache ----------------------------------------------------------


@pytest.fixture(autouse=True)
def result_cache_in_tmp(tmp_path_factory, monkeypatch):
    """`rl summary` and `rl compare` keep results in rl's cache folder: in tests, a fresh temporary one per test
    (XDG_CACHE_HOME itself is left alone: the Hugging Face and torch hub caches are found through it)."""
    try:
        from rlcli.core import resultcache
    except ImportError:  # an rl from before the cache
        return None
    folder = tmp_path_factory.mktemp("result-cache")
    monkeypatch.setattr(resultcache, "cache_folder", lambda: folder)
    return folder


def check_golden(name: str, text: str, update: bool = False) -> None:
    """Compare with tests/golden/NAME; RL_UPDATE_GOLDEN=1 rewrites the file instead."""
    import os

    path = GOLDEN / name
    if update or os.environ.get("RL_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path}; run with RL_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8")


# --- running without root's permission override ---------------------------------------------------------------

_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2
_CAPABILITY_VERSION_3 = 0x20080522


def _set_effective_capabilities(clear: int | None = None, restore: int | None = None) -> int:
    """Clear bits from (or restore) this thread's effective capability set; returns the set before the change."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(_CAPABILITY_VERSION_3, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    before = data[0].effective
    data[0].effective = restore if restore is not None else before & ~(clear or 0)
    header = Header(_CAPABILITY_VERSION_3, 0)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    return before


@pytest.fixture
def without_root_override():
    """File permissions apply to this test even when it runs as root (as CI does): the process drops
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its effective set for the test and takes them back after.
    Processes forked meanwhile (decoding workers) inherit the reduced set."""
    import os

    if os.geteuid() != 0:
        yield
        return
    try:
        saved = _set_effective_capabilities(clear=(1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH))
    except OSError as exc:
        pytest.skip(f"cannot drop root's permission override here: {exc}")
    try:
        yield
    finally:
        _set_effective_capabilities(restore=saved)


@pytest.fixture
def one_thread():
    """One intra-op thread, for modules of many small passes (pytestmark = usefixtures("one_thread")): on a loaded
    2-core machine two spinning threads make them 2-10x slower; restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
