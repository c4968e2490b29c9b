"""`rl summary` of a Hugging Face folder or cached Hub name: config.json read as data, counts equal to transformers'."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from rlcli.errors import ModelNotFoundError
from rlcli.models.registry import get_spec

TINY_BERT = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 37, "max_position_embeddings": 40, "type_vocab_size": 3}  # fmt: skip

# bert-base-uncased's config.json on the Hub (its file is a BertForPreTraining's, whatever architectures says).
BERT_BASE_UNCASED = {
    "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": False,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02,
    "intermediate_size": 3072, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0, "position_embedding_type": "absolute",
    "transformers_version": "4.6.0.dev0", "type_vocab_size": 2, "use_cache": True, "vocab_size": 30522,
}  # fmt: skip


def summary_json(rl, *args):
    result = rl("summary", *args, "--json", "--depth", "0")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)["models"][0]


def write_config(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny random models written by transformers' save_pretrained, with transformers' own parameter counts."""
    from transformers import (
        BertConfig,
        BertForPreTraining,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        XLNetConfig,
        XLNetModel,
    )

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    models = {
        "bert": BertModel(BertConfig(**TINY_BERT)),
        "bert-pretraining": BertForPreTraining(BertConfig(**TINY_BERT)),
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=48, n_embd=32, n_layer=2, n_head=4)),
        "xlnet": XLNetModel(XLNetConfig(vocab_size=97, d_model=32, n_layer=2, n_head=4, d_inner=64)),
    }
    counts = {}
    for name, model in models.items():
        model.save_pretrained(root / name)
        counts[name] = model.base_model.num_parameters() if name == "bert-pretraining" else model.num_parameters()
    return root, counts


@pytest.mark.parametrize(
    ("name", "family", "tokens"), [("bert", "bert", 40), ("gpt2", "gpt2", 48), ("xlnet", "xlnet", 512)]
)
def test_a_folder_written_by_transformers_summarizes_with_its_count(rl, saved, name, family, tokens):
    root, counts = saved
    summary = summary_json(rl, str(root / name))
    assert summary["params"] == counts[name]
    assert (summary["model"], summary["source"], summary["family"]) == (str(root / name), "huggingface", family)
    assert summary["input_size"] == [tokens] and summary["paper"] is None
    assert summary_json(rl, str(root / name), "--input-size", "16")["inputs"][0]["shape"] == [1, 16]


def test_a_pretraining_folder_counts_its_encoder(rl, saved):
    """AutoModel's view of a BertForPreTraining folder: the BertModel inside, without the MLM/NSP heads."""
    root, counts = saved
    assert summary_json(rl, str(root / "bert-pretraining"))["params"] == counts["bert-pretraining"]


def test_bert_base_uncased_config_is_bert_base(rl, tmp_path, monkeypatch):
    from transformers import BertConfig, BertModel

    write_config(tmp_path / "bert-base-uncased", BERT_BASE_UNCASED)  # config.json alone: no weights are read
    monkeypatch.chdir(tmp_path)
    with torch.device("meta"):
        expected = BertModel(BertConfig(**BERT_BASE_UNCASED)).num_parameters()
    summary = summary_json(rl, "./bert-base-uncased")
    assert (summary["model"], summary["params"]) == ("./bert-base-uncased", expected)
    assert expected == 109_482_240
    assert summary["macs"] == summary_json(rl, "bert_base")["macs"]


@pytest.mark.parametrize("repo", ["bert-base-uncased", "google-bert/bert-base-uncased"])
def test_a_cached_hub_name_resolves_offline(rl, tmp_path, monkeypatch, repo):
    cache = tmp_path / "hub"
    repository = cache / ("models--" + repo.replace("/", "--"))
    write_config(repository / "snapshots" / "0123abcd", BERT_BASE_UNCASED)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    summary = summary_json(rl, repo)
    assert (summary["model"], summary["source"], summary["params"]) == (repo, "huggingface", 109_482_240)


def test_an_unknown_model_type_is_one_error_line_naming_it(rl, tmp_path):
    folder = write_config(tmp_path / "llama", {"model_type": "llama", "hidden_size": 64})
    result = rl("summary", str(folder))
    assert result.code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and "model_type 'llama'" in result.stderr


@pytest.mark.parametrize(
    ("content", "says"),
    [(None, "no config.json"), ("{not json", "not readable JSON"), ("[1, 2]", "not a model config"),
     (json.dumps({**BERT_BASE_UNCASED, "position_embedding_type": "relative_key"}), "position_embedding_type"),
     (json.dumps({"model_type": "gpt2", "n_layer": 2}), "not a GPT-2 config")],
)  # fmt: skip
def test_a_folder_rl_cannot_read_is_one_error_line(rl, tmp_path, content, says):
    folder = tmp_path / "model"
    folder.mkdir()
    if content is not None:
        (folder / "config.json").write_text(content, encoding="utf-8")
    result = rl("summary", str(folder))
    assert result.code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and says in result.stderr and str(folder) in result.stderr


def test_paths_that_are_not_folders_are_one_error_line(rl, tmp_path):
    (tmp_path / "notes.txt").write_text("a file, neither a folder nor a checkpoint", encoding="utf-8")
    (tmp_path / "weights.bin").write_bytes(b"")  # a checkpoint's name: read as one (test_summary_checkpoint.py)
    cases = (
        (tmp_path / "notes.txt", "is a file"),
        (tmp_path / "weights.bin", "not a checkpoint (the file is empty)"),
        (tmp_path / "absent", "no such model folder"),
    )
    for path, says in cases:
        result = rl("summary", str(path))
        assert result.code == 1 and result.stderr.count("\n") == 1 and says in result.stderr


def test_the_config_is_data_never_code(rl, tmp_path):
    """auto_map and trust_remote_code name code; rl reads model_type from its own table and imports nothing."""
    folder = write_config(
        tmp_path / "remote",
        {**BERT_BASE_UNCASED, "auto_map": {"AutoModel": "evil_bert.EvilModel"}, "trust_remote_code": True},
    )
    (folder / "evil_bert.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n", encoding="utf-8")
    assert summary_json(rl, str(folder))["params"] == 109_482_240
    assert not (tmp_path / "ran").exists() and "evil_bert" not in sys.modules


def test_only_names_typed_by_the_user_resolve_folders(rl, tmp_path, monkeypatch):
    folder = write_config(tmp_path / "bert", BERT_BASE_UNCASED)
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        get_spec(str(folder))  # a name read from a file: the registry alone
    assert get_spec(str(folder), user_code=True).card.source == "huggingface"
    # Registered names keep their meaning, even beside a folder of that name; unknown names still get suggestions.
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path / "bert_base", {"model_type": "gpt2"})
    assert summary_json(rl, "bert_base")["source"] == "rlcli"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = rl("summary", "bert_bas")
    assert result.code == 1 and "unknown model 'bert_bas'" in result.stderr and "bert_base" in result.stderr
