"""`rl generate` vs Hugging Face transformers `generate()` on the 124M GPT-2 configuration, and the memory floor.

Random weights (speed does not depend on their values), saved once in the Hugging Face layout; both tools load the
same folder, get the same prompt tokens, sample with the same settings (temperature 1, top-k 50, no EOS stop) on the
same number of threads, each in a fresh process, in one run:

    pip install '.[bench]'
    python benchmarks/generate.py [--new-tokens 128] [--prompt-tokens 32] [--threads 2] [--runs 2]
                                  [--no-profile] [--no-quality]

rl is imported from this checkout's src/, whatever copy is installed. About 4 minutes on 2 quiet cores.

Per tool and dtype (transformers float32 and bfloat16; rl float32, bfloat16 and int8) it prints load time, time to
first token, decode tokens/s (tokens after the first, divided by the time after the first) and peak RSS above a bare
`import torch`: the median and the range over --runs rounds (tools interleaved within a round).

The floor of each dtype, measured on the same machine: a fresh process streams the weights of the same shapes (the
blocks' four linear layers x 12 and the 50,257 x 768 head, one buffer each: 124 M weights, far beyond any cache)
through the one-row matmul that rl runs for that dtype, in the layout rl stores it, in a loop. Its passes per second
are the tokens/s of a decoder that only reads its weights. Beside it, the read bandwidth of the machine itself
(torch.sum over a buffer of the float32 weights' size): how fast memory goes when no matmul kernel is in the way;
and bfloat16 through a plain F.linear, the kernel rl used before it packed its bfloat16 weights for oneDNN (and the
one transformers runs).

Targets on CPU: rl float32 >= 1.25x transformers float32's tokens/s, bfloat16 >= 2x, int8 >= 3x.

Quality, in the same run: the bundled model's perplexity on tests/data/hamlet_slice.txt in each rl dtype beside
transformers float32, and the random-weight 124M GPT-2's logits in each rl dtype against transformers float32 on
one 64-token sequence (largest and mean difference relative to the logits' standard deviation, top-token agreement).
The profile (--no-profile skips it): where each millisecond of an rl decoding step goes, per dtype (torch.profiler
self CPU time: block matmuls, LM head, attention, other ops, and the Python and dispatch time left over).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _measure import run_measured

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # the quality checks import rlcli here: this checkout's, as the children do
HAMLET = ROOT / "tests" / "data" / "hamlet_slice.txt"

SETUP = """
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
folder, dtype, new_tokens, prompt_tokens = sys.argv[1], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
from tokenizers import Tokenizer
words = "the quick brown fox jumps over the lazy dog while the model writes one token at a time".split()
prompt = " ".join(words[i % len(words)] for i in range(prompt_tokens))
prompt_ids = Tokenizer.from_file(folder + "/tokenizer.json").encode(prompt).ids
"""

RL = (
    SETUP
    + """
from rlcli.tasks.generate import Generator, SamplingOptions, load_language_model
started = time.perf_counter()
lm = load_language_model(folder, dtype=dtype, device="cpu")
load = time.perf_counter() - started
assert lm.tokenizer.encode(prompt).ids == prompt_ids
options = SamplingOptions(max_new_tokens=new_tokens, temperature=1.0, top_k=50, seed=0, ignore_eos=True)
generator = Generator(lm)
generator.generate(prompt, SamplingOptions(max_new_tokens=4, seed=1, ignore_eos=True))  # warm-up
stats = generator.generate(prompt, options).stats
print(json.dumps({"load": load, "ttft": stats.time_to_first_token, "tps": stats.tokens_per_second}))
"""
)

TRANSFORMERS = (
    SETUP
    + """
import transformers
from transformers import GPT2LMHeadModel
transformers.logging.set_verbosity_error()
started = time.perf_counter()
model = GPT2LMHeadModel.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
load = time.perf_counter() - started
ids = torch.tensor([prompt_ids])
settings = dict(do_sample=True, temperature=1.0, top_k=50, top_p=1.0, pad_token_id=0, eos_token_id=None)
def run(n):
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, **settings)
    return time.perf_counter() - started
run(4)  # warm-up
ttft = min(run(1) for _ in range(3))
total = run(new_tokens)
print(json.dumps({"load": load, "ttft": ttft, "tps": (new_tokens - 1) / (total - ttft)}))
"""
)

# GPT-2 124M's weight matrices as rl holds them per dtype (tasks/generate.py: load_gpt2_weights, arrange_for_blas;
# core/quantize.py, core/packing.py), each streamed once per pass by the matmul rl calls for it.
FLOOR = """
import json, sys, time, torch
from torch.nn import functional as F
torch.set_num_threads(int(sys.argv[1]))
dtype, n_embd, n_layer, vocab = sys.argv[2], 768, 12, 50257
shapes = [(3 * n_embd, n_embd), (n_embd, n_embd), (4 * n_embd, n_embd), (n_embd, 4 * n_embd)] * n_layer
shapes.append((vocab, n_embd))
generator = torch.Generator().manual_seed(0)

def layer(out_features, in_features):
    w = torch.empty(out_features, in_features).normal_(generator=generator)
    if dtype == "int8":
        from rlcli.core.quantize import quantize_rows
        q, scales = quantize_rows(w)
        return lambda x: torch.ops.aten._weight_int8pack_mm(x, q, scales), q.nbytes
    if dtype == "bfloat16":
        from rlcli.core.packing import PackedLinear
        packed = PackedLinear(w.bfloat16())
        return packed, w.bfloat16().nbytes
    if dtype == "bfloat16-unpacked":
        w = w.bfloat16().contiguous()
    else:
        w = w.t().contiguous().t()  # float32: [out, in] seen through a view of [in, out] memory
    return lambda x: F.linear(x, w), w.nbytes

layers, nbytes = zip(*(layer(o, i) for o, i in shapes))
kernel_dtype = torch.float32 if dtype == "float32" else torch.bfloat16
inputs = [torch.randn(1, i, dtype=kernel_dtype) for _, i in shapes]
def one_pass():
    for run, x in zip(layers, inputs):
        run(x)
def seconds_per_pass(passes):
    started = time.perf_counter()
    for _ in range(passes):
        one_pass()
    return (time.perf_counter() - started) / passes
one_pass(); one_pass()
best = min(seconds_per_pass(10) for _ in range(3))
big = torch.ones(sum(o * i for o, i in shapes))  # the float32 weights' bytes, read once per sum
def seconds_per_read():
    started = time.perf_counter()
    big.sum()
    return time.perf_counter() - started
read = min(seconds_per_read() for _ in range(10))
print(json.dumps({"pass": best, "bytes": sum(nbytes), "read_bandwidth": big.nbytes / read}))
"""

PROFILE = """
import json, sys, time, torch
from collections import defaultdict
from torch.profiler import profile
torch.set_num_threads(int(sys.argv[2]))
folder, dtype = sys.argv[1], sys.argv[3]
from rlcli.models.language.gpt2 import KVCache, cache_dtype
from rlcli.tasks.generate import load_language_model
lm = load_language_model(folder, dtype=dtype, device="cpu")
model, vocab = lm.model, lm.config.vocab_size
cache = KVCache(lm.config, 1, lm.config.n_positions, cache_dtype(lm.dtype, lm.device), lm.device)
token, steps = torch.tensor([[5]]), 32
with torch.inference_mode():
    model(torch.arange(32)[None], cache, last_only=True)
    for _ in range(8):
        model(token, cache)
    started = time.perf_counter()
    for _ in range(steps):
        model(token, cache)
    wall = (time.perf_counter() - started) / steps
    with profile(record_shapes=True) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            model(token, cache)
        profiled = (time.perf_counter() - started) / steps
matmuls = {"aten::addmm", "aten::mm", "aten::_weight_int8pack_mm", "mkldnn::_linear_pointwise"}
groups = defaultdict(float)
for event in prof.key_averages(group_by_input_shape=True):
    if event.key in matmuls:
        head = any(vocab in shape for shape in event.input_shapes if isinstance(shape, (list, tuple)))
        group = "LM head matmul" if head else "block matmuls"
    elif "scaled_dot_product" in event.key or "flash_attention" in event.key:
        group = "attention"
    else:
        group = "other ops"
    groups[group] += event.self_cpu_time_total / 1e3 / steps
groups["Python and dispatch (profiled wall - ops)"] = profiled * 1e3 - sum(groups.values())
print(json.dumps({"wall_ms": wall * 1e3, "profiled_ms": profiled * 1e3, "groups": groups}))
"""


def run(code: str, *args: str) -> tuple[dict, int]:
    _, peak, out = run_measured(code, *args)
    lines = out.strip().splitlines()
    return (json.loads(lines[-1]) if lines else {}), peak


def make_model(folder: Path) -> int:
    """A random 124M GPT-2 in the HF layout, with a small byte-level BPE tokenizer; returns the weights' bytes."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([Path(__file__).read_text()] * 50, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())
    model.save_pretrained(str(folder))
    return sum(p.numel() * p.element_size() for p in model.parameters())


RUNS = [
    ("transformers", "float32"),
    ("transformers", "bfloat16"),
    ("rl", "float32"),
    ("rl", "bfloat16"),
    ("rl", "int8"),
]
FLOOR_DTYPES = ("float32", "bfloat16", "int8")
# Beside the floors of rl's kernels: bfloat16 through a plain F.linear, the path rl ran before packing its weights.
FLOOR_EXTRA = ("bfloat16-unpacked",)
FLOOR_KERNELS = {
    "float32": "float32 F.linear ([in, out] memory)",
    "bfloat16": "bfloat16 oneDNN, packed (rl)",
    "int8": "int8 _weight_int8pack_mm (rl)",
    "bfloat16-unpacked": "bfloat16 F.linear ([out, in], plain)",
}
TARGETS = {"float32": 1.25, "bfloat16": 2.0, "int8": 3.0}


def figure(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """The median, and the range when there are several values."""
    middle = f"{statistics.median(values) * scale:.{digits}f}"
    if len(values) == 1:
        return middle
    return f"{middle} ({min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f})"


def measure_speed(folder: str, args: argparse.Namespace) -> tuple[dict, dict, int]:
    _, baseline = run("import torch")
    speed: dict[tuple[str, str], list[dict]] = {key: [] for key in RUNS}
    floors: dict[str, list[dict]] = {dtype: [] for dtype in (*FLOOR_DTYPES, *FLOOR_EXTRA)}
    for _ in range(args.runs):
        for dtype in floors:
            floors[dtype].append(run(FLOOR, str(args.threads), dtype)[0])
        for tool, dtype in RUNS:
            code = TRANSFORMERS if tool == "transformers" else RL
            figures, rss = run(code, folder, str(args.threads), dtype, str(args.new_tokens), str(args.prompt_tokens))
            speed[(tool, dtype)].append(figures | {"rss": rss - baseline})
    return speed, floors, baseline


def floor_of(tool: str, dtype: str) -> str:
    """The floor a run is held against: the kernel it multiplies with (transformers' bfloat16 is a plain F.linear)."""
    return "bfloat16-unpacked" if (tool, dtype) == ("transformers", "bfloat16") else dtype


def print_speed(speed: dict, floors: dict) -> None:
    floor_tps = {dtype: [1 / f["pass"] for f in values] for dtype, values in floors.items()}
    print(
        f"{'tool':13} {'dtype':9} {'load s':>16} {'TTFT ms':>18} {'tokens/s':>18} {'RSS over base MiB':>18} "
        f"{'x tf float32':>13} {'of its floor':>13}"
    )
    reference = statistics.median(f["tps"] for f in speed[("transformers", "float32")])
    for (tool, dtype), values in speed.items():
        tps = [f["tps"] for f in values]
        floor = statistics.median(floor_tps[floor_of(tool, dtype)])
        print(
            f"{tool:13} {dtype:9} {figure([f['load'] for f in values], digits=2):>16} "
            f"{figure([f['ttft'] for f in values], 1000):>18} {figure(tps):>18} "
            f"{figure([f['rss'] for f in values], 1 / 2**20, 0):>18} "
            f"{statistics.median(tps) / reference:12.2f}x {statistics.median(tps) / floor:12.0%}"
        )
    print()
    print(
        "floors: one pass = every weight of GPT-2 124M streamed once through the kernel named, no other work "
        "(passes/s = tokens/s of a decoder that only reads its weights)"
    )
    print(f"{'kernel':36} {'MiB/pass':>9} {'passes/s':>18} {'GB/s':>16} {'read-bandwidth passes/s':>24}")
    for dtype, values in floors.items():
        nbytes = values[0]["bytes"]
        print(
            f"{FLOOR_KERNELS[dtype]:36} {nbytes / 2**20:9.0f} {figure(floor_tps[dtype]):>18} "
            f"{figure([nbytes / f['pass'] for f in values], 1e-9):>16} "
            f"{figure([f['read_bandwidth'] / nbytes for f in values]):>24}"
        )
    read = [f["read_bandwidth"] for values in floors.values() for f in values]
    print(f"read bandwidth of the machine (torch.sum over 474 MiB of float32): {figure(read, 1e-9)} GB/s")
    print()
    print(f"{'target':42} {'measured':>9} {'target':>8}")
    for dtype, target in TARGETS.items():
        ratio = statistics.median(f["tps"] for f in speed[("rl", dtype)]) / reference
        verdict = "reached" if ratio >= target else "NOT reached"
        print(f"{f'rl {dtype} / transformers float32 tokens/s':42} {ratio:8.2f}x {f'>= {target}x':>8} {verdict}")
    tf16 = statistics.median(f["tps"] for f in speed[("transformers", "bfloat16")])
    rl16 = statistics.median(f["tps"] for f in speed[("rl", "bfloat16")])
    print(f"{'rl bfloat16 / transformers bfloat16':42} {rl16 / tf16:8.2f}x")


def print_profile(folder: str, threads: int) -> None:
    print(
        "\nrl decoding step, ms per token (32 steps after a 32-token prompt): the wall time, then under "
        "torch.profiler its parts (self CPU time)"
    )
    for dtype in FLOOR_DTYPES:
        figures, _ = run(PROFILE, folder, str(threads), dtype)
        parts = ", ".join(f"{name} {ms:.2f}" for name, ms in figures["groups"].items())
        print(f"  {dtype:9} {figures['wall_ms']:.2f} ms (profiled {figures['profiled_ms']:.2f}): {parts}")


def print_quality(folder: str) -> None:
    import math

    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel

    from rlcli.models.language.gpt2 import DEMO_FOLDER
    from rlcli.tasks.generate import load_language_model, perplexity

    text = HAMLET.read_text(encoding="utf-8")
    reference = GPT2LMHeadModel.from_pretrained(str(DEMO_FOLDER), dtype=torch.float32).eval()
    tokenizer = Tokenizer.from_file(str(DEMO_FOLDER / "tokenizer.json"))
    ids = torch.tensor([tokenizer.token_to_id("<|endoftext|>"), *tokenizer.encode(text).ids])
    total, context = 0.0, reference.config.n_positions
    with torch.no_grad():
        for start in range(0, len(ids) - 1, context):
            window = ids[start : start + context + 1]
            logits = reference(window[None, :-1]).logits[0]
            total += torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum").item()
    base = math.exp(total / (len(ids) - 1))
    print(f"\nquality: perplexity of the bundled model on {HAMLET.name} ({len(ids) - 1} tokens)")
    print(f"  transformers float32 {base:.3f}")
    for dtype in FLOOR_DTYPES:
        value = perplexity(load_language_model("shakespeare", dtype=dtype, device="cpu"), text)
        print(f"  rl {dtype:17} {value:.3f} ({value / base - 1:+.2%})")

    print("quality: random-weight GPT-2 124M, logits on one 64-token sequence vs transformers float32")
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    sequence = torch.randint(0, 2000, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(sequence).logits.double()
    spread = expected.std().item()
    for dtype in FLOOR_DTYPES:
        lm = load_language_model(folder, dtype=dtype, device="cpu")
        with torch.inference_mode():
            logits = lm.model(sequence).double()
        error = (logits - expected).abs()
        agree = (logits.argmax(-1) == expected.argmax(-1)).double().mean().item()
        largest, mean = error.max().item() / spread, error.mean().item() / spread
        print(
            f"  rl {dtype:9} max |diff| {largest:.3f} x std, mean {mean:.4f} x std (std {spread:.3f}); "
            f"same top token at {agree:.0%} of positions"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2, help="rounds; figures are medians with their range")
    parser.add_argument("--no-profile", action="store_true", help="skip where each millisecond of a step goes")
    parser.add_argument("--no-quality", action="store_true", help="skip the perplexity and logit comparisons")
    args = parser.parse_args()
    started = time.perf_counter()
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # saving and loading bars would clutter the report
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_model(Path(tmp))
        speed, floors, baseline = measure_speed(tmp, args)
        print(
            f"GPT-2 124M, random weights ({weights / 2**20:.0f} MiB in float32); prompt {args.prompt_tokens} words, "
            f"{args.new_tokens} new; top-k 50, temperature 1; {args.threads} threads; {args.runs} round(s); "
            f"`import torch` baseline RSS {baseline / 2**20:.0f} MiB\n"
        )
        print_speed(speed, floors)
        if not args.no_profile:
            print_profile(tmp, args.threads)
        if not args.no_quality:
            print_quality(tmp)
    print(
        f"\ntime: {time.strftime('%Y-%m-%d %H:%M')}; {time.perf_counter() - started:.0f} s; "
        f"python {sys.version.split()[0]}"
    )


if __name__ == "__main__":
    main()
