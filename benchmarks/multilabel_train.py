"""`rl multilabel train` on generated multi-label scenes: time per epoch with the backbone trained and frozen, and the
mAP the trained checkpoint reaches on held-out scenes (`rl multilabel --labels`). The frozen run starts from the
backbone the full run trained.

    python benchmarks/multilabel_train.py                      # csra_tiny at 64 px, from scratch
    python benchmarks/multilabel_train.py --model csra_resnet18 --image-size 128 --epochs 3

Each run is a fresh `rl` process; its stderr (one line per epoch) is printed as it is. There is no peer: the
official CSRA code trains on CUDA only. Threads: torch's default unless --threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from multilabel_shapes import write_scenes


def run(arguments: list[str], threads: int | None) -> tuple[str, str, float]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rlcli", *arguments], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"rl {' '.join(arguments)} failed:\n{done.stderr}")
    return done.stdout, done.stderr, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="csra_tiny")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train", type=int, default=240, help="training scenes")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        train_csv, _ = write_scenes(root / "train", args.train, seed=1)
        val_csv, _ = write_scenes(root / "val", 60, seed=2)
        test_csv, _ = write_scenes(root / "test", 100, seed=3)
        common = ["--val", str(val_csv), "-m", args.model, "--epochs", str(args.epochs), "--lr", "0.05",
                  "--warmup-epochs", "1", "--step-size", "8", "--json", "--cache-dir", str(root / "cache")]  # fmt: skip
        if args.image_size:
            common += ["--image-size", str(args.image_size)]
        # The frozen run starts from the backbone the full run trained (a stand-in for ImageNet weights, which a
        # machine without cached weights lacks: heads on a random backbone learn little).
        for mode, extra in (("full", []), ("frozen", ["--freeze-backbone", "--init", str(root / "full.pt")])):
            out = root / f"{mode}.pt"
            command = ["multilabel", "train", str(train_csv), "-o", str(out), *common, *extra]
            stdout, stderr, seconds = run(command, args.threads)
            summary = json.loads(stdout)
            epochs = summary["epochs"]
            per_epoch = sum(e["seconds"] for e in epochs) / len(epochs)
            evaluation, _, _ = run(
                ["multilabel", "--model", str(out), "--labels", str(test_csv), "--json"], args.threads
            )
            test_map = json.loads(evaluation)["mAP"]
            print(f"$ rl {' '.join(command[:2])} TRAIN.csv -o {mode}.pt {' '.join(command[5:])}")
            print(stderr.rstrip())
            print(
                f"{args.model} {mode}: {args.train} training images, {per_epoch:.2f} s per epoch (training and "
                f"validation, mean of {len(epochs)}), features {summary['feature_seconds']:.2f} s, best val mAP "
                f"{100 * summary['best_mAP']:.2f} (epoch {summary['best_epoch']}), held-out test mAP "
                f"{100 * test_map:.2f} on 100 scenes; whole run {seconds:.1f} s\n"
            )


if __name__ == "__main__":
    main()
