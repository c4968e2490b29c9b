"""Write src/rlcli/models/zoo/timm_results.json: timm's published figures, copied as printed from its results tables.

    git clone https://github.com/huggingface/pytorch-image-models /tmp/timm
    python scripts/timm_results.py /tmp/timm

From ``results/`` of that checkout: the inference benchmark (architecture, image size, params in millions, GMACs
from timm's own profiler) and the ImageNet validation table (pretrained tag, image size, params in millions). The
figures stay the text of the CSV cells, so that their printed precision is known (see ``models.cards.Published``).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from rlcli.core.files import atomic_write

OUTPUT = Path(__file__).resolve().parent.parent / "src" / "rlcli" / "models" / "zoo" / "timm_results.json"
BENCHMARK = "results/benchmark-infer-amp-nchw-pt291-cu128-4090.csv"
VALIDATION = "results/results-imagenet.csv"


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def collect(checkout: Path) -> dict:
    benchmark: dict[str, list] = {}
    for row in rows(checkout / BENCHMARK):
        entry = [int(row["infer_img_size"]), row["param_count"], row["infer_gmacs"]]
        if entry not in benchmark.setdefault(row["model"], []):
            benchmark[row["model"]].append(entry)
    validation: dict[str, list] = {}
    for row in rows(checkout / VALIDATION):
        entry = [int(row["img_size"]), row["param_count"]]
        if entry not in validation.setdefault(row["model"], []):
            validation[row["model"]].append(entry)
    commit = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        "repository": "https://github.com/huggingface/pytorch-image-models",
        "commit": commit,
        "benchmark": BENCHMARK,
        "validation": VALIDATION,
        "benchmark_rows": dict(sorted(benchmark.items())),  # arch: [[img_size, params (M), GMACs], ...]
        "validation_rows": dict(sorted(validation.items())),  # arch.tag: [[img_size, params (M)], ...]
    }


def main(checkout: str) -> None:
    data = collect(Path(checkout))
    with atomic_write(OUTPUT, "w") as handle:
        json.dump(data, handle, separators=(",", ":"), sort_keys=False)
        handle.write("\n")
    print(f"wrote {OUTPUT}: {len(data['benchmark_rows'])} architectures, {len(data['validation_rows'])} tags")


if __name__ == "__main__":
    main(sys.argv[1])
