"""`rl summary FILE`: a self-describing checkpoint (rl's own, e.g. what `rl multilabel train` writes) is inspected
with no other flag — the architecture it records, built with its stored arguments, at its preprocessing's crop."""

from __future__ import annotations

import json

import torch
import torchvision

from rlcli.core.checkpoints import CheckpointInfo, save_checkpoint
from rlcli.core.images import Preprocess


def _parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_a_fine_tuned_resnet_is_summarised_with_its_own_head(rl, tmp_path):
    reference = torchvision.models.resnet18(num_classes=10)  # the independent count: torchvision's own model
    path = tmp_path / "pets.safetensors"
    save_checkpoint(path, reference.state_dict(), CheckpointInfo(arch="resnet18", model_args={"num_classes": 10}))

    result = rl("summary", str(path), "--json", "--depth", "0")

    assert result.code == 0, result.stderr
    [model] = json.loads(result.stdout)["models"]
    assert model["params"] == _parameters(reference) == 11_181_642
    assert model["model"] == "resnet18 (pets.safetensors)"
    assert model["input_size"] == [3, 224, 224]


def test_a_trained_csra_checkpoint_is_read_at_its_preprocessing_crop(rl, tmp_path):
    from rlcli.models.registry import get_spec

    spec = get_spec("csra_tiny")
    net = spec.build((3, 96, 96), num_classes=5, num_heads=2)
    preprocess = Preprocess(resize=96, crop=96, mean=(0.5,) * 3, std=(0.25,) * 3, square=True)
    info = CheckpointInfo(
        arch="csra_tiny",
        model_args={"num_classes": 5, "num_heads": 2},
        class_names=list("abcde"),
        extra={"preprocess": preprocess.to_mapping()},
    )
    path = tmp_path / "shapes.pt"
    save_checkpoint(path, net.state_dict(), info)

    result = rl("summary", str(path), "--json")

    assert result.code == 0, result.stderr
    [model] = json.loads(result.stdout)["models"]
    assert model["params"] == _parameters(net)
    assert model["input_size"] == [3, 96, 96]


def test_a_checkpoint_that_names_no_architecture_is_one_line(rl, tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)

    result = rl("summary", str(path))

    assert result.code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "does not record its architecture" in result.stderr
