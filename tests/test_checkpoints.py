"""Checkpoint I/O: safe loading, unwrapping, prefixes, self-describing files, atomic writes."""

from __future__ import annotations

import errno
import os
import pickle
import re

import pytest
import torch

from rlcli.core.checkpoints import CheckpointInfo, load_checkpoint, load_into, save_checkpoint
from rlcli.core.files import atomic_write
from rlcli.errors import CheckpointError, RlError
from tiny_models import TinyNet


@pytest.fixture
def weights():
    torch.manual_seed(0)
    return TinyNet().state_dict()


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_self_describing_round_trip(tmp_path, weights, suffix):
    info = CheckpointInfo(
        arch="tiny", model_args={"num_classes": 10}, class_names=list("abcdefghij"), extra={"lam": 0.1}
    )
    path = save_checkpoint(tmp_path / f"model{suffix}", weights, info).path
    loaded = load_checkpoint(path)
    assert_same(loaded.state_dict, weights)
    assert loaded.info == info


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_plain_state_dict_has_no_info(tmp_path, weights, suffix):
    loaded = load_checkpoint(save_checkpoint(tmp_path / f"plain{suffix}", weights).path)
    assert loaded.info is None
    assert_same(loaded.state_dict, weights)


@pytest.mark.parametrize("key", ["state_dict", "model", "state_dict_ema", "model_ema", "params", "params_ema"])
def test_nested_training_checkpoints_are_unwrapped(tmp_path, weights, key):
    path = tmp_path / "train.pth"
    torch.save({key: weights, "epoch": 90, "optimizer": {"lr": 0.1}}, path)
    loaded = load_checkpoint(path)
    assert loaded.container_key == key
    assert_same(loaded.state_dict, weights)


def test_ema_is_preferred_only_when_asked(tmp_path, weights):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    path = tmp_path / "both.pth"
    torch.save({"state_dict": weights, "state_dict_ema": ema}, path)
    assert_same(load_checkpoint(path).state_dict, weights)
    assert_same(load_checkpoint(path, prefer_ema=True).state_dict, ema)
    basicsr = tmp_path / "swinir.pth"  # BasicSR's layout, as SwinIR's released files have it
    torch.save({"params": weights, "params_ema": ema}, basicsr)
    assert_same(load_checkpoint(basicsr).state_dict, weights)
    assert_same(load_checkpoint(basicsr, prefer_ema=True).state_dict, ema)


def test_wrapper_prefixes_are_stripped(tmp_path, weights):
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module._orig_mod.{k}": v for k, v in weights.items()}}, path)
    assert_same(load_checkpoint(path).state_dict, weights)


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": {"w": Exploit()}}, handle, protocol=2)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    torch.save({"w": torch.zeros(1), "cfg": Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(junk)
    truncated = tmp_path / "truncated.pt"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(truncated)
    no_tensors = tmp_path / "config.pt"
    torch.save({"epoch": 3, "lr": 0.1}, no_tensors)
    with pytest.raises(CheckpointError, match=r"no state dict found.*epoch"):
        load_checkpoint(no_tensors)


def test_load_into_names_missing_unexpected_and_mismatched(weights):
    bad = dict(weights)
    del bad["head.bias"]
    bad["extra.weight"] = torch.zeros(1)
    bad["head.weight"] = torch.zeros(3, 8)
    with pytest.raises(CheckpointError) as info:
        load_into(TinyNet(), bad, source="ckpt.pt")
    message = str(info.value)
    assert "missing 1 (head.bias)" in message
    assert "unexpected 1 (extra.weight)" in message
    assert "head.weight: checkpoint [3, 8] vs model [10, 8]" in message


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write(b"partial")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.pt"]


@pytest.mark.parametrize("hard_links", [True, False])
def test_publishing_without_overwrite_never_replaces_a_file(tmp_path, monkeypatch, hard_links):
    from rlcli.core import files

    if not hard_links:
        # A file system without hard links (FAT, some FUSE mounts) answers link() with EPERM.
        def no_links(source, target):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

        monkeypatch.setattr(files.os, "link", no_links)
    target = tmp_path / "out.bin"
    with pytest.raises(RlError) as info, files.atomic_write(target, overwrite=False) as handle:
        handle.write(b"mine")
        target.write_bytes(b"theirs")  # someone else publishes first
    assert str(info.value) == f"cannot write {target}: it exists (use --force to replace it)"
    assert target.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["out.bin"]

    target.unlink()
    with files.atomic_write(target, overwrite=False) as handle:
        handle.write(b"mine")
    assert target.read_bytes() == b"mine"
    assert os.listdir(tmp_path) == ["out.bin"]
    mode = os.stat(target).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # a new file's usual permissions, not mkstemp's 0o600

    with files.atomic_write(target) as handle:  # the default replaces, as before
        handle.write(b"replaced")
    assert target.read_bytes() == b"replaced"


def test_unknown_extension_is_refused(tmp_path, weights):
    with pytest.raises(CheckpointError, match="unknown checkpoint extension"):
        save_checkpoint(tmp_path / "model.npz", weights)


def test_dropping_mapped_pages_keeps_the_data(tmp_path):
    from rlcli.core.checkpoints import drop_mapped_pages

    original = {"w": torch.randn(512, 1024), "b": torch.randn(3)}
    path = tmp_path / "big.pt"
    torch.save(original, path)
    loaded = load_checkpoint(path)
    assert loaded.memory_mapped
    for tensor in loaded.state_dict.values():
        float(tensor.sum())  # touch every page
        drop_mapped_pages(loaded, tensor)
    assert_same(loaded.state_dict, original)  # read again from the file


@pytest.mark.parametrize(
    "name, content",
    [
        ("notes.txt", b"epoch 3: loss 0.41\nepoch 4: loss 0.38\n"),
        ("notes.pt", b"some text\nmore text\n"),
        ("config.pth", b"# lr schedule\n1,2,3\n"),
        ("empty.pt", b""),
    ],
)
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(f"{name}: not a checkpoint")):
        load_checkpoint(path)


def test_text_given_as_a_checkpoint_is_one_error_line(rl, tmp_path):
    from PIL import Image

    notes = tmp_path / "notes.txt"
    notes.write_text("epoch 3: loss 0.41\n")
    (tmp_path / "notes2.txt").write_text("epoch 4: loss 0.38\nmore\n")
    (tmp_path / "notes.pt").write_text("some text\nmore text\n")
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "x.png")
    runs = [
        ("swa-merge", str(notes), str(tmp_path / "notes2.txt"), "-o", str(tmp_path / "x.pt")),
        ("swa-merge", str(tmp_path / "notes.pt"), str(tmp_path / "notes.pt"), "-o", str(tmp_path / "y.pt")),
        ("classify", str(tmp_path / "x.png"), "-w", str(tmp_path / "notes.pt"), "-m", "resnet18"),
    ]
    for args in runs:
        result = rl(*args)
        assert result.code == 1, (args, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert "not a checkpoint" in result.stderr and "internal error" not in result.stderr
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


@pytest.mark.parametrize("content", [b"\x80\x02h\x05.", b"\x80\x02some text\n"])
def test_a_malformed_pickle_is_not_readable(tmp_path, content):
    # A memo lookup of an unset slot (KeyError inside torch) and a pop from an empty stack (IndexError).
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"broken\.pt: not a readable torch checkpoint"):
        load_checkpoint(path)


def test_legacy_torch_files_still_load(tmp_path, weights):
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": weights}, path, _use_new_zipfile_serialization=False)
    loaded = load_checkpoint(path)
    assert not loaded.memory_mapped  # only the zip format can be mapped
    assert_same(loaded.state_dict, weights)


def test_dropping_pages_never_touches_converted_copies(tmp_path):
    from rlcli.core.checkpoints import drop_mapped_pages

    torch.manual_seed(0)
    original = {"w": torch.randn(512, 1024), "steps": torch.arange(300_000)}
    path = tmp_path / "mixed.pt"
    torch.save(original, path)
    loaded = load_checkpoint(path, dtype=torch.float16)
    assert loaded.state_dict["w"].dtype == torch.float16 and loaded.state_dict["steps"].dtype == torch.int64
    reference = torch.load(path, weights_only=True)
    # As swa-merge streams a checkpoint: read each tensor, then let its pages go.
    dropped = {}
    for name, tensor in loaded.state_dict.items():
        float(tensor.sum())
        dropped[name] = drop_mapped_pages(loaded, tensor)
    assert dropped == {"w": False, "steps": True}  # the float16 copy is ordinary memory; the int64 is the file's
    assert torch.equal(loaded.state_dict["w"], reference["w"].to(torch.float16))  # the copy is intact
    assert torch.equal(loaded.state_dict["steps"], reference["steps"])  # read again from the file


def test_files_from_before_batch_counters_load(tmp_path):
    """PyTorch < 0.4.1 saved BatchNorm without num_batches_tracked (as Cadene's Inception and SE-Net files)."""
    from rlcli.core.checkpoints import load_into

    reference = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    old = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    load_into(fresh, old, source="old.pth")
    assert fresh[1].num_batches_tracked.item() == 0
    torch.testing.assert_close(fresh[1].running_var, reference[1].running_var)
    with pytest.raises(CheckpointError, match=r"missing 1 \(1.weight\)"):
        load_into(fresh, {k: v for k, v in old.items() if k != "1.weight"}, source="broken.pth")
