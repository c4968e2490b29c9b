"""`rl summary` vs torchinfo vs fvcore on vit_h_14 and swin_t: wall time, peak RSS and the MACs each reports.

Each tool runs in a fresh process (imports included, as a user pays them), one after another, in one run:

    pip install '.[bench]'      # torchinfo
    python benchmarks/summary.py [--models vit_h_14 swin_t] [--repeat 3]

Prints one row per tool and model, then the ratios rl/torchinfo (targets: wall <= 0.3x, RSS <= 0.3x) and the
wall time of `rl --help` (target < 0.3 s). The best of --repeat runs is kept for each (least disturbed).
The rl row counts afresh (--no-cache); a last table times rl with its result cache, cold and cached.
"""

from __future__ import annotations

import argparse
import json

from _measure import rl_summary_script, run_measured

# rl runs as users run it (`python -m rlcli summary MODEL`); the peers as short scripts doing the same job: build,
# count to depth 3, render. Each prints the MACs it reports on its last stdout line. The peers need real weights.
RL = rl_summary_script(options=("--no-cache",))

TORCHINFO = """
import sys, torch, torchvision, torchinfo
from rlcli.models.registry import get_spec
spec = get_spec(sys.argv[1])
model = spec.build().eval()
stats = torchinfo.summary(model, input_size=(1, *spec.card.default_input), depth=3, verbose=0)
print(stats.total_mult_adds)
"""

FVCORE = """
import sys, torch, warnings
warnings.filterwarnings("ignore")
from fvcore.nn import FlopCountAnalysis, flop_count_table
from rlcli.models.registry import get_spec
spec = get_spec(sys.argv[1])
model = spec.build().eval()
analysis = FlopCountAnalysis(model, torch.zeros(1, *spec.card.default_input))
analysis.unsupported_ops_warnings(False); analysis.uncalled_modules_warnings(False)
flop_count_table(analysis, max_depth=3)
print(analysis.total())
"""

TOOLS = {"rl": RL, "torchinfo": TORCHINFO, "fvcore": FVCORE}


def run_once(code: str, *args: str) -> tuple[float, int, str]:
    """Wall seconds, the child's own peak RSS in bytes and the last stdout line."""
    wall, peak, out = run_measured(code, *args)
    return wall, peak, out.strip().splitlines()[-1]


def best_of(repeat: int, code: str, *args: str) -> tuple[float, int, str]:
    runs = [run_once(code, *args) for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_h_14", "swin_t"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    args = parser.parse_args()

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeat} runs each\n")
    results = {}
    print(f"{'model':10} {'tool':10} {'wall s':>8} {'peak RSS MiB':>13} {'MACs reported':>18}")
    for model in args.models:
        for tool, code in TOOLS.items():
            repeat = 1 if tool != "rl" and model == "vit_h_14" else args.repeat  # a real vit_h_14 pass is slow
            wall, rss, macs = best_of(repeat, code, model)
            results[(model, tool)] = (wall, rss, macs)
            print(f"{model:10} {tool:10} {wall:8.2f} {rss / 2**20:13.0f} {int(float(macs)):>18,}")
    print()
    for model in args.models:
        rl_wall, rl_rss, rl_macs = results[(model, "rl")]
        ti_wall, ti_rss, ti_macs = results[(model, "torchinfo")]
        same = "exact" if int(rl_macs) == int(ti_macs) else f"differs by {int(rl_macs) - int(ti_macs):+,}"
        print(
            f"{model}: rl/torchinfo wall {rl_wall / ti_wall:.2f}x (target <= 0.3x), "
            f"RSS {rl_rss / ti_rss:.2f}x (target <= 0.3x); MACs rl vs torchinfo: {same}"
        )
    help_wall = min(
        run_measured("import sys; sys.argv=['rl','--help']; from rlcli.cli import main; main()")[0]
        for _ in range(args.repeat)
    )
    print(f"rl --help: {help_wall:.3f} s (target < 0.3 s)")
    cache_timings(args.models, args.repeat, results)
    if args.json:
        print(json.dumps({f"{m}/{t}": v for (m, t), v in results.items()}, indent=1))


# --- rl summary's result cache (issue 17): cold vs cached ----------------------------------------------------

# As RL, with the cache on; the last line also says whether torch was imported.
RL_CACHE = rl_summary_script(report_torch=True)


def cache_timings(models: list[str], repeat: int, results: dict) -> None:
    """`rl summary MODEL --json` in a fresh process with an empty cache (counts, then writes the entry: cold) and
    again with that entry (cached), each pair in its own empty XDG_CACHE_HOME; best of ``repeat`` pairs, beside
    torchinfo's wall time from ``results``. The cached run must read the same MACs without importing torch."""
    import os
    import tempfile
    from unittest import mock

    print("\nrl summary with its result cache (fresh process each, best of", repeat, "pairs):")
    print(f"{'model':10} {'run':10} {'wall s':>8} {'peak RSS MiB':>13} {'torch imported':>15}")
    for model in models:
        cold, cached = [], []
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as home, mock.patch.dict(os.environ, XDG_CACHE_HOME=home):
                cold.append(run_once(RL_CACHE, model))
                cached.append(run_once(RL_CACHE, model))
                assert os.listdir(os.path.join(home, "rlcli", "summary")), "no entry written"
        for name, runs in (("cold", cold), ("cached", cached)):
            imported = {r[2].split()[0] for r in runs}
            assert {int(r[2].split()[1]) for r in runs} == {int(results[(model, "rl")][2])}, f"{model} {name}: MACs"
            wall, rss = min(r[0] for r in runs), min(r[1] for r in runs)
            results[(model, f"rl {name}")] = (wall, rss, results[(model, "rl")][2])
            print(f"{model:10} {name:10} {wall:8.2f} {rss / 2**20:13.0f} {'yes' if 'True' in imported else 'no':>15}")
    for model in models:
        cold, cached = results[(model, "rl cold")][0], results[(model, "rl cached")][0]
        torchinfo = results[(model, "torchinfo")][0]
        print(f"{model}: cached/cold wall {cached / cold:.3f}x, cached/torchinfo {cached / torchinfo:.3f}x")


if __name__ == "__main__":
    main()
