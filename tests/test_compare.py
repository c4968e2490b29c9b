"""`rl compare`: families scaled to a budget, named models, accuracy only for stock configs, plot, JSON, errors."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from rlcli.errors import RlError, UsageError
from rlcli.tasks.compare import FAMILIES, compare, parse_macs
from rlcli.tasks.summary import summarize


@pytest.mark.parametrize("budget", ["0.3G", "1G", "4.1G"])
def test_every_family_lands_within_two_percent(budget):
    result = compare(budget=budget)
    target = parse_macs(budget)
    assert result.budget == target
    assert [e.family for e in result.entries] == list(FAMILIES)
    for entry in result.entries:
        assert abs(entry.macs - target) / target <= 0.02, entry
        assert entry.knob != "stock" and entry.flops == 2 * entry.macs


def test_default_budget_is_resnet50_and_only_stock_configs_show_accuracy():
    result = compare(families=["resnet", "resnext"])
    resnet, resnext = result.entries
    assert result.budget == 4_089_184_256
    assert resnet.name == "resnet50" and resnet.params == 25_557_032 and resnet.stock == "resnet50"
    assert resnet.top1 == pytest.approx(80.858) and resnet.top5 == pytest.approx(95.434)
    assert resnext.stock is None and resnext.top1 is None and resnext.top5 is None


def test_groups_change_resnext_cardinality():
    result = compare(budget="1G", families=["resnext"], groups=8)
    [entry] = result.entries
    assert "8 x" in entry.knob and entry.name.startswith("resnext50-8x")


def test_named_models_match_rl_summary_exactly():
    result = compare(["resnet50", "mobilenet_v3_large", "swin_t"])
    for entry in result.entries:
        summary = summarize(entry.name, depth=0)
        assert (entry.params, entry.macs, entry.flops) == (summary.params, summary.macs, summary.flops)
        assert entry.activation_bytes == summary.activation_bytes
        assert entry.weight_bytes == sum(summary.param_bytes.values())
        assert entry.top1 is not None
    sized = compare(["resnet50"], input_size="3x256x256")
    assert sized.entries[0].top1 is None  # not the published evaluation: no published accuracy


@pytest.mark.parametrize(
    ("budget", "error", "message"),
    [
        ("0", UsageError, "must be positive"),
        ("-1G", UsageError, "invalid budget"),
        ("lots", UsageError, "invalid budget"),
        ("1K", RlError, "cannot scale resnet"),
        ("90T", RlError, "cannot scale resnet"),
    ],
)
def test_bad_budgets(budget, error, message):
    with pytest.raises(error, match=message):
        compare(budget=budget, families=["resnet"])


def test_unknown_family():
    with pytest.raises(UsageError, match="unknown family 'vgg'"):
        compare(budget="1G", families=["vgg"])


def test_cli_json_plot_and_timing(rl, tmp_path):
    chart = tmp_path / "chart.png"
    args = ["mobilenet_v3_small", "resnet18", "--repeats", "3", "-b", "2", "--json", "--plot", str(chart)]
    result = rl("compare", *args)
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["budget"] is None and doc["timing"]["batch_size"] == 2 and doc["timing"]["repeats"] == 3
    assert "FLOPs = 2 x MACs" in doc["convention"]
    for entry in doc["entries"]:
        assert entry["latency_ms"] > 0 and entry["throughput"] > 0
        assert entry["latency_p10_ms"] <= entry["latency_ms"] <= entry["latency_p90_ms"]
        assert {"name", "family", "knob", "params", "macs", "flops", "activation_bytes", "weight_bytes"} <= set(entry)
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.size[0] > 400


def test_cli_table_and_errors(rl):
    table = rl("compare", "--macs", "300M", "--families", "mobilenet_v2", "--no-time")
    assert table.code == 0, table.stderr
    assert "width_mult" in table.stdout and "Not timed" in table.stdout
    assert rl("compare", "--macs", "0", "--no-time").code == 2
    assert rl("compare", "resnet50", "--macs", "1G", "--no-time").code == 2
    unreachable = rl("compare", "--macs", "1K", "--families", "resnet", "--no-time")
    assert unreachable.code == 1 and unreachable.stderr.startswith("error: cannot scale resnet")
    assert rl("compare", "--plot", "chart.jpg", "--no-time").code == 2


def test_plot_target_is_checked_before_the_work(rl, tmp_path):
    """--plot into a missing folder failed after the whole search and lost the table with it."""
    missing = tmp_path / "no" / "such" / "chart.png"
    result = rl("compare", "resnet18", "--no-time", "--plot", str(missing))
    assert result.code == 1 and result.stdout == ""
    assert result.stderr == f"error: cannot write {missing}: no folder {missing.parent}\n"
    folder = tmp_path / "chart.png"
    folder.mkdir()
    result = rl("compare", "resnet18", "--no-time", "--plot", str(folder))
    assert result.code == 1 and result.stderr == f"error: cannot write {folder}: it is a folder\n"


def test_plot_into_a_read_only_folder_is_refused_up_front(rl, tmp_path, without_root_override):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = rl("compare", "resnet18", "--no-time", "--plot", str(locked / "chart.png"))
    finally:
        locked.chmod(0o755)
    assert result.code == 1 and result.stdout == ""
    assert result.stderr == f"error: cannot write {locked / 'chart.png'}: permission denied\n"


def test_mobilenet_v1_is_a_family_scaled_by_its_width_multiplier():
    """At its own budget (568.7 M MACs) MobileNet v1 stays the paper's network; at 1 G its alpha grows."""
    stock = compare(budget="568740352", families=["mobilenet_v1"], input_size="224")
    [entry] = stock.entries
    assert entry.name == "mobilenet_v1" and entry.params == 4_231_976 and entry.knob == "width_mult 1.000"
    assert entry.top1 is None  # published accuracy is torchvision's, for its own weights only
    [wider] = compare(budget="1G", families=["mobilenet_v1"]).entries
    assert abs(wider.macs - 1e9) / 1e9 <= 0.02 and wider.name.startswith("mobilenet-v1-w1.")


def test_only_image_classifiers_are_timed(rl):
    for name, task in (("gpt2", "language-model"), ("ssd300_vgg16", "detection")):
        result = rl("compare", name, "--no-time")
        assert result.code == 2 and f"{name} is a {task} model; rl compare times image classifiers" in result.stderr


# --- issue 18: intensity, readings, Pareto rows, --dtype, --train ------------------------------------------------


def entry(name, **figures):
    from rlcli.tasks.compare import Entry

    defaults = {"family": "f", "knob": "stock", "input_size": [3, 8, 8], "params": 1, "macs": 1, "flops": 2}
    return Entry(name=name, **{**defaults, "activation_bytes": 0, "weight_bytes": 0, **figures})


def test_pareto_rows_by_hand():
    from rlcli.tasks.compare import pareto_objectives, pareto_optimal

    rows = [
        entry("fast", latency_ms=1.0, top1=70.0),
        entry("accurate", latency_ms=3.0, top1=80.0),
        entry("dominated", latency_ms=3.0, top1=75.0),  # "accurate" is as fast and better
        entry("tie", latency_ms=1.0, top1=70.0),  # equal to "fast": neither dominates the other
    ]
    assert pareto_objectives(rows) == ["latency", "top-1"]
    assert pareto_optimal(rows, ["latency", "top-1"]) == [True, True, False, True]
    untimed = [entry("a", macs=10, params=5), entry("b", macs=20, params=1), entry("c", macs=20, params=6)]
    assert pareto_objectives(untimed) == ["MACs", "params"]
    assert pareto_optimal(untimed, ["MACs", "params"]) == [True, True, False]


def test_reading_states_the_bound_by_the_ridge():
    from rlcli.tasks.compare import RIDGE_MACS_PER_BYTE, reading

    assert reading(entry("m", intensity=4.6), None) == "bandwidth-bound: 4.6 MACs/byte"
    assert reading(entry("r", intensity=RIDGE_MACS_PER_BYTE * 2), None).startswith("compute-bound: ")
    timed = entry("t", intensity=20.0, macs=2_000_000_000, latency_ms=100.0)
    assert reading(timed, None) == "compute-bound: 20.0 MACs/byte, 20.0 GMAC/s achieved at batch 1"


def test_cli_intensity_pareto_and_dtype(rl):
    result = rl("compare", "resnet18", "mobilenet_v2", "--no-time", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    resnet18, mobilenet = doc["entries"]
    summary = summarize("mobilenet_v2", depth=0)
    assert (mobilenet["bytes_moved"], mobilenet["intensity"]) == (summary.bytes_moved, summary.intensity)
    assert mobilenet["reading"].startswith("bandwidth-bound") and resnet18["reading"].startswith("compute-bound")
    # Untimed, every row stock: MACs and top-1. MobileNet v2 has fewer MACs and a higher top-1 than ResNet-18.
    assert doc["pareto_objectives"] == ["top-1", "MACs"]
    assert (resnet18["pareto"], mobilenet["pareto"]) == (False, True)
    table = rl("compare", "resnet18", "mobilenet_v2", "--no-time").stdout
    assert "mobilenet_v2 *" in table and "resnet18 *" not in table and "MACs/B" in table
    assert "Reading: mobilenet_v2: bandwidth-bound: " in table

    half = json.loads(rl("compare", "resnet18", "--no-time", "--json", "--dtype", "bfloat16").stdout)
    assert half["dtype"] == "bfloat16" and half["entries"][0]["weight_bytes"] == resnet18["weight_bytes"] // 2
    assert rl("compare", "resnet18", "--no-time", "--dtype", "int4").code == 2
    assert rl("compare", "resnet18", "--no-time", "--train").code == 2


def test_cli_times_a_training_step(rl):
    args = ["mobilenet_v3_small", "-i", "64", "--train", "--no-channels-last", "--repeats", "3", "-b", "2", "--json"]
    result = rl("compare", *args)
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["timing"]["train"] is True and doc["timing"]["channels_last"] is False
    [timed] = doc["entries"]
    assert timed["latency_ms"] > 0 and timed["throughput"] > 0
    assert "GMAC/s" not in timed["reading"]  # the rate is stated for inference only

    from rlcli.cli.compare import footer
    from rlcli.tasks.compare import Comparison, Timing

    timing = Timing(**doc["timing"])
    text = "\n".join(footer(Comparison(budget=None, entries=[], timing=timing, convention="c")))
    assert "a training step (training mode, forward + backward" in text and "contiguous (channels-first)" in text
    # At 32 px batch norm meets one value per channel at batch 1: refused in training mode, in one line.
    refused = rl("compare", "mobilenet_v3_small", "-i", "32", "--train", "--repeats", "3")
    assert refused.code == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: cannot time a training step of mobilenet_v3_small at input 3x32x32: ")
