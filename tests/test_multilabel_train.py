"""`rl multilabel train`: generated multi-label scenes, learned by csra_tiny on the CPU; resume; data layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from multilabel_shapes import CLASSES, write_scenes
from rlcli.core.checkpoints import load_checkpoint
from rlcli.core.images import open_rgb
from rlcli.errors import UsageError
from rlcli.tasks.multilabel import load_csra, read_labels
from rlcli.tasks.multilabel_data import read_labelled_set, split_off
from rlcli.tasks.multilabel_train import Hooks, TrainSettings, state_path, train

FAST = ["-m", "csra_tiny", "--lr", "0.05", "--warmup-epochs", "1", "--step-size", "8", "-b", "16"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: small passes, one intra-op thread


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    train_csv, _ = write_scenes(root / "train", 160, seed=1)
    val_csv, _ = write_scenes(root / "val", 40, seed=2)
    test_csv, boxes = write_scenes(root / "test", 60, seed=3)
    return {"train": train_csv, "val": val_csv, "test": test_csv, "test_boxes": boxes}


def test_training_learns_generated_scenes_and_attention_finds_them(rl, scenes, tmp_path):
    out = tmp_path / "shapes.pt"
    result = rl("multilabel", "train", str(scenes["train"]), "--val", str(scenes["val"]), "-o", str(out),
                "--epochs", "6", *FAST, "--json")  # fmt: skip
    assert result.code == 0, result.stderr
    assert "backbone from scratch" in result.stderr and "epoch 6/6" in result.stderr
    summary = json.loads(result.stdout)
    assert len(summary["epochs"]) == 6 and summary["best_mAP"] == max(e["val_mAP"] for e in summary["epochs"])

    # the checkpoint describes itself: no other flag needed, on images it never saw
    evaluation = rl("multilabel", "--model", str(out), "--labels", str(scenes["test"]), "--json", "-j", "0")
    assert evaluation.code == 0, evaluation.stderr
    document = json.loads(evaluation.stdout)
    assert document["model"]["arch"] == "csra_tiny" and document["images"] == 60
    assert document["mAP"] >= 0.9, document["average_precision"]

    clf, settings = load_csra(str(out), device="cpu")
    assert clf.class_names == sorted(CLASSES) and settings.lam_source == "checkpoint"
    info = load_checkpoint(out).info
    assert info.extra["metrics"]["epoch"] == summary["best_epoch"]
    assert info.extra["training"]["lr"] == 0.05 and info.extra["training"]["train_images"] == 160
    assert info.extra["preprocess"]["crop"] == 64

    # class attention maps peak inside the region of their class
    truth = read_labels(scenes["test"], clf.class_names)
    images = sorted(truth)
    batch = torch.stack([clf.preprocess(open_rgb(p)) for p in images])
    with torch.inference_mode():
        _, maps = clf.runner.model.forward_with_maps(batch)
    cell = 64 / maps.shape[-1]
    hits = total = 0
    for row, path in enumerate(images):
        boxes = scenes["test_boxes"][int(path.stem.rsplit("_", 1)[1])]
        for name, (x0, y0, x1, y1) in boxes.items():
            score_map = maps[row, clf.class_names.index(name)]
            y, x = divmod(int(score_map.argmax()), score_map.shape[-1])
            # csra_tiny's feature (x, y) is centred at pixel (8x, 8y) (3x3 convolutions, padding 1, strides 2, 2,
            # 2, 1): the peak's cell, [8x - 4, 8x + 4) on each axis, overlaps the shape's box
            cx, cy = x * cell, y * cell
            hits += x0 < cx + cell / 2 and cx - cell / 2 < x1 and y0 < cy + cell / 2 and cy - cell / 2 < y1
            total += 1
    assert hits / total >= 0.9, f"{hits} of {total} peaks inside their class's region"


def task_data(scenes):
    train_set = read_labelled_set(scenes["train"])
    return split_off(train_set, 0.25, seed=0)


def settings(**changes):
    base = {"arch": "csra_tiny", "epochs": 3, "lr": 0.05, "warmup_epochs": 1, "step_size": 2, "batch_size": 16}
    return TrainSettings(**{**base, **changes})


def test_resume_after_interruption_ends_with_the_same_weights(scenes, tmp_path):
    train_set, val_set = task_data(scenes)
    train_set = train_set.subset(list(range(48)), "part")
    straight = tmp_path / "straight.pt"
    train(train_set, val_set, straight, settings(seed=7))

    stopped = tmp_path / "stopped.pt"

    def interrupt(epoch, done, total, loss):
        if epoch == 2 and done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(train_set, val_set, stopped, settings(seed=7), hooks=Hooks(on_batch=interrupt))
    state = torch.load(state_path(stopped), weights_only=True)
    assert state["epoch"] == 1  # the last completed epoch
    result = train(train_set, val_set, stopped, settings(seed=123, lr=9.0), resume=True)  # stored settings win
    assert [e.epoch for e in result.epochs] == [1, 2, 3]
    final_a = torch.load(state_path(straight), weights_only=True)["model"]
    final_b = torch.load(state_path(stopped), weights_only=True)["model"]
    assert final_a.keys() == final_b.keys()
    for name in final_a:
        assert torch.equal(final_a[name], final_b[name]), name
    best_a, best_b = load_checkpoint(straight).state_dict, load_checkpoint(stopped).state_dict
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    with pytest.raises(UsageError, match="state of a run on other data"):
        train(train_set.subset(list(range(40)), "fewer"), val_set, stopped, settings(epochs=4), resume=True)


def test_frozen_backbone_caches_float16_features(scenes, tmp_path):
    train_set, val_set = task_data(scenes)
    cache = tmp_path / "cache"
    first = train(train_set, val_set, tmp_path / "a.pt", settings(freeze_backbone=True, epochs=2), cache_dir=cache)
    files = sorted(cache.glob("csra-features-*.pt"))
    assert len(files) == 2 and first.feature_seconds > 0
    features = torch.load(files[0], weights_only=True)["features"]
    assert features.dtype == torch.float16 and features.shape[1:] == (64, 8, 8)
    second = train(train_set, val_set, tmp_path / "b.pt", settings(freeze_backbone=True, epochs=2), cache_dir=cache)
    assert second.feature_seconds == 0
    # the frozen backbone is the one it started with: same seed, same initial backbone, only the heads differ
    a, b = load_checkpoint(tmp_path / "a.pt").state_dict, load_checkpoint(tmp_path / "b.pt").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("classifier."))


def test_multilabel_train_is_a_subcommand_and_train_is_still_a_path(rl, scenes, tmp_path, monkeypatch):
    helped = rl("multilabel", "train", "--help")
    assert helped.code == 0 and "--freeze-backbone" in helped.stdout and "--resume" in helped.stdout
    missing = rl("multilabel", "train", str(scenes["train"]), "-o", str(tmp_path / "x.pt"), "--resume")
    assert missing.code == 2 and "nothing to resume" in missing.stderr
    exists = tmp_path / "exists.pt"
    exists.write_bytes(b"")
    refused = rl("multilabel", "train", str(scenes["train"]), "-o", str(exists))
    assert refused.code == 1 and "exists" in refused.stderr
    # a folder named train is still images when written ./train
    monkeypatch.chdir(scenes["train"].parent.parent)
    images = rl("multilabel", "./train", "-w", "nothing.pt")
    assert images.code == 1 and "nothing.pt" in images.stderr


def test_voc_folder_and_coco_json(tmp_path):
    voc = tmp_path / "VOC"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n")
    (voc / "Annotations" / "000001.xml").write_text(
        "<annotation><object><name>dog</name><difficult>0</difficult></object>"
        "<object><name>person</name><difficult>1</difficult></object></annotation>"
    )
    (voc / "Annotations" / "000002.xml").write_text(
        "<annotation><object><name>cat</name><difficult>1</difficult></object>"
        "<object><name>cat</name><difficult>0</difficult></object></annotation>"
    )
    data = read_labelled_set(voc)
    assert len(data.class_names) == 20 and data.images[0] == voc / "JPEGImages" / "000001.jpg"
    names = data.class_names
    assert data.truths[0].positives == {names.index("dog")} and data.truths[0].difficult == {names.index("person")}
    assert data.truths[1].positives == {names.index("cat")} and not data.truths[1].difficult

    coco = tmp_path / "annotations" / "instances_mini.json"
    coco.parent.mkdir()
    (tmp_path / "mini").mkdir()
    coco.write_text(json.dumps({
        "images": [{"id": 5, "file_name": "a.jpg"}, {"id": 9, "file_name": "b.jpg"}],
        "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}],
        "annotations": [{"image_id": 5, "category_id": 3}, {"image_id": 5, "category_id": 3},
                        {"image_id": 5, "category_id": 1}],
    }))  # fmt: skip
    data = read_labelled_set(coco)
    assert data.class_names == ["person", "car"]  # category-id order
    assert data.images == [tmp_path / "mini" / "a.jpg", tmp_path / "mini" / "b.jpg"]
    assert data.truths[0].positives == {0, 1} and data.truths[1].positives == set()


def test_split_is_seeded_and_stated(scenes):
    data = read_labelled_set(scenes["train"])
    a_train, a_val = split_off(data, 0.2, seed=4)
    _, b_val = split_off(data, 0.2, seed=4)
    assert a_val.images == b_val.images and len(a_val) == 32 and len(a_train) == 128
    assert not set(a_val.images) & set(a_train.images)
    assert "held-out 32 images" in a_val.source
    assert isinstance(a_val.images[0], Path)


def test_backbone_from_the_torch_hub_cache_or_a_file(tmp_path, monkeypatch):
    import torchvision

    from rlcli.tasks.multilabel_train import build_model, initialise_backbone

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    net, _ = build_model(settings(arch="csra_resnet18", image_size=64), 3)
    assert "from scratch" in initialise_backbone(net, "csra_resnet18", None)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    reference = torchvision.models.resnet18()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    torch.save(reference.state_dict(), folder / url.rsplit("/", 1)[-1])
    said = initialise_backbone(net, "csra_resnet18", None)
    assert "ImageNet weights" in said and "120 of the backbone's 120 tensors" in said
    assert torch.equal(net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)

    # a ViT file at 224 px (timm's original layout, with its ImageNet head) for a ViT at 64 px: positions resized
    vit, _ = build_model(settings(arch="csra_vit_b16", image_size=64), 3)
    state = {k: torch.randn_like(v) for k, v in vit.state_dict().items() if not k.startswith("classifier.")}
    state["pos_embed"] = torch.randn(1, 197, 768)
    state["head.weight"], state["head.bias"] = torch.randn(1000, 768), torch.randn(1000)
    torch.save(state, tmp_path / "vit.pth")
    said = initialise_backbone(vit, "csra_vit_b16", tmp_path / "vit.pth")
    assert "150 of the backbone's 150 tensors" in said
    assert vit.pos_embed.shape == (1, 17, 768) and torch.equal(vit.pos_embed[0, 0], state["pos_embed"][0, 0])
    grid = state["pos_embed"][:, 1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(vit.pos_embed[0, 1:], expected[0].flatten(1).T)


def test_voc_folder_end_to_end_with_a_frozen_backbone(rl, tmp_path):
    """A VOC-style folder (difficult objects marked) trained with --freeze-backbone; the features are cached."""
    from multilabel_shapes import draw_scene

    rng = __import__("random").Random(0)
    voc = tmp_path / "VOC"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (voc / sub).mkdir(parents=True)
    ids = {"trainval": [], "test": []}
    for index in range(30):
        image, boxes = draw_scene(rng)
        image_id = f"{index:06d}"
        image.save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        objects = "".join(
            f"<object><name>{name}</name><difficult>{int(index % 7 == 0)}</difficult></object>" for name in boxes
        )
        (voc / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objects}</annotation>")
        ids["test" if index % 5 == 0 else "trainval"].append(image_id)
    for split, names in ids.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "voc.pt"
    arguments = ["multilabel", "train", str(voc), "--val-split", "test", "-o", str(out), "--freeze-backbone",
                 "--epochs", "2", "--cache-dir", str(tmp_path / "cache"), *FAST]  # fmt: skip
    result = rl(*arguments)
    assert result.code == 0, result.stderr
    assert "24 training images, 6 validation images, 4 classes" in result.stderr
    assert "epoch 2/2: loss" in result.stderr and "backbone features computed" in result.stderr
    assert result.stdout.startswith("best epoch ")
    again = rl(*arguments, "--force")
    assert again.code == 0 and "backbone features computed" not in again.stderr  # read from the cache
    clf, settings = load_csra(str(out), device="cpu")
    assert clf.class_names == sorted(CLASSES) and settings.arch == "csra_tiny"
