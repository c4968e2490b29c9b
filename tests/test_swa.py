"""`rl swa-merge`: exact averages, dtypes, structure, safety, and BatchNorm recomputation."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import pytest
import torch
from PIL import Image
from torch import nn
from torch.optim.swa_utils import AveragedModel

from rlcli.core.checkpoints import CheckpointInfo, load_checkpoint, save_checkpoint
from rlcli.errors import CheckpointError, RlError, UsageError
from rlcli.tasks.swa import merge_checkpoints, parse_weights, resolve_inputs


def bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def random_state(seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    net[1].running_mean.normal_()
    net[1].num_batches_tracked.fill_(seed)
    for p in net.parameters():
        p.data.normal_()
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in net.state_dict().items()}


@pytest.fixture
def checkpoints(tmp_path):
    paths = []
    for seed in range(4):
        path = tmp_path / f"epoch{seed}.pt"
        torch.save(random_state(seed), path)
        paths.append(path)
    return paths


def test_uniform_average_equals_float64_mean_and_averaged_model(tmp_path, checkpoints):
    out = tmp_path / "swa.pt"
    report = merge_checkpoints(checkpoints, out)
    merged = torch.load(out, weights_only=True)
    states = [random_state(seed) for seed in range(4)]
    for key, value in merged.items():
        if value.is_floating_point():
            expected = torch.stack([s[key].double() for s in states]).mean(0).float()
            assert torch.equal(value, expected), key
    assert torch.equal(merged["1.num_batches_tracked"], torch.tensor(3))
    assert report.copied == ["1.num_batches_tracked"]
    assert report.averaged == len(merged) - 1
    assert report.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert report.output_bytes == out.stat().st_size

    swa = AveragedModel(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)))
    for state in states:
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
        model.load_state_dict(state)
        swa.update_parameters(model)
    for name, param in swa.module.named_parameters():
        torch.testing.assert_close(merged[name], param.detach(), rtol=1e-6, atol=1e-6)


def test_weighted_average_is_normalised(tmp_path, checkpoints):
    out = tmp_path / "w.pt"
    report = merge_checkpoints(checkpoints, out, weights=[1, 1, 2, 0])
    assert report.weights == [0.25, 0.25, 0.5, 0.0]
    assert report.weighted and any("normalised" in n for n in report.notes)
    merged = torch.load(out, weights_only=True)
    states = [random_state(seed) for seed in range(4)]
    expected = (
        states[0]["0.weight"].double() + states[1]["0.weight"].double() + 2 * states[2]["0.weight"].double()
    ) / 4
    assert torch.equal(merged["0.weight"], expected.float())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_is_preserved(tmp_path, dtype):
    paths = []
    for seed in range(3):
        paths.append(save_checkpoint(tmp_path / f"{seed}.safetensors", random_state(seed, dtype)).path)
    out = tmp_path / "avg.safetensors"
    merge_checkpoints(paths, out)
    merged = load_checkpoint(out).state_dict
    assert merged["0.weight"].dtype == dtype
    expected = torch.stack([random_state(s, dtype)["0.weight"].double() for s in range(3)]).mean(0).to(dtype)
    assert torch.equal(merged["0.weight"], expected)


def test_nested_prefixed_and_mixed_formats(tmp_path):
    a = tmp_path / "a.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in random_state(0).items()}, "epoch": 1}, a)
    b = tmp_path / "b.pth"
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in random_state(1).items()}}, b)
    c = save_checkpoint(tmp_path / "c.safetensors", random_state(2)).path
    out = tmp_path / "out.pt"
    merge_checkpoints([a, b, c], out)
    merged = torch.load(out, weights_only=True)
    assert set(merged) == set(random_state(0))


def test_keep_structure_keeps_nesting_and_names(tmp_path):
    paths = []
    for seed in range(2):
        path = tmp_path / f"{seed}.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in random_state(seed).items()}, "epoch": seed}, path)
        paths.append(path)
    out = tmp_path / "out.pth"
    merge_checkpoints(paths, out, keep_structure=True)
    merged = torch.load(out, weights_only=True)
    assert merged["epoch"] == 1
    assert "module.0.weight" in merged["state_dict"]


def test_ema_weights_are_preferred_when_asked(tmp_path):
    paths = []
    for seed in range(2):
        path = tmp_path / f"{seed}.pth"
        torch.save({"state_dict": random_state(seed), "state_dict_ema": random_state(seed + 10)}, path)
        paths.append(path)
    merge_checkpoints(paths, tmp_path / "ema.pt", prefer_ema=True)
    merged = torch.load(tmp_path / "ema.pt", weights_only=True)
    expected = (random_state(10)["0.weight"].double() + random_state(11)["0.weight"].double()) / 2
    assert torch.equal(merged["0.weight"], expected.float())


def test_ema_from_some_inputs_and_raw_weights_from_others_is_refused(rl, tmp_path):
    paths = []
    for seed, has_ema in enumerate([True, False, True]):
        path = tmp_path / f"{seed}.pth"
        content = {"state_dict": random_state(seed)}
        if has_ema:
            content["state_dict_ema"] = random_state(seed + 10)
        torch.save(content, path)
        paths.append(path)
    out = tmp_path / "ema.pt"
    with pytest.raises(CheckpointError) as info:
        merge_checkpoints(paths, out, prefer_ema=True)
    message = str(info.value)
    assert "0.pth, 2.pth have EMA weights" in message and "1.pth has none" in message
    assert "nothing written" in message and not out.exists()
    result = rl("swa-merge", *map(str, paths), "-o", str(out), "--ema")
    assert result.code == 1 and result.stderr.count("\n") == 1 and "1.pth has none" in result.stderr
    assert not out.exists()
    merge_checkpoints(paths, out)  # without --ema every input's raw weights are averaged
    assert out.exists()


def test_keep_structure_with_ema_reads_back_as_the_average(tmp_path):
    paths = []
    for seed in range(2):
        path = tmp_path / f"{seed}.pth"
        raw = {f"module.{k}": v for k, v in random_state(seed).items()}
        torch.save({"state_dict": raw, "state_dict_ema": random_state(seed + 10), "epoch": seed}, path)
        paths.append(path)
    out = tmp_path / "out.pth"
    report = merge_checkpoints(paths, out, prefer_ema=True, keep_structure=True)
    expected = (random_state(10)["0.weight"].double() + random_state(11)["0.weight"].double()) / 2
    assert torch.equal(load_checkpoint(out).state_dict["0.weight"], expected.float())  # what rl itself reads
    assert torch.equal(load_checkpoint(out, prefer_ema=True).state_dict["0.weight"], expected.float())
    written = torch.load(out, weights_only=True)
    assert written["epoch"] == 1 and "module.0.weight" in written["state_dict"]  # structure and names kept
    assert any("state_dict" in note and "raw weights" in note for note in report.notes), report.notes


def test_counters_and_metadata_come_from_the_last_input_with_weight(tmp_path):
    paths = []
    for seed in range(3):
        state = random_state(seed)  # num_batches_tracked == seed
        if seed == 2:
            state["0.weight"][0, 0, 0, 0] = float("inf")  # weight 0: must not reach the average (0 * inf = nan)
        info = CheckpointInfo(arch="tiny", class_names=[f"from input {seed}"])
        content = {**json.loads(info.to_json()), "state_dict": state, "epoch": seed}
        paths.append(tmp_path / f"{seed}.pt")
        torch.save(content, paths[-1])
    out = tmp_path / "out.pt"
    merge_checkpoints(paths, out, weights=[1, 1, 0], keep_structure=True)
    written = torch.load(out, weights_only=True)
    assert written["epoch"] == 1 and written["class_names"] == ["from input 1"]
    assert torch.equal(written["state_dict"]["1.num_batches_tracked"], torch.tensor(1))
    expected = (random_state(0)["0.weight"].double() + random_state(1)["0.weight"].double()) / 2
    assert torch.equal(written["state_dict"]["0.weight"], expected.float())
    flat = tmp_path / "flat.safetensors"
    merge_checkpoints(paths, flat, weights=[1, 1, 0])
    loaded = load_checkpoint(flat)
    assert loaded.info.class_names == ["from input 1"]
    assert torch.equal(loaded.state_dict["1.num_batches_tracked"], torch.tensor(1))


def test_a_folder_is_averaged_in_natural_order(rl, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for epoch in (10, 2, 1):
        state = random_state(epoch)  # num_batches_tracked == epoch
        torch.save(state, folder / f"epoch_{epoch}.pt")
    expected = [str(folder / f"epoch_{e}.pt") for e in (1, 2, 10)]  # as people number files, not "1, 10, 2"
    assert [str(p) for p in resolve_inputs([str(folder)])] == expected
    result = rl("swa-merge", str(folder), "-o", str(tmp_path / "swa.pt"), "--weights", "1,2,3", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["inputs"] == expected
    assert report["weights"] == [1 / 6, 2 / 6, 3 / 6]
    merged = torch.load(tmp_path / "swa.pt", weights_only=True)
    assert torch.equal(merged["1.num_batches_tracked"], torch.tensor(10))  # the last input is epoch_10
    states = {e: random_state(e)["0.weight"].double() for e in (1, 2, 10)}
    assert torch.equal(merged["0.weight"], ((states[1] + 2 * states[2] + 3 * states[10]) / 6).float())


def test_self_describing_checkpoints_keep_their_info(tmp_path):
    info = CheckpointInfo(arch="resnet18", class_names=["a", "b"])
    paths = [save_checkpoint(tmp_path / f"{s}.safetensors", random_state(s), info).path for s in range(2)]
    merge_checkpoints(paths, tmp_path / "avg.safetensors")
    assert load_checkpoint(tmp_path / "avg.safetensors").info == info


def test_mismatched_keys_and_shapes_fail_before_writing(tmp_path, checkpoints):
    odd = random_state(9)
    odd.pop("2.bias")
    odd["extra"] = torch.zeros(1)
    odd["0.weight"] = torch.zeros(5, 3, 3, 3)
    bad = tmp_path / "odd.pt"
    torch.save(odd, bad)
    out = tmp_path / "never.pt"
    with pytest.raises(CheckpointError) as info:
        merge_checkpoints([*checkpoints, bad], out)
    message = str(info.value)
    assert "odd.pt" in message and "missing 1 (2.bias)" in message and "unexpected 1 (extra)" in message
    assert "0.weight: [5, 3, 3, 3] here vs [4, 3, 3, 3] in epoch0.pt" in message
    assert not out.exists()


@pytest.mark.parametrize(
    "first, second",
    [
        (torch.float32, torch.int64),
        (torch.int64, torch.float32),
        (torch.float16, torch.bool),
        (torch.int64, torch.bool),
    ],
)
def test_floating_and_integer_dtypes_of_one_tensor_are_refused(tmp_path, first, second):
    states = [random_state(0), random_state(1)]
    states[0]["1.running_mean"] = states[0]["1.running_mean"].to(first)
    states[1]["1.running_mean"] = states[1]["1.running_mean"].to(second)
    paths = []
    for index, state in enumerate(states):
        paths.append(tmp_path / f"in{index}.pt")
        torch.save(state, paths[-1])
    out = tmp_path / "never.pt"
    with pytest.raises(CheckpointError) as info:
        merge_checkpoints(paths, out)
    message = str(info.value)
    name = lambda dtype: str(dtype).removeprefix("torch.")  # noqa: E731
    assert "in1.pt" in message and "1.running_mean" in message
    assert f"{name(second)} here vs {name(first)} in in0.pt" in message and "nothing written" in message
    assert not out.exists()


@pytest.mark.parametrize(
    "dtypes, written",
    [
        ((torch.float16, torch.float32), torch.float32),
        ((torch.float32, torch.float16), torch.float32),
        ((torch.bfloat16, torch.float16), torch.float32),  # neither holds the other's values
        ((torch.float16, torch.float16, torch.float64), torch.float64),
    ],
)
def test_mixed_floating_dtypes_are_averaged_in_float64_and_written_promoted(rl, tmp_path, dtypes, written):
    paths = []
    for seed, dtype in enumerate(dtypes):
        state = random_state(seed)
        state["0.weight"] = state["0.weight"].to(dtype)
        paths.append(tmp_path / f"in{seed}.pt")
        torch.save(state, paths[-1])
    report = merge_checkpoints(paths, tmp_path / "out.pt")
    merged = torch.load(tmp_path / "out.pt", weights_only=True)
    inputs = [torch.load(p, weights_only=True)["0.weight"] for p in paths]
    expected = (sum(t.double() for t in inputs) / len(inputs)).to(written)
    assert merged["0.weight"].dtype == written
    assert torch.equal(merged["0.weight"], expected)
    assert merged["0.bias"].dtype == torch.float32  # tensors of one dtype keep it
    shown = [str(d).removeprefix("torch.") for d in dict.fromkeys(dtypes)]
    assert report.promoted == {"0.weight": {"inputs": shown, "written": str(written).removeprefix("torch.")}}

    result = rl("swa-merge", *map(str, paths), "-o", str(tmp_path / "cli.pt"), "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["promoted"] == report.promoted
    text = rl("swa-merge", *map(str, paths), "-o", str(tmp_path / "cli2.pt"))
    assert text.code == 0, text.stderr
    assert f"0.weight ({', '.join(shown)} -> {str(written).removeprefix('torch.')})" in text.stdout


def test_non_finite_result_is_an_error(tmp_path, checkpoints):
    state = random_state(5)
    state["0.weight"][0, 0, 0, 0] = float("inf")
    torch.save(state, tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match=r"non-finite values in 0\.weight"):
        merge_checkpoints([*checkpoints, tmp_path / "inf.pt"], tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_refuses_to_overwrite_without_force(tmp_path, checkpoints):
    existing = tmp_path / "exists.pt"
    existing.write_bytes(b"keep me")
    with pytest.raises(RlError, match=r"exists\.pt: it exists \(use --force to replace it\)"):
        merge_checkpoints(checkpoints, existing)
    assert existing.read_bytes() == b"keep me"
    before = checkpoints[0].read_bytes()
    with pytest.raises(RlError, match=r"epoch0\.pt: it is one of the inputs \(use --force to replace it\)"):
        merge_checkpoints(checkpoints, checkpoints[0])
    assert checkpoints[0].read_bytes() == before
    merge_checkpoints(checkpoints, existing, force=True)
    assert set(torch.load(existing, weights_only=True)) == set(random_state(0))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_file_created_during_the_merge_is_not_replaced(tmp_path, checkpoints, suffix):
    """Another process (a second merge to the same path) writes the output while this one averages: without
    --force it keeps its file, and this run fails with the one message for an existing output."""
    out = tmp_path / f"swa{suffix}"

    def another_writer(stage, done, total):
        if stage == "averaging" and done == total:
            out.write_bytes(b"their result")

    with pytest.raises(RlError) as info:
        merge_checkpoints(checkpoints, out, progress=another_writer)
    assert str(info.value) == f"cannot write {out}: it exists (use --force to replace it)"
    assert out.read_bytes() == b"their result"
    assert sorted(os.listdir(tmp_path)) == sorted([*(p.name for p in checkpoints), out.name])  # no temp left

    out.unlink()
    report = merge_checkpoints(checkpoints, out, progress=another_writer, force=True)
    assert out.read_bytes() != b"their result"
    assert report.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sorted(os.listdir(tmp_path)) == sorted([*(p.name for p in checkpoints), out.name])


# `rl` in a child process whose disk is slow: each write of the output file sleeps first, so a signal sent once
# the output has bytes arrives while torch.save is inside its write callback, which is where it used to be lost.
SLOW_DISK_RL = """
import sys, time
from rlcli.core import files
class SlowFile:
    def __init__(self, handle):
        self.handle = handle
    def write(self, data):
        time.sleep(0.05)
        return self.handle.write(data)
    def __getattr__(self, name):
        return getattr(self.handle, name)
init = files.HashingWriter.__init__
files.HashingWriter.__init__ = lambda self, handle: init(self, SlowFile(handle))
from rlcli.cli import main
sys.argv = ["rl", *sys.argv[1:]]
main()
"""


def wait_for_temp_file(folder, name, process, timeout=120.0):
    """The hidden temporary output once it holds bytes (the write has begun)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        for entry in folder.iterdir():
            if entry.name.startswith(f".{name}.") and entry.name.endswith(".tmp") and entry.stat().st_size > 0:
                return entry
        time.sleep(0.01)
    process.kill()
    raise AssertionError("the output was never being written")


@pytest.mark.parametrize("signal_name, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_while_writing_leaves_no_temporary_file(tmp_path, signal_name, code):
    import signal
    import subprocess
    import sys

    inputs = []
    for seed in range(2):
        torch.manual_seed(seed)
        inputs.append(tmp_path / f"in{seed}.pt")
        torch.save({f"w{i}": torch.randn(65536) for i in range(20)}, inputs[-1])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = [sys.executable, "-c", SLOW_DISK_RL, "swa-merge", *map(str, inputs), "-o", str(out_dir / "swa.pt")]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_temp_file(out_dir, "swa.pt", process)
    process.send_signal(getattr(signal, signal_name))
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert "error" not in stderr, stderr
    assert stderr.strip().endswith("terminated" if signal_name == "SIGTERM" else "interrupted"), stderr
    assert os.listdir(out_dir) == []  # neither the output nor the hidden temporary file


def limited_file_size(limit: int):
    """preexec_fn for a child whose files cannot grow past ``limit`` bytes: a real full-disk failure, as write(2)
    answers EFBIG ('File too large') instead of killing the child with SIGXFSZ."""
    import resource
    import signal

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_full_disk_is_one_error_line(tmp_path, suffix):
    import subprocess
    import sys

    inputs = []
    for seed in range(2):
        torch.manual_seed(seed)
        inputs.append(tmp_path / f"in{seed}.pt")
        torch.save({f"w{i}": torch.randn(65536) for i in range(4)}, inputs[-1])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / f"swa{suffix}"
    result = subprocess.run(
        [sys.executable, "-m", "rlcli", "swa-merge", *map(str, inputs), "-o", str(out)],
        capture_output=True,
        text=True,
        preexec_fn=limited_file_size(100_000),
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"error: cannot write {out}: file too large\n"
    assert os.listdir(out_dir) == []


def test_output_problems_are_found_before_the_work(rl, tmp_path, checkpoints, without_root_override):
    stages = []

    def record(stage, done, total):
        stages.append(stage)

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    folder = tmp_path / "a_folder.pt"
    folder.mkdir()
    cases = [
        (locked / "swa.pt", False, f"cannot write {locked / 'swa.pt'}: permission denied"),
        (folder, True, f"cannot write {folder}: it is a folder"),
        (tmp_path / "missing" / "swa.pt", False, f"cannot write {tmp_path / 'missing' / 'swa.pt'}: no folder"),
    ]
    for out, force, message in cases:
        with pytest.raises(RlError) as info:
            merge_checkpoints(checkpoints, out, force=force, progress=record)
        assert str(info.value).startswith(message)
        assert stages == []  # nothing was read or averaged
        result = rl("swa-merge", *map(str, checkpoints), "-o", str(out), *(["--force"] if force else []))
        assert result.code == 1 and result.stderr.startswith(f"error: {message}"), result.stderr
        assert result.stderr.count("\n") == 1 and ".tmp" not in result.stderr
    assert os.listdir(locked) == [] and os.listdir(folder) == []


def test_a_folder_that_turns_read_only_during_the_merge(rl, tmp_path, checkpoints, without_root_override):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "swa.pt"

    def lock(stage, done, total):
        if stage == "averaging" and done == total:
            out_dir.chmod(0o555)

    try:
        with pytest.raises(RlError) as info:
            merge_checkpoints(checkpoints, out, progress=lock)
    finally:
        out_dir.chmod(0o755)
    assert str(info.value) == f"cannot write {out}: permission denied"  # not the hidden temporary file's name
    assert os.listdir(out_dir) == []


def test_unsafe_pickle_is_refused(tmp_path, checkpoints):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("true",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"w": Exploit()}, protocol=2))
    with pytest.raises(CheckpointError, match="refused"):
        merge_checkpoints([*checkpoints, evil], tmp_path / "out.pt")


def test_inputs_from_folders_and_globs(tmp_path, checkpoints):
    assert resolve_inputs([str(tmp_path)]) == sorted(checkpoints)
    assert resolve_inputs([str(tmp_path / "epoch[12].pt")]) == checkpoints[1:3]
    with pytest.raises(RlError, match=r"missing\.pt: no such file or folder"):
        resolve_inputs([str(tmp_path / "missing.pt")])


def test_weights_option_is_validated():
    assert parse_weights("1,2", 2) == [1.0, 2.0]
    for text, count in [("1,2", 3), ("a,b", 2), ("-1,2", 2), ("0,0", 2)]:
        with pytest.raises(UsageError):
            parse_weights(text, count)


@pytest.mark.parametrize("text", ["1,inf", "1e308,1e308", "nan,1", "-inf,1"])
def test_non_finite_weights_or_sum_are_a_usage_error(rl, tmp_path, checkpoints, text):
    # 1e308 + 1e308 overflows a float64 (its largest value is about 1.8e308): the sum that divides is infinite.
    assert float("1e308") + float("1e308") == float("inf")
    with pytest.raises(UsageError, match="--weights"):
        parse_weights(text, 2)
    with pytest.raises(UsageError, match="--weights"):
        merge_checkpoints(checkpoints[:2], tmp_path / "lib.pt", weights=[float(v) for v in text.split(",")])
    result = rl("swa-merge", *map(str, checkpoints[:2]), "-o", str(tmp_path / "out.pt"), "--weights", text)
    assert result.code == 2, result.stderr
    assert result.stderr.startswith("error: ") and "--weights" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "lib.pt").exists()


def write_images(folder, count: int, seed: int = 0):
    folder.mkdir()
    generator = torch.Generator().manual_seed(seed)
    for index in range(count):
        pixels = torch.randint(0, 256, (20, 20, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"{index}.png")


def reference_batches(folder, batch_size):
    """ImageNet evaluation preprocessing written with torchvision's transforms, independent of rl's pipeline."""
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    images = [transform(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir(), key=lambda p: int(p.stem))]
    return [torch.stack(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]


def test_batchnorm_recompute_matches_update_bn(tmp_path):
    info = CheckpointInfo(arch="tiny_models:BatchNormNet")
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(tmp_path / f"{seed}.pt", tiny_bn_state(), info).path)
    write_images(tmp_path / "images", 10)
    out = tmp_path / "swa.pt"
    report = merge_checkpoints(
        paths, out, bn_data=tmp_path / "images", bn_batch_size=5, model="tiny_models:BatchNormNet"
    )
    assert report.bn_recomputed and report.bn_layers == 1 and report.bn_images == 10
    merged = load_checkpoint(out).state_dict

    from tiny_models import BatchNormNet

    plain = tmp_path / "plain.pt"
    merge_checkpoints(paths, plain)
    reference = BatchNormNet()
    reference.load_state_dict(load_checkpoint(plain).state_dict)
    torch.optim.swa_utils.update_bn(reference_batches(tmp_path / "images", 5), reference)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(merged[key], value, rtol=1e-5, atol=1e-6)
    # The statistics are those of the data: BN sits first, so its running mean is the inputs' channel mean
    # (update_bn averages batch means equally, which is the plain mean here as both batches hold 5 images).
    data = torch.cat(reference_batches(tmp_path / "images", 5))
    torch.testing.assert_close(merged["norm.running_mean"], data.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not torch.equal(merged["norm.running_mean"], load_checkpoint(plain).state_dict["norm.running_mean"])


def test_batchnorm_recompute_for_a_fine_tuned_torchvision_head(tmp_path):
    """resnet18 fine-tuned to 10 classes (a plain state dict): --model resnet18 finds the head's size in the file,
    and the statistics equal update_bn's on torchvision's own resnet18 fed through torchvision's transforms."""
    from torchvision.models import resnet18

    states, paths = [], []
    for seed in range(2):
        torch.manual_seed(seed)
        states.append(resnet18(num_classes=10).state_dict())
        paths.append(tmp_path / f"ft{seed}.pth")
        torch.save({"model": states[-1], "epoch": seed}, paths[-1])
    write_images(tmp_path / "images", 6)
    out = tmp_path / "swa.pt"
    report = merge_checkpoints(paths, out, bn_data=tmp_path / "images", bn_batch_size=3, model="resnet18")
    assert report.bn_recomputed and report.bn_layers == 20 and report.bn_images == 6  # 1 + 2 per block * 8 + 3
    merged = load_checkpoint(out).state_dict
    assert merged["fc.weight"].shape == (10, 512)

    reference = resnet18(num_classes=10)
    average = {
        k: (states[0][k].double() + states[1][k].double()).div(2).float() if v.is_floating_point() else v
        for k, v in states[1].items()
    }
    reference.load_state_dict(average)
    torch.optim.swa_utils.update_bn(reference_batches(tmp_path / "images", 3), reference)
    norms = [name for name, m in reference.named_modules() if isinstance(m, nn.BatchNorm2d)]
    for key, value in reference.state_dict().items():
        if key.rsplit(".", 1)[0] in norms:
            torch.testing.assert_close(merged[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert torch.equal(merged["fc.weight"], average["fc.weight"])  # weights are averaged, not re-estimated


def test_batchnorm_recompute_uses_the_checkpoints_own_preprocessing(tmp_path):
    from torchvision import transforms

    stored = {"resize": 40, "crop": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "interpolation": "bicubic"}
    info = CheckpointInfo(arch="tiny_models:BatchNormNet", extra={"preprocess": stored})
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(tmp_path / f"{seed}.pt", tiny_bn_state(), info).path)
    write_images(tmp_path / "images", 8)
    out = tmp_path / "swa.pt"
    merge_checkpoints(paths, out, bn_data=tmp_path / "images", bn_batch_size=4, model="tiny_models:BatchNormNet")
    merged = load_checkpoint(out)
    assert merged.info.extra["preprocess"] == stored  # the description travels with the average

    transform = transforms.Compose(
        [
            transforms.Resize(40, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
        ]
    )
    files = sorted((tmp_path / "images").iterdir(), key=lambda p: int(p.stem))
    images = [transform(Image.open(p).convert("RGB")) for p in files]
    batches = [torch.stack(images[i : i + 4]) for i in range(0, len(images), 4)]

    from tiny_models import BatchNormNet

    reference = BatchNormNet()
    reference.load_state_dict(merged.state_dict)
    torch.optim.swa_utils.update_bn(batches, reference)
    for key in ("norm.running_mean", "norm.running_var", "norm.num_batches_tracked"):
        torch.testing.assert_close(merged.state_dict[key], reference.state_dict()[key], rtol=1e-5, atol=1e-6)
    # BN sits first: its mean is the channel mean of the stored preprocessing's pixels, not of the default's.
    torch.testing.assert_close(merged.state_dict["norm.running_mean"], torch.cat(batches).mean((0, 2, 3)))
    default = torch.cat(reference_batches(tmp_path / "images", 4)).mean((0, 2, 3))
    assert not torch.allclose(merged.state_dict["norm.running_mean"], default, atol=1e-2)


def tiny_bn_state():
    from tiny_models import BatchNormNet

    net = BatchNormNet()
    net.norm.running_mean.normal_()
    return net.state_dict()


def test_cli_report_and_json(rl, tmp_path, checkpoints):
    out = tmp_path / "swa.safetensors"
    result = rl("swa-merge", *map(str, checkpoints), "-o", str(out), "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["inputs"] == [str(p) for p in checkpoints]
    assert report["output_format"] == "safetensors"
    assert report["copied"] == ["1.num_batches_tracked"]
    text = rl("swa-merge", str(tmp_path / "epoch*.pt"), "-o", str(tmp_path / "t.pt"))
    assert text.code == 0, text.stderr
    assert "SHA-256:" in text.stdout and "1 copied from the last input" in text.stdout
    again = rl("swa-merge", *map(str, checkpoints), "-o", str(out))
    assert again.code == 1 and again.stderr == f"error: cannot write {out}: it exists (use --force to replace it)\n"
    assert rl("swa-merge", str(checkpoints[0]), "-o", str(tmp_path / "x.pt"), "--weights", "1,2").code == 2


def test_a_dangling_link_at_the_output_is_in_the_way(tmp_path, checkpoints):
    out = tmp_path / "swa.pt"
    out.symlink_to(tmp_path / "nowhere.pt")
    with pytest.raises(RlError, match="it exists"):
        merge_checkpoints(checkpoints, out)
    assert out.is_symlink() and not (tmp_path / "nowhere.pt").exists()
