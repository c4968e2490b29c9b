"""`rl generate --prompts`: 32 prompts of different lengths at --batch-size 1 and 8, beside transformers' batched
`generate()` (left padding, attention mask) on the same prompts, in one run.

Random 124M GPT-2 weights (speed does not depend on their values; the model and tokenizer of
benchmarks/generate.py), saved once in the Hugging Face layout. Every run is a fresh process on --threads threads
that loads the model, warms up on two prompts, then generates for all the prompts in consecutive batches: exactly
--new-tokens new tokens each (top-k 50, temperature 1, no end-of-text stop), so both tools do the same work.

    pip install '.[bench]'
    python benchmarks/generate_batch.py [--prompts 32] [--new-tokens 32] [--batch-sizes 1,8] [--dtypes float32]
                                        [--threads 2] [--runs 1] [--no-transformers]

rl runs the code of `rl generate --prompts` (tasks.batch.generate_locally), imported from this checkout's src/.
Per tool, dtype and batch size it prints prompts/s and new tokens/s (all prompts, model loading excluded, prompt
processing included), their ratio to the same tool and dtype at batch 1, and peak RSS above a bare `import torch`:
medians with the range over --runs rounds. It also checks what rl promises: the rows (new token ids) are the same
at every batch size (each prompt samples with its own seed) up to rounding; the count of equal rows is printed, for
the random model (whose nearly flat distributions turn any rounding difference into another draw) and for the
bundled, trained shakespeare model, greedy and sampled.
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
from generate import make_model

PROMPT_SETUP = """
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
folder, dtype, new_tokens, count, batch = sys.argv[1], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
words = "the quick brown fox jumps over the lazy dog while the model writes one token at a time".split()
# Prompts of 4 to 46 words, in an order that mixes short and long ones within every batch.
prompts = [" ".join(words[(i + j) % len(words)] for j in range(4 + (i * 11) % 43)) for i in range(count)]
"""

RL = (
    PROMPT_SETUP
    + """
from rlcli.tasks.batch import GenerateJob, PromptLine, generate_locally
from rlcli.tasks.generate import SamplingOptions
options = SamplingOptions(max_new_tokens=new_tokens, temperature=1.0, top_k=50, seed=0, ignore_eos=True)
job = GenerateJob(folder, dtype, "cpu", options)
generator = job.load()
lines = [PromptLine(i, p) for i, p in enumerate(prompts)]
rows = {}
generate_locally(job, generator, lines[:2], lambda i, row: None, 2)  # warm-up
started = time.perf_counter()
generate_locally(job, generator, lines, rows.__setitem__, batch)
seconds = time.perf_counter() - started
tokens = [rows[i]["tokens"] for i in range(count)]
print(json.dumps({"seconds": seconds, "new_tokens": sum(map(len, tokens)), "rows": tokens}))
"""
)

TRANSFORMERS = (
    PROMPT_SETUP
    + """
import transformers
from tokenizers import Tokenizer
from transformers import GPT2LMHeadModel
transformers.logging.set_verbosity_error()
model = GPT2LMHeadModel.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
tokenizer = Tokenizer.from_file(folder + "/tokenizer.json")
pad = tokenizer.token_to_id("<|endoftext|>")
settings = dict(do_sample=True, temperature=1.0, top_k=50, top_p=1.0, pad_token_id=pad, eos_token_id=None)
def run(chunk, n):
    ids = [tokenizer.encode(p).ids for p in chunk]
    width = max(map(len, ids))
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    with torch.inference_mode():
        out = model.generate(input_ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **settings)
    return out.shape[0] * (out.shape[1] - width)
torch.manual_seed(0)
run(prompts[:2], new_tokens)  # warm-up
started = time.perf_counter()
produced = sum(run(prompts[i : i + batch], new_tokens) for i in range(0, count, batch))
print(json.dumps({"seconds": time.perf_counter() - started, "new_tokens": produced}))
"""
)


def run(code: str, *args: str) -> tuple[dict, int]:
    _, peak, out = run_measured(code, *args)
    return json.loads(out.strip().splitlines()[-1]), peak


def figure(values: list[float], digits: int = 1) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:.{digits}f}"
    return f"{middle:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


SHAKESPEARE_WORDS = "ROMEO: what light through yonder window breaks it is the east and Juliet is the sun"


def print_row_agreement(count: int, new_tokens: int, sizes: list[int], dtypes: list[str], threads: int) -> None:
    """How many rows of the bundled (trained) model are the same at every batch size, greedy and sampled."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # this checkout's rlcli
    import torch

    from rlcli.tasks.batch import GenerateJob, PromptLine, generate_locally
    from rlcli.tasks.generate import SamplingOptions

    torch.set_num_threads(threads)
    words = SHAKESPEARE_WORDS.split()
    lines = [
        PromptLine(i, " ".join(words[(i + j) % len(words)] for j in range(2 + (i * 7) % 15))) for i in range(count)
    ]
    print(f"\nThe bundled shakespeare model, {count} prompts of 2-16 words, {new_tokens} new tokens, seed 0: rows (new "
          f"token ids) identical at batch sizes {','.join(map(str, sizes))}")  # fmt: skip
    for dtype in dtypes:
        for temperature in (0.0, 1.0):
            options = SamplingOptions(max_new_tokens=new_tokens, temperature=temperature, seed=0, ignore_eos=True)
            job = GenerateJob("shakespeare", dtype, "cpu", options)
            generator, runs = job.load(), []
            for size in sizes:
                rows: dict = {}
                generate_locally(job, generator, lines, rows.__setitem__, size)
                runs.append([rows[i]["tokens"] for i in range(count)])
            same = sum(all(run[i] == runs[0][i] for run in runs) for i in range(count))
            kind = "greedy" if temperature == 0 else "top-k 50, temperature 1"
            print(f"  {dtype}, {kind}: {same} of {count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16, int8 (rl only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="rounds; figures are medians with their range")
    parser.add_argument("--no-transformers", action="store_true", help="rl only")
    parser.add_argument("--no-rows", action="store_true", help="skip the row agreement of the bundled model")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    dtypes = args.dtypes.split(",")
    started = time.perf_counter()
    runs = [("rl", d, b) for d in dtypes for b in sizes]
    if not args.no_transformers:
        runs += [("transformers", d, b) for d in dtypes if d != "int8" for b in sizes]
    results: dict[tuple[str, str, int], list[dict]] = {key: [] for key in runs}
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # the saving bar would clutter the report
    with tempfile.TemporaryDirectory() as tmp:
        make_model(Path(tmp))
        _, baseline, _ = run_measured("import torch")
        for _ in range(args.runs):
            for tool, dtype, batch in runs:  # interleaved within a round
                code = RL if tool == "rl" else TRANSFORMERS
                figures, peak = run(code, tmp, str(args.threads), dtype, str(args.new_tokens), str(args.prompts),
                                    str(batch))  # fmt: skip
                results[(tool, dtype, batch)].append(figures | {"rss": peak - baseline})
    print(
        f"GPT-2 124M, random weights; {args.prompts} prompts of 4-46 words, {args.new_tokens} new tokens each; "
        f"top-k 50, temperature 1; {args.threads} threads; {args.runs} round(s)\n"
    )
    print(f"| tool | dtype | batch | prompts/s | new tokens/s | x batch {sizes[0]} | peak RSS MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for tool, dtype, batch in runs:
        figures = results[(tool, dtype, batch)]
        first = results[(tool, dtype, sizes[0])]
        prompts = [args.prompts / f["seconds"] for f in figures]
        tokens = [f["new_tokens"] / f["seconds"] for f in figures]
        ratio = [a["seconds"] / b["seconds"] for a, b in zip(first, figures, strict=True)]
        rss = [f["rss"] / 2**20 for f in figures]
        print(f"| {tool} | {dtype} | {batch} | {figure(prompts, 2)} | {figure(tokens)} | {figure(ratio, 2)} | "
              f"{figure(rss, 0)} |")  # fmt: skip
    print()
    for dtype in dtypes:
        rows = [results[("rl", dtype, b)][0]["rows"] for b in sizes]
        same = sum(all(r[i] == rows[0][i] for r in rows) for i in range(args.prompts))
        print(f"rl {dtype}, random weights: {same} of {args.prompts} rows identical at batch sizes {args.batch_sizes}")
    if not args.no_rows:
        print_row_agreement(args.prompts, args.new_tokens, sizes, dtypes, args.threads)
    print(f"\ntime: {time.strftime('%Y-%m-%d %H:%M')}; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
