"""Run a Python snippet in a fresh process and measure its wall time and its own peak RSS.

The peak is the child's VmHWM from /proc, read at exit: ru_maxrss from wait4 would also count the parent's memory
copied in by fork, before exec. The child imports rlcli from this checkout's src/ (first on PYTHONPATH), so a
benchmark measures the code beside it, whatever copy of rlcli is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parent.parent / "src")

_REPORT_PEAK = """
import atexit as _atexit, sys as _sys
def _report_peak():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                _sys.stderr.write("\\nPEAK_RSS_KB=" + line.split()[1] + "\\n")
_atexit.register(_report_peak)
"""


def run_measured(code: str, *args: str) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in bytes, stdout) of ``python -c code args...``; exits on failure."""
    started = time.perf_counter()
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _REPORT_PEAK + code, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {args}\n{done.stderr[-3000:]}")
    peaks = [line for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB=")]
    return wall, int(peaks[-1].split("=")[1]) * 1024, done.stdout


def rl_summary_script(prefix: str = "", options: tuple[str, ...] = (), report_torch: bool = False) -> str:
    """A script for ``run_measured``: ``rl summary PREFIX+ARGV[1] --json OPTIONS`` in-process, as users run it, then
    the MACs it reports on the last stdout line (after whether torch was imported, with ``report_torch``)."""
    torch_flag = '"torch" in sys.modules, ' if report_torch else ""
    return f"""
import sys, json, io, contextlib
from rlcli.cli import main
sys.argv = ["rl", "summary", {prefix!r} + sys.argv[1], "--json", *{list(options)!r}]
buffer = io.StringIO()
try:
    with contextlib.redirect_stdout(buffer):
        main()
except SystemExit as exit:
    assert not exit.code, exit.code
print({torch_flag}json.loads(buffer.getvalue())["models"][0]["macs"])
"""
