"""hf/ models: transformers' AutoModel built from a config.json alone, counted by rl on the meta device, against
transformers' own parameter count and torch's FlopCounterMode on transformers' model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from rlcli.tasks.summary import summarize  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))


def write_config(folder: Path, config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config.to_json_file(str(folder / "config.json"))
    return folder


def cache_config(cache: Path, repo: str, config) -> Path:
    """A repository of which the hub cache holds config.json only, laid out as huggingface_hub writes it."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = write_config(folder / "snapshots" / "abc123", config)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("abc123")
    return snapshot


def transformers_reference(config, feeds: dict[str, tuple[int, ...]]) -> tuple[int, int]:
    """transformers' own parameter count, and torch's FlopCounterMode MACs (FLOPs / 2), of AutoModel's model."""
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(config).eval()
    inputs = {
        name: torch.zeros(shape, dtype=torch.long if name.endswith("_ids") else torch.float, device="meta")
        for name, shape in feeds.items()
    }
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**inputs)
    return model.num_parameters(), counter.get_total_flops() // 2


CASES = {
    "bert": (lambda: transformers.BertConfig(), {"input_ids": (1, 512)}),  # bert-base
    "gpt2": (lambda: transformers.GPT2Config(), {"input_ids": (1, 512)}),  # GPT-2 124M; 512 of its 1024 positions
    "t5": (  # an encoder-decoder: the decoder is fed as many tokens as the encoder
        lambda: transformers.T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16),
        {"input_ids": (1, 512), "decoder_input_ids": (1, 512)},
    ),
    "vit": (lambda: transformers.ViTConfig(), {"pixel_values": (1, 3, 224, 224)}),  # an image model: image_size
}


@pytest.mark.parametrize("kind", CASES)
def test_hf_folders_count_as_transformers_builds_them(kind, tmp_path):
    make_config, feeds = CASES[kind]
    folder = write_config(tmp_path / kind, make_config())
    result = summarize(f"hf/{folder}", depth=0)
    params, macs = transformers_reference(make_config(), feeds)
    assert result.source == "transformers" and result.family == kind
    assert result.input_shape == list(next(iter(feeds.values())))
    assert result.params == params
    assert result.macs == macs


def test_the_default_sequence_is_512_tokens_or_the_models_maximum(tmp_path):
    short = write_config(tmp_path / "short", transformers.BertConfig(max_position_embeddings=128))
    assert summarize(f"hf/{short}", depth=0).input_size == [128]


def test_a_cached_repository_is_read_from_its_config_alone(rl, tmp_path):
    cache_config(tmp_path / "hub", "google-bert/bert-base-uncased", transformers.BertConfig())
    result = rl("summary", "hf/bert-base-uncased", "--json", "--depth", "0")  # the moved repo's old name too
    assert result.code == 0, result.stderr
    model = json.loads(result.stdout)["models"][0]
    assert model["params"] == 109_482_240 and model["source"] == "transformers"


def test_a_missing_repository_names_the_download_command(rl):
    result = rl("summary", "hf/org/not-cached")
    assert result.code == 1 and result.stderr.count("\n") == 1
    assert "not a folder and not in the local Hugging Face cache" in result.stderr
    assert "hf download org/not-cached config.json" in result.stderr


def test_a_repositorys_own_code_is_never_imported(rl, tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "evil", "auto_map": {"AutoModel": "modeling_evil.EvilModel"}})
    )
    (folder / "modeling_evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    result = rl("summary", f"hf/{folder}")
    assert result.code == 1 and "model_type 'evil' is not one transformers" in result.stderr
    assert not (tmp_path / "ran").exists()


def test_hf_names_read_from_a_file_are_refused():
    from rlcli.errors import ModelNotFoundError
    from rlcli.models.registry import get_spec

    with pytest.raises(ModelNotFoundError, match="rl reads only when you type it"):
        get_spec("hf/bert-base-uncased")  # a checkpoint's recorded architecture: never a path rl would read


def test_without_transformers_installed_the_error_names_the_extra(rl, monkeypatch, tmp_path):
    folder = write_config(tmp_path / "bert", transformers.BertConfig())
    for module in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` meets when it is not installed
    result = rl("summary", f"hf/{folder}")
    assert result.code == 1
    assert result.stderr == "error: an hf/ model needs the transformers package: pip install 'rlcli[hf]'\n"


COMPLETION = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("TORCH-IMPORTED" if "torch" in sys.modules else "TORCH-FREE"))
sys.argv = ["rl"]
from rlcli.cli import main
main()
"""


def test_completion_offers_the_caches_repositories_without_importing_torch(tmp_path):
    cache_config(tmp_path / "hub", "google-bert/bert-base-uncased", transformers.BertConfig())
    cache_config(tmp_path / "hub", "openai-community/gpt2", transformers.GPT2Config())
    words = "rl summary hf/goo"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "_RL_COMPLETE": "complete_bash"}
    env |= {"COMP_WORDS": words, "COMP_CWORD": "2"}
    done = subprocess.run([sys.executable, "-c", COMPLETION], capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.split() == ["hf/google-bert/bert-base-uncased"]
    assert done.stderr.endswith("TORCH-FREE")
