"""Regenerate ``index.json``, the static model list that `rl models` and completion read without torch.

Run after adding a model or upgrading torchvision:  python scripts/update_generated.py
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rlcli.core.files import atomic_write
from rlcli.models.catalog import INDEX_PATH


def build_index() -> dict[str, Any]:
    """Summarise every registered model at batch 1 and its default input (seconds: all on the meta device)."""
    import torch
    import torchvision

    from rlcli.core.flops import CONVENTION
    from rlcli.core.shapes import format_size
    from rlcli.models.registry import get_spec, model_names
    from rlcli.tasks.summary import summarize

    entries = []
    for name in model_names():
        spec = get_spec(name)
        summary = summarize(name, depth=0)
        entry = {
            "name": name,
            "family": spec.card.family,
            "source": spec.card.source,
            "task": spec.card.task,
            "params": summary.params,
            "macs": summary.macs,
            "input_size": format_size(spec.card.default_input),
        }
        if spec.card.published is not None:
            entry["paper"] = paper_entry(spec, summary)
        entries.append(entry)
    return {
        "generated_by": "python scripts/update_generated.py",
        "convention": CONVENTION,
        "versions": {
            "torch": torch.__version__.split("+")[0],
            "torchvision": torchvision.__version__.split("+")[0],
        },
        "models": entries,
    }


def paper_entry(spec, summary) -> dict[str, Any]:
    """The paper card as ``rl models --paper`` shows it, with rl's count at the paper's own input."""
    from dataclasses import asdict

    from rlcli.core.shapes import format_size
    from rlcli.tasks.summary import summarize_spec

    paper, published = spec.card.paper, spec.card.published
    at_paper = summary
    if tuple(published.input_size) != tuple(summary.input_size):
        at_paper = summarize_spec(spec, tuple(published.input_size), depth=0)
    return {
        **asdict(paper),
        "cite": paper.cite(),
        **{k: v for k, v in asdict(published).items() if k != "input_size"},
        "input_size": format_size(published.input_size),
        "rl_params": at_paper.params,
        "rl_macs": at_paper.macs,
    }


def render_index(index: dict[str, Any]) -> str:
    return json.dumps(index, indent=1) + "\n"


def main() -> None:
    text = render_index(build_index())
    with atomic_write(INDEX_PATH, "w") as handle:
        handle.write(text)
    sys.stderr.write(f"wrote {INDEX_PATH}\n")


if __name__ == "__main__":
    main()
