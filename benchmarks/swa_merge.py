"""`rl swa-merge` vs timm's avg_checkpoints approach vs a naive load-all-then-average.

Writes N random resnet50 checkpoints (about 98 MiB each) to a temporary folder, then, in one run, averages them
with each tool in a fresh process and prints wall time and peak RSS (the child's own VmHWM), each less the
RSS of a bare `import torch`:

    python benchmarks/swa_merge.py                 # 5 and 20 checkpoints
    python benchmarks/swa_merge.py --counts 5

Targets: rl's peak RSS over the import-torch baseline <= 3 x one checkpoint at 20 inputs; wall <= 0.5 x timm's.
timm's approach is written out here as a plain script (its avg_checkpoints.py: torch.load each file whole, add
every tensor as a float64 copy into a running sum, divide, cast back, save), so timm need not be installed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _measure import run_measured

BASELINE = "import torch"

RL = """
import sys
from rlcli.cli import main
sys.argv = ["rl", "swa-merge", *sys.argv[1:-1], "-o", sys.argv[-1]]
main()
"""

TIMM_APPROACH = """
import sys, torch
paths, out = sys.argv[1:-1], sys.argv[-1]
total, count = {}, 0
for path in paths:
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in state.items():
        value = value.to(torch.float64)
        if key in total:
            total[key] += value
        else:
            total[key] = value.clone()
    count += 1
result = {}
for key, value in total.items():
    value.div_(count)
    result[key] = value.clamp(torch.finfo(torch.float32).min, torch.finfo(torch.float32).max).to(torch.float32)
torch.save(result, out)
"""

NAIVE = """
import sys, torch
paths, out = sys.argv[1:-1], sys.argv[-1]
states = [torch.load(path, map_location="cpu", weights_only=True) for path in paths]
result = {}
for key, value in states[0].items():
    if value.is_floating_point():
        result[key] = torch.stack([s[key].double() for s in states]).mean(0).to(value.dtype)
    else:
        result[key] = states[-1][key]
torch.save(result, out)
"""

TOOLS = {"rl": RL, "timm-approach": TIMM_APPROACH, "naive": NAIVE}


def run(code: str, *args: str) -> tuple[float, int]:
    wall, peak, _ = run_measured(code, *args)
    return wall, peak


def make_checkpoints(folder: Path, count: int) -> list[Path]:
    import torch
    import torchvision

    model = torchvision.models.resnet50()
    paths = []
    for index in range(count):
        torch.manual_seed(index)
        for param in model.parameters():
            param.data.normal_(0, 0.02)
        path = folder / f"epoch{index:03d}.pt"
        torch.save(model.state_dict(), path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[5, 20])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_checkpoints(folder, max(args.counts))
        one = paths[0].stat().st_size
        _, baseline = run(BASELINE)
        print(f"one checkpoint: {one / 2**20:.1f} MiB; `import torch` baseline RSS: {baseline / 2**20:.0f} MiB\n")
        print(f"{'inputs':>6} {'tool':14} {'wall s':>7} {'RSS over baseline MiB':>22} {'x checkpoint':>13}")
        for count in args.counts:
            walls = {}
            for tool, code in TOOLS.items():
                out = folder / f"out-{tool}-{count}.pt"
                wall, rss = run(code, *map(str, paths[:count]), str(out))
                out.unlink()
                walls[tool] = wall
                over = rss - baseline
                print(f"{count:>6} {tool:14} {wall:7.2f} {over / 2**20:22.0f} {over / one:13.2f}")
            print(
                f"{count:>6} rl / timm-approach wall: {walls['rl'] / walls['timm-approach']:.2f}x (target <= 0.5x); "
                f"rl / naive: {walls['rl'] / walls['naive']:.2f}x\n"
            )


if __name__ == "__main__":
    main()
