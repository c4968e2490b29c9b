"""ViT-CSRA against the official pipeline/vit_csra.py forward, written out here; Wider-Attribute's settings."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from rlcli.tasks.multilabel import load_csra

WIDER = ["Male", "longHair", "sunglass", "Hat", "Tshirt", "longSleeve", "formal", "shorts", "jeans", "longPants",
         "skirt", "faceMask", "logo", "stripe"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: small passes, one intra-op thread


def official_vit_state(width=768, depth=12, grid=14, classes=14, heads=1, seed=0, prefix=""):
    """Random tensors under the official VIT_CSRA's key names (a DataParallel ``module.`` prefix optional)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.02, offset=0.0):
        return offset + scale * torch.randn(*shape, generator=generator)

    state = {
        "patch_embed.proj.weight": rand(width, 3, 16, 16),
        "patch_embed.proj.bias": rand(width),
        "cls_token": rand(1, 1, width, scale=0.5),
        "pos_embed": rand(1, grid * grid + 1, width, scale=0.5),
        "norm.weight": rand(width, scale=0.1, offset=1.0),
        "norm.bias": rand(width, scale=0.1),
    }
    for i in range(depth):
        block = f"blocks.{i}."
        state |= {
            block + "norm1.weight": rand(width, scale=0.1, offset=1.0),
            block + "norm1.bias": rand(width, scale=0.1),
            block + "attn.qkv.weight": rand(3 * width, width, scale=0.05),
            block + "attn.qkv.bias": rand(3 * width),
            block + "attn.proj.weight": rand(width, width),
            block + "attn.proj.bias": rand(width),
            block + "norm2.weight": rand(width, scale=0.1, offset=1.0),
            block + "norm2.bias": rand(width, scale=0.1),
            block + "mlp.fc1.weight": rand(4 * width, width),
            block + "mlp.fc1.bias": rand(4 * width),
            block + "mlp.fc2.weight": rand(width, 4 * width),
            block + "mlp.fc2.bias": rand(width),
        }
    for h in range(heads):
        state[f"classifier.multi_head.{h}.head.weight"] = rand(classes, width, 1, 1, scale=1.0)
    return {prefix + k: v for k, v in state.items()}


def official_forward(state, x, lam, heads_of_attention):
    """VIT_CSRA.backbone then MHA, as pipeline/vit_csra.py and pipeline/csra.py compute them, in float64."""
    s = {k: v.double() for k, v in state.items()}
    x = x.double()
    batch = x.shape[0]
    tokens = torch.nn.functional.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=16)
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = torch.cat((s["cls_token"].expand(batch, -1, -1), tokens), dim=1) + s["pos_embed"]
    width = tokens.shape[-1]

    def layer_norm(t, name):
        return torch.nn.functional.layer_norm(t, (width,), s[name + ".weight"], s[name + ".bias"], eps=1e-6)

    def linear(t, name):
        return t @ s[name + ".weight"].T + s[name + ".bias"]

    depth = len({k.split(".")[1] for k in s if k.startswith("blocks.")})
    for i in range(depth):
        b = f"blocks.{i}."
        h = layer_norm(tokens, b + "norm1")
        n = h.shape[1]
        qkv = linear(h, b + "attn.qkv").reshape(batch, n, 3, heads_of_attention, width // heads_of_attention)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (width // heads_of_attention) ** -0.5).softmax(dim=-1)
        tokens = tokens + linear((attn @ v).transpose(1, 2).reshape(batch, n, width), b + "attn.proj")
        h = layer_norm(tokens, b + "norm2")
        tokens = tokens + linear(torch.nn.functional.gelu(linear(h, b + "mlp.fc1")), b + "mlp.fc2")
    tokens = layer_norm(tokens, "norm")[:, 1:]
    grid = int(math.sqrt(tokens.shape[1]))
    features = tokens.transpose(1, 2).reshape(batch, width, grid, grid)
    temperatures = {1: [1], 2: [1, 99], 4: [1, 2, 4, 99], 6: [1, 2, 3, 4, 5, 99], 8: [1, 2, 3, 4, 5, 6, 7, 99]}
    heads = sorted(k for k in s if k.startswith("classifier.multi_head."))
    logit = 0.0
    for name, temperature in zip(heads, temperatures[len(heads)], strict=True):
        weight = s[name]
        score = torch.nn.functional.conv2d(features, weight) / torch.norm(weight, dim=1, keepdim=True).transpose(0, 1)
        score = score.flatten(2)
        base = score.mean(dim=2)
        att = score.max(dim=2)[0] if temperature == 99 else (score * (score * temperature).softmax(dim=2)).sum(2)
        logit = logit + base + lam * att
    return logit


def test_official_vit_b16_wider_file_loads_and_matches_the_official_forward(tmp_path):
    state = official_vit_state(prefix="module.")  # saved from DataParallel, as the official main.py trains
    path = tmp_path / "vit_b16_wider.pth"
    torch.save(state, path)
    clf, settings = load_csra(str(path), device="cpu")
    assert settings.arch == "csra_vit_b16" and settings.num_heads == 1 and settings.num_classes == 14
    assert settings.lam == 0.3 and settings.lam_source == "official value for wider"
    assert clf.class_names == WIDER
    # Wider's official test transform: a 224 x 224 resize, ToTensor, Normalize(0.5, 0.5)
    pre = clf.preprocess
    assert (pre.resize, pre.crop, pre.square, pre.mean, pre.std) == (224, 224, True, (0.5,) * 3, (0.5,) * 3)
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    plain = {k.removeprefix("module."): v for k, v in state.items()}
    with torch.inference_mode():
        ours = clf.runner.model(x)
    torch.testing.assert_close(ours.double(), official_forward(plain, x, 0.3, 12), rtol=0, atol=1e-5)


def check_coco_448(tmp_path, width, depth, attention_heads, arch, forward=True):
    """COCO's ViT release: 8 heads at 448 px (a 28 x 28 patch map); COCO's [0, 1] preprocessing."""
    state = official_vit_state(width=width, depth=depth, grid=28, classes=80, heads=8, seed=1)
    path = tmp_path / "vit_coco.pth"
    torch.save(state, path)
    clf, settings = load_csra(str(path), device="cpu")
    assert settings.arch == arch and settings.num_heads == 8 and settings.input_side == 448
    assert clf.class_names[0] == "person" and settings.lam == 0.5
    pre = clf.preprocess
    assert (pre.resize, pre.crop, pre.mean, pre.std) == (448, 448, (0.0,) * 3, (1.0,) * 3)
    if not forward:
        return
    x = torch.rand(1, 3, 448, 448)
    with torch.inference_mode():
        ours = clf.runner.model(x)
    torch.testing.assert_close(ours.double(), official_forward(state, x, 0.5, attention_heads), rtol=0, atol=1e-5)


def test_vit_coco_448_layout_with_eight_heads(tmp_path):
    check_coco_448(tmp_path, 768, 12, 12, "csra_vit_b16", forward=False)


@pytest.mark.slow
def test_vit_b16_coco_448_with_eight_heads(tmp_path):
    """The forward at 448 px against the official one (15-50 s on 2 loaded cores)."""
    check_coco_448(tmp_path, 768, 12, 12, "csra_vit_b16")


@pytest.mark.slow
def test_vit_l16_coco_448_with_eight_heads(tmp_path):
    """The released COCO ViT-L/16 layout (about 50 s on 2 cores)."""
    check_coco_448(tmp_path, 1024, 24, 16, "csra_vit_l16")


def test_vit_cam_and_wrong_size(rl, tmp_path):
    torch.save(official_vit_state(seed=2), tmp_path / "vit.pth")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (90, 60), (200, 100, 50)).save(folder / "a.png")
    cam = tmp_path / "cam"
    result = rl("multilabel", str(folder), "-w", str(tmp_path / "vit.pth"), "--top-k", "2", "--cam", str(cam),
                "--json", "-j", "0")  # fmt: skip
    assert result.code == 0, result.stderr
    labels = [entry["label"] for entry in json.loads(result.stdout)["labels"]]
    assert len(labels) == 2 and set(labels) <= set(WIDER)
    with Image.open(next(cam.glob("a_*.png"))) as sheet:
        assert sheet.size == (2 * 90, 60)
    wrong = rl("multilabel", str(folder), "-w", str(tmp_path / "vit.pth"), "--resize", "64")
    assert wrong.code == 2 and "224" in wrong.stderr


def test_vit_maps_have_the_patch_grid():
    from rlcli.models.heads.csra import ViTCSRA

    net = ViTCSRA("b16", num_classes=3, num_heads=2, image_size=64).eval()
    with torch.inference_mode():
        logits, maps = net.forward_with_maps(torch.rand(1, 3, 64, 64))
    assert logits.shape == (1, 3) and maps.shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match="64 x 64"):
        net(torch.rand(1, 3, 32, 32))
