"""ACNet: "ACNet: Strengthening the Kernel Skeletons for Powerful CNN via Asymmetric Convolution Blocks"
(Ding et al., ICCV 2019).

An Asymmetric Convolution Block (ACB) replaces a KxK convolution and its BatchNorm by three parallel branches, KxK,
1xK and Kx1, each with its own BatchNorm, whose outputs are summed (Fig. 1). After training the block
folds back into one KxK convolution with a bias: each BatchNorm into its branch's kernel, then the 1xK and Kx1
kernels onto the centre row and column of the KxK one (``rlcli.core.fusion``). The deployed network
has the base network's structure and cost; its BatchNorms after the fused convolutions become biases.

``acnet_resnet18`` is ImageNet ResNet-18 at 224 px with every 3x3 convolution an ACB, as the official code builds it
for ``-a sres18 -b acb`` (``base_model/resnet.py`` through ``acnet/acnet_builder.py``: 1x1 and 7x7 convolutions
stay plain); ``acnet_resnet18_deploy`` is the same network fused. Module names are the official code's
(``conv1.conv``, ``stage1.0.conv1.acb.square_conv``, ``stage2.0.shortcut.conv``, ``linear`` ...), so weights it
trains or converts load as they are; there are no released ImageNet weights.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from rlcli.core.fusion import conv_with, fuse_asymmetric, fuse_conv_bn, reparameterize
from rlcli.core.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from rlcli.models.cards import Paper, imagenet_classes
from rlcli.models.registry import register_model

RESNET18_BLOCKS = (2, 2, 2, 2)  # BasicBlocks per stage (the official create_ResNet18)
STAGE_CHANNELS = (64, 128, 256, 512)
STEM_CHANNELS = 64

PAPER = Paper(
    title="ACNet: Strengthening the Kernel Skeletons for Powerful CNN via Asymmetric Convolution Blocks",
    authors="Xiaohan Ding, Yuchen Guo, Guiguang Ding, Jungong Han",
    year=2019,
    url="https://arxiv.org/abs/1908.03930",
    arxiv="1908.03930",
)

# The official ImageNet evaluation (data/imagenet_data.py, ImgnetStdValData): torchvision's Resize(256) (bilinear),
# CenterCrop(224), ImageNet mean/std.
PREPROCESS = Preprocess(resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")


class ACBlock(nn.Module):
    """KxK + 1xK + Kx1 convolutions, each with its BatchNorm, summed; ``deploy`` holds the one fused KxK conv.

    The 1xK branch drops K//2 rows of padding and the Kx1 branch K//2 columns, so that their sliding windows are
    the centre row and column of the KxK window (Fig. 2): the condition for folding them into it.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
        deploy: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.deploy = deploy
        if deploy:
            self.fused_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=True)
            return
        if padding < kernel_size // 2:
            # The official block crops the input for this case; no network here needs it.
            raise ValueError(f"ACBlock needs padding >= kernel_size // 2, not {padding} for {kernel_size}")
        edge = padding - kernel_size // 2
        self.square_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.square_bn = nn.BatchNorm2d(out_channels)
        self.ver_conv = nn.Conv2d(in_channels, out_channels, (kernel_size, 1), stride, (padding, edge), bias=False)
        self.hor_conv = nn.Conv2d(in_channels, out_channels, (1, kernel_size), stride, (edge, padding), bias=False)
        self.ver_bn = nn.BatchNorm2d(out_channels)
        self.hor_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            return self.fused_conv(x)
        square = self.square_bn(self.square_conv(x))
        return square + self.ver_bn(self.ver_conv(x)) + self.hor_bn(self.hor_conv(x))

    def fused(self) -> ACBlock:
        """The deploy form: one KxK convolution with a bias, equal to this block in eval mode."""
        if self.deploy:
            return self
        square, square_bias = fuse_conv_bn(self.square_conv, self.square_bn)
        ver, ver_bias = fuse_conv_bn(self.ver_conv, self.ver_bn)
        hor, hor_bias = fuse_conv_bn(self.hor_conv, self.hor_bn)
        conv = self.square_conv
        block = ACBlock(
            conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0], deploy=True
        )
        block.fused_conv = conv_with(conv, fuse_asymmetric(square, ver, hor), square_bias + ver_bias + hor_bias)
        return block


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    """A plain convolution and its BatchNorm (the official ConvBuilder.Conv2dBN): 1x1 and 7x7 layers."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
            bn=nn.BatchNorm2d(out_channels),
        )
    )


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions, each an ACB; the projection shortcut stays a plain 1x1 conv + BN."""

    def __init__(self, in_channels: int, channels: int, stride: int, deploy: bool) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        if stride != 1 or in_channels != channels:
            self.shortcut = conv_bn(in_channels, channels, 1, stride)
        else:
            self.shortcut = nn.Identity()
        self.conv1 = nn.Sequential(
            OrderedDict(acb=ACBlock(in_channels, channels, 3, stride, 1, deploy=deploy), relu=nn.ReLU())
        )
        self.conv2 = ACBlock(channels, channels, 3, 1, 1, deploy=deploy)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ACNetResNet(nn.Module):
    """ImageNet ResNet with ACBs (the official ``base_model/resnet.py`` ResNet built by ACNetBuilder)."""

    def __init__(self, blocks: tuple[int, ...], num_classes: int = 1000, deploy: bool = False) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, STEM_CHANNELS, 7, 2, 3)
        self.conv1.add_module("relu", nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = STEM_CHANNELS
        for index, (width, count) in enumerate(zip(STAGE_CHANNELS, blocks, strict=True), start=1):
            stride = 1 if index == 1 else 2
            stage = [BasicBlock(channels, width, stride, deploy)]
            stage += [BasicBlock(width, width, 1, deploy) for _ in range(count - 1)]
            self.add_module(f"stage{index}", nn.Sequential(*stage))
            channels = width
        # The official GAP is a 7x7 average pool (then a flatten): the same at 224 px; adaptive here for other sizes.
        self.gap = nn.Sequential(OrderedDict(avg=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.linear(self.gap(x))


@register_model(
    "acnet_resnet18",
    family="acnet",
    task="image-classification",
    default_input=(3, 224, 224),
    preprocess=PREPROCESS,
    classes=imagenet_classes(),
    paper=PAPER,
)
def acnet_resnet18(input_size: tuple[int, ...], num_classes: int = 1000) -> ACNetResNet:
    """The training-time network: three branches in every 3x3 layer."""
    return ACNetResNet(RESNET18_BLOCKS, num_classes=num_classes)


@register_model(
    "acnet_resnet18_deploy",
    family="acnet",
    task="image-classification",
    default_input=(3, 224, 224),
    preprocess=PREPROCESS,
    classes=imagenet_classes(),
    paper=PAPER,
)
def acnet_resnet18_deploy(input_size: tuple[int, ...], num_classes: int = 1000) -> ACNetResNet:
    """The deploy network: ``acnet_resnet18`` with every ACB fused into one 3x3 convolution with a bias."""
    return reparameterize(ACNetResNet(RESNET18_BLOCKS, num_classes=num_classes))
