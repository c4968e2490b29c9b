"""--ray, -o DIR, --resume and rl generate --prompts: the cluster path gives the local path's rows, exactly once.

One local Ray instance (2 CPUs, no dashboard, no usage statistics, its files under pytest's tmp) serves the module.
The references are the local commands' own stdout (the path that every other test holds against torchvision and
the papers' formulas); what is checked here is that distribution, sharding, retries and resuming change nothing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from image_fixtures import write_shapes

CLASSES = ("circle", "square", "triangle")


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    import importlib.util

    import rlcli

    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'rlcli[ray]')")
    source = str(Path(rlcli.__file__).resolve().parents[1])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        # Token authentication with a token held in the environment, set before Ray is imported (it reads the mode
        # then): nothing is written to ~/.ray, and the workers, which inherit the environment, authenticate with it.
        env.setenv("RAY_AUTH_MODE", "token")
        env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        # The workers import the rlcli that this process imported (a source tree on PYTHONPATH, or the installed one).
        env.setenv("PYTHONPATH", os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])))
        import ray

        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=str(tmp_path_factory.mktemp("ray")),
            log_to_driver=False,
            configure_logging=False,
        )
        yield ray
        ray.shutdown()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A registered torchvision model (importable on every Ray worker) with random weights and a 3-class head."""
    import torchvision

    folder = tmp_path_factory.mktemp("clf")
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), folder / "weights.pt")
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return ["-m", "mobilenet_v3_small", "-w", str(folder / "weights.pt"), "--classes", str(folder / "classes.txt"),
            "--resize", "64", "--crop", "64"]  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """12 images and 2 bad files (not an image, a truncated PNG), in one folder."""
    folder = tmp_path_factory.mktemp("images") / "set"
    paths = [p for p, _ in write_shapes(folder, per_class=4, seed=3, size=40)]
    (folder / "notes.png").write_text("not an image")
    data = paths[0].read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    return folder


def shard_rows(folder, fmt="jsonl"):
    rows = []
    for path in sorted(folder.glob(f"part-*.{fmt}")):
        if fmt == "jsonl":
            rows.extend(json.loads(line) for line in path.read_text().splitlines())
        else:
            import pyarrow.parquet as pq

            rows.extend(pq.read_table(path).to_pylist())
    return rows


def by_path(rows):
    return sorted(rows, key=lambda r: r["path"])


def local_json(rl, command, *args):
    """The local command's rows, run as a Ray actor runs the model: torch on one thread (Ray gives an actor as many
    threads as CPUs, one here). A reduction split over another number of threads may round differently in the
    last bit, which a 6-decimal score can show."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = rl(command, *args, "--json", "-j", "0")
    finally:
        torch.set_num_threads(threads)
    return result, [json.loads(line) for line in result.stdout.splitlines()]


def error_lines(stderr):
    return sorted(line for line in stderr.splitlines() if line.startswith("error:"))


def test_ray_classify_equals_the_local_output_row_for_row(rl, ray_instance, classifier, images, tmp_path):
    local, expected = local_json(rl, "classify", str(images), *classifier, "-b", "4")
    assert local.code == 1  # the two bad files
    out = tmp_path / "out"
    result = rl("classify", str(images), *classifier, "-b", "4", "-o", str(out), "--ray", "--shard-size", "5")
    assert result.code == 1, result.stderr
    rows = shard_rows(out)
    assert sorted(r["input"] for r in rows) == list(range(14))
    good = [{k: v for k, v in r.items() if k != "input"} for r in rows if "error" not in r]
    assert by_path(good) == by_path(expected)
    # Bad images: the same error line per file as locally, and a row with that error in the output.
    assert error_lines(result.stderr) == error_lines(local.stderr) and len(error_lines(local.stderr)) == 2
    failed = {r["path"]: r["error"] for r in rows if "error" in r}
    assert sorted(failed) == sorted(str(images / n) for n in ("cut.png", "notes.png"))
    assert all(f"error: {path}: {reason}" in result.stderr for path, reason in failed.items())
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [5, 5, 4]
    assert (manifest["rows"], manifest["failed"], manifest["engine"]) == (14, 2, "ray")
    import hashlib

    weights = classifier[classifier.index("-w") + 1]
    assert manifest["weights_sha256"] == hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    assert "14 inputs: 12 succeeded, 2 failed" in result.stderr
    assert re.search(r"^classified 14/14 rows, [0-9.]+ rows/s, 2 failed$", result.stderr, re.MULTILINE)


def test_ray_multilabel_equals_the_local_output(rl, ray_instance, images, tmp_path):
    from test_multilabel import official_checkpoint

    weights = tmp_path / "resnet18_voc07_head1_lam0.1.pth"
    official_checkpoint(weights, heads=1)
    args = [str(images), "-w", str(weights), "--top-k", "3", "--resize", "64", "-b", "4"]
    local, expected = local_json(rl, "multilabel", *args)
    out = tmp_path / "out"
    result = rl("multilabel", *args, "-o", str(out), "--ray", "--format", "parquet")
    assert (local.code, result.code) == (1, 1), result.stderr
    rows = shard_rows(out, "parquet")
    assert len(rows) == 14
    good = [{"path": r["path"], "labels": r["labels"]} for r in rows if r["error"] is None]
    assert by_path(good) == by_path(expected)
    assert error_lines(result.stderr) == error_lines(local.stderr)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from lm_fixtures import make_tiny_gpt2

    return make_tiny_gpt2(tmp_path_factory.mktemp("lm") / "tiny")


def test_generate_prompts_on_ray_equal_the_local_run(rl, ray_instance, tiny_lm, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"id": f"p{i}", "prompt": text} for i, text in enumerate(["To be", "or not", "", "the slings", "Ü"])]
    prompts.write_text("\n".join([*map(json.dumps, lines), "not json"]) + "\n")
    common = ["generate", "--prompts", str(prompts), "-m", str(tiny_lm), "--temperature", "0", "-n", "6"]
    local = rl(*common, "-o", str(tmp_path / "local.jsonl"))
    distributed = rl(*common, "-o", str(tmp_path / "ray.jsonl"), "--ray", "--batch-size", "2")
    assert (local.code, distributed.code) == (1, 1), distributed.stderr  # the line that is not JSON
    local_rows = [json.loads(x) for x in (tmp_path / "local.jsonl").read_text().splitlines()]
    ray_rows = [json.loads(x) for x in (tmp_path / "ray.jsonl").read_text().splitlines()]
    assert ray_rows == local_rows and len(local_rows) == 6
    assert [r["id"] for r in local_rows] == ["p0", "p1", "p2", "p3", "p4", 6]
    assert local_rows[-1]["error"].startswith("line 6 is not JSON")
    assert "6 prompts: 5 succeeded, 1 failed" in distributed.stderr
    # Each prompt's row is what a single `rl generate --temperature 0 --json` gives for it.
    single = rl("generate", "-m", str(tiny_lm), "--temperature", "0", "-n", "6", "--json", "To be")
    sample = json.loads(single.stdout)["samples"][0]
    assert local_rows[0] == {
        "id": "p0",
        "text": sample["text"],
        "tokens": sample["token_ids"],
        "finish_reason": sample["finish_reason"],
    }


def test_seeded_sampling_on_ray_equals_the_local_run_whatever_the_batches(rl, ray_instance, tiny_lm, tmp_path):
    """Each prompt samples from its own seed (--seed + its place in the file): other batches, same rows."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["To be", "or not", "", "the slings", "Ü"]))
    common = ["generate", "--prompts", str(prompts), "-m", str(tiny_lm), "--seed", "5", "-n", "6", "--ignore-eos"]
    local = rl(*common, "--batch-size", "3")
    distributed = rl(*common, "--batch-size", "2", "--ray")
    assert (local.code, distributed.code) == (0, 0), distributed.stderr
    assert distributed.stdout == local.stdout and len(local.stdout.splitlines()) == 5


def test_a_worker_that_dies_loses_and_duplicates_nothing(rl, ray_instance, classifier, images, tmp_path, monkeypatch):
    marker = tmp_path / "died"
    monkeypatch.setenv("RL_RAY_TEST_EXIT_ONCE", str(marker))
    out = tmp_path / "out"
    result = rl("classify", str(images), *classifier, "-b", "2", "-o", str(out), "--ray", "--shard-size", "3")
    assert marker.exists()  # one worker did exit in the middle of the run
    assert result.code == 1, result.stderr
    inputs = [r["input"] for r in shard_rows(out)]
    assert sorted(inputs) == list(range(14))  # every input exactly once
    _, expected = local_json(rl, "classify", str(images), *classifier, "-b", "2")
    good = [{k: v for k, v in r.items() if k != "input"} for r in shard_rows(out) if "error" not in r]
    assert by_path(good) == by_path(expected)


def test_resume_completes_a_run_without_redoing_complete_shards(rl, ray_instance, classifier, images, tmp_path):
    out = tmp_path / "out"
    first = rl("classify", str(images), *classifier, "-o", str(out), "--shard-size", "4", "-j", "0")
    assert first.code == 1, first.stderr
    complete = rl("classify", str(images), *classifier, "-o", str(out), "--shard-size", "4", "-j", "0")
    assert complete.code == 1 and "holds shards of another run: --resume" in complete.stderr
    # An interrupted run: shard 1 and the manifest were never written.
    (out / "part-00001.jsonl").unlink()
    (out / "manifest.json").unlink()
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*")}
    before = shard_rows(out)
    result = rl("classify", str(images), *classifier, "-o", str(out), "--shard-size", "4", "--resume", "--ray")
    assert result.code == 1, result.stderr
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*") if p.name in kept} == kept
    assert "this run did 4 at" in result.stderr and "3 shards were complete already" in result.stderr
    rows = shard_rows(out)
    assert sorted(r["input"] for r in rows) == list(range(14))
    assert all(row in rows for row in before)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["rows"], manifest["failed"], len(manifest["shards"])) == (14, 2, 4)
    other = rl("classify", str(images / "circle_0.png"), *classifier, "-o", str(out), "--shard-size", "4", "--resume")
    assert other.code == 1 and "other settings (inputs, inputs_sha256 differ)" in other.stderr


def test_from_list_reads_lines_csv_and_parquet(rl, classifier, images, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [str(images / n) for n in ("square_1.png", "circle_0.png", "notes.png")]
    (tmp_path / "list.txt").write_text("\r\n".join(names) + "\r\n")
    (tmp_path / "list.csv").write_text("id,file\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
    pq.write_table(pa.table({"path": names}), tmp_path / "list.parquet")
    outputs = []
    for source, extra in (("list.txt", []), ("list.csv", ["--list-column", "file"]), ("list.parquet", [])):
        out = tmp_path / f"out-{source}"
        result = rl("classify", "--from-list", str(tmp_path / source), *extra, *classifier, "-o", str(out), "-j", "0")
        assert result.code == 1, result.stderr
        outputs.append(shard_rows(out))
    assert outputs[0] == outputs[1] == outputs[2]
    assert [r["path"] for r in outputs[0]] == names and "error" in outputs[0][2]


def test_csv_and_parquet_shards_hold_the_jsonl_rows(rl, classifier, images, tmp_path):
    import csv

    for fmt in ("jsonl", "csv", "parquet"):
        result = rl("classify", str(images), *classifier, "-o", str(tmp_path / fmt), "--format", fmt, "-j", "0")
        assert result.code == 1, result.stderr
    rows = shard_rows(tmp_path / "jsonl")
    assert [{**r, "error": r.get("error"), "top_k": r.get("top_k")} for r in rows] == shard_rows(
        tmp_path / "parquet", "parquet"
    )
    flat = list(csv.DictReader((tmp_path / "csv" / "part-00000.csv").open()))
    expected = [
        (str(r["input"]), r["path"], str(k["rank"]), k["label"], f"{k['probability']}")
        for r in rows
        for k in r.get("top_k", [])
    ]
    assert [
        (f["input"], f["path"], f["rank"], f["label"], f["probability"]) for f in flat if not f["error"]
    ] == expected


def test_options_that_do_not_go_together_are_usage_errors(rl, classifier, images, tmp_path):
    assert rl("classify", str(images), *classifier, "--ray").code == 2
    assert rl("classify", str(images), *classifier, "--resume").code == 2
    assert rl("classify", str(images), *classifier, "-o", str(tmp_path / "o"), "--json").code == 2


def test_without_ray_the_error_names_the_extra(rl, classifier, images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = rl("classify", str(images), *classifier, "-o", str(tmp_path / "out"), "--ray")
    assert result.code == 1
    assert result.stderr.strip().splitlines() == [
        "error: --ray needs Ray Data, an optional extra: pip install 'rlcli[ray]'"
    ]
    assert not (tmp_path / "out").exists()  # found before any work


def test_the_cli_never_imports_ray_unless_asked():
    code = "import sys; from rlcli.cli import app; import rlcli.tasks.batch; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_model_that_fails_on_a_worker_is_one_error_line(rl, ray_instance, images, tmp_path):
    source = tmp_path / "badnet.py"
    source.write_text(
        "import torch\n"
        "class Bad(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(3, 2)\n"
        "    def forward(self, x):\n"
        "        raise ValueError('this model only works on Tuesdays')\n"
    )
    from safetensors.torch import save_file

    weights = tmp_path / "bad.safetensors"
    save_file({"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}, str(weights))
    out = tmp_path / "out"
    result = rl("classify", str(images), "-m", f"{source}:Bad", "-w", str(weights), "-o", str(out), "--ray")
    assert result.code == 1
    assert result.stderr.startswith(f"error: {source}:Bad failed on a batch of ")
    assert "ValueError: this model only works on Tuesdays" in result.stderr and result.stderr.count("\n") == 1
    assert not (out / "manifest.json").exists()


def test_a_worker_that_cannot_load_the_model_ends_the_run_with_rls_error(ray_instance, images):
    """The driver checked the model; a node without the file says so in rl's words (Ray restarts an actor that fails
    to start, again and again)."""
    from rlcli.core.images import Preprocess
    from rlcli.errors import CheckpointError
    from rlcli.tasks.batch import ImageJob, RayOptions, run_images_on_ray
    from rlcli.tasks.classify import PreprocessOverrides

    settings = {"model": "mobilenet_v3_small", "weights": "/nowhere/weights.pt", "dtype": "float32", "device": "cpu"}
    job = ImageJob("classify", settings, PreprocessOverrides(), 5)
    inputs = sorted(images.glob("circle_*.png"))
    with pytest.raises(CheckpointError, match=r"^no such checkpoint file: /nowhere/weights.pt$"):
        run_images_on_ray(job, Preprocess(64, 64), inputs, list(range(len(inputs))), RayOptions(1, 0, 2), print)
