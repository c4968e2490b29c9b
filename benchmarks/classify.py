"""`rl classify` vs a naive one-image-at-a-time torchvision loop vs the bare model forward (the ceiling).

Generates a few hundred JPEGs of mixed sizes (photo-like noise, 160 px to 2400 px) in a temporary folder and
random-weight checkpoints of each model, then, in one run and each in a fresh process:

- rl: what `rl classify FOLDER -m MODEL -w FILE` runs (rlcli.tasks.classify: decoding in worker processes,
  batched forward), timed from the first image to the last like the others (worker start-up included); exact
  decoding, the default;
- rl --draft: the same with the opt-in fast JPEG decoding (reduced DCT scale), and how far its probabilities are
  from the exact run's (max |difference| over every image's top-5, and how many top-1 labels changed; random
  weights, so this is indicative only) and how far its preprocessed pixels are (model-independent);
- naive: for each image, PIL open -> weights.transforms() -> model(batch of 1);
- ceiling: the same model on tensors decoded beforehand (decoding not timed), at rl's batch size and memory format.

    python benchmarks/classify.py [--images 300] [--models resnet50 mobilenet_v3_large] [--batch-size 32]

Prints images/s and peak RSS (the child's own) for each, and the ratios. Targets on CPU: rl >= 1.5x naive and
>= 0.9x the ceiling; memory flat (compare --images 100 and 300).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from _measure import run_measured

RL = """
import sys, time, json
from rlcli.cli._common import default_workers
from rlcli.core.images import IMAGE_SUFFIXES
from rlcli.core.inference import RunOptions
from rlcli.core.inputs import expand_inputs
from rlcli.tasks.classify import classify, load_classifier
folder, model, weights, batch, draft = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
clf = load_classifier(model, weights, device="cpu")
inputs = expand_inputs([folder], suffixes=IMAGE_SUFFIXES)
started = time.perf_counter()
options = RunOptions(batch_size=batch, workers=default_workers(), draft=draft)
results = list(classify(clf, inputs, 5, options))
seconds = time.perf_counter() - started
top5 = {r.path: dict(zip(r.indices, r.probabilities)) for r in results}
print(json.dumps({"seconds": seconds, "images": len(results), "workers": default_workers(), "top5": top5}))
"""

NAIVE = """
import sys, time, json, torch, torchvision
from pathlib import Path
from PIL import Image
folder, model, weights = sys.argv[1:4]
net = torchvision.models.get_model(model)
net.load_state_dict(torch.load(weights, weights_only=True))
net.eval()
transform = torchvision.models.get_model_weights(model).DEFAULT.transforms()
paths = sorted(Path(folder).glob("*.jpg"))
started = time.perf_counter()
with torch.inference_mode():
    for path in paths:
        image = Image.open(path).convert("RGB")
        net(transform(image)[None]).softmax(-1).topk(5)
print(json.dumps({"seconds": time.perf_counter() - started, "images": len(paths)}))
"""

CEILING = """
import sys, time, json, torch, torchvision
from pathlib import Path
from rlcli.core.images import open_rgb
from rlcli.models.registry import get_spec
folder, model, weights, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
card = get_spec(model).card
net = torchvision.models.get_model(model)
net.load_state_dict(torch.load(weights, weights_only=True))
net.eval()
if card.channels_last:
    net = net.to(memory_format=torch.channels_last)
preprocess = card.preprocess
pixels = torch.stack([preprocess(open_rgb(p)) for p in sorted(Path(folder).glob("*.jpg"))])
started = time.perf_counter()
with torch.inference_mode():
    for chunk in pixels.split(batch):
        if card.channels_last:
            chunk = chunk.contiguous(memory_format=torch.channels_last)
        net(chunk).softmax(-1).topk(5)
print(json.dumps({"seconds": time.perf_counter() - started, "images": len(pixels)}))
"""


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    generator = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        width = rng.choice([160, 320, 640, 1024, 1600, 2400])
        height = int(width * rng.choice([0.66, 0.75, 1.0, 1.33]))
        # Smooth colour fields plus noise compress like photographs do (flat noise would be unrealistically large).
        small = generator.integers(0, 255, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
        noise = generator.normal(0, 8, (height, width, 3))
        pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index:04d}.jpg", quality=90)


def draft_pixel_difference(folder: Path, model: str) -> str:
    """How far --draft's preprocessed pixels are from the exact decode's, in normalised units (model-independent)."""
    from rlcli.core.images import open_rgb
    from rlcli.models.registry import get_spec

    preprocess = get_spec(model).card.preprocess
    worst, total, count, changed = 0.0, 0.0, 0, 0
    for path in sorted(folder.glob("*.jpg")):
        exact = preprocess(open_rgb(path))
        fast = preprocess(open_rgb(path, draft_size=preprocess.resize))
        difference = (exact - fast).abs()
        worst = max(worst, difference.max().item())
        total += difference.sum().item()
        count += difference.numel()
        changed += bool(difference.max() > 0)
    return (
        f"--draft pixels ({preprocess.resize} -> {preprocess.crop}): {changed} images decoded differently; "
        f"max |difference| {worst:.4f}, mean {total / count:.5f} (normalised units)"
    )


def draft_cost(exact: dict, draft: dict, speeds: dict) -> str:
    """How much faster --draft is, and how far its top-5 probabilities are from the exact decode's."""
    worst, changed = 0.0, 0
    for path, probabilities in exact.items():
        fast = draft[path]
        changed += max(probabilities, key=probabilities.get) != max(fast, key=fast.get)
        for index, p in probabilities.items():
            worst = max(worst, abs(p - fast.get(index, 0.0)))
    return (
        f"--draft: {speeds['rl-draft'] / speeds['rl']:.2f}x the exact decode's speed; probabilities differ by up to "
        f"{worst:.2e}; top-1 label changed for {changed} of {len(exact)} images"
    )


def main() -> None:
    import torch
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v3_large"])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_images(folder, args.images)
        print(f"{args.images} JPEGs, 160-2400 px; batch {args.batch_size}; torch threads {torch.get_num_threads()}\n")
        print(f"{'model':20} {'tool':8} {'images/s':>9} {'peak RSS MiB':>13}")
        for model in args.models:
            weights = Path(tmp) / f"{model}.pth"
            torch.manual_seed(0)
            torch.save(torchvision.models.get_model(model).state_dict(), weights)
            speeds, top5 = {}, {}
            runs = (("naive", NAIVE, ()), ("ceiling", CEILING, ()), ("rl", RL, ("0",)), ("rl-draft", RL, ("1",)))
            for tool, code, extra in runs:
                _, peak, out = run_measured(code, str(folder), model, str(weights), str(args.batch_size), *extra)
                figures = json.loads(out.strip().splitlines()[-1])
                speeds[tool] = figures["images"] / figures["seconds"]
                top5[tool] = figures.get("top5")
                print(f"{model:20} {tool:8} {speeds[tool]:9.2f} {peak / 2**20:13.0f}")
            print(
                f"{model:20} rl / naive {speeds['rl'] / speeds['naive']:.2f}x (target >= 1.5x), "
                f"rl / ceiling {speeds['rl'] / speeds['ceiling']:.2f}x (target >= 0.9x)"
            )
            print(f"{model:20} {draft_cost(top5['rl'], top5['rl-draft'], speeds)}")
            print(f"{model:20} {draft_pixel_difference(folder, model)}\n")


if __name__ == "__main__":
    main()
