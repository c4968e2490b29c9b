"""`rl generate` vs Hugging Face transformers `generate()` on the 124M GPT-2 configuration.

Random weights (speed does not depend on their values), saved once in the Hugging Face layout; both tools load the
same folder, get the same prompt tokens, sample with the same settings (temperature 1, top-k 50, no EOS stop) on the
same number of threads, each in a fresh process, in one run:

    pip install '.[bench]'
    python benchmarks/generate.py [--new-tokens 128] [--prompt-tokens 32] [--threads 2]

Per tool and dtype it prints load time, time to first token, decode tokens/s (tokens after the first, divided by
the time after the first) and peak RSS above a bare `import torch`. Targets on CPU: rl >= 1.25x transformers'
tokens/s in float32 and >= 2x with bfloat16; rl's peak RSS <= weights + 300 MB over the baseline.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _measure import run_measured

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    common = (str(args.threads), None, str(args.new_tokens), str(args.prompt_tokens))
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_model(Path(tmp))
        _, baseline = run("import torch")
        print(
            f"GPT-2 124M, random weights ({weights / 2**20:.0f} MiB in float32); prompt {args.prompt_tokens} words, "
            f"{args.new_tokens} new; top-k 50, temperature 1; {args.threads} threads; "
            f"`import torch` baseline RSS {baseline / 2**20:.0f} MiB\n"
        )
        print(f"{'tool':13} {'dtype':9} {'load s':>7} {'TTFT ms':>8} {'tokens/s':>9} {'RSS over base MiB':>18}")
        results = {}
        for dtype in ("float32", "bfloat16"):
            for tool, code in (("transformers", TRANSFORMERS), ("rl", RL)):
                argv = [tmp, common[0], dtype, *common[2:]]
                figures, rss = run(code, *argv)
                results[(tool, dtype)] = figures
                print(
                    f"{tool:13} {dtype:9} {figures['load']:7.2f} {figures['ttft'] * 1000:8.1f} "
                    f"{figures['tps']:9.1f} {(rss - baseline) / 2**20:18.0f}"
                )
        print()
        tps = {key: value["tps"] for key, value in results.items()}
        print(
            f"rl / transformers tokens/s, float32:  {tps[('rl', 'float32')] / tps[('transformers', 'float32')]:.2f}x"
            " (target >= 1.25x)"
        )
        print(
            f"rl bfloat16 / transformers float32:   {tps[('rl', 'bfloat16')] / tps[('transformers', 'float32')]:.2f}x"
            " (target >= 2x)"
        )
        print(
            f"rl / transformers tokens/s, bfloat16: {tps[('rl', 'bfloat16')] / tps[('transformers', 'bfloat16')]:.2f}x"
        )
        print(f"time: {time.strftime('%Y-%m-%d %H:%M')}")


if __name__ == "__main__":
    main()
