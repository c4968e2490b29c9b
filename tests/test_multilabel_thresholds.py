"""Per-class thresholds: best F1 on the tuning set, never worse than before; stored in a checkpoint and used."""

from __future__ import annotations

import json
import random

import pytest
import torch

from multilabel_shapes import CLASSES, write_scenes
from rlcli.core.checkpoints import CheckpointInfo, load_checkpoint, save_checkpoint
from rlcli.core.images import open_rgb
from rlcli.models.heads.csra import TinyCSRA
from rlcli.tasks.multilabel import Truth, load_csra, read_labels, tune_thresholds

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: small passes, one intra-op thread


def f1_by_hand(scores, truths, c, threshold):
    """F1 = 2 TP / (2 TP + FP + FN) over the images where class c is not difficult; None without a positive."""
    tp = fp = fn = 0
    for row, truth in zip(scores, truths, strict=True):
        if c in truth.difficult:
            continue
        predicted, positive = row[c] >= threshold, c in truth.positives
        tp += predicted and positive
        fp += predicted and not positive
        fn += positive and not predicted
    return None if tp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def random_set(seed, images=60, classes=5):
    rng = random.Random(seed)
    scores, truths = [], []
    for _ in range(images):
        truth = Truth()
        row = []
        for c in range(classes):
            positive = c < classes - 1 and rng.random() < 0.4  # the last class never has a positive
            if c < classes - 1 and rng.random() < 0.1:
                truth.difficult.add(c)
            elif positive:
                truth.positives.add(c)
            # scores overlap between the groups, rounded so that there are ties
            row.append(round(min(1.0, max(0.0, rng.gauss(0.6 if positive else 0.35, 0.2))), 2))
        scores.append(row)
        truths.append(truth)
    return scores, truths


def test_tuned_thresholds_give_each_class_its_best_f1_and_never_lower_it():
    names = ["a", "b", "c", "d", "none"]
    for seed in range(5):
        scores, truths = random_set(seed)
        tuned = tune_thresholds(scores, truths, names, 0.5)
        for c, result in enumerate(tuned):
            before = f1_by_hand(scores, truths, c, 0.5)
            after = f1_by_hand(scores, truths, c, result.threshold)
            if before is None:  # no positive example: nothing to tune on, the threshold is kept
                assert names[c] == "none" and result.threshold == 0.5 and after is None
                continue
            assert after >= before
            candidates = {row[c] for row in scores} | {0.0, 0.5, 1.01}
            assert after == max(f1_by_hand(scores, truths, c, t) for t in candidates)
            assert after == result.f1 and before == result.previous_f1


def test_tuning_keeps_an_optimal_current_threshold():
    scores = [[0.9], [0.8], [0.2], [0.1]]
    truths = [Truth({0}), Truth({0}), Truth(), Truth()]
    assert tune_thresholds(scores, truths, ["x"], 0.5)[0].threshold == 0.5  # F1 1 already
    # the best threshold lies halfway between the lowest accepted score and the next lower one
    assert tune_thresholds(scores, truths, ["x"], 0.95)[0].threshold == (0.8 + 0.2) / 2


def test_thresholds_are_stored_and_used(rl, tmp_path):
    torch.manual_seed(0)
    names = sorted(CLASSES)
    model = tmp_path / "tiny.pt"
    net = TinyCSRA(num_classes=len(names)).eval()
    info = CheckpointInfo(arch="csra_tiny", model_args={"num_classes": 4, "num_heads": 1, "lam": 0.1},
                          class_names=names)  # fmt: skip
    save_checkpoint(model, net.state_dict(), info)
    labels, _ = write_scenes(tmp_path / "scenes", 24, seed=5)
    tuned_file = tmp_path / "tuned.pt"
    result = rl("multilabel", "-w", str(model), "--labels", str(labels), "--tune-thresholds", "-o", str(tuned_file),
                "--json", "-j", "0")  # fmt: skip
    assert result.code == 0, result.stderr
    stored = load_checkpoint(tuned_file).info.extra["thresholds"]
    assert list(stored) == names and any(value != 0.5 for value in stored.values())
    assert json.loads(result.stdout)["threshold"] == stored  # the evaluation that follows uses them

    # independent scores: the model's forward on the checkpoint's preprocessing
    truth = read_labels(labels, names)
    images = sorted(truth)
    clf, settings = load_csra(str(tuned_file), device="cpu")
    assert settings.thresholds == tuple(stored[n] for n in names)
    with torch.inference_mode():
        scores = net(torch.stack([clf.preprocess(open_rgb(p)) for p in images])).sigmoid().tolist()
    truths = [truth[p] for p in images]
    for c, name in enumerate(names):
        before = f1_by_hand(scores, truths, c, 0.5)
        if before is not None:
            assert f1_by_hand(scores, truths, c, stored[name]) >= before

    predicted = rl("multilabel", *map(str, images), "-w", str(tuned_file), "--json", "-j", "0")
    assert predicted.code == 0, predicted.stderr
    assert "each class's threshold stored in the checkpoint" in predicted.stderr
    for line, row in zip(predicted.stdout.splitlines(), scores, strict=True):
        chosen = {entry["label"] for entry in json.loads(line)["labels"]}
        assert chosen == {n for c, n in enumerate(names) if row[c] >= stored[n]}
    forced = rl("multilabel", str(images[0]), "-w", str(tuned_file), "-t", "0", "--json", "-j", "0")
    assert len(json.loads(forced.stdout)["labels"]) == 4  # --threshold overrides the stored ones

    again = rl("multilabel", "-w", str(model), "--labels", str(labels), "--tune-thresholds", "-o", str(tuned_file))
    assert again.code == 1 and "exists" in again.stderr
    missing = rl("multilabel", "-w", str(model), "--labels", str(labels), "--tune-thresholds")
    assert missing.code == 2 and "-o FILE" in missing.stderr


def test_official_file_gains_a_description_when_tuned(rl, tmp_path):
    import torchvision

    torch.manual_seed(0)
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    state["classifier.multi_head.0.head.weight"] = torch.randn(4, 512, 1, 1)
    official = tmp_path / "resnet18_shapes_head1_lam0.2.pth"
    torch.save(state, official)
    labels, _ = write_scenes(tmp_path / "scenes", 8, seed=6)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(sorted(CLASSES)) + "\n")
    tuned = tmp_path / "tuned.pt"
    result = rl("multilabel", "-w", str(official), "--classes", str(classes), "--labels", str(labels), "--resize",
                "64", "--tune-thresholds", "-o", str(tuned), "-j", "0")  # fmt: skip
    assert result.code == 0, result.stderr
    info = load_checkpoint(tuned).info
    assert info.arch == "csra_resnet18" and info.model_args["lam"] == 0.2 and info.class_names == sorted(CLASSES)
    assert info.extra["preprocess"]["resize"] == 64
    clf, settings = load_csra(str(tuned), device="cpu")
    assert settings.lam_source == "checkpoint" and clf.preprocess.resize == 64 and settings.thresholds is not None
