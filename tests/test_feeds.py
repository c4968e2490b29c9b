"""Inputs beyond one tensor: --inputs parsed, fed to the model, stated in the header; counts against torch's own."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rlcli.core.feeds import InputSpec, TensorSpec, parse_inputs
from rlcli.errors import UsageError
from rlcli.tasks.summary import summarize


def test_the_compact_grammar():
    spec = parse_inputs("input_ids=128:int64  attention_mask=128:bool")
    assert spec.tensors == (
        TensorSpec((128,), "int64", "input_ids"),
        TensorSpec((128,), "bool", "attention_mask"),
    )
    assert parse_inputs("3x224x224 [3x64x48]").tensors == (
        TensorSpec((3, 224, 224)),
        TensorSpec((3, 64, 48), listed=True),
    )
    assert spec.describe(2) == "input_ids 2x128 int64, attention_mask 2x128 bool"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ids=128:int65", "unknown dtype 'int65'"),
        ("ids=12a", "expected [NAME=]SHAPE[:DTYPE]"),
        ("[3x4", "expected [NAME=]SHAPE[:DTYPE]"),
        ("a=3 a=4", "names an input twice"),
        ("a=3 4", "positional inputs come before named ones"),
        ("3x0", "every dimension must be positive"),
        ("   ", "--inputs is empty"),
        ("9999999999x9999999999", "too large"),
    ],
)
def test_bad_specs_are_usage_errors(text, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_inputs(text)


def test_a_json_spec(tmp_path):
    path = tmp_path / "inputs.json"
    path.write_text(
        json.dumps([{"shape": [16], "dtype": "int64", "name": "input_ids"}, {"shape": [3, 8, 8], "list": True}])
    )
    with pytest.raises(UsageError, match="positional inputs come before"):
        parse_inputs(str(path))
    path.write_text(json.dumps([{"shape": [3, 8, 8], "list": True}, {"shape": [16], "dtype": "int64", "name": "ids"}]))
    assert parse_inputs(str(path)).tensors[1] == TensorSpec((16,), "int64", "ids")
    path.write_text(json.dumps([{"shape": [3], "colour": "red"}]))
    with pytest.raises(UsageError, match="unknown key 'colour'"):
        parse_inputs(str(path))


def test_feeds_make_the_batch():
    feed = InputSpec((TensorSpec((4,), "int64", "ids"), TensorSpec((2, 3), listed=True))).feed(3, device="cpu")
    assert feed.kwargs["ids"].shape == (3, 4) and feed.kwargs["ids"].dtype == torch.int64
    [images] = feed.args
    assert len(images) == 3 and images[0].shape == (2, 3)
    assert not feed.kwargs["ids"].any()  # token id 0 exists in every vocabulary


def flop_counter_macs(model, *args, **kwargs) -> int:
    with FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return counter.get_total_flops() // 2


def test_keyword_inputs_of_a_user_model_against_flop_counter_mode(rl):
    from tiny_models import TokenTagger

    inputs = "input_ids=12:int64 attention_mask=12:bool"
    result = rl("summary", "tiny_models:TokenTagger", "--inputs", inputs, "-b", "2", "--json")
    assert result.code == 0, result.stderr
    model = json.loads(result.stdout)["models"][0]
    assert model["input_description"] == "input_ids 2x12 int64, attention_mask 2x12 bool"
    assert model["inputs"][1] == {"name": "attention_mask", "shape": [2, 12], "list_of": None, "dtype": "bool"}
    reference = TokenTagger()
    ids, mask = torch.zeros(2, 12, dtype=torch.long), torch.ones(2, 12, dtype=torch.bool)
    assert model["macs"] == flop_counter_macs(reference, input_ids=ids, attention_mask=mask)
    table = rl("summary", "tiny_models:TokenTagger", "--inputs", "input_ids=12:int64 attention_mask=12:bool")
    assert "at input input_ids 1x12 int64, attention_mask 1x12 bool" in table.stdout.splitlines()[0]


def test_a_list_of_images_against_flop_counter_mode():
    from tiny_models import ImageListNet

    summary = summarize("tiny_models:ImageListNet", inputs="[3x20x16]", batch_size=3, depth=0)
    assert summary.input_description == "3 x [3x20x16] float32"
    assert summary.macs == flop_counter_macs(ImageListNet(), [torch.zeros(3, 20, 16)] * 3)
