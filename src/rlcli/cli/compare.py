"""`rl compare [MODEL...]`: families at one compute budget, or named models, side by side."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from rlcli.cli._common import (
    Column,
    Device,
    choose_format,
    print_csv,
    print_json,
    print_table,
    progress_bar,
    si,
    size_bytes,
    thousands,
)
from rlcli.cli._completion import complete_model_name

if TYPE_CHECKING:
    from rlcli.tasks.compare import Comparison

HELP = """Compare ResNet, ResNeXt and MobileNet at one compute budget, or any models you name, side by side.

Without MODEL, one member of each family is scaled by its width knob to --macs (default: ResNet-50's budget)
within 2 %, found by search on the meta device; the table says which knob got which value. With MODELs, the
registry models are compared as they are (the same figures as `rl summary`). Timings build real weights: latency
at batch 1 (median and 10th-90th percentiles after warm-up) and throughput at --batch-size, same threads and input
for every model. Published ImageNet accuracy appears only for stock torchvision configurations.

Examples:

\b
  rl compare                                   # at ResNet-50's 4.09 GMACs
  rl compare --macs 1G --families resnet,resnext --groups 16
  rl compare resnet50 resnext50_32x4d mobilenet_v3_large --plot models.png
  rl compare --macs 300M --no-time --json
"""


def register(app: typer.Typer) -> None:
    app.command("compare", help=HELP)(compare_command)


def compare_command(
    models: list[str] | None = typer.Argument(
        None, metavar="MODEL", help="Registry models to compare as they are.", autocompletion=complete_model_name
    ),
    macs: str | None = typer.Option(None, "--macs", help="Budget in MACs, e.g. 4.1G, 600M (default: ResNet-50's)."),
    families: str | None = typer.Option(
        None,
        "--families",
        help="Comma-separated: resnet, resnext, mobilenet_v1, mobilenet_v2, mobilenet_v3 (default: all).",
    ),
    groups: int = typer.Option(32, "--groups", min=1, help="ResNeXt cardinality (paths per block)."),
    input_size: str | None = typer.Option(None, "--input-size", "-i", help="Resolution, e.g. 224 or 3x256x256."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Batch for the throughput figure."),
    repeats: int = typer.Option(10, "--repeats", min=3, help="Timed runs at batch 1 (after 3 warm-up runs)."),
    no_time: bool = typer.Option(False, "--no-time", help="Skip timing (no weights are allocated then)."),
    device: Device = typer.Option(Device.cpu, "--device", help="Where to time."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads (default: torch's)."),
    dtype: str = typer.Option(
        "float32",
        "--dtype",
        help="float32, bfloat16 or float16: the weights' and input's dtype, for the memory figures and the timing.",
    ),
    channels_last: bool | None = typer.Option(
        None,
        "--channels-last/--no-channels-last",
        help="Time in channels-last memory format, or not (default: channels-last for the convolutional families "
        "and models whose card asks for it).",
    ),
    train: bool = typer.Option(
        False, "--train", help="Time a training step (forward in training mode + backward) instead of inference."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write a PNG chart (latency vs MACs, size = params, Pareto-optimal rows marked)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document."),
    csv_out: bool = typer.Option(False, "--csv", help="Print CSV."),
    # Result cache (issue 17, tasks/cached.py): the option, and the family search through compare_cached below.
    no_cache: bool = typer.Option(
        False,
        "--no-cache",
        help="Search afresh, neither reading nor writing the result cache (family searches are kept in "
        "$XDG_CACHE_HOME/rlcli, default ~/.cache/rlcli, by families, budget, input size, groups, dtype and versions; "
        "timings are always measured afresh).",
    ),
) -> None:
    from rlcli.tasks.compare import Timing, compare

    fmt = choose_format(json_out, csv_out)
    from rlcli.tasks.summary import DTYPES

    if dtype not in DTYPES:
        raise typer.BadParameter(f"'{dtype}': choose from {', '.join(DTYPES)}", param_hint="--dtype")
    if train and no_time:
        raise typer.BadParameter("--train times a training step: it needs timing (drop --no-time)")
    if plot is not None:
        from rlcli.core.files import check_output_file

        if plot.suffix.lower() != ".png":
            raise typer.BadParameter("the chart is a PNG: give a file name ending in .png", param_hint="--plot")
        check_output_file(plot, force=True)  # before minutes of searching and timing, not after
    timing = None
    if not no_time:
        import torch

        from rlcli.core.devices import resolve_device

        timing = Timing(
            device=str(resolve_device(device.value)),
            threads=threads or torch.get_num_threads(),
            warmup=3,
            repeats=repeats,
            batch_size=batch_size,
            dtype=dtype,
            channels_last=channels_last,
            train=train,
        )
    chosen = [f.strip() for f in families.split(",") if f.strip()] if families else None
    with progress_bar() as report:
        if not models and not no_cache:  # result cache (issue 17): a repeated family search is read from disk
            from rlcli.tasks.cached import compare_cached as run
        else:
            run = functools.partial(compare, models or None)
        result = run(
            budget=macs,
            families=chosen,
            groups=groups,
            input_size=input_size,
            timing=timing,
            progress=report,
            dtype=dtype,
        )
    from rlcli.tasks.compare import annotate

    annotate(result)  # readings and Pareto marks after the timing (a cached search is timed afresh)
    if fmt.value == "json":
        print_json(result.to_dict())
    elif fmt.value == "csv":
        fields = list(result.entries[0].__dataclass_fields__)
        print_csv(fields, [[_csv_cell(getattr(e, f)) for f in fields] for e in result.entries])
    else:
        print_table(COLUMNS, [row(e) for e in result.entries], title=title(result), footer=footer(result))
    if plot is not None:
        write_plot(result, plot)  # after the table: a chart that fails to write must not take the figures with it


def _csv_cell(value):
    return "x".join(map(str, value)) if isinstance(value, list) else value


COLUMNS = [
    Column("Model"),
    Column("Scaling"),
    Column("Input"),
    Column("Params", "right"),
    Column("MACs", "right"),
    Column("FLOPs", "right"),
    Column("Activations", "right"),
    Column("Weights", "right"),
    Column("Bytes", "right"),
    Column("MACs/B", "right"),
    Column("Latency ms", "right"),
    Column("p10-p90", "right"),
    Column("img/s", "right"),
    Column("Top-1", "right"),
    Column("Top-5", "right"),
]


def row(e) -> list[str]:
    def number(value, digits):
        return "" if value is None else f"{value:.{digits}f}"

    spread = "" if e.latency_p10_ms is None else f"{e.latency_p10_ms:.1f}-{e.latency_p90_ms:.1f}"
    return [
        f"{e.name} *" if e.pareto else e.name,
        e.knob,
        "x".join(map(str, e.input_size)),
        thousands(e.params),
        si(e.macs),
        si(e.flops),
        size_bytes(e.activation_bytes),
        size_bytes(e.weight_bytes),
        size_bytes(e.bytes_moved),
        number(e.intensity, 1),
        number(e.latency_ms, 1),
        spread,
        number(e.throughput, 1),
        number(e.top1, 2),
        number(e.top5, 2),
    ]


def title(result: Comparison) -> str:
    if result.budget is None:
        return "Named models, as they are"
    return f"At a budget of {si(result.budget)}MACs ({thousands(result.budget)}), each within 2 %"


def footer(result: Comparison) -> list[str]:
    from rlcli.tasks.compare import RIDGE_NOTE

    lines = [f"Convention: {result.convention}."]
    if result.timing:
        t = result.timing
        what = (
            "a training step (training mode, forward + backward of the logits' sum, gradients dropped)"
            if t.train
            else "inference mode"
        )
        layout = {True: "channels-last", False: "contiguous (channels-first)", None: "channels-last for the "
                  "convolutional families and cards that ask for it"}[t.channels_last]  # fmt: skip
        lines.append(
            f"Timing: {t.device}, {t.threads} threads, {what}, random {t.dtype} weights, {layout}; latency at batch "
            f"1 is the median of {t.repeats} runs after {t.warmup} warm-up runs (p10-p90 beside it); throughput at "
            f"batch {t.batch_size}, median of {max(3, t.repeats // 2)} runs."
        )
    else:
        lines.append("Not timed (--no-time).")
    lines.append("Top-1/Top-5: torchvision's published ImageNet-1k accuracy, for stock configurations only.")
    lines.append(f"Bytes, MACs/B: bytes moved layer by layer at {result.dtype} and MACs per byte; {RIDGE_NOTE}.")
    lines.extend(f"Reading: {e.name}: {e.reading}." for e in result.entries if e.reading)
    objectives = " and ".join(result.pareto_objectives)
    lines.append(f"*: Pareto-optimal in {objectives}: no other row is at least as good in each and better in one.")
    lines.extend(f"Note: {n}." for n in result.notes)
    return lines


def write_plot(result: Comparison, path: Path) -> None:
    """Latency (or, untimed, parameters) against MACs; bubble area = parameters; one colour per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlcli.core.files import atomic_path

    timed = result.entries[0].latency_ms is not None
    figure, axes = plt.subplots(figsize=(8, 5), dpi=130)
    palette = plt.get_cmap("tab10")
    families = sorted({e.family for e in result.entries})
    for entry in result.entries:
        x = entry.macs / 1e9
        y = entry.latency_ms if timed else entry.params / 1e6
        colour = palette(families.index(entry.family) % 10)
        edge, width = ("red", 2.0) if entry.pareto else ("black", 0.6)
        axes.scatter(x, y, s=40 + entry.params / 2e5, color=colour, alpha=0.6, edgecolor=edge, linewidth=width)
        label = f"{entry.name} *" if entry.pareto else entry.name
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(8, 6), fontsize=8)
    for family in families:
        axes.scatter([], [], color=palette(families.index(family) % 10), label=family, s=60)
    axes.set_xlabel("GMACs per image (FLOPs = 2 x MACs)")
    if timed:
        axes.set_ylabel(f"latency at batch 1, ms ({result.timing.device}, {result.timing.threads} threads)")
    else:
        axes.set_ylabel("parameters, millions")
    objectives = " and ".join(result.pareto_objectives)
    axes.set_title(
        title(result) + f"\nbubble area ~ parameters; * red edge: Pareto-optimal in {objectives}", fontsize=10
    )
    axes.grid(alpha=0.3)
    axes.legend(title="family", fontsize=8)
    axes.margins(0.2)
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png")
    plt.close(figure)
