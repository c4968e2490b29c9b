"""Paper cards: published figures as printed, compared with rl's count in summary and in `rl models --paper`."""

from __future__ import annotations

import json

import pytest

from rlcli.models.catalog import check_figure, printed_value
from rlcli.tasks.summary import summarize


@pytest.mark.parametrize(
    ("printed", "value", "half_unit"),
    [("4.2M", 4.2e6, 0.05e6), ("569M", 569e6, 0.5e6), ("3.87G", 3.87e9, 0.005e9), ("25.6 M", 25.6e6, 0.05e6),
     ("0.5G", 0.5e9, 0.05e9), ("4.5B", 4.5e9, 0.05e9), ("878K", 878e3, 500)],
)  # fmt: skip
def test_printed_figures_carry_their_precision(printed, value, half_unit):
    assert printed_value(printed) == pytest.approx((value, half_unit))


def test_rounding_is_half_a_unit_of_the_last_printed_digit():
    assert check_figure("4.2M", 4_231_976).within_rounding  # 4.23 M prints as 4.2M
    assert not check_figure("4.2M", 4_260_000).within_rounding
    assert check_figure("569M", 568_740_352).difference == pytest.approx(-0.000456, abs=1e-6)
    with pytest.raises(ValueError, match="not a printed figure"):
        printed_value("about 4M")


def test_summary_shows_the_papers_figures_beside_rls(rl):
    result = rl("summary", "mobilenet_v1", "--depth", "0")
    assert result.code == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("Paper: "))
    assert "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications" in line
    assert "Howard et al. 2017, arXiv 1704.04861" in line and "Table 6, input 3x224x224" in line
    assert "params 4.2M vs rl 4,231,976 (+0.8 %, within rounding)" in line
    assert "MACs 569M vs rl 568,740,352 (-0.0 %, within rounding)" in line
    document = json.loads(rl("summary", "mobilenet_v1", "--json", "--depth", "0").stdout)
    paper = document["models"][0]["paper"]
    assert paper["paper"]["arxiv"] == "1704.04861" and paper["published"]["source"] == "Table 6"
    assert paper["macs"] == {
        "printed": "569M",
        "published": 569e6,
        "rl": 568_740_352,
        "difference": pytest.approx((568_740_352 - 569e6) / 569e6),
        "within_rounding": True,
    }


def test_macs_are_compared_only_at_the_papers_input():
    summary = summarize("mobilenet_v1", input_size="3x192x192", depth=0)
    assert not summary.paper.macs_compared and summary.paper.macs is None
    assert summary.paper.params.within_rounding  # parameters do not depend on the input
    batch = summarize("mobilenet_v1", batch_size=4, depth=0)
    assert batch.paper.macs.rl == batch.macs // 4  # one sample, as papers state it


def test_models_paper_lists_every_card(rl):
    result = rl("models", "--paper")
    assert result.code == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.startswith("mobilenet_v1")}
    assert set(rows) == {"mobilenet_v1", "mobilenet_v1_025", "mobilenet_v1_050", "mobilenet_v1_075"}
    row = rows["mobilenet_v1"]
    assert "4.2M" in row and "4,231,976" in row and "569M MACs" in row
    document = json.loads(rl("models", "mobilenet_v1", "--paper", "--json").stdout)
    [entry] = [m for m in document["models"] if m["name"] == "mobilenet_v1"]
    assert entry["rl_params"] == 4_231_976 and entry["checks"]["params"]["within_rounding"]
    assert rl("models", "alexnet", "--paper").code == 1  # no paper card
