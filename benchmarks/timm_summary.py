"""`rl summary timm/MODEL` vs timm's own profiler (benchmark.py --bench profile) on the same timm models.

Each tool runs in a fresh process (imports included, as a user pays them), one after another, in one run:

    pip install '.[timm]'
    python benchmarks/timm_summary.py [--models resnet50 vit_base_patch16_224 convnext_tiny] [--repeat 3]

timm's side is what ``python benchmark.py --model NAME --bench profile --device cpu`` of pytorch-image-models does
when DeepSpeed is not installed (its usual case): ``timm.create_model(NAME)`` with real (random) weights, the
input from ``resolve_data_config``, then ``profile_fvcore(model, input_size, detailed=True)`` — fvcore's
FlopCountAnalysis and ActivationCountAnalysis of a CPU forward, printing the per-module table. benchmark.py is a
script of timm's repository, not of its package, so its steps are inlined below as they are written there. rl
builds on the meta device and counts to depth 3 (its default table). Prints wall time, peak RSS and the MACs each
reports, then the ratios; the best of --repeat runs is kept for each (least disturbed).
"""

from __future__ import annotations

import argparse

from _measure import rl_summary_script, run_measured

RL = rl_summary_script(prefix="timm/")

# benchmark.py's BenchmarkRunner.__init__ + ProfileRunner.run (fvcore branch), pretrained=False, device cpu.
TIMM_PROFILE = """
import sys, io, contextlib, warnings
warnings.filterwarnings("ignore")
import torch, timm
from timm.data import resolve_data_config
from fvcore.nn import FlopCountAnalysis, ActivationCountAnalysis, flop_count_str
model = timm.create_model(sys.argv[1], pretrained=False, in_chans=3)
model.to(device="cpu", dtype=torch.float32)
model.eval()
param_count = sum(m.numel() for m in model.parameters())
input_size = resolve_data_config({}, model=model)["input_size"]
example_input = torch.ones((1,) + input_size)
fca = FlopCountAnalysis(model, example_input)
aca = ActivationCountAnalysis(model, example_input)
with contextlib.redirect_stdout(io.StringIO()):
    print(flop_count_str(fca))
macs, activations = fca.total(), aca.total()
print(int(macs))
"""

TOOLS = {"rl": RL, "timm profile (fvcore)": TIMM_PROFILE}


def best_of(repeat: int, code: str, *args: str) -> tuple[float, int, str]:
    """Best wall seconds and peak RSS (bytes) of ``repeat`` fresh runs, and the MACs the first printed."""
    runs = [run_measured(code, *args) for _ in range(repeat)]
    return min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2].strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_base_patch16_224", "convnext_tiny"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import timm
    import torch

    print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, ", end="")
    print(f"best of {args.repeat} runs each\n")
    print(f"{'model':24} {'tool':22} {'wall s':>8} {'peak RSS MiB':>13} {'MACs reported':>16}")
    results = {}
    for model in args.models:
        for tool, code in TOOLS.items():
            wall, rss, macs = best_of(args.repeat, code, model)
            results[(model, tool)] = (wall, rss, int(float(macs)))
            print(f"{model:24} {tool:22} {wall:8.2f} {rss / 2**20:13.0f} {int(float(macs)):>16,}")
    print()
    print("fvcore also counts normalisation and pooling, and has no count for scaled_dot_product_attention.")
    for model in args.models:
        rl_wall, rl_rss, rl_macs = results[(model, "rl")]
        timm_wall, timm_rss, timm_macs = results[(model, "timm profile (fvcore)")]
        print(
            f"{model}: rl/timm wall {rl_wall / timm_wall:.2f}x, peak RSS {rl_rss / timm_rss:.2f}x; "
            f"MACs rl/fvcore {rl_macs / timm_macs:.4f}"
        )


if __name__ == "__main__":
    main()
