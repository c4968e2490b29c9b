"""`rl summary` end to end through the entry point: tables, JSON, CSV, errors and exit codes."""

from __future__ import annotations

import csv
import io
import json
import re

from conftest import check_golden


def test_plain_table_matches_golden(rl):
    result = rl("summary", "resnet18", "--depth", "1")
    assert result.code == 0, result.stderr
    check_golden("summary_resnet18_depth1.txt", result.stdout)


def test_user_model_table_matches_golden(rl):
    result = rl("summary", "tiny_models:TinyNet", "--input-size", "3x8x8", "--batch-size", "2")
    assert result.code == 0, result.stderr
    check_golden("summary_tinynet.txt", result.stdout)


def test_json_schema(rl):
    result = rl("summary", "swin_t", "--json", "--depth", "2")
    assert result.code == 0, result.stderr
    document = json.loads(result.stdout)
    [model] = document["models"]
    assert model["model"] == "swin_t"
    assert model["params"] == 28_288_354
    assert model["macs"] == 4_490_566_656
    assert model["flops"] == 2 * model["macs"]
    assert "FLOPs = 2 x MACs" in model["convention"]
    assert model["input_size"] == [3, 224, 224]
    assert model["batch_size"] == 1
    assert model["param_bytes"] == {"float32": 4 * 28_288_354}
    assert model["trainable_params"] + model["non_trainable_params"] == model["params"]
    assert model["activation_bytes"] > 0
    layers = model["layers"]
    assert layers[0]["name"] == "" and layers[0]["macs"] == model["macs"]
    assert max(layer["depth"] for layer in layers) == 2
    assert {"name", "type", "depth", "output_shape", "params", "macs"} <= set(layers[1])
    assert all(isinstance(layer["macs"], int) for layer in layers)


def test_several_models_print_a_table_each_and_a_comparison(rl):
    result = rl("summary", "resnet50", "resnext50_32x4d", "--depth", "0")
    assert result.code == 0, result.stderr
    assert "resnet50 (torchvision, resnet) at input 1x3x224x224" in result.stdout
    assert "resnext50_32x4d (torchvision, resnext)" in result.stdout
    comparison = result.stdout.split("Model ")[-1]
    assert "25,557,032" in comparison and "25,028,904" in comparison
    assert "4.089 G" in comparison and "4.230 G" in comparison


def test_batch_and_input_size_scale_macs(rl):
    one = json.loads(rl("summary", "resnet18", "--json").stdout)["models"][0]
    two = json.loads(rl("summary", "resnet18", "--json", "-b", "2", "-i", "448").stdout)["models"][0]
    assert two["input_size"] == [3, 448, 448]
    # Convolutions scale with batch x pixels; the final Linear sees a 1x1 map after pooling at any size.
    fc = 512 * 1000
    assert two["macs"] - 2 * fc == 2 * 4 * (one["macs"] - fc)


def test_csv_layer_table(rl):
    result = rl("summary", "tiny_models:TinyNet", "-i", "3x8x8", "--csv")
    assert result.code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["layer"] for r in rows] == ["", "features", "features.0", "features.1", "pool", "head"]
    assert rows[2]["macs"] == str(8 * 8 * 8 * 27)
    assert rows[2]["output_shape"] == "[1, 8, 8, 8]"


def test_fvcore_counter_uses_fvcore_convention(rl):
    result = rl("summary", "resnet18", "--counter", "fvcore", "--json", "--depth", "0")
    assert result.code == 0, result.stderr
    model = json.loads(result.stdout)["models"][0]
    assert model["counter"] == "fvcore"
    assert "fvcore's convention" in model["convention"]
    assert model["macs"] == 1_819_065_856  # fvcore adds batch norm and pooling to torchvision's 1,814,073,344
    assert model["params"] == 11_689_512


def test_unknown_model_is_a_one_line_error_with_suggestions(rl):
    result = rl("summary", "swin_tt")
    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: unknown model 'swin_tt'; did you mean swin_t")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2(rl):
    assert rl("summary", "resnet18", "--input-size", "3xfoo").code == 2
    assert rl("summary", "resnet18", "--batch-size", "0").code == 2
    assert rl("summary", "resnet18", "--counter", "nope").code == 2
    bad_option = rl("summary", "resnet18", "--nope")
    assert bad_option.code == 2
    assert bad_option.stderr.startswith("error: no such option: --nope")
    assert rl("summary", "resnet18", "--json", "--csv").code == 2


def test_failing_layer_is_named(rl):
    result = rl("summary", "tiny_models:FixedInputNet", "-i", "3x9x9")
    assert result.code == 1
    assert "layer 'classifier' (Linear)" in result.stderr


def test_bad_user_model(rl):
    result = rl("summary", "tiny_models:not_a_module")
    assert result.code == 1
    assert result.stderr == "error: 'tiny_models:not_a_module' returned str, not a torch.nn.Module\n"


def test_debug_shows_the_traceback(rl):
    result = rl("--debug", "summary", "swin_tt")
    assert result.code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().endswith("error: unknown model 'swin_tt'; did you mean swin_t, cswin_t, swin3d_t?")


def test_a_shared_module_is_shown_at_each_place(rl):
    result = rl("summary", "tiny_models:SharedActivation", "-i", "3x2x4", "--json")
    assert result.code == 0, result.stderr
    layers = {layer["name"]: layer for layer in json.loads(result.stdout)["models"][0]["layers"]}
    assert layers["a.1"]["shared"] and layers["b.1"]["shared"]
    assert layers["a.1"]["calls"] == layers["b.1"]["calls"] == 1
    table = rl("summary", "tiny_models:SharedActivation", "-i", "3x2x4").stdout
    assert re.search(r"a\.1 +ReLU \(shared\)", table) and re.search(r"b\.1 +ReLU \(shared\)", table)


def test_calls_are_shown(rl):
    result = rl("summary", "tiny_models:Unrolled", "-i", "3x1x6", "--json")
    assert result.code == 0, result.stderr
    layers = {layer["name"]: layer for layer in json.loads(result.stdout)["models"][0]["layers"]}
    assert layers["cell"]["calls"] == 3 and layers["cell"]["macs"] == 3 * 3 * 6 * 6
    assert layers["heads"]["calls"] == 0  # a ModuleList never runs itself
    table = rl("summary", "tiny_models:Unrolled", "-i", "3x1x6").stdout
    header, cell = table.splitlines()[1], next(line for line in table.splitlines() if line.startswith("  cell "))
    assert header.split() == ["Layer", "Type", "Output", "shape", "Calls", "Params", "MACs", "Share", "Bytes", "MACs/B"]
    assert cell.split()[:7] == ["cell", "Linear", "[1,", "3,", "1,", "6]", "3"]


def test_a_user_models_input_is_the_shape_given_and_stated(rl):
    result = rl("summary", "tiny_models:Conv1dNet", "-i", "4x32", "-b", "2", "--json")
    assert result.code == 0, result.stderr
    model = json.loads(result.stdout)["models"][0]
    assert model["input_shape"] == [2, 4, 32] and model["input_dtype"] == "float32"
    table = rl("summary", "tiny_models:Conv1dNet", "-i", "4x32", "-b", "2").stdout
    assert table.startswith("tiny_models:Conv1dNet (your model) at input 2x4x32 (float32)\n")


def test_an_input_size_torch_cannot_represent_is_one_usage_error_line(rl):
    result = rl("summary", "resnet18", "--input-size", "99999999999999999999999")
    assert result.code == 2
    assert result.stderr.startswith("error: invalid input size '99999999999999999999999': too large")
    assert result.stderr.count("\n") == 1


def test_a_torchscript_model_is_counted_and_its_scripted_layers_marked(rl):
    result = rl("summary", "tiny_models:scripted_tinynet", "-i", "3x8x8", "--json")
    assert result.code == 0, result.stderr
    model = json.loads(result.stdout)["models"][0]
    assert model["macs"] == 8 * 8 * 8 * 27 + 8 * 10
    layers = {layer["name"]: layer for layer in model["layers"]}
    assert layers["features.0"]["scripted"] and layers["features.0"]["macs"] is None
    table = rl("summary", "tiny_models:scripted_tinynet", "-i", "3x8x8").stdout
    assert re.search(r"features\.0 +Conv2d \(scripted\) +- +- +216 +- +- +- +-\n", table)


def test_a_forward_pass_that_reads_values_says_it_was_counted_on_the_cpu(rl):
    result = rl("summary", "tiny_models:NonzeroNet", "-i", "6")
    assert result.code == 0, result.stderr
    assert (
        "Counted by rlcli on the CPU because aten::nonzero needs real values: random weights and a random-normal"
        in (result.stdout)
    )
    assert "112 B of weights" in result.stdout  # Linear(6, 4) in float32
    model = json.loads(rl("summary", "tiny_models:NonzeroNet", "-i", "6", "--json").stdout)["models"][0]
    assert model["counted_on"] == "cpu" and model["cpu_fallback"]["reason"] == "aten::nonzero needs real values"
    assert model["macs"] == 6 * 4


def test_a_detector_says_which_steps_depended_on_values_and_what_ran_for_real(rl):
    result = rl("summary", "ssd300_vgg16", "--depth", "1")
    assert result.code == 0, result.stderr
    assert "ssd300_vgg16 (torchvision, ssd) at input 1 x [3x300x300] float32" in result.stdout
    assert "Counted by rlcli on the meta device (no weights allocated)" in result.stdout
    assert (
        "Selections (score thresholds, NMS) kept every candidate, so the work after them is at the model's caps: "
        "400 candidates per class (topk_candidates), 200 detections per image (detections_per_img)."
    ) in result.stdout
    assert "Ran for real: nothing; every step ran on the meta device." in result.stdout

    masks = rl("summary", "maskrcnn_resnet50_fpn", "--depth", "0")
    assert masks.code == 0, masks.stderr
    assert re.search(
        r"Ran for real on the CPU, on zeros of the shapes that reached it: paste_masks_in_image \(1 call: "
        r"\[100, 1, 28, 28\], \[100, 4\] -> \[100, 1, 800, 800\]; 2\d\d\.\d MiB of tensors\); peak memory \(RSS\) "
        r"\+\d+\.\d [MG]iB\.",
        masks.stdout,
    ), masks.stdout
    assert (
        "torchvision's 134.38 GFLOPS (MaskRCNN_ResNet50_FPN_Weights.COCO_V1) are rl's count at 3x800x800 with "
        "box_detections_per_img=0:"
    ) in masks.stdout

    document = json.loads(rl("summary", "maskrcnn_resnet50_fpn", "--depth", "0", "--json").stdout)["models"][0]
    steps = document["value_steps"]
    assert steps["caps"] == [
        "1,000 proposals per image (rpn_post_nms_top_n_test)",
        "100 detections per image (box_detections_per_img)",
    ]
    [paste] = steps["ran_for_real"]
    assert paste["function"] == "torchvision.models.detection.transform:paste_masks_in_image"
    assert paste["output_shapes"] == [[100, 1, 800, 800]] and paste["tensor_bytes"] >= 100 * 800 * 800 * 4
    assert document["measured"][0]["arguments"] == [["box_detections_per_img", 0]]


def test_optical_flow_takes_two_images(rl):
    result = rl("summary", "raft_small", "--depth", "1")
    assert result.code == 0, result.stderr
    assert "raft_small (torchvision, raft) at input 1x3x512x512 float32, 1x3x512x512 float32" in result.stdout
    assert "MACs: 47,655," in result.stdout
    assert "Ran for real" not in result.stdout
