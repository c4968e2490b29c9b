"""What `rl summary`'s options cost (issue 18): the default path, beside the same path of an earlier revision, and
--by-op, --train, --dtype bfloat16 and --counter all, each measured in one run.

    python benchmarks/summary_options.py [--model swin_t] [--baseline 7dfa683] [--repeat 7]

Each variant runs `tasks.summary.summarize` in a fresh process (imports paid once, outside the timing) after one
warm-up call, and keeps the best and median CPU seconds (time.process_time) of --repeat calls: CPU time is less
disturbed than wall time by other work on a shared machine. --baseline REV counts the default path with the
src/ of that git revision (extracted with `git archive` into a temporary folder): the default path must not be
noticeably slower than before the always-on figures (bytes, intensity, operators not counted) were added.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, statistics, sys, time
from rlcli.tasks.summary import summarize
model, repeat, options = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
summary = summarize(model, **options)
times = []
for _ in range(repeat):
    started = time.process_time()
    summary = summarize(model, **options)
    times.append(time.process_time() - started)
print(json.dumps({"best": min(times), "median": statistics.median(times), "macs": summary.macs}))
"""

VARIANTS = {
    "default": {},
    "--by-op": {"by_op": True},
    "--train": {"train": True},
    "--dtype bfloat16": {"dtype": "bfloat16"},
    "--counter all": {"counter": "all"},
}


def measure(src: Path, model: str, repeat: int, options: dict) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, model, str(repeat), json.dumps(options)],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="swin_t")
    parser.add_argument("--baseline", help="a git revision whose default path to time beside this one")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        if args.baseline:
            git = ["git", "archive", args.baseline, "src"]
            archive = subprocess.run(git, cwd=ROOT, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
            rows.append((f"default at {args.baseline}", measure(Path(folder) / "src", args.model, args.repeat, {})))
        repeat_of = {"--counter all": 1}  # real weights and three other counters: one call is enough to see it
        for name, options in VARIANTS.items():
            rows.append((name, measure(ROOT / "src", args.model, repeat_of.get(name, args.repeat), options)))
    default = next(figures for name, figures in rows if name == "default")
    print(f"rl summary {args.model}: CPU seconds per call (best and median of {args.repeat}; --counter all: 1)")
    for name, figures in rows:
        ratio = figures["best"] / default["best"]
        print(f"  {name:24} best {figures['best']:7.3f}  median {figures['median']:7.3f}  {ratio:5.2f}x default")


if __name__ == "__main__":
    main()
