"""`rl classify`: a model trained here, equality with torchvision's own pipeline, inputs, formats and errors."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest
import torch
from PIL import Image

from image_fixtures import SHAPES, draw_shape, write_shapes
from rlcli.core.checkpoints import CheckpointInfo, save_checkpoint
from rlcli.core.images import Preprocess, open_rgb, to_rgb
from tiny_models import ShapeNet

# The checkpoint records this architecture, but a reference to Python code runs only when typed (-m).
SHAPENET = "tiny_models:ShapeNet"
PREPROCESS = {"resize": 32, "crop": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear"}


@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory):
    """ShapeNet trained for a few seconds on generated shapes, saved as a self-describing rlcli checkpoint."""
    folder = tmp_path_factory.mktemp("shapes")
    train = write_shapes(folder / "train", per_class=40, seed=0)
    preprocess = Preprocess(**{**PREPROCESS, "mean": (0.5,) * 3, "std": (0.5,) * 3})
    x = torch.stack([preprocess(open_rgb(p)) for p, _ in train])
    y = torch.tensor([SHAPES.index(s) for _, s in train])
    torch.manual_seed(0)
    net = ShapeNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    info = CheckpointInfo(
        arch="tiny_models:ShapeNet",
        model_args={"num_classes": 3},
        class_names=list(SHAPES),
        extra={"preprocess": PREPROCESS},
    )
    return save_checkpoint(folder / "shapes.safetensors", net.state_dict(), info).path


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("test") / "images", per_class=5, seed=1)


def run_json(rl, *args):
    result = rl("classify", *args, "--json", "-j", "0")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return result, lines


def test_a_trained_checkpoint_classifies_generated_shapes(rl, shapes_checkpoint, test_images):
    folder = test_images[0][0].parent
    result, lines = run_json(rl, str(folder), "-m", SHAPENET, "-w", str(shapes_checkpoint), "-k", "2")
    assert result.code == 0, result.stderr
    truth = {str(p): s for p, s in test_images}
    assert [line["path"] for line in lines] == sorted(truth)
    correct = sum(line["top_k"][0]["label"] == truth[line["path"]] for line in lines)
    assert correct == len(truth)
    assert all(len(line["top_k"]) == 2 and line["top_k"][0]["rank"] == 1 for line in lines)


def test_every_input_kind(rl, shapes_checkpoint, test_images, monkeypatch):
    paths = [str(p) for p, _ in test_images]
    folder = test_images[0][0].parent
    _, by_file = run_json(rl, paths[0], paths[1], "-m", SHAPENET, "-w", str(shapes_checkpoint))
    assert [line["path"] for line in by_file] == paths[:2]
    _, by_glob = run_json(rl, str(folder / "square_*.png"), "-m", SHAPENET, "-w", str(shapes_checkpoint))
    assert [line["path"] for line in by_glob] == sorted(p for p in paths if "square_" in p)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(paths[3:6]) + "\n"))
    _, by_stdin = run_json(rl, "-", "-m", SHAPENET, "-w", str(shapes_checkpoint))
    assert [line["path"] for line in by_stdin] == paths[3:6]


def test_equals_a_hand_written_torchvision_forward(rl, tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    weights_file = tmp_path / "r18.pth"
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, weights_file)
    image_path = tmp_path / "photo.png"
    Image.effect_mandelbrot((300, 200), (-2, -1.2, 1, 1.2), 64).convert("RGB").save(image_path)
    transform = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    with torch.inference_mode():
        probabilities = reference(transform(Image.open(image_path).convert("RGB"))[None]).softmax(-1)[0]
    expected = probabilities.topk(5)
    result, [line] = run_json(rl, str(image_path), "-m", "resnet18", "-w", str(weights_file))
    assert result.code == 0, result.stderr
    assert [r["index"] for r in line["top_k"]] == expected.indices.tolist()
    assert [r["probability"] for r in line["top_k"]] == pytest.approx(expected.values.tolist(), abs=1e-5)
    categories = torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"]
    assert line["top_k"][0]["label"] == categories[expected.indices[0]]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))  # blue on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    upright = open_rgb(path)
    assert upright.size == (20, 40)
    top_pixel = upright.getpixel((10, 5))
    assert top_pixel[2] > 200 and top_pixel[0] < 60  # the blue half is on top after rotating


def test_image_modes_are_converted(tmp_path):
    grey = to_rgb(Image.new("L", (4, 4), 100))
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (100, 100, 100)
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert to_rgb(palette).getpixel((0, 0)) == (10, 200, 30)
    clear = to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 0)))
    assert clear.getpixel((0, 0)) == (255, 255, 255)  # transparent over white
    half = to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 128)))
    assert half.getpixel((0, 0)) == (127, 127, 127)
    deep = Image.new("I;16", (4, 4), 65535)
    assert to_rgb(deep).getpixel((0, 0)) == (255, 255, 255)
    mid = Image.new("I;16", (4, 4), 32896)
    assert to_rgb(mid).getpixel((0, 0)) == (128, 128, 128)


def test_every_mode_goes_through_the_command(rl, shapes_checkpoint, tmp_path):
    rng_image = draw_shape("square", 48, __import__("random").Random(3))
    rng_image.convert("L").save(tmp_path / "grey.png")
    rng_image.convert("P").save(tmp_path / "palette.png")
    rng_image.convert("RGBA").save(tmp_path / "alpha.png")
    Image.fromarray((torch.rand(48, 48) * 65535).to(torch.int32).numpy().astype("uint16")).save(tmp_path / "deep.png")
    result, lines = run_json(rl, str(tmp_path), "-m", SHAPENET, "-w", str(shapes_checkpoint))
    assert result.code == 0, result.stderr
    assert len(lines) == 4


def test_bad_files_are_reported_and_the_rest_go_on(rl, shapes_checkpoint, test_images, tmp_path):
    good = str(test_images[0][0])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    whole = tmp_path / "whole.jpg"
    draw_shape("circle", 200, __import__("random").Random(0)).save(whole, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[:600])
    notes, fake, missing = tmp_path / "notes.txt", tmp_path / "fake.png", tmp_path / "missing.png"
    args = [good, str(notes), str(fake), str(truncated), str(missing), good]
    result, lines = run_json(rl, *args, "-m", SHAPENET, "-w", str(shapes_checkpoint))
    assert result.code == 1
    assert [line["path"] for line in lines] == [good, good]
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 4
    assert errors[0] == f"error: {notes}: not an image Pillow can read"
    assert errors[1].startswith(f"error: {fake}: truncated or corrupt image data")
    assert errors[2].startswith(f"error: {truncated}: truncated or corrupt image data")
    assert errors[3] == f"error: {missing}: no such file or folder"


def test_class_count_mismatch(rl, shapes_checkpoint, test_images, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    result = rl(
        "classify", str(test_images[0][0]), "-m", SHAPENET, "-w", str(shapes_checkpoint), "--classes", str(names)
    )
    assert result.code == 1
    assert result.stderr == "error: 2 class names for a model with 3 outputs (tiny_models:ShapeNet)\n"


def test_missing_cached_weights_say_where_and_how(rl, test_images, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    result = rl("classify", str(test_images[0][0]), "-m", "resnet50", "-w", "ResNet50_Weights.IMAGENET1K_V2")
    assert result.code == 1
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in result.stderr
    assert "get_weight('ResNet50_Weights.IMAGENET1K_V2')" in result.stderr
    assert result.stderr.count("\n") == 1


def test_cached_torchvision_weights_load_offline(rl, test_images, tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    target = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), target)  # stands in for the download
    result, [line] = run_json(rl, str(test_images[0][0]), "-m", "mobilenet_v3_small", "-w", "DEFAULT")
    assert result.code == 0, result.stderr
    assert line["top_k"][0]["label"] in weights.meta["categories"]


def test_csv_and_table_outputs(rl, shapes_checkpoint, test_images):
    paths = [str(p) for p, _ in test_images[:2]]
    result = rl("classify", *paths, "-m", SHAPENET, "-w", str(shapes_checkpoint), "--csv", "-k", "3", "-j", "0")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 6 and rows[0]["path"] == paths[0] and rows[2]["rank"] == "3"
    assert abs(sum(float(r["probability"]) for r in rows[:3]) - 1) < 1e-4
    table = rl("classify", *paths, "-m", SHAPENET, "-w", str(shapes_checkpoint), "-k", "1", "-j", "0")
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["Image", "#", "Label", "Probability"]
    assert lines[1].startswith(paths[0]) and lines[2].startswith(paths[1])


def test_workers_keep_input_order(rl, shapes_checkpoint, test_images):
    folder = str(test_images[0][0].parent)
    result = rl("classify", folder, "-m", SHAPENET, "-w", str(shapes_checkpoint), "--json", "-j", "2", "-b", "4")
    assert result.code == 0, result.stderr
    paths = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    assert paths == sorted(str(p) for p, _ in test_images)


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour fields plus noise: JPEG-compressed, they decode like photographs."""
    import numpy as np

    generator = np.random.default_rng(seed)
    small = Image.fromarray(generator.integers(0, 255, (height // 32, width // 32, 3), dtype=np.uint8))
    pixels = np.asarray(small.resize((width, height), Image.BICUBIC), dtype=np.float64)
    noisy = np.clip(pixels + generator.normal(0, 10, pixels.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


def test_default_decoding_is_exactly_torchvisions_on_a_large_jpeg(rl, tmp_path):
    """A 2400x1800 camera-sized JPEG: by default rl's probabilities are weights.transforms()'s (the reduced-DCT
    draft decode used to be the default and moved them by up to 6e-4); --draft is the opt-in fast path."""
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    weights_file = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), weights_file)
    photo = tmp_path / "photo.jpg"
    photo_like(2400, 1800).save(photo, quality=92)
    transform = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    with torch.inference_mode():
        expected = reference(transform(Image.open(photo).convert("RGB"))[None]).softmax(-1)[0].topk(5)
    result, [line] = run_json(rl, str(photo), "-m", "resnet18", "-w", str(weights_file))
    assert result.code == 0, result.stderr
    assert [r["index"] for r in line["top_k"]] == expected.indices.tolist()
    assert [r["probability"] for r in line["top_k"]] == pytest.approx(expected.values.tolist(), abs=1e-6)
    _, [fast] = run_json(rl, str(photo), "-m", "resnet18", "-w", str(weights_file), "--draft")
    moved = max(abs(a["probability"] - b["probability"]) for a, b in zip(fast["top_k"], line["top_k"], strict=True))
    assert moved > 1e-6  # the fast path really decodes differently, so the default above was tested


# --- every input problem is one line, and the rest of the work is done ----------------------------------------


def test_a_huge_crop_is_refused_before_anything_is_decoded(rl, shapes_checkpoint, test_images):
    """--crop 100000 used to grow a decoding worker to 24 GB until the OOM killer fired."""
    image, weights = str(test_images[0][0]), str(shapes_checkpoint)
    result = rl("classify", image, "-m", SHAPENET, "-w", weights, "--crop", "100000")
    assert result.code == 2 and result.stderr.count("\n") == 1
    assert "crop must be a whole number of pixels from 1 to 65536, not 100000" in result.stderr
    result = rl("classify", image, "-m", SHAPENET, "-w", weights, "--crop", "60000", "-b", "8", "-j", "1")
    assert result.code == 2 and result.stderr.count("\n") == 1
    # 3 batches in flight (the one in use, 2 decoded ahead by the worker) of 8 x 3 x 60000^2 float32 pixels, and
    # the worker's resized 8-bit picture: (3 * 8 * 3 * 4 + 3) * 60000^2 bytes = 975.7 GiB
    assert result.stderr.startswith("error: resizing to 60000 and cropping 60000x60000 in batches of 8 with 1 ")
    assert "needs at least 975.7 GiB of memory" in result.stderr


def test_an_unreadable_sub_folder_is_reported_and_the_rest_classified(
    rl, shapes_checkpoint, test_images, tmp_path, without_root_override
):
    import shutil

    root = tmp_path / "photos"
    (root / "locked").mkdir(parents=True)
    for path, _ in test_images[:3]:
        shutil.copy(path, root / path.name)
    shutil.copy(test_images[3][0], root / "locked" / "hidden.png")
    (root / "locked").chmod(0)
    try:
        result, lines = run_json(rl, str(root), "-m", SHAPENET, "-w", str(shapes_checkpoint))
    finally:
        (root / "locked").chmod(0o755)
    assert result.code == 1
    assert sorted(line["path"] for line in lines) == sorted(str(root / p.name) for p, _ in test_images[:3])
    assert result.stderr == f"error: {root / 'locked'}: cannot read folder: Permission denied\n"


@pytest.mark.parametrize("case", ["empty folder", "no images", "empty stdin"])
def test_no_inputs_at_all_is_an_error(rl, shapes_checkpoint, tmp_path, monkeypatch, case):
    folder = tmp_path / "folder"
    folder.mkdir()
    argument = str(folder)
    if case == "no images":
        (folder / "notes.txt").write_text("no pictures here")
    if case == "empty stdin":
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n\n"))
        argument = "-"
    result = rl("classify", argument, "-m", SHAPENET, "-w", str(shapes_checkpoint))
    assert result.code == 1 and result.stdout == ""
    expected = "no paths on standard input" if case == "empty stdin" else "no images in this folder"
    assert result.stderr.startswith(f"error: {argument}: {expected}") and result.stderr.count("\n") == 1


def test_a_crlf_path_list_is_read_as_paths(rl, shapes_checkpoint, test_images, monkeypatch):
    paths = [str(p) for p, _ in test_images[:2]]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\r\n".join(paths) + "\r\n"))
    result, lines = run_json(rl, "-", "-m", SHAPENET, "-w", str(shapes_checkpoint))
    assert result.code == 0, result.stderr
    assert [line["path"] for line in lines] == paths


def test_a_model_whose_forward_fails_is_one_error_line(rl, tmp_path, test_images):
    source = tmp_path / "badnet.py"
    source.write_text(
        "import torch\n"
        "class Bad(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(3, 2)\n"
        "    def forward(self, x):\n"
        "        raise ValueError('this model only works on Tuesdays')\n"
        "class Quits(Bad):\n"
        "    def forward(self, x):\n"
        "        raise SystemExit(3)\n"
    )
    weights = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}, str(weights))
    for name, reason in (("Bad", "ValueError: this model only works on Tuesdays"), ("Quits", "sys.exit(3)")):
        result = rl("classify", str(test_images[0][0]), "-m", f"{source}:{name}", "-w", str(weights), "-j", "0")
        assert result.code == 1, (name, result.stderr)
        assert result.stderr.startswith(f"error: {source}:{name} failed on a batch of 1 images")
        assert reason in result.stderr and result.stderr.count("\n") == 1


def test_a_user_module_calling_sys_exit_is_an_error_not_a_silent_exit(rl, tmp_path):
    source = tmp_path / "script.py"
    source.write_text("import sys\nsys.exit(0)\n")
    result = rl("summary", f"{source}:Net")
    assert result.code == 1
    assert result.stderr == f"error: '{source}:Net' could not be imported: it called sys.exit(0)\n"


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ({"resize": "big"}, "resize must be a whole number of pixels"),
        ({"crop": 0}, "crop must be a whole number of pixels from 1 to 65536"),
        ({"mean": [0.5, 0.5]}, "mean must be three finite numbers"),
        ({"std": [0.0, 1.0, 1.0]}, "std must be positive"),
        ({"interpolation": "magic"}, "interpolation must be one of"),
        ({"rotate": 90}, "unknown setting 'rotate'"),
        ([1, 2, 3], "expected a mapping of settings"),
    ],
)
def test_bad_preprocessing_in_a_checkpoint_is_named(rl, tmp_path, test_images, stored, reason):
    info = CheckpointInfo(arch="resnet18", extra={"preprocess": stored})
    import torchvision

    weights = save_checkpoint(tmp_path / "r.safetensors", torchvision.models.resnet18().state_dict(), info).path
    result = rl("classify", str(test_images[0][0]), "-w", str(weights))
    assert result.code == 1
    assert result.stderr.startswith(f"error: {weights}: its stored preprocessing is invalid: {reason}")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--mean", "nan,nan,nan", "every value must be a finite number"),
        ("--mean", "0.5,inf,0.5", "every value must be a finite number"),
        ("--std", "0,0,0", "std must be positive"),
        ("--std", "1,-1,1", "std must be positive"),
        ("--resize", "100000", "resize must be a whole number of pixels from 1 to 65536"),
    ],
)
def test_absurd_preprocessing_options_are_usage_errors_up_front(
    rl, shapes_checkpoint, test_images, option, value, message
):
    paths = [str(p) for p, _ in test_images[:3]]
    result = rl("classify", *paths, "-m", SHAPENET, "-w", str(shapes_checkpoint), option, value)
    assert result.code == 2 and result.stdout == ""
    assert message in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b3", "vit_b_16", "regnet_y_16gf", "inception_v3"])
def test_preprocessing_is_bit_for_bit_the_weights_transform(name, tmp_path):
    """The card's preprocessing and the default decode give exactly the tensor torchvision's transform gives
    (bilinear and bicubic, several resize/crop pairs), on a camera-sized JPEG."""
    import torchvision

    from rlcli.models.registry import get_spec

    photo = tmp_path / "photo.jpg"
    photo_like(2400, 1800, seed=1).save(photo, quality=92)
    expected = torchvision.models.get_model_weights(name).DEFAULT.transforms()(Image.open(photo).convert("RGB"))
    assert torch.equal(get_spec(name).card.preprocess(open_rgb(photo)), expected)


def test_models_that_are_not_image_classifiers_are_refused(rl, tmp_path, test_images):
    """A detector's 25,200 x 85 output is no class score vector; CSRA heads are multi-label."""
    from rlcli.core.meta import build_on_meta
    from rlcli.models.registry import get_spec

    for name, task in (("yolov5n", "detection"), ("csra_resnet18", "multi-label")):
        state = {
            k: torch.zeros(v.shape, dtype=v.dtype) for k, v in build_on_meta(get_spec(name).build).state_dict().items()
        }
        weights = save_checkpoint(tmp_path / f"{name}.safetensors", state).path
        result = rl("classify", str(test_images[0][0]), "-m", name, "-w", str(weights))
        assert result.code == 2 and result.stderr.startswith(f"error: {name} is a {task} model; rl classify runs")


def test_a_torchvision_detector_is_refused_before_its_weights_are_read(rl, test_images, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights: reading them would be a different error
    result = rl("classify", str(test_images[0][0]), "-m", "ssd300_vgg16")
    assert result.code == 2 and result.stderr.startswith("error: ssd300_vgg16 is a detection model")
