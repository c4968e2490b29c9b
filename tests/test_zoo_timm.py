"""timm/ models against timm itself: parameter counts, MACs by torch's own FlopCounterMode on timm's model, and
rl classify from a Hub-layout cache against timm's resolve_data_config + create_transform + forward. Never online:
models are built with pretrained=False and the "cache" is written by the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

timm = pytest.importorskip("timm")

from timm.models._hub import save_for_hf  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from rlcli.models.zoo.names import names_cache_path  # noqa: E402
from rlcli.tasks.summary import summarize  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No download is possible, and rl's own cache (timm's names for completion) lives in the test's folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def timm_on_meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs).eval()


def flop_counter_macs(model: torch.nn.Module, size: tuple[int, ...]) -> int:
    """torch.utils.flop_counter's count on timm's own model; its FLOPs are 2 per multiply-accumulate."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, *size, device="meta"))
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


# A CNN, a ViT, Swin, ConvNeXt, EfficientNet, and the newest mobile families (MobileNetV4 conv and hybrid, whose
# default tag is at 256 px), each at its pretrained tag's own input.
SPREAD = [
    "resnet50.a1_in1k",
    "vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "swin_tiny_patch4_window7_224.ms_in1k",
    "convnext_tiny.in12k_ft_in1k",
    "efficientnet_b0.ra_in1k",
    "mobilenetv4_conv_small.e2400_r224_in1k",
    "mobilenetv4_hybrid_medium.ix_e550_r256_in1k",
]


@pytest.mark.parametrize("name", SPREAD)
def test_params_equal_timms_and_macs_equal_flop_counter_on_timms_model(name):
    result = summarize(f"timm/{name}", depth=0)
    reference = timm_on_meta(name)
    size = tuple(reference.pretrained_cfg["input_size"])
    assert tuple(result.input_size) == size  # the default input is the tag's pretrained_cfg input_size
    assert result.params == sum(p.numel() for p in reference.parameters())
    assert result.macs == flop_counter_macs(reference, size)  # rl MACs = FLOPs / 2 of torch's formulas


def test_a_fixed_size_model_is_built_for_the_input_asked_for():
    """A ViT's position table depends on the image size: --input-size 384 builds timm's img_size=384 model."""
    result = summarize("timm/vit_small_patch16_224.augreg_in21k_ft_in1k", input_size="384", depth=0)
    reference = timm_on_meta("vit_small_patch16_224.augreg_in21k_ft_in1k", img_size=384)
    assert result.input_size == [3, 384, 384]
    assert result.params == sum(p.numel() for p in reference.parameters())
    assert result.macs == flop_counter_macs(reference, (3, 384, 384))


def test_names_with_and_without_tag_take_the_tags_input_and_timms_published_figures():
    from rlcli.models.registry import get_spec

    bare, tagged = get_spec("timm/resnet50"), get_spec("timm/resnet50.a1_in1k")
    assert bare.card.default_input == tagged.card.default_input == (3, 224, 224)
    assert bare.card.source == "timm" and bare.card.family == "resnet" and bare.card.task == "image-classification"
    # timm's benchmark table: 25.56 M params, 4.11 GMACs (its profiler's convention, stated on the card)
    published = bare.card.published
    assert (published.params, published.macs) == ("25.56M", "4.11G")
    assert "timm's GMACs come from its own profiler" in published.convention
    assert get_spec("timm/convnext_tiny.in12k_ft_in1k_384").card.default_input == (3, 384, 384)
    preprocess = tagged.card.preprocess
    assert (preprocess.resize, preprocess.crop, preprocess.interpolation) == (235, 224, "bicubic")  # crop_pct .95


def test_a_tag_without_class_names_keeps_timms_preprocessing():
    """mvitv2's inw21k head has 19,168 unnamed classes: its transform is still timm's (bicubic, crop_pct 0.9)."""
    from rlcli.models.registry import get_spec

    card = get_spec("timm/mvitv2_base_cls.fb_inw21k").card
    assert card.classes is None
    assert (card.preprocess.resize, card.preprocess.crop, card.preprocess.interpolation) == (248, 224, "bicubic")


def test_an_input_with_other_channels_builds_timms_in_chans_model():
    result = summarize("timm/resnet18", input_size="1x160x160", depth=0)
    reference = timm_on_meta("resnet18", in_chans=1)
    assert result.input_size == [1, 160, 160]
    assert result.params == sum(p.numel() for p in reference.parameters())
    assert result.macs == flop_counter_macs(reference, (1, 160, 160))


def test_summary_json_of_a_timm_model(rl):
    result = rl("summary", "timm/efficientnet_b0", "--json", "--depth", "1")
    assert result.code == 0, result.stderr
    document = json.loads(result.stdout)
    [model] = document if isinstance(document, list) else document.get("models", [document])
    assert model["source"] == "timm" and model["params"] == 5_288_548


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("timm/resnet5000", "unknown timm model 'resnet5000'"),
        ("timm/resnet50.no_such_tag", "timm's resnet50 has no pretrained tag 'no_such_tag' (its tags: a1_in1k"),
        ("timm/hf-hub:org/model", "is not a timm model name"),
        ("timm/local-dir:/tmp", "is not a timm model name"),
    ],
)
def test_unknown_names_are_one_line(rl, name, message):
    result = rl("summary", name)
    assert result.code == 1 and result.stderr.count("\n") == 1
    assert message in result.stderr


def test_without_timm_installed_the_error_names_the_extra(rl, monkeypatch):
    for module in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets when it is not installed
    result = rl("summary", "timm/resnet50")
    assert result.code == 1
    assert result.stderr == "error: a timm/ model needs the timm package: pip install 'rlcli[timm]'\n"


# --- rl classify from the local Hugging Face cache --------------------------------------------------------------


def cache_timm_model(cache: Path, model: torch.nn.Module, repo: str, **save) -> Path:
    """``model`` as timm saves it for the Hub (config.json with its pretrained_cfg, model.safetensors), laid out in
    a hub cache as huggingface_hub downloads it."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    save_for_hf(model, str(snapshot), safe_serialization=True, **save)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(snapshot.name)
    return snapshot


def random_model(name: str, **kwargs) -> torch.nn.Module:
    """timm's model with random weights and its tag's real pretrained_cfg; the head scaled up so that the
    probabilities differ clearly between classes."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        model.get_classifier().weight.mul_(50)
    return model


def photo(path: Path, size=(640, 427)) -> Path:
    Image.effect_mandelbrot(size, (-2, -1.2, 1, 1.2), 64).convert("RGB").resize(size).save(path, quality=92)
    return path


def timm_reference(model: torch.nn.Module, image: Path, k: int = 5):
    """timm's own evaluation path: resolve_data_config + create_transform, then a forward pass."""
    config = timm.data.resolve_data_config(model=model)
    transform = timm.data.create_transform(**config)
    with torch.inference_mode():
        return model(transform(Image.open(image).convert("RGB"))[None]).softmax(-1)[0].topk(k)


def classify_json(rl, *args):
    result = rl("classify", *args, "--json", "-j", "0")
    assert result.code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_classify_from_the_hub_cache_equals_timms_transform_and_forward(rl, tmp_path):
    tag = "resnet18.a1_in1k"  # bicubic, crop_pct 0.95: resize to 235, crop 224
    model = random_model(tag)
    cache_timm_model(tmp_path / "hub", model, f"timm/{tag}")
    image = photo(tmp_path / "photo.jpg")
    expected = timm_reference(model, image)
    [line] = classify_json(rl, str(image), "--model", f"timm/{tag}")
    assert [r["index"] for r in line["top_k"]] == expected.indices.tolist()
    assert [r["probability"] for r in line["top_k"]] == pytest.approx(expected.values.tolist(), abs=1e-5)
    labels = timm.data.ImageNetInfo().label_descriptions()
    assert line["top_k"][0]["label"] == labels[expected.indices[0]]

    weights = tmp_path / "resnet18.safetensors"  # --weights FILE with a timm architecture: the tag's transform
    from safetensors.torch import save_file

    save_file(model.state_dict(), weights)
    [from_file] = classify_json(rl, str(image), "--model", f"timm/{tag}", "--weights", str(weights))
    assert [r["index"] for r in from_file["top_k"]] == expected.indices.tolist()
    assert [r["probability"] for r in from_file["top_k"]] == pytest.approx(expected.values.tolist(), abs=1e-5)


def test_classify_reads_label_names_and_a_squash_crop_from_the_cached_config(rl, tmp_path):
    """The config.json's own label names, and its pretrained_cfg's crop mode and crop_pct (squash at 0.9 here),
    as timm's local-dir reader gives them to timm's transform."""
    tag = "convnext_atto.d2_in1k"
    names = ["cat", "dog", "fox", "owl"]
    model = random_model(tag, num_classes=4)
    snapshot = cache_timm_model(
        tmp_path / "hub",
        model,
        f"timm/{tag}",
        model_config={"label_names": names, "pretrained_cfg": {"crop_mode": "squash", "crop_pct": 0.9}},
    )
    reference = timm.create_model(f"local-dir:{snapshot}", pretrained=False).eval()
    reference.load_state_dict(model.state_dict())
    assert reference.pretrained_cfg["crop_mode"] == "squash"
    image = photo(tmp_path / "wide.png", (500, 200))
    expected = timm_reference(reference, image, k=4)
    [line] = classify_json(rl, str(image), "--model", f"timm/{tag}", "-k", "4")
    assert [r["label"] for r in line["top_k"]] == [names[i] for i in expected.indices]
    assert [r["probability"] for r in line["top_k"]] == pytest.approx(expected.values.tolist(), abs=1e-5)


def test_a_crop_a_fixed_size_models_weights_cannot_take_is_refused_before_any_work(rl, tmp_path):
    """A ViT's position table fits the input its weights were trained at (timm's fixed_input_size): another --crop
    is a usage error up front, not a failure inside the forward pass."""
    tag = "deit_tiny_patch16_224.fb_in1k"
    cache_timm_model(tmp_path / "hub", random_model(tag), f"timm/{tag}")
    image = photo(tmp_path / "photo.jpg")
    result = rl("classify", str(image), "--model", f"timm/{tag}", "--crop", "160")
    assert result.code == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert "takes 224x224 inputs only" in result.stderr and "--crop 160" in result.stderr
    assert classify_json(rl, str(image), "--model", f"timm/{tag}", "--crop", "224")  # its own size still runs


def test_missing_weights_name_the_hf_download_command(rl, tmp_path):
    image = photo(tmp_path / "photo.jpg")
    result = rl("classify", str(image), "--model", "timm/resnet18.a1_in1k")
    assert result.code == 1 and result.stderr.count("\n") == 1
    assert "its weights are not in the local Hugging Face cache" in result.stderr
    assert "hf download timm/resnet18.a1_in1k config.json model.safetensors" in result.stderr
    assert "HF_HUB_OFFLINE is set here" in result.stderr


# --- completion ---------------------------------------------------------------------------------------------------

COMPLETION = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("TORCH-IMPORTED" if "torch" in sys.modules else "TORCH-FREE"))
sys.argv = ["rl"]
from rlcli.cli import main
main()
"""


def complete(words: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "_RL_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    return subprocess.run([sys.executable, "-c", COMPLETION], capture_output=True, text=True, env=env, timeout=60)


def test_completion_offers_timm_names_without_importing_torch(tmp_path):
    from rlcli.models.zoo.timm import import_timm

    assert not names_cache_path(timm.__version__).exists()
    before = complete("rl summary timm/resnet1", tmp_path)
    assert before.stdout.split() == [] and before.stderr.endswith("TORCH-FREE")  # nothing known yet
    import_timm()  # the first use of a timm/ model writes the list
    done = complete("rl summary timm/resnet1", tmp_path)
    offered = done.stdout.split()
    assert {"timm/resnet18", "timm/resnet18.a1_in1k", "timm/resnet101.tv_in1k"} <= set(offered)
    assert all(name.startswith("timm/resnet1") for name in offered)
    assert done.stderr.endswith("TORCH-FREE")
