"""`rl generate [PROMPT]`: text from a GPT-2 model, streamed token by token."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rlcli.cli._common import STATE, Device, note, print_json, report_problem, stdout_is_terminal, warn
from rlcli.errors import UsageError

if TYPE_CHECKING:
    from rlcli.tasks.generate import GenerationResult, Sample

HELP = """Generate text with a GPT-2 model: KV cache, temperature, top-k/top-p, seeds, streaming.

The prompt is PROMPT, or stdin when PROMPT is '-' or absent and stdin is piped. Only the continuation is printed
(--echo prepends the prompt). A single sample streams token by token on a terminal; several samples are each
printed as soon as they end, under a '--- sample N ---' line (those reaching --max-new-tokens last).

--model takes a folder in the Hugging Face layout (config.json, model.safetensors or pytorch_model.bin,
tokenizer.json or vocab.json and merges.txt), a Hub name (gpt2, openai-community/gpt2, distilgpt2) found in the
local Hugging Face cache, or 'shakespeare', the small model bundled with rl. Without --model: gpt2 when it is
cached, else shakespeare. rl never downloads.

Sampling defaults are Hugging Face's: temperature 1, top-k 50, top-p 1 (off); --temperature 0 is greedy.

--dtype int8 quantises the linear layers and the LM head to int8 at load time (one scale per output channel,
from the float weights; bfloat16 activations): the fastest on x86 CPUs. --dtype auto picks the fastest format
the device supports well and names it on stderr.

Examples:

\b
  rl generate --top-k 40 "Hello"
  echo "The meaning of life is" | rl generate -n 50 --seed 1
  rl generate -m ./my-gpt2 --temperature 0 --stop "\\n\\n" "Q: What is SWA?\\nA:"
  rl generate --num-samples 3 --json "Once upon a time" | jq -r '.samples[].text'
  rl generate --dtype int8 --stats "The meaning of life is"
  rl generate --prompts prompts.jsonl -o out.jsonl --temperature 0 --ray --workers 4

--prompts FILE.jsonl runs many prompts ({"prompt": "...", "id": ...} per line; id defaults to the line number),
the model loaded once, and writes one JSON line per prompt, in the file's order: id, text, tokens (the new token
ids) and finish_reason, or id and error. --batch-size consecutive prompts (8) are decoded together, left-padded
to the longest, each row ending on its own. Prompt k of the file (from 0) samples with seed --seed + k (without
--seed, a seed drawn for the run and named on stderr), so the batch size does not change a row's draws: each row
is what `rl generate --seed SEED+k PROMPT` prints, up to rounding (a matmul over more rows may round a logit
differently, which in bfloat16 and int8 can change a sampled token). With --ray the batches are spread over
--workers actors on a Ray cluster (RAY_ADDRESS, else a local instance), one batch per task.
"""


class GenerateDType(str, Enum):
    """--dtype of rl generate: the float dtypes of other commands, weight-only int8, or auto."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    int8 = "int8"
    auto = "auto"


def register(app: typer.Typer) -> None:
    app.command("generate", help=HELP)(generate_command)


def generate_command(
    prompt: str | None = typer.Argument(None, help="The prompt; '-' or absent reads stdin."),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Folder, Hub name in the local cache, or 'shakespeare' (bundled). Default: gpt2 if cached, else "
        "shakespeare.",
    ),
    max_new_tokens: int = typer.Option(100, "--max-new-tokens", "-n", help="Tokens to generate per sample."),
    temperature: float = typer.Option(1.0, "--temperature", "-t", help="Sampling temperature; 0 = greedy."),
    top_k: int = typer.Option(50, "--top-k", help="Sample from the k most likely tokens; 0 = off."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling: smallest set with this mass; 1 = off."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help="> 1 discourages repeats."),
    seed: int | None = typer.Option(None, "--seed", help="Same seed, same machine -> same text."),
    num_samples: int = typer.Option(1, "--num-samples", help="Independent samples, generated as one batch."),
    stop: list[str] = typer.Option([], "--stop", help="End a sample at this string (repeatable)."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Keep going past <|endoftext|>."),
    dtype: GenerateDType = typer.Option(
        GenerateDType.float32,
        "--dtype",
        help="Weights: float32, bfloat16, int8 (weight-only, bfloat16 activations) or auto (fastest here; says which).",
    ),
    device: Device = typer.Option(Device.auto, "--device", help="auto picks cuda when available."),
    echo: bool = typer.Option(False, "--echo", help="Print the prompt before the continuation."),
    stream: bool | None = typer.Option(None, "--stream/--no-stream", help="Stream tokens (default: on a terminal)."),
    stats: bool = typer.Option(False, "--stats", help="Print token counts and speed to stderr."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document with ids and log-probs."),
    prompts: Path | None = typer.Option(None, "--prompts", help="JSON Lines of prompts: one result line each."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="With --prompts: write the results here (default: stdout)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace --output if it exists."),
    ray: bool = typer.Option(False, "--ray", help="With --prompts: run on a Ray cluster (pip install 'rlcli[ray]')."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="With --ray: model actors."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", min=0, help="With --ray: GPUs per actor."),
    batch_size: int = typer.Option(
        8, "--batch-size", "-b", min=1, help="With --prompts: prompts decoded together (and per task with --ray)."
    ),
) -> None:
    from rlcli.tasks.generate import Generator, SamplingOptions, default_model, load_language_model

    options = SamplingOptions(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        num_samples=num_samples,
        stop=tuple(decode_escapes(s) for s in stop),
        ignore_eos=ignore_eos,
    )
    options.validate()
    if prompts is None and (output is not None or ray):
        raise UsageError("-o and --ray go with --prompts FILE (one prompt per line)")
    if prompts is not None:
        if prompt is not None or num_samples != 1 or json_out or echo:
            raise UsageError("--prompts writes one JSON line per prompt: no PROMPT, --num-samples, --json or --echo")
        if model is None:
            model, why = default_model()
            if why:
                note(why)
        if options.seed is None:
            options = replace(options, seed=int.from_bytes(os.urandom(8), "little") >> 2)
            if options.temperature > 0:
                note(f"seed {options.seed} (prompt k of the file samples with seed {options.seed} + k)")
        run_prompts(prompts, output, force, model, dtype.value, device.value, options, ray, workers, gpus_per_worker,
                    batch_size)  # fmt: skip
        return
    text = read_prompt(prompt)
    if model is None:
        model, why = default_model()
        if why:
            note(why)
    lm = load_language_model(model, dtype=dtype.value, device=device.value)
    if lm.auto_reason:
        note(f"--dtype auto: {lm.weights} ({lm.auto_reason})")
    streaming = (stdout_is_terminal() if stream is None else stream) and not json_out and num_samples == 1
    if streaming and echo:
        sys.stdout.write(text)
        sys.stdout.flush()
    on_finish = None if json_out or streaming else sample_printer(text if echo else "", headers=num_samples > 1)
    result = Generator(lm).generate(text, options, on_text=write_through if streaming else None, on_finish=on_finish)
    for message in result.warnings:
        warn(message)
    if json_out:
        print_json(result.to_dict())
    elif streaming:
        sys.stdout.write("\n")
    if stats:
        print_stats(result)
    if result.interrupted:
        sys.stdout.flush()
        raise KeyboardInterrupt


def run_prompts(path, output, force, model, dtype, device, options, ray, workers, gpus_per_worker, batch_size) -> None:
    """--prompts: one row per prompt, in the file's order, to -o (written in one step) or stdout."""
    import json

    from rlcli.cli._batch import finish, progress_reporter
    from rlcli.core.files import check_output_file
    from rlcli.tasks.batch import (
        GenerateJob,
        Progress,
        RayOptions,
        generate_locally,
        generate_on_ray,
        import_ray,
        read_prompts,
        write_jsonl,
    )

    if ray:
        import_ray()
    if output is not None:
        check_output_file(output, force=force)
    lines = read_prompts(path)
    job = GenerateJob(model, dtype, device, options)
    rows: dict[int, dict] = {}
    progress = Progress(len(lines), report=progress_reporter("generated"))

    def sink(position: int, row: dict) -> None:
        if position in rows:
            return  # a task Ray ran again after a worker died
        rows[position] = row
        if row.get("error") is not None:
            report_problem(f"prompt {row['id']}", row["error"])
        progress.count(row.get("error") is not None)

    if ray:
        from rlcli.tasks.generate import resolve_model_folder

        resolve_model_folder(model)  # a model that is nowhere is one error here, not one per worker
        generate_on_ray(job, lines, RayOptions(workers, gpus_per_worker, batch_size, quiet=not STATE.debug), sink)
    else:
        generate_locally(job, job.load(), lines, sink, batch_size)
    ordered = [rows[i] for i in range(len(lines))]
    if output is not None:
        write_jsonl(output, ordered, overwrite=force)
    else:
        sys.stdout.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in ordered)
        sys.stdout.flush()
    failed = sum(row.get("error") is not None for row in ordered)
    finish(progress, len(ordered), failed, 0, output or Path("stdout"), noun="prompts")


def read_prompt(prompt: str | None) -> str:
    from rlcli.errors import RlError, UsageError

    if prompt is not None and prompt != "-":
        return prompt
    if sys.stdin is None or (prompt is None and sys.stdin.isatty()):
        raise UsageError("no prompt: give PROMPT, or pipe text on stdin ('' starts from <|endoftext|>)")
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RlError(f"stdin is not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r})") from None


def decode_escapes(text: str) -> str:
    """``\\n`` and ``\\t`` typed in a shell become the characters (for --stop)."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def write_through(index: int, delta: str) -> None:
    sys.stdout.write(delta)
    sys.stdout.flush()


def sample_printer(prefix: str, headers: bool) -> Callable[[int, Sample], None]:
    """Prints each sample as it finishes, after ``prefix``; with ``headers``, under a ``--- sample N ---`` line and
    a blank line apart from the previous one."""
    printed = 0

    def print_sample(index: int, sample: Sample) -> None:
        nonlocal printed
        if headers:
            sys.stdout.write(f"{chr(10) if printed else ''}--- sample {index + 1} ---\n")
        sys.stdout.write(prefix + sample.text + "\n")
        sys.stdout.flush()
        printed += 1

    return print_sample


def print_stats(result: GenerationResult) -> None:
    s = result.stats
    note(
        f"model {result.model}: load {s.load_seconds:.2f} s; prompt {s.prompt_tokens} tokens; "
        f"{s.new_tokens} new tokens; time to first token {s.time_to_first_token * 1000:.0f} ms; "
        f"{s.tokens_per_second:.1f} tokens/s after it; seed {result.seed}"
    )
