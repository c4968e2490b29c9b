"""YOLOv5 (Ultralytics, 2020): the v6.0+ P5 detectors at 640 px, in the form the official code runs for inference.

There is no paper: the official repository (ultralytics/yolov5) is the source, and its CITATION.cff asks to cite
the software, "YOLOv5 by Ultralytics" by Glenn Jocher (Zenodo, doi:10.5281/zenodo.3908559). The network is the
layer list of ``models/yolov5{n,s,m,l,x}.yaml``, built here as the official ``parse_model`` builds it: a CSP
backbone (``Conv`` = convolution, BatchNorm and SiLU; ``C3`` = two 1x1 branches, one through ``Bottleneck``
blocks, concatenated and fused by a third 1x1; ``SPPF`` = three chained 5x5 max-pools), a PANet head of
upsampling, concatenation and ``C3`` blocks, and ``Detect``: one 1x1 convolution per scale (P3/8, P4/16, P5/32)
giving three anchors x (4 box + 1 objectness + 80 classes). The variants differ only in ``depth_multiple``
(repeats of every ``C3``) and ``width_multiple`` (channels, rounded up to multiples of 8).

Module names are the official ``DetectionModel``'s (``model.0.conv.weight``, ``model.2.m.0.cv1.bn.*``, ...,
``model.24.m.0.weight``, and the persistent buffer ``model.24.anchors``, stored in grid units, i.e. divided by
the stride; ``Detect.stride`` is a plain attribute, not in the state dict). The released ``yolov5*.pt`` files
pickle the whole model object, which rl never unpickles: convert one once with the official code, e.g.
``torch.save(torch.load("yolov5s.pt", weights_only=False)["model"].float().state_dict(), "yolov5s.pth")``, and
that state dict loads as it is. BatchNorm uses the official eps 1e-3 (``initialize_weights``).

Input: an RGB image letterboxed (``utils/augmentations.py`` ``letterbox``): resized so its longer side is 640 with
the aspect ratio kept, padded with grey 114 to 640x640 (or, in ``detect.py``'s ``auto`` mode, only to the next
multiples of 32, e.g. 640x480), scaled to [0, 1] by /255, no mean/std. rl has no detection task, so the card
carries no ``Preprocess`` (its resize-and-crop cannot express a letterbox).
Output in eval mode: the decoded boxes of the three scales concatenated, (N, 25200, 85) at 640 px - centre x, y,
width, height in input pixels, objectness and 80 class scores after the sigmoid, before non-maximum suppression
(the first element of the official eval output, and all of it when exported). In training mode: the three raw
maps, (N, 3, H/s, W/s, 85) each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlcli.errors import UsageError
from rlcli.models.cards import Paper, Published
from rlcli.models.registry import register_model

# The v6.0 layer list shared by the five yaml files: (from, repeats, module, args). ``from`` -1 is the previous
# layer; repeats scale with depth_multiple and output channels (args[0]) with width_multiple.
BACKBONE = (
    (-1, 1, "Conv", (64, 6, 2, 2)),  # 0-P1/2
    (-1, 1, "Conv", (128, 3, 2)),  # 1-P2/4
    (-1, 3, "C3", (128,)),
    (-1, 1, "Conv", (256, 3, 2)),  # 3-P3/8
    (-1, 6, "C3", (256,)),
    (-1, 1, "Conv", (512, 3, 2)),  # 5-P4/16
    (-1, 9, "C3", (512,)),
    (-1, 1, "Conv", (1024, 3, 2)),  # 7-P5/32
    (-1, 3, "C3", (1024,)),
    (-1, 1, "SPPF", (1024, 5)),  # 9
)
HEAD = (
    (-1, 1, "Conv", (512, 1, 1)),
    (-1, 1, "Upsample", ()),
    ((-1, 6), 1, "Concat", ()),  # cat backbone P4
    (-1, 3, "C3", (512, False)),  # 13
    (-1, 1, "Conv", (256, 1, 1)),
    (-1, 1, "Upsample", ()),
    ((-1, 4), 1, "Concat", ()),  # cat backbone P3
    (-1, 3, "C3", (256, False)),  # 17 (P3/8-small)
    (-1, 1, "Conv", (256, 3, 2)),
    ((-1, 14), 1, "Concat", ()),  # cat head P4
    (-1, 3, "C3", (512, False)),  # 20 (P4/16-medium)
    (-1, 1, "Conv", (512, 3, 2)),
    ((-1, 10), 1, "Concat", ()),  # cat head P5
    (-1, 3, "C3", (1024, False)),  # 23 (P5/32-large)
    ((17, 20, 23), 1, "Detect", ()),  # Detect(P3, P4, P5)
)
# Anchor (width, height) pairs in pixels for P3/8, P4/16, P5/32, and those strides.
ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))
STRIDES = (8, 16, 32)
NUM_CLASSES = 80  # COCO
CHANNEL_DIVISOR = 8

PAPER = Paper(
    title="YOLOv5 by Ultralytics",
    authors="Glenn Jocher",
    year=2020,
    url="https://github.com/ultralytics/yolov5",
    arxiv=None,
)

# The README's "Pretrained Checkpoints" table (unchanged since v6.0): params (M) and FLOPs @640 (B) are
# utils/torch_utils.py model_info's figures for the BN-fused model (model.fuse(), as val.py and detect.py run it),
# FLOPs = thop.profile(...)[0] * 2 at a 32 px input scaled by (640/32)^2, with thop 0.0.31, which counts a conv's
# bias as one more operation per output element. Reproduced here: fused params 1,867,405 / 7,225,885 /
# 21,172,173 / 46,533,693 / 86,705,005 and thop 0.0.31 x 2 = 4.496 / 16.485 / 48.967 / 109.145 / 205.669 B.
FLOPS_CONVENTION = (
    "the README's FLOPs are thop's count x 2 (true FLOPs: 2 per multiply-accumulate) of the BN-fused model, "
    "params the fused model's"
)
BIAS_NOTE = "the README counts the BN-fused model with thop 0.0.31, which adds one op per conv output for the bias: "


@dataclass(frozen=True)
class Variant:
    depth: float  # depth_multiple
    width: float  # width_multiple
    params: str  # README, fused model
    flops: str  # README, fused model, thop x 2
    note: str = ""


VARIANTS = {
    "yolov5n": Variant(0.33, 0.25, "1.9M", "4.5B"),
    "yolov5s": Variant(0.33, 0.50, "7.2M", "16.5B", BIAS_NOTE + "2 x (8.217 G MACs + 25.8 M outputs) = 16.49 B"),
    "yolov5m": Variant(0.67, 0.75, "21.2M", "49.0B", BIAS_NOTE + "2 x (24.436 G MACs + 47.5 M outputs) = 48.97 B"),
    "yolov5l": Variant(
        1.0, 1.0, "46.5M", "109.1B",
        BIAS_NOTE + "2 x (54.497 G MACs + 75.7 M outputs) = 109.15 B; fusing BN also drops 30,016 params (46,533,693)",
    ),
    "yolov5x": Variant(1.33, 1.25, "86.7M", "205.7B", BIAS_NOTE + "2 x (102.724 G MACs + 110.4 M outputs) = 205.67 B"),
}  # fmt: skip


def make_divisible(channels: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """The official rounding of scaled channels: up to the next multiple of ``divisor``."""
    return math.ceil(channels / divisor) * divisor


def autopad(kernel: int) -> int:
    """'Same' padding for an odd kernel (the official ``autopad`` without dilation)."""
    return kernel // 2


class Conv(nn.Module):
    """Convolution (no bias) -> BatchNorm -> SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k) if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)  # initialize_weights sets these on every BN
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 Conv -> 3x3 Conv, added to the input when ``shortcut`` and the widths agree."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden, c2, 3, 1)
        self.add = shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convolutions: cv3(cat(m(cv1(x)), cv2(x)))."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(c1, hidden, 1, 1)
        self.cv3 = Conv(2 * hidden, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, e=1.0) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained k x k max-pools (= SPP with k, 2k-1, 3k-2) concatenated."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1)
        self.cv2 = Conv(hidden * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    """Concatenates a list of maps along ``d`` (channels)."""

    def __init__(self, dimension: int = 1) -> None:
        super().__init__()
        self.d = dimension

    def forward(self, x: list[Tensor]) -> Tensor:
        return torch.cat(x, self.d)


class Detect(nn.Module):
    """One 1x1 convolution per scale, then (in eval) the official decode of every anchor's box:
    xy = (2 sigmoid - 0.5 + cell) * stride, wh = (2 sigmoid)^2 * anchor."""

    def __init__(
        self, nc: int, anchors: tuple[tuple[int, ...], ...], ch: tuple[int, ...], strides: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.nc = nc
        self.no = nc + 5  # outputs per anchor: box (4), objectness, classes
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.stride = tuple(float(s) for s in strides)  # not in the official state dict
        grid_units = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        grid_units = grid_units / torch.tensor(self.stride).view(-1, 1, 1)
        self.register_buffer("anchors", grid_units)  # (nl, na, 2), in units of each scale's stride
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self._initialize_biases()

    @torch.no_grad()
    def _initialize_biases(self) -> None:
        """The official prior (RetinaNet, Section 3.3): about 8 objects per 640 px image, uniform classes."""
        for conv, stride in zip(self.m, self.stride, strict=True):
            bias = conv.bias.view(self.na, -1)
            bias[:, 4] += math.log(8 / (640 / stride) ** 2)
            bias[:, 5 : 5 + self.nc] += math.log(0.6 / (self.nc - 0.99999))

    def forward(self, x: list[Tensor]) -> Tensor | list[Tensor]:
        maps, boxes = [], []
        for i, conv in enumerate(self.m):
            p = conv(x[i])
            bs, _, ny, nx = p.shape
            p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()  # (bs, na, ny, nx, no)
            maps.append(p)
            if not self.training:
                boxes.append(self._decode(p, i).view(bs, self.na * ny * nx, self.no))
        return maps if self.training else torch.cat(boxes, 1)

    def _decode(self, p: Tensor, i: int) -> Tensor:
        _, _, ny, nx, _ = p.shape
        y, x = torch.arange(ny, device=p.device, dtype=p.dtype), torch.arange(nx, device=p.device, dtype=p.dtype)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2).to(p.dtype)
        xy, wh, conf = p.sigmoid().split((2, 2, self.nc + 1), 4)
        xy = (xy * 2 + grid) * self.stride[i]
        wh = (wh * 2) ** 2 * anchor_grid
        return torch.cat((xy, wh, conf), 4)


@dataclass(frozen=True)
class Layer:
    """One built row of the layer list: where its input comes from and its module."""

    source: int | tuple[int, ...]
    module: nn.Module
    out_channels: int


def build_layer(index: int, row: tuple, channels: list[int], depth: float, width: float, num_classes: int) -> Layer:
    """The official ``parse_model`` for one yaml row, for the module kinds the P5 detectors use."""
    source, repeats, kind, args = row
    repeats = max(round(repeats * depth), 1) if repeats > 1 else repeats
    c_in = channels[source] if isinstance(source, int) else 0
    if kind in ("Conv", "C3", "SPPF"):
        c_out = make_divisible(args[0] * width)
        if kind == "Conv":  # every Conv row has one repeat
            module = Conv(c_in, c_out, *args[1:])
        elif kind == "C3":
            module = C3(c_in, c_out, repeats, *args[1:])
        else:
            module = SPPF(c_in, c_out, *args[1:])
        return Layer(source, module, c_out)
    if kind == "Upsample":
        return Layer(source, nn.Upsample(None, 2, "nearest"), c_in)
    if kind == "Concat":
        return Layer(source, Concat(1), sum(channels[j] for j in source))
    if kind == "Detect":
        ch = tuple(channels[j] for j in source)
        return Layer(source, Detect(num_classes, ANCHORS, ch, STRIDES), 0)
    raise ValueError(f"layer {index}: unknown module {kind!r}")


class DetectionModel(nn.Module):
    """The official ``DetectionModel``: ``model`` holds the 25 layers of the yaml in order; each takes the previous
    layer's output or, where its ``from`` says, earlier outputs (kept only for the layers something reads)."""

    def __init__(self, depth: float, width: float, num_classes: int = NUM_CLASSES, in_channels: int = 3) -> None:
        super().__init__()
        channels = [in_channels]  # channels[-1] is the previous layer's output; indices are layer numbers
        layers, sources = [], []
        for index, row in enumerate(BACKBONE + HEAD):
            layer = build_layer(index, row, channels, depth, width, num_classes)
            layers.append(layer.module)
            sources.append(layer.source)
            channels = [layer.out_channels] if index == 0 else [*channels, layer.out_channels]
        self.model = nn.Sequential(*layers)
        self.sources = tuple(sources)
        self.saved = frozenset(
            j % i for i, s in enumerate(sources) for j in ((s,) if isinstance(s, int) else s) if j != -1
        )

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        outputs: list[Tensor | None] = []
        for i, (layer, source) in enumerate(zip(self.model, self.sources, strict=True)):
            if source != -1:
                x = outputs[source] if isinstance(source, int) else [x if j == -1 else outputs[j] for j in source]
            x = layer(x)
            outputs.append(x if i in self.saved else None)
        return x


def check_input(name: str, input_size: tuple[int, ...]) -> None:
    """The two upsampling steps meet stride-2 maps only when both sides are multiples of the largest stride."""
    if len(input_size) != 3 or any(side % max(STRIDES) for side in input_size[1:]):
        shown = "x".join(str(s) for s in input_size)
        raise UsageError(
            f"{name} needs CxHxW images with H and W multiples of {max(STRIDES)} (letterboxed), not {shown}"
        )


def _register(name: str, variant: Variant) -> None:
    def build(input_size: tuple[int, ...], num_classes: int = NUM_CLASSES) -> DetectionModel:
        check_input(name, input_size)
        return DetectionModel(variant.depth, variant.width, num_classes=num_classes, in_channels=input_size[0])

    published = Published(
        input_size=(3, 640, 640),
        source="official README",
        params=variant.params,
        flops=variant.flops,
        convention=FLOPS_CONVENTION,
        note=variant.note,
    )
    register_model(
        name,
        family="yolov5",
        task="detection",
        default_input=(3, 640, 640),
        preprocess=None,  # letterbox to 640 (grey 114 padding), /255: see the module docstring
        paper=PAPER,
        published=published,
    )(build)


for _name, _variant in VARIANTS.items():
    _register(_name, _variant)
