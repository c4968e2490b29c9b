"""CSRA heads against the paper's equations, official checkpoints, attention maps, metrics and the command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from image_fixtures import write_shapes
from rlcli.errors import CheckpointError
from rlcli.models.heads.csra import TEMPERATURES, MultiHeadCSRA, ResNetCSRA
from rlcli.tasks.multilabel import COCO, VOC2007, Truth, average_precision, evaluate, load_csra


def paper_logits(features: torch.Tensor, weights: list[torch.Tensor], lam: float) -> torch.Tensor:
    """The paper's equations written out with loops: for each head, class and image."""
    batch = features.shape[0]
    positions = features.flatten(2).transpose(1, 2).double()  # [batch, HW, d]: x_j
    logits = torch.zeros(batch, weights[0].shape[0], dtype=torch.float64)
    for head, temperature in zip(weights, TEMPERATURES[len(weights)], strict=True):
        for i in range(head.shape[0]):
            m_i = head[i].flatten().double()
            for b in range(batch):
                s = positions[b] @ m_i / m_i.norm()  # s_j^i for every position j
                base = s.mean()
                if math.isinf(temperature):
                    attention = s.max()
                else:
                    weights_j = torch.exp(temperature * s) / torch.exp(temperature * s).sum()
                    attention = (weights_j * s).sum()
                logits[b, i] += base + lam * attention
    return logits


@pytest.mark.parametrize("heads", sorted(TEMPERATURES))
def test_head_equals_the_papers_equations(heads):
    torch.manual_seed(heads)
    module = MultiHeadCSRA(heads, lam=0.3, channels=16, num_classes=5).double()
    features = torch.randn(2, 16, 4, 3, dtype=torch.float64)
    expected = paper_logits(features, [h.head.weight.detach() for h in module.multi_head], 0.3)
    torch.testing.assert_close(module(features), expected, rtol=1e-10, atol=1e-10)
    assert [h.temperature for h in module.multi_head] == list(TEMPERATURES[heads])


def test_head_is_trainable_with_bce():
    module = MultiHeadCSRA(2, lam=0.1, channels=8, num_classes=3)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(module(torch.randn(4, 8, 5, 5)), torch.ones(4, 3))
    loss.backward()
    assert all(p.grad is not None for p in module.parameters())


def official_checkpoint(path, heads=2, classes=20, seed=0):
    """A file in the authors' layout: torchvision ResNet-18 keys without fc, heads under classifier.multi_head."""
    import torchvision

    torch.manual_seed(seed)
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    for i in range(heads):
        state[f"classifier.multi_head.{i}.head.weight"] = torch.randn(classes, 512, 1, 1)
    torch.save(state, path)
    return state


def test_official_layout_loads_and_matches_our_module(tmp_path):
    path = tmp_path / "resnet18_voc07_head2_lam0.3_90.0.pth"
    state = official_checkpoint(path)
    clf, settings = load_csra(str(path), device="cpu")
    assert (settings.depth, settings.num_heads, settings.num_classes) == (18, 2, 20)
    assert settings.lam == 0.3 and settings.lam_source == "file name"
    assert clf.class_names == list(VOC2007)
    ours = ResNetCSRA(depth=18, num_classes=20, num_heads=2, lam=0.3).eval()
    ours.load_state_dict(state)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(clf.runner.model(x), ours(x))
    assert clf.preprocess.square and clf.preprocess.resize == 448 and clf.preprocess.mean == (0.0, 0.0, 0.0)


def test_lambda_defaults_to_the_datasets_official_value(tmp_path):
    path = tmp_path / "coco.pth"
    official_checkpoint(path, heads=4, classes=80)
    _, settings = load_csra(str(path), device="cpu")
    assert settings.lam == 0.5 and settings.lam_source == "official value for coco"
    _, forced = load_csra(str(path), device="cpu", lam=0.2)
    assert forced.lam == 0.2


def test_class_lists():
    assert len(VOC2007) == 20 and len(set(VOC2007)) == 20
    assert len(COCO) == 80 and len(set(COCO)) == 80
    assert COCO[0] == "person" and COCO[-1] == "toothbrush"


def test_bad_checkpoints(tmp_path):
    path = tmp_path / "odd.pth"
    state = official_checkpoint(path)
    renamed = {("backbone." + k if k.startswith("layer1.") else k): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError) as info:
        load_csra(str(tmp_path / "renamed.pth"), model="csra_resnet18", device="cpu")
    assert "missing" in str(info.value) and "layer1.0.conv1.weight" in str(info.value)
    assert "unexpected" in str(info.value) and "backbone.layer1" in str(info.value)
    three = {**state, "classifier.multi_head.2.head.weight": torch.randn(20, 512, 1, 1)}
    torch.save(three, tmp_path / "three.pth")
    with pytest.raises(CheckpointError, match="3 heads; CSRA defines 1, 2, 4, 6 or 8"):
        load_csra(str(tmp_path / "three.pth"), device="cpu")
    with pytest.raises(CheckpointError, match="80 class names for a head with 20 classes"):
        load_csra(str(path), classes="coco", device="cpu")
    plain = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    torch.save(plain, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="no CSRA heads"):
        load_csra(str(tmp_path / "plain.pth"), device="cpu")


def test_average_precision_by_hand():
    # ranks: 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg) -> precisions at positives 1/1 and 2/3
    assert average_precision([0.9, 0.8, 0.7, 0.1], [True, False, True, False]) == pytest.approx((1 + 2 / 3) / 2)
    # a tie between a positive and a negative counts as one step: precision 1/2 there, whatever the order
    assert average_precision([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    assert average_precision([0.5, 0.5], [False, True]) == pytest.approx(0.5)
    assert average_precision([0.3, 0.2], [False, False]) is None


def test_metrics_by_hand():
    names = ["cat", "dog", "bird"]
    scores = [[0.9, 0.2, 0.6], [0.4, 0.8, 0.1], [0.7, 0.7, 0.3]]
    truth = [Truth({0}), Truth({1}), Truth({0, 1})]
    result = evaluate(scores, truth, names, threshold=0.5)
    # cat: scores 0.9 (pos), 0.7 (pos), 0.4 (neg) -> AP 1; dog: 0.8 (pos), 0.7 (pos), 0.2 -> AP 1; bird: no positive
    assert result.average_precision == {"cat": 1.0, "dog": 1.0, "bird": None}
    assert result.mAP == 1.0 and result.classes_without_positives == ["bird"]
    assert result.classes_evaluated == ["cat", "dog"]
    # predictions >= 0.5: cat {0, 2} both right; dog {1, 2} both right; bird {0} wrong.
    # Per-class figures average over cat and dog, the classes with a positive example; bird's false alarm counts
    # in the pooled OP only.
    assert pytest.approx(1.0) == result.CP
    assert pytest.approx(1.0) == result.CR
    assert pytest.approx(1.0) == result.CF1
    assert pytest.approx(4 / 5) == result.OP and pytest.approx(4 / 4) == result.OR
    assert pytest.approx(2 * 0.8 / 1.8) == result.OF1


@pytest.fixture(scope="module")
def csra_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("csra") / "resnet18_voc07_head1_lam0.1.pth"
    official_checkpoint(path, heads=1)
    return path


def test_cli_streams_labels_and_writes_attention_maps(rl, csra_file, tmp_path):
    images = write_shapes(tmp_path / "images", per_class=2, seed=0, size=64)
    wide = tmp_path / "images" / "wide.png"
    Image.new("RGB", (120, 50), (200, 100, 50)).save(wide)
    cam = tmp_path / "cam"
    result = rl("multilabel", str(tmp_path / "images"), "-w", str(csra_file), "--top-k", "2", "--cam", str(cam),
                "--resize", "64", "--json", "-j", "0")  # fmt: skip
    assert result.code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(images) + 1
    assert all(len(line["labels"]) == 2 and line["labels"][0]["score"] >= line["labels"][1]["score"] for line in lines)
    assert all(entry["label"] in VOC2007 for line in lines for entry in line["labels"])
    pngs = sorted(cam.glob("*.png"))
    assert len(pngs) == len(lines)
    wide_png = next(p for p in pngs if p.name.startswith("wide_"))
    with Image.open(wide_png) as sheet:
        assert sheet.format == "PNG" and sheet.size == (2 * 120, 50)
    assert "1 head(s), 20 classes, lambda 0.1 (file name)" in result.stderr


def test_cli_threshold_and_table(rl, csra_file, tmp_path):
    write_shapes(tmp_path / "images", per_class=1, seed=0, size=64)
    everything = rl(
        "multilabel", str(tmp_path / "images"), "-w", str(csra_file), "-t", "0", "--resize", "64", "-j", "0"
    )
    assert everything.code == 0, everything.stderr
    rows = everything.stdout.splitlines()
    assert rows[0].startswith("Image") and len(rows) == 4
    assert all(row.count(",") == 19 for row in rows[1:])  # threshold 0: all 20 labels
    nothing = rl("multilabel", str(tmp_path / "images"), "-w", str(csra_file), "-t", "1", "--resize", "64", "-j", "0")
    assert all(row.rstrip().endswith("-") for row in nothing.stdout.splitlines()[1:])


def test_cli_evaluation(rl, csra_file, tmp_path):
    images = write_shapes(tmp_path / "images", per_class=2, seed=0, size=64)
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"images/{p.name},dog,person\n" if i % 2 else f"images/{p.name},cat\n"
                              for i, (p, _) in enumerate(images)))  # fmt: skip
    result = rl("multilabel", "-w", str(csra_file), "--labels", str(labels), "--resize", "64", "--json", "-j", "0")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["images"] == len(images)
    assert set(doc["classes_without_positives"]) == set(VOC2007) - {"cat", "dog", "person"}
    assert doc["average_precision"]["aeroplane"] is None
    assert 0 <= doc["mAP"] <= 1 and doc["model"]["num_heads"] == 1
    table = rl("multilabel", "-w", str(csra_file), "--labels", str(labels), "--resize", "64", "-j", "0")
    assert "mAP" in table.stdout and "OF1" in table.stdout
    labels.write_text("images/nothing.png,unicorn\n")
    bad = rl("multilabel", "-w", str(csra_file), "--labels", str(labels))
    assert bad.code == 1 and "unknown class 'unicorn'" in bad.stderr


# --- metrics against the official evaluation -------------------------------------------------------------------


def official_voc07_metrics(scores, targets, threshold=0.5):
    """utils/evaluation/cal_mAP.py and cal_PR.py of the CSRA repository, transcribed: ternary VOC07 targets
    (1 positive, 0 difficult, -1 negative); a difficult pair is left out of its class's AP and counts."""
    import numpy as np

    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    aps = []
    gt, tp, predicted = [], [], []
    for c in range(scores.shape[1]):
        keep = np.where(targets[:, c] != 0)[0]
        score, target = scores[keep, c], targets[keep, c].copy()
        target[target == -1] = 0
        order = np.argsort(-score)
        hits, precision_sum = 0.0, 0.0
        for rank, label in enumerate(target[order]):
            if label == 1:
                hits += 1
                precision_sum += hits / (rank + 1)
        aps.append(precision_sum / hits)
        gt.append(np.sum(target == 1))
        predicted.append(np.sum(score >= threshold))
        tp.append(np.sum(target * (score >= threshold)))
    gt, tp, predicted = np.array(gt), np.array(tp), np.array(predicted, dtype=np.float64)
    predicted[predicted == 0] = 1
    op, o_r = tp.sum() / predicted.sum(), tp.sum() / gt.sum()
    cp, cr = np.sum(tp / predicted) / len(gt), np.sum(tp / gt) / len(gt)
    return {
        "mAP": float(np.mean(aps)),
        "CP": cp,
        "CR": cr,
        "CF1": 2 * cp * cr / (cp + cr),
        "OP": op,
        "OR": o_r,
        "OF1": 2 * op * o_r / (op + o_r),
    }


def test_metrics_equal_the_official_evaluation_with_difficult_labels():
    generator = torch.Generator().manual_seed(7)
    images, classes = 60, 6
    targets = torch.randint(-1, 2, (images, classes), generator=generator)  # -1, 0 (difficult) or 1
    targets[:3] = 1  # every class has positives, so the official code's averages are defined
    targets[3:6] = -1  # ... and negatives
    scores = torch.rand(images, classes, generator=generator, dtype=torch.float64)
    scores[:3] = 0.9  # and every class is predicted at least once
    scores[:3] += torch.arange(3, dtype=torch.float64)[:, None] * 0.01  # no ties among them
    truths = [
        Truth({c for c in range(classes) if row[c] == 1}, {c for c in range(classes) if row[c] == 0})
        for row in targets.tolist()
    ]
    ours = evaluate(scores.tolist(), truths, [f"c{i}" for i in range(classes)], threshold=0.5)
    official = official_voc07_metrics(scores.tolist(), targets.tolist())
    for name, value in official.items():
        assert getattr(ours, name) == pytest.approx(value, abs=1e-12), name
    assert ours.difficult_excluded == int((targets == 0).sum())


def test_per_class_figures_use_one_class_set_on_a_subset():
    """Two VOC images recognised perfectly: every figure is 100 %. (CP over all 20 classes but CR over the 2
    with positives gave CF1 = 0.182.)"""
    scores = [[0.0] * 20, [0.0] * 20]
    scores[0][VOC2007.index("cat")] = 0.9
    scores[1][VOC2007.index("dog")] = 0.8
    truths = [Truth({VOC2007.index("cat")}), Truth({VOC2007.index("dog")})]
    result = evaluate(scores, truths, list(VOC2007))
    assert (result.mAP, result.CP, result.CR, result.CF1, result.OP, result.OR, result.OF1) == (1.0,) * 7
    assert result.classes_evaluated == ["cat", "dog"]


def test_labels_file_merges_repeated_images_and_reads_difficult_marks(tmp_path):
    from rlcli.tasks.multilabel import read_labels

    labels = tmp_path / "labels.csv"
    labels.write_text("a.jpg,dog\nb.jpg,cat,person?\na.jpg,cat\nb.jpg,person\nc.jpg,bird?\n")
    truth = read_labels(labels, list(VOC2007))
    index = VOC2007.index
    assert truth[(tmp_path / "a.jpg").resolve()] == Truth({index("dog"), index("cat")}, set())
    # person is difficult on one row and a plain positive on another: a positive, as in VOC's own conversion
    assert truth[(tmp_path / "b.jpg").resolve()] == Truth({index("cat"), index("person")}, set())
    assert truth[(tmp_path / "c.jpg").resolve()] == Truth(set(), {index("bird")})


def test_absurd_lambda_and_threshold_are_usage_errors(rl, csra_file, tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    for option, value in (("--lam", "inf"), ("--lam", "nan"), ("--lam", "-1"), ("-t", "nan"), ("-t", "1.5")):
        result = rl("multilabel", str(tmp_path / "a.png"), "-w", str(csra_file), option, value)
        assert result.code == 2, (option, value, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_attention_map_folder_is_checked_up_front(rl, csra_file, tmp_path, without_root_override):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    a_file = tmp_path / "maps.png"
    a_file.write_bytes(b"not a folder")
    result = rl("multilabel", str(tmp_path / "a.png"), "-w", str(csra_file), "--cam", str(a_file))
    assert result.code == 1 and result.stdout == ""
    assert result.stderr == f"error: cannot write {a_file}: it is a file, not a folder\n"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = rl("multilabel", str(tmp_path / "a.png"), "-w", str(csra_file), "--cam", str(locked / "maps"))
    finally:
        locked.chmod(0o755)
    assert result.code == 1 and result.stderr == f"error: cannot write {locked / 'maps'}: permission denied\n"


def test_a_map_that_cannot_be_written_is_that_images_problem(rl, csra_file, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (32, 32), (10, 200, 30)).save(images / f"{name}.png")
    cam = tmp_path / "cam"
    (cam / "b_00001.png").mkdir(parents=True)  # a folder where b's map should go
    result = rl("multilabel", str(images), "-w", str(csra_file), "--cam", str(cam), "--resize", "32", "-j", "0")
    assert result.code == 1
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == [str(images / f"{n}.png") for n in "abc"]
    assert sorted(p.name for p in cam.glob("*.png") if p.is_file()) == ["a_00000.png", "c_00002.png"]
    assert (
        result.stderr.splitlines()[-1]
        == f"error: {images / 'b.png'}: its attention map: cannot write {cam / 'b_00001.png'}: is a directory"
    )
