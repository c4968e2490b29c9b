"""`rl classify -o DIR` on this machine vs the same run with `--ray`, side by side: images/s and peak memory.

The workload of benchmarks/classify.py (generated JPEGs of 160-2400 px, random-weight checkpoints), each run in a
fresh process through rl's command line, timed from the command's start to its manifest (weights loading, Ray's
start-up and the model actors' loading included):

- local: `rl classify IMAGES -m MODEL -w FILE -o DIR` (decoding in --workers processes, the model in this process);
- ray (cold): the same with `--ray --workers 1`, which starts a local Ray instance (2 CPUs here: one model actor,
  decoding tasks on the other CPU) — what a first run on a laptop pays;
- ray (warm): the same with the Ray instance started before the timer — what a run pays on a cluster that is
  already up (RAY_ADDRESS).

Memory: the driver's own peak RSS (VmHWM), and the peak of the proportional set size (PSS: shared pages such as
Ray's object store split between the processes that map them) summed over the driver and every process it started
(Ray's GCS, raylet and workers; the local run's decoding workers), sampled every 0.2 s. The rows of the three runs
are compared (sorted by path): they must be equal.

    python benchmarks/ray.py [--images 300] [--model mobilenet_v3_large] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = str(Path(__file__).resolve().parent.parent / "src")

RUN = r"""
import json, os, sys, threading, time
from pathlib import Path

def tree_pss(root):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        except (OSError, StopIteration):
            pass
    return total

peak = [0]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], tree_pss(os.getpid()))
        time.sleep(0.2)

mode, args = sys.argv[1], sys.argv[2:]
import torch, torchvision  # the imports every run pays, outside the timer
import rlcli.tasks.batch, rlcli.tasks.classify
from rlcli.cli import main
if mode == "ray-warm":
    rlcli.tasks.batch.connect_ray()
threading.Thread(target=sample, daemon=True).start()
sys.argv = ["rl", "classify", *args]
started = time.perf_counter()
try:
    main()
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
seconds = time.perf_counter() - started
done.set()
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
print(json.dumps({"seconds": seconds, "driver_peak": hwm, "tree_peak": peak[0]}))
"""


def run(mode: str, args: list[str]) -> dict:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)  # a local instance: this benchmark compares one machine's two paths
    done = subprocess.run([sys.executable, "-c", RUN, mode, *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rows(folder: Path) -> list[dict]:
    found = []
    for shard in sorted(folder.glob("part-*.jsonl")):
        found.extend(json.loads(line) for line in shard.read_text().splitlines())
    return sorted(found, key=lambda r: r["path"])


def compare_rows(reference: list[dict], other: list[dict]) -> tuple[bool, float]:
    """Same paths, labels and ranks, probabilities within 1e-5, and the largest probability difference.

    A Ray actor runs torch on its own CPUs (one thread here) and the local run on every core: a reduction split
    over another number of threads may round differently in the last bits (tests/test_ray.py holds the rows equal
    at one thread each)."""
    if [r["path"] for r in reference] != [r["path"] for r in other]:
        return False, float("inf")
    largest = 0.0
    for a, b in zip(reference, other, strict=True):
        if a.get("error") != b.get("error"):
            return False, float("inf")
        pairs = list(zip(a.get("top_k", []), b.get("top_k", []), strict=True))
        if any((x["label"], x["rank"]) != (y["label"], y["rank"]) for x, y in pairs):
            return False, float("inf")
        largest = max([largest, *(abs(x["probability"] - y["probability"]) for x, y in pairs)])
    return largest <= 1e-5, largest


def main() -> None:
    import torch
    import torchvision

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from classify import make_images

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--model", default="mobilenet_v3_large")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, weights = Path(tmp) / "images", Path(tmp) / "weights.pth"
        make_images(folder, args.images)
        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(args.model).state_dict(), weights)
        common = [str(folder), "-m", args.model, "-w", str(weights), "-b", str(args.batch_size)]
        print(f"{args.images} JPEGs, 160-2400 px; {args.model}, batch {args.batch_size}; {os.cpu_count()} CPUs\n")
        print(f"{'path':12} {'wall s':>7} {'images/s':>9} {'driver peak MiB':>16} {'all processes MiB':>18}")
        figures, outputs = {}, {}
        for mode, extra in (
            ("local", []),
            ("ray-cold", ["--ray", "--workers", "1"]),
            ("ray-warm", ["--ray", "--workers", "1"]),
        ):
            outputs[mode] = Path(tmp) / mode
            result = run(mode, [*common, *extra, "-o", str(outputs[mode])])
            figures[mode] = result | {"rate": args.images / result["seconds"]}
            print(
                f"{mode:12} {result['seconds']:7.1f} {figures[mode]['rate']:9.2f} "
                f"{result['driver_peak'] / 2**20:16.0f} {result['tree_peak'] / 2**20:18.0f}"
            )
        local = figures["local"]
        for mode in ("ray-cold", "ray-warm"):
            print(
                f"{mode}: {figures[mode]['rate'] / local['rate']:.2f}x the local images/s, "
                f"{figures[mode]['tree_peak'] / local['tree_peak']:.2f}x its memory (all processes)"
            )
        reference = rows(outputs["local"])
        for mode in ("ray-cold", "ray-warm"):
            same, largest = compare_rows(reference, rows(outputs[mode]))
            verdict = "equal" if same else "DIFFERENT"
            print(f"{mode}: rows {verdict} to the local run's, sorted by path ({len(reference)} rows; labels exact, "
                  f"probabilities differ by at most {largest:.1e})")  # fmt: skip
            if not same:
                raise SystemExit(1)


if __name__ == "__main__":
    main()
