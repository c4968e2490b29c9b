"""The Shakespeare model bundled with rlcli (scripts/train_demo_lm.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlcli.models.language.gpt2 import DEMO_FOLDER
from rlcli.tasks.generate import Generator, SamplingOptions, load_language_model, perplexity

SLICE = Path(__file__).parent / "data" / "hamlet_slice.txt"  # Hamlet I.i, a held-out play


@pytest.fixture(scope="module")
def card():
    return json.loads((DEMO_FOLDER / "card.json").read_text())


@pytest.fixture(scope="module")
def demo():
    return load_language_model("shakespeare", device="cpu")


def test_bundled_files_are_small_and_complete():
    names = {p.name for p in DEMO_FOLDER.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "card.json"} <= names
    assert sum(p.stat().st_size for p in DEMO_FOLDER.iterdir()) <= 12 * 1024 * 1024


def test_loads_through_the_hugging_face_folder_path(demo, card):
    assert demo.folder == DEMO_FOLDER
    assert sum(p.numel() for p in demo.model.parameters()) == card["params"]
    assert demo.tokenizer.token_to_id("<|endoftext|>") == demo.eos_id is not None


def test_generation_is_deterministic_with_a_seed(demo):
    options = SamplingOptions(max_new_tokens=40, seed=0, top_k=40)
    first = Generator(demo).generate("ROMEO:", options).samples[0]
    again = Generator(demo).generate("ROMEO:", options).samples[0]
    assert first.text == again.text and first.token_ids == again.token_ids
    assert first.text.strip()


def test_held_out_perplexity_matches_the_card(demo, card):
    measured = perplexity(demo, SLICE.read_text(encoding="utf-8"))
    assert measured == pytest.approx(card["hamlet_slice_perplexity"], rel=0.05)


def test_default_model_falls_back_to_the_bundled_one(rl, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    result = rl("generate", "--seed", "0", "-n", "10", "--no-stream", "ROMEO:")
    assert result.code == 0, result.stderr
    assert "using the bundled Shakespeare model" in result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stdout.strip() and "bundled" not in result.stdout
