"""The registry: torchvision's own list, stock configs whose counts equal torchvision's published metadata."""

from __future__ import annotations

import sys

import pytest
import torch
import torchvision.models as tvm

import tiny_models
from rlcli.errors import ModelNotFoundError, ModelRunError, UsageError
from rlcli.models.registry import get_spec, model_names
from rlcli.tasks.summary import summarize

# One or two per family, each with every weights entry torchvision publishes (so several resolutions).
FAMILIES = [
    "resnet50",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "vit_b_16",
    "vit_h_14",
    "swin_t",
    "swin_v2_t",
    "convnext_tiny",
    "maxvit_t",
    "regnet_y_400mf",
    "regnet_y_128gf",
    "densenet121",
    "googlenet",
    "inception_v3",
    "shufflenet_v2_x1_0",
    "squeezenet1_1",
    "alexnet",
]

CASES = [(name, weights) for name in FAMILIES for weights in tvm.get_model_weights(name)]


@pytest.mark.parametrize(("name", "weights"), CASES, ids=[str(w) for _, w in CASES])
def test_params_and_macs_equal_torchvision_metadata(name, weights):
    crop = weights.transforms.keywords["crop_size"]
    summary = summarize(name, input_size=f"3x{crop}x{crop}", depth=0)
    assert summary.params == weights.meta["num_params"]
    # torchvision publishes GFLOPS rounded to 3 decimals; its "FLOPS" are multiply-accumulates.
    assert round(summary.macs / 1e9, 3) == weights.meta["_ops"]
    assert summary.flops == 2 * summary.macs


def test_swin_t_headline_figures():
    summary = summarize("swin_t")
    assert summary.input_size == [3, 224, 224]
    assert summary.params == 28_288_354
    assert f"{summary.macs / 1e9:.3f}" == "4.491"


def test_every_torchvision_classification_model_is_registered():
    assert set(tvm.list_models(module=tvm)) <= set(model_names())


def test_default_input_is_the_default_weights_crop():
    assert get_spec("inception_v3").card.default_input == (3, 299, 299)
    assert get_spec("vit_h_14").card.default_input == (3, 518, 518)
    assert get_spec("resnet18").card.default_input == (3, 224, 224)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelNotFoundError, match="did you mean resnet18"):
        get_spec("resnet81")


def test_user_model_by_module_and_by_file(tmp_path):
    by_module = summarize("tiny_models:TinyNet", input_size="3x8x8")
    assert by_module.params == 3 * 8 * 9 + 8 * 10 + 10
    assert by_module.macs == 8 * 8 * 8 * 27 + 80
    source = tmp_path / "mynet.py"
    source.write_text("from torch import nn\n\ndef net():\n    return nn.Linear(4, 2)\n")
    by_file = summarize(f"{source}:net", input_size="1x4x4")
    assert by_file.params == 10
    assert by_file.macs == 4 * 2 * 4  # the Linear is applied to each of 4 rows


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no_such_module_xyz:Net", "cannot import 'no_such_module_xyz'"),
        ("tiny_models:Missing", "has no attribute 'Missing'"),
        ("tiny_models:not_a_module", "returned str, not a torch.nn.Module"),
        ("tiny_models:broken", "constructor exploded"),
        ("/nonexistent/net.py:Net", "no such file"),
    ],
)
def test_user_model_errors(reference, message):
    with pytest.raises(ModelRunError, match=message):
        summarize(reference)


def test_bad_input_sizes():
    with pytest.raises(UsageError, match="invalid input size"):
        summarize("resnet18", input_size="3xfoo")
    with pytest.raises(UsageError, match="takes 3 dimensions"):
        summarize("resnet18", input_size="1x3x224x224")
    with pytest.raises(UsageError, match="positive"):
        summarize("resnet18", input_size="3x0x224")


def test_a_model_that_fails_at_the_input_names_the_layer():
    with pytest.raises(ModelRunError, match=r"at input 1x3x9x9: .*layer 'classifier' \(Linear\)"):
        summarize("tiny_models:FixedInputNet", input_size="3x9x9")


def test_rows_with_shared_modules_count_each_parameter_once():
    twice = summarize("tiny_models:Twice", input_size="3x1x4")
    linear = 4 * 4 + 4
    assert twice.params == linear
    rows = {layer.name: layer for layer in twice.layers}
    assert rows[""].params == rows["body"].params == rows["body.0"].params == rows["body.1"].params == linear
    assert twice.macs == 2 * 3 * 4 * 4
    assert rows["body.0"].calls + rows["body.1"].calls == 2


def test_a_cyclic_module_graph_is_summarised():
    cyclic = summarize("tiny_models:Cyclic", input_size="3x1x4", depth=None)
    assert cyclic.params == 2 * (4 * 4 + 4)
    assert [layer.name for layer in cyclic.layers] == ["", "lin", "inner", "inner.0", "inner.outer"]
    assert cyclic.macs == 2 * 3 * 4 * 4


def flop_counter_macs(factory, shape: tuple[int, ...]) -> int:
    """torch's own FlopCounterMode on the real model, on the CPU: FLOPs / 2."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = factory().eval()
    with torch.no_grad():
        model(torch.randn(shape))  # a traced graph's first (profiling) run fails under a dispatch mode
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(shape))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(
    ("name", "size", "shape"),
    [
        ("Conv1dNet", "4x32", (1, 4, 32)),
        ("LSTMCellNet", "10", (1, 10)),
        ("MatmulNet", "6x8", (1, 6, 8)),
        ("Conv3dNet", "4x6x6x6", (1, 4, 6, 6, 6)),
        ("ModuleListNet", "6", (1, 6)),
    ],
)
def test_user_models_of_other_shapes_equal_torchs_flop_counter(name, size, shape):
    summary = summarize(f"tiny_models:{name}", input_size=size)
    assert summary.input_size == list(shape[1:])
    assert summary.input_shape == list(shape) and summary.input_dtype == "float32"
    assert summary.macs == flop_counter_macs(getattr(tiny_models, name), shape) > 0


def test_batch_goes_in_front_of_a_user_models_sample_shape():
    summary = summarize("tiny_models:LSTMCellNet", input_size="10", batch_size=4)
    assert summary.input_shape == [4, 10]
    assert summary.macs == flop_counter_macs(tiny_models.LSTMCellNet, (4, 10))


def test_registered_image_models_keep_the_square_shorthand():
    assert summarize("resnet18", input_size="384", depth=0).input_shape == [1, 3, 384, 384]
    assert summarize("resnet18", input_size="320x384", depth=0).input_shape == [1, 3, 320, 384]


@pytest.mark.parametrize(
    ("model", "size", "batch"),
    [
        ("resnet18", "99999999999999999999999", 1),
        ("tiny_models:LSTMCellNet", "99999999999999999999999", 1),
        ("resnet18", "3x9999999999x9999999999", 1),  # each dimension fits, the element count does not
        ("tiny_models:LSTMCellNet", "3000000000000000000", 4),  # the batch takes it past the limit
    ],
)
def test_sizes_torch_cannot_represent_are_usage_errors(model, size, batch):
    with pytest.raises(UsageError, match="too large"):
        summarize(model, input_size=size, batch_size=batch)


@pytest.mark.parametrize(
    ("name", "size", "shape"), [("scripted_tinynet", "3x8x8", (2, 3, 8, 8)), ("PartlyScripted", "6", (2, 6))]
)
def test_torchscript_models_equal_torchs_flop_counter(name, size, shape):
    summary = summarize(f"tiny_models:{name}", input_size=size, batch_size=2, depth=None)
    assert summary.macs == flop_counter_macs(getattr(tiny_models, name), shape) > 0
    assert summary.layers[0].macs == summary.macs


def test_scripted_layers_say_so_and_their_work_goes_to_the_nearest_hooked_module():
    whole = summarize("tiny_models:scripted_tinynet", input_size="3x8x8", depth=None)
    rows = {layer.name: layer for layer in whole.layers}
    assert rows[""].type == "TinyNet" and rows[""].scripted and rows[""].calls == 1
    assert rows[""].macs == 8 * 8 * 8 * 27 + 8 * 10
    assert rows["features.0"].scripted and rows["features.0"].type == "Conv2d"
    assert rows["features.0"].macs is None  # ran inside TorchScript: counted in the root's row
    assert rows["features.0"].params == 8 * 27

    partly = summarize("tiny_models:PartlyScripted", input_size="6", depth=None)
    rows = {layer.name: layer for layer in partly.layers}
    assert not rows["stem"].scripted and rows["stem"].macs == 6 * 8
    assert rows["block"].scripted and rows["block"].macs == 8 * 8 + 8 * 4  # called from Python: hooked
    assert rows["block.0"].scripted and rows["block.0"].macs is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("GaussianHead", "aten::is_nonzero (a tensor's truth value) needs real values"),
        ("NonzeroNet", "aten::nonzero needs real values"),
        ("ItemNet", "aten::item (Tensor.item()) needs real values"),
        ("TolistNet", "needs real values"),
        ("traced_item_net", "building it on the meta device failed"),
    ],
)
def test_forward_passes_that_read_values_are_counted_on_the_cpu(name, reason):
    summary = summarize(f"tiny_models:{name}", input_size="6", batch_size=2)
    assert summary.counted_on == "cpu"
    fallback = summary.cpu_fallback
    assert reason in fallback.reason
    assert fallback.input == "random-normal"
    assert summary.macs == flop_counter_macs(getattr(tiny_models, name), (2, 6)) > 0
    assert fallback.weight_bytes == 4 * summary.params  # float32, no buffers
    if sys.platform == "linux":
        assert fallback.peak_rss_increase_bytes is not None and fallback.peak_rss_increase_bytes >= 0


def test_a_model_that_fails_for_its_shapes_is_not_retried_on_the_cpu():
    with pytest.raises(ModelRunError) as failure:
        summarize("tiny_models:FixedInputNet", input_size="3x9x9")
    assert "CPU" not in str(failure.value)
    assert summarize("tiny_models:TinyNet", input_size="3x8x8").cpu_fallback is None


def test_no_cpu_fallback_when_the_weights_would_not_fit(monkeypatch):
    from rlcli.core import resources

    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 100)  # Linear(6, 4) holds 112 bytes
    with pytest.raises(ModelRunError, match=r"aten::nonzero needs real values, and counting on the CPU instead would"):
        summarize("tiny_models:NonzeroNet", input_size="6")


def test_a_model_file_imports_its_sibling_modules(tmp_path, monkeypatch):
    """`rl summary nets/model.py:make` with `from blocks import Block` inside, run from another folder: the file's
    folder is importable, as `python nets/model.py` would make it."""
    nets = tmp_path / "nets"
    nets.mkdir()
    (nets / "blocks_for_rl_test.py").write_text("from torch import nn\n\nclass Block(nn.Linear):\n    pass\n")
    (nets / "model.py").write_text("from blocks_for_rl_test import Block\n\ndef make():\n    return Block(6, 4)\n")
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.setattr(sys, "path", list(sys.path))
    summary = summarize(f"{nets / 'model.py'}:make", input_size="6")
    assert summary.params == 6 * 4 + 4 and summary.macs == 6 * 4
