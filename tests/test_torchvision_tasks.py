"""Every torchvision model of every task (detection, segmentation, video, optical flow) against torchvision's own
metadata: ``num_params`` exactly and ``_ops`` to its published decimals, for every weights entry.

torchvision measures ``_ops`` with test/common_extended_utils.py (``get_ops``): one random-normal input of
512x512 (16 frames of it for video; for detection the sizes of test_extended_models.py's
``detection_models_input_dims``), passed through ``weights.transforms()`` and into the model with its trained
weights, counting multiplications of convolutions and matrix products. The helpers below replay that protocol to
find the input. Where rl's default count is other work than torchvision's (a 16-frame clip where the weights are
evaluated on longer ones; the proposals and detections the trained weights kept on torchvision's noise image,
where rl counts at the model's caps), the model card says so (``card.measured``) and these tests check the
statement: rl, built with the stated arguments at the stated input, counts torchvision's figure.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import types

import pytest
import torch
import torchvision
import torchvision.models as tvm

from rlcli.core.meta import build_on_meta
from rlcli.models.registry import get_spec, model_names
from rlcli.tasks.summary import summarize, summarize_spec

TASKS = {
    "detection": tvm.detection,
    "segmentation": tvm.segmentation,
    "video": tvm.video,
    "optical-flow": tvm.optical_flow,
}

# torchvision's test/test_extended_models.py: the image each detection model's _ops were measured on.
DETECTION_INPUT_DIMS = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": (320, 320),
    "fasterrcnn_mobilenet_v3_large_fpn": (800, 800),
    "fasterrcnn_resnet50_fpn": (800, 800),
    "fasterrcnn_resnet50_fpn_v2": (800, 800),
    "fcos_resnet50_fpn": (800, 800),
    "keypointrcnn_resnet50_fpn": (1333, 1333),
    "maskrcnn_resnet50_fpn": (800, 800),
    "maskrcnn_resnet50_fpn_v2": (800, 800),
    "retinanet_resnet50_fpn": (800, 800),
    "retinanet_resnet50_fpn_v2": (800, 800),
    "ssd300_vgg16": (300, 300),
    "ssdlite320_mobilenet_v3_large": (320, 320),
}

CASES = [
    (task, name, weights)
    for task, module in TASKS.items()
    for name in tvm.list_models(module=module)
    for weights in tvm.get_model_weights(name)
]
IDS = [str(weights) for _, _, weights in CASES]


@functools.cache
def torchvision_input(task: str, name: str, weights) -> tuple[int, ...]:
    """One sample's shape as torchvision's ``get_ops`` feeds it: its dims through the weights' own transforms."""
    if task == "detection":
        return (3, *DETECTION_INPUT_DIMS[name])
    preprocess = weights.transforms()
    torch.manual_seed(0)
    if task == "video":
        return tuple(preprocess(torch.randn(1, 16, 3, 512, 512)).shape[1:])
    if task == "optical-flow":
        image = torch.randn(1, 3, 512, 512)
        first, second = preprocess(image, image)
        assert first.shape == second.shape
        return tuple(first.shape[1:])
    return tuple(preprocess(torch.randn(1, 3, 512, 512)).shape[1:])


@functools.cache
def count(name: str, size: tuple[int, ...], arguments: tuple[tuple[str, int], ...] = ()):
    """rl's summary of ``name`` built with ``arguments`` (builder keywords), one sample of ``size``."""
    spec = get_spec(name)
    if arguments:
        stock = spec.builder
        spec = dataclasses.replace(spec, builder=lambda input_size, **kwargs: stock(input_size, **dict(arguments)))
    return summarize_spec(spec, size, depth=0)


def measured_for(name: str, weights):
    statements = {m.weights: m for m in get_spec(name).card.measured}
    return statements.get(f"{type(weights).__name__}.{weights.name}")


@pytest.mark.parametrize(("task", "module"), list(TASKS.items()))
def test_every_torchvision_model_of_every_task_is_registered(task, module):
    names = tvm.list_models(module=module)
    assert names and set(names) <= set(model_names())
    assert {get_spec(name).card.task for name in names} == {task}
    assert all(get_spec(name).card.source == "torchvision" for name in names)


def test_every_package_of_torchvision_models_is_registered_but_the_quantized_one():
    packages = {
        module.__name__
        for module in vars(tvm).values()
        if isinstance(module, types.ModuleType) and tvm.list_models(module=module)
    }
    assert packages == {module.__name__ for module in (*TASKS.values(), tvm.quantization)}
    registered = set(model_names())
    for module in (tvm, *TASKS.values()):
        assert set(tvm.list_models(module=module)) <= registered, module.__name__
    assert not set(tvm.list_models(module=tvm.quantization)) & registered


@pytest.mark.parametrize(("task", "name", "weights"), CASES, ids=IDS)
def test_params_and_ops_equal_torchvision_metadata(task, name, weights):
    size = torchvision_input(task, name, weights)
    measured = measured_for(name, weights)
    arguments = measured.arguments if measured else ()
    if measured is not None:
        assert tuple(measured.input_size) == size, "the card states torchvision's input"
        assert measured.figure == f"{weights.meta['_ops']} GFLOPS"
    summary = count(name, size, arguments)
    assert summary.params == weights.meta["num_params"]
    # torchvision's "GFLOPS" are multiply-accumulates (its counter adds one per multiplication), 3 decimals.
    assert round(summary.macs / 1e9, 3) == weights.meta["_ops"]


@pytest.mark.parametrize(("task", "name", "weights"), CASES, ids=IDS)
def test_the_card_states_where_rls_default_count_is_other_work_than_torchvisions(task, name, weights):
    spec = get_spec(name)
    default = count(name, spec.card.default_input)
    differs = round(default.macs / 1e9, 3) != weights.meta["_ops"]
    measured = measured_for(name, weights)
    assert differs == (measured is not None), measured
    if measured is not None:
        assert measured.note
        assert measured.arguments or tuple(measured.input_size) != spec.card.default_input


def test_default_inputs_are_the_ones_the_weights_document():
    # detection: the size the model's own transform works at (it resizes any image to it)
    assert get_spec("fasterrcnn_resnet50_fpn").card.default_input == (3, 800, 800)
    assert get_spec("keypointrcnn_resnet50_fpn").card.default_input == (3, 800, 800)
    assert get_spec("fasterrcnn_mobilenet_v3_large_320_fpn").card.default_input == (3, 320, 320)
    assert get_spec("ssd300_vgg16").card.default_input == (3, 300, 300)
    assert get_spec("ssdlite320_mobilenet_v3_large").card.default_input == (3, 320, 320)
    # segmentation: the transforms' resize; video: the evaluation clip of the weights' docs at the transforms' crop
    assert get_spec("fcn_resnet50").card.default_input == (3, 520, 520)
    assert get_spec("r3d_18").card.default_input == (3, 16, 112, 112)
    assert get_spec("mvit_v2_s").card.default_input == (3, 16, 224, 224)
    assert get_spec("s3d").card.default_input == (3, 128, 224, 224)
    assert get_spec("swin3d_t").card.default_input == (3, 32, 224, 224)
    # optical flow: the weights document no size; torchvision measures at 512x512
    assert get_spec("raft_small").card.default_input == (3, 512, 512)
    assert get_spec("r3d_18").card.input_kind == "video"
    assert get_spec("fcn_resnet50").card.classes[:2] == ("__background__", "aeroplane")


def test_each_task_is_fed_as_its_forward_takes_it():
    detection = get_spec("ssd300_vgg16").inputs_for()
    assert [(t.shape, t.listed, t.name) for t in detection.tensors] == [((3, 300, 300), True, None)]
    flow = get_spec("raft_small").inputs_for()
    assert [(t.shape, t.listed, t.name) for t in flow.tensors] == [((3, 512, 512), False, None)] * 2
    video = get_spec("r3d_18").inputs_for()
    assert [(t.shape, t.listed) for t in video.tensors] == [((3, 16, 112, 112), False)]
    segmentation = get_spec("lraspp_mobilenet_v3_large").inputs_for()
    assert [t.shape for t in segmentation.tensors] == [(3, 520, 520)]


def test_input_size_sets_the_primary_tensor():
    detection = summarize("ssdlite320_mobilenet_v3_large", input_size="3x512x512", batch_size=2, depth=0)
    assert detection.inputs == [{"name": None, "shape": [3, 512, 512], "list_of": 2, "dtype": "float32"}]
    flow = summarize("raft_small", input_size="3x256x256", depth=0)
    assert [entry["shape"] for entry in flow.inputs] == [[1, 3, 256, 256]] * 2
    assert flow.macs < count("raft_small", (3, 512, 512)).macs
    video = summarize("r3d_18", input_size="3x8x112x112", depth=0)
    assert video.input_shape == [1, 3, 8, 112, 112]
    assert video.macs < count("r3d_18", (3, 16, 112, 112)).macs


def test_building_never_fetches_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    for module in TASKS.values():
        for name in tvm.list_models(module=module):
            build_on_meta(lambda name=name: get_spec(name).build())


def test_trained_detectors_freeze_their_backbone_batch_norm_as_shipped():
    frozen = build_on_meta(lambda: get_spec("fasterrcnn_resnet50_fpn").build())
    kinds = {type(m).__name__ for m in frozen.backbone.body.modules()}
    assert "FrozenBatchNorm2d" in kinds and "BatchNorm2d" not in kinds
    v2 = build_on_meta(lambda: get_spec("fasterrcnn_resnet50_fpn_v2").build())
    assert "FrozenBatchNorm2d" not in {type(m).__name__ for m in v2.modules()}  # v2 weights ship plain BatchNorm


# --- the value-dependent steps of detection: selections at the caps, postprocessing on real tensors -----------

BOX_HEAD = 256 * 7 * 7 * 1024 + 1024 * 1024  # TwoMLPHead's fc6 and fc7, per proposal
BOX_PREDICTOR = 1024 * 91 + 1024 * 91 * 4  # class scores and box deltas, per proposal
MASK_HEAD = 4 * 256 * 256 * 9 * 14 * 14  # four 3x3 convolutions at 14x14, per detection
MASK_PREDICTOR = 14 * 14 * 256 * 256 * 4 + 28 * 28 * 256 * 91  # 2x2 transposed conv, 1x1 logits, per detection
KEYPOINT_HEAD = (256 * 512 + 7 * 512 * 512) * 9 * 14 * 14  # eight 3x3 convolutions at 14x14, per detection
KEYPOINT_PREDICTOR = 14 * 14 * 512 * 17 * 4 * 4  # 4x4 transposed convolution to 17 heatmaps, per detection


def rows(summary):
    return {layer.name: layer for layer in summary.layers}


def test_detection_heads_are_counted_at_the_caps_on_the_meta_device():
    summary = summarize("maskrcnn_resnet50_fpn", depth=None)
    assert summary.counted_on == "meta" and summary.cpu_fallback is None
    layers = rows(summary)
    assert layers["roi_heads.box_head"].macs == 1000 * BOX_HEAD
    assert layers["roi_heads.box_predictor"].macs == 1000 * BOX_PREDICTOR
    assert layers["roi_heads.mask_head"].macs == 100 * MASK_HEAD
    assert layers["roi_heads.mask_predictor"].macs == 100 * MASK_PREDICTOR
    steps = summary.value_steps
    assert steps.caps == [
        "1,000 proposals per image (rpn_post_nms_top_n_test)",
        "100 detections per image (box_detections_per_img)",
    ]
    [paste] = steps.ran_for_real
    assert paste.function == "torchvision.models.detection.transform:paste_masks_in_image"
    assert paste.calls == 1
    assert paste.input_shapes == [[100, 1, 28, 28], [100, 4]]
    assert paste.output_shapes == [[100, 1, 800, 800]]
    assert paste.tensor_bytes >= 100 * 800 * 800 * 4
    if sys.platform == "linux":
        assert steps.peak_rss_increase_bytes is not None and steps.peak_rss_increase_bytes > 0


def test_the_count_at_the_caps_is_the_same_every_run():
    first = summarize("keypointrcnn_resnet50_fpn", depth=1)
    second = summarize("keypointrcnn_resnet50_fpn", depth=1)
    assert first.macs == second.macs
    keypoint_work = rows(first)["roi_heads"].macs - rows(count_at("keypointrcnn_resnet50_fpn", 0))["roi_heads"].macs
    assert keypoint_work == 100 * (KEYPOINT_HEAD + KEYPOINT_PREDICTOR)
    assert [step.function for step in first.value_steps.ran_for_real] == [
        "torchvision.models.detection.roi_heads:keypointrcnn_inference"
    ]


def count_at(name: str, detections: int):
    spec = get_spec(name)
    stock = spec.builder
    spec = dataclasses.replace(
        spec, builder=lambda size, **kwargs: stock(size, box_detections_per_img=detections, **kwargs)
    )
    return summarize_spec(spec, spec.card.default_input, depth=1)


def test_single_stage_detectors_run_nothing_for_real():
    summary = summarize("ssd300_vgg16", depth=0)
    assert summary.counted_on == "meta"
    assert summary.value_steps.ran_for_real == []
    assert summary.value_steps.caps == [
        "400 candidates per class (topk_candidates)",
        "200 detections per image (detections_per_img)",
    ]


def test_other_tasks_need_no_value_steps():
    for name in ("fcn_resnet50", "r3d_18", "raft_small"):
        summary = summarize(name, depth=0)
        assert summary.counted_on == "meta" and summary.value_steps is None and summary.cpu_fallback is None
