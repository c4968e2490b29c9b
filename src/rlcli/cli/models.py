"""`rl models [PATTERN]`: the models rl knows, read from the static index (no torch import)."""

from __future__ import annotations

import typer

from rlcli.cli._common import Column, choose_format, print_csv, print_json, print_table, si, size_bytes, thousands
from rlcli.errors import RlError

HELP = """List the models rl knows, with parameters and MACs at their default input.

PATTERN is a shell glob (resnet*) or a plain substring (mobilenet); it matches names and families.

Examples:

\b
  rl models
  rl models 'resnet*'
  rl models swin --json
  rl models --task detection
  rl models --paper
  rl models --cached                 # what the local caches hold that rl runs
"""


def complete_task(incomplete: str) -> list[str]:
    from rlcli.models.catalog import load_index

    return sorted({e.task for e in load_index().entries if e.task.startswith(incomplete)})


def register(app: typer.Typer) -> None:
    app.command("models", help=HELP)(models_command)


def models_command(
    pattern: str | None = typer.Argument(None, help="Glob or substring to filter names and families."),
    paper: bool = typer.Option(
        False, "--paper", help="Models with a paper card: the paper's published figures beside rl's count."
    ),
    task: str | None = typer.Option(
        None,
        "--task",
        help="Only models of this task (image-classification, detection, language-model ...).",
        autocompletion=complete_task,
    ),
    cached: bool = typer.Option(
        False,
        "--cached",
        help="What the local Hugging Face and torch hub caches hold that rl runs, with sizes (timm/ and hf/ names, "
        "checkpoint files).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV."),
) -> None:
    from rlcli.models.catalog import find_models, load_index

    fmt = choose_format(json_out, csv_out)
    if cached:
        if paper or task is not None:
            raise typer.BadParameter("--cached lists cache contents; it takes no --paper or --task")
        print_cached(pattern, fmt)
        return
    index = load_index()
    entries = find_models(pattern)
    if task is not None:
        tasks = sorted({e.task for e in index.entries})
        if task not in tasks:
            raise typer.BadParameter(f"unknown task '{task}': choose {', '.join(tasks)}", param_hint="--task")
        entries = [e for e in entries if e.task == task]
    if paper:
        entries = [e for e in entries if e.paper]
    if not entries:
        which = "".join((" with a paper card" if paper else "", f" of task {task}" if task else ""))
        raise RlError(f"no model{which}" + (f" matches '{pattern}'" if pattern else ""))
    if paper:
        print_papers(entries, fmt, index.convention)
        return
    fields = ("name", "family", "source", "task", "params", "macs", "input_size")
    if fmt == "json":
        print_json(
            {
                "convention": index.convention,
                "versions": index.versions,
                "models": [{key: getattr(e, key) for key in fields} for e in entries],
            }
        )
    elif fmt == "csv":
        print_csv(fields, [[getattr(e, key) for key in fields] for e in entries])
    else:
        columns = [
            Column("Model"),
            Column("Family"),
            Column("Task"),
            Column("Params", "right"),
            Column("MACs", "right"),
            Column("Input"),
        ]
        rows = [[e.name, e.family, e.task, thousands(e.params), si(e.macs), e.input_size] for e in entries]
        footer = [
            f"{len(entries)} models. MACs at batch 1 and the default input; {index.convention}.",
            "`rl summary MODEL` shows the layers; any pkg.module:callable or file.py:callable works there too.",
        ]
        print_table(columns, rows, footer=footer)


def print_cached(pattern: str | None, fmt) -> None:
    """The runnable contents of the local caches (huggingface_hub's scan, the torch hub folder), no torch."""
    from dataclasses import asdict
    from fnmatch import fnmatchcase

    from rlcli.models.catalog import load_index
    from rlcli.models.zoo.cached import cached_models

    torchvision = frozenset(e.name for e in load_index().entries if e.source == "torchvision")
    found = cached_models(torchvision)
    models = found.models
    if pattern:
        wildcard = any(c in pattern for c in "*?[")
        models = [m for m in models if (fnmatchcase(m.name, pattern) if wildcard else pattern in m.name)]
    if fmt == "json":
        print_json(
            {
                "hf_cache": str(found.hf_cache),
                "torch_checkpoints": str(found.torch_checkpoints),
                "models": [{**asdict(m), "commands": list(m.commands)} for m in models],
                "skipped": found.skipped,
                "warnings": found.warnings,
            }
        )
        return
    fields = ("cache", "name", "architecture", "size_bytes", "commands")
    if fmt == "csv":
        print_csv(fields, [[m.cache, m.name, m.architecture or "", m.size_bytes, " ".join(m.commands)] for m in models])
        return
    if not models:
        raise RlError(f"no model rl runs in {found.hf_cache} or {found.torch_checkpoints}")
    columns = [Column("Model"), Column("Cache"), Column("Size", "right"), Column("Runs with")]
    rows = [[m.name, m.cache, size_bytes(m.size_bytes), _commands(m)] for m in models]
    footer = [
        f"{len(models)} models. Hugging Face cache {found.hf_cache}; torch hub checkpoints {found.torch_checkpoints}.",
        *([f"Not listed: {_repositories(len(found.skipped))} without a config.json rl reads."] * bool(found.skipped)),
        *found.warnings,
    ]
    print_table(columns, rows, footer=footer)


def _repositories(count: int) -> str:
    return f"{count} repository" if count == 1 else f"{count} repositories"


def _commands(model) -> str:
    if model.cache == "torch":
        return f"classify -m {model.architecture or 'ARCH'} -w FILE"
    # rl generate reads GPT-2 weights by repository name, without the hf/ prefix of summary's transformers model
    return ", ".join(f"generate ({model.location})" if c == "generate" else c for c in model.commands)


def paper_checks(entry) -> dict:
    """rl's count at the paper's input against each figure the paper prints (no torch: figures from the index)."""
    from dataclasses import asdict

    from rlcli.models.catalog import check_figure

    card = entry.paper
    checks = {
        "params": check_figure(card.get("params"), card["rl_params"]),
        "macs": check_figure(card.get("macs"), card["rl_macs"]),
        "flops": check_figure(card.get("flops"), 2 * card["rl_macs"]),
    }
    return {name: asdict(check) for name, check in checks.items() if check is not None}


def print_papers(entries, fmt, convention: str) -> None:
    fields = ("name", "cite", "source", "input_size", "params", "rl_params", "macs", "flops", "rl_macs", "note")
    if fmt == "json":
        print_json(
            {
                "convention": convention,
                "models": [{"name": e.name, **e.paper, "checks": paper_checks(e)} for e in entries],
            }
        )
        return
    if fmt == "csv":
        print_csv(fields, [[e.name if f == "name" else e.paper.get(f) for f in fields] for e in entries])
        return
    notes: dict[str, int] = {}
    rows = []
    for entry in entries:
        card, checks = entry.paper, paper_checks(entry)
        note = card.get("note") or ""
        mark = f"[{notes.setdefault(note, len(notes) + 1)}]" if note else ""
        compute = checks.get("macs") or checks.get("flops")
        label = "FLOPs" if "flops" in checks and "macs" not in checks else "MACs"
        rows.append(
            [
                entry.name,
                card["cite"],
                card["source"],
                card["input_size"],
                card.get("params") or "-",
                thousands(card["rl_params"]),
                _difference(checks.get("params")),
                f"{compute['printed']} {label}" if compute else "-",
                si(card["rl_macs"] * (2 if label == "FLOPs" else 1)),
                _difference(compute),
                mark,
            ]
        )
    columns = [
        Column("Model"),
        Column("Paper"),
        Column("Where"),
        Column("Input"),
        Column("Params (paper)", "right"),
        Column("Params (rl)", "right"),
        Column("Δ", "right"),
        Column("MACs (paper)", "right"),
        Column("rl", "right"),
        Column("Δ", "right"),
        Column("Why"),
    ]
    footer = [
        f"{len(entries)} models with a paper card. rl counts at each paper's input, batch 1; {convention}. "
        "Papers' 'FLOPs' are usually multiply-adds: rl compares them with its MACs, and true FLOPs with 2 x MACs. "
        "'=' is within the rounding of the printed figure.",
        *(f"[{number}] {note}" for note, number in notes.items()),
    ]
    print_table(columns, rows, footer=footer)


def _difference(check: dict | None) -> str:
    if check is None:
        return ""
    return "=" if check["within_rounding"] else f"{100 * check['difference']:+.1f}%"
