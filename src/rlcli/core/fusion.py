"""Structural re-parameterisation: folding a training-time network into one with fewer, equivalent layers.

In eval mode a BatchNorm after a convolution is an affine map per output channel, so it folds into the
convolution's kernel and bias. Convolutions that see the same input with aligned sliding windows and are summed
(ACNet's KxK, 1xK and Kx1 branches) add up into one kernel: each smaller kernel lands on the matching centre
rows/columns of the larger one (Ding et al., ACNet, ICCV 2019; RepVGG and DBB reuse both steps).

Everything here is plain tensor arithmetic, so it also runs on the meta device (shapes only): a network's deploy
form can be built and counted without weights. A module takes part in ``reparameterize`` by having a ``fused()``
method that returns its deploy form.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init


class Fusable(Protocol):
    """A module with an equivalent inference-time form (in eval mode)."""

    def fused(self) -> nn.Module: ...


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """The kernel and bias of one convolution equal to ``bn(conv(x))`` with the BatchNorm's running statistics.

    ``y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta``: each output channel's kernel is scaled by
    ``gamma / std`` and the bias becomes ``beta + (b - mean) * gamma / std`` (``b`` the conv's own bias, or 0).

    Example:
        >>> conv, bn = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)
        >>> kernel, bias = fuse_conv_bn(conv, bn)
        >>> kernel.shape, bias.shape
        (torch.Size([8, 3, 3, 3]), torch.Size([8]))
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
    kernel = conv.weight * scale.reshape(-1, 1, 1, 1)
    return kernel, beta + (conv_bias - bn.running_mean) * scale


def fuse_asymmetric(square: Tensor, *kernels: Tensor) -> Tensor:
    """``square`` (out, in, K, K) with each smaller kernel added onto its centre: a 1xK kernel onto the centre row,
    a Kx1 kernel onto the centre column (any kh x kw no larger than the square, centred the same way).

    This is the sum of the convolutions only when their sliding windows are aligned: the smaller kernels' padding
    must be the square's less the rows/columns they lack on each side (ACNet's hor/ver padding).

    Example:
        >>> fuse_asymmetric(torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 1, 3))[0, 0]
        tensor([[0., 0., 0.],
                [1., 1., 1.],
                [0., 0., 0.]])
    """
    fused = square.clone()
    height, width = square.shape[-2:]
    for kernel in kernels:
        kh, kw = kernel.shape[-2:]
        if kernel.shape[:2] != square.shape[:2] or kh > height or kw > width:
            raise ValueError(f"cannot add a {tuple(kernel.shape)} kernel onto a {tuple(square.shape)} one")
        top, left = height // 2 - kh // 2, width // 2 - kw // 2
        fused[:, :, top : top + kh, left : left + kw] += kernel
    return fused


def conv_with(template: nn.Conv2d, kernel: Tensor, bias: Tensor) -> nn.Conv2d:
    """A convolution with ``template``'s geometry (stride, padding, dilation, groups), holding ``kernel`` and a bias."""
    conv = skip_init(  # no initialisation: the weights are replaced at once
        nn.Conv2d,
        template.in_channels,
        template.out_channels,
        template.kernel_size,
        stride=template.stride,
        padding=template.padding,
        dilation=template.dilation,
        groups=template.groups,
        bias=True,
        padding_mode=template.padding_mode,
        device=kernel.device,
        dtype=kernel.dtype,
    )
    conv.weight = nn.Parameter(kernel.detach().clone())
    conv.bias = nn.Parameter(bias.detach().clone())
    return conv


@torch.no_grad()
def reparameterize(model: nn.Module) -> nn.Module:
    """Replace every submodule that has a deploy form (a ``fused()`` method) by that form, in place.

    Returns the model (or ``model.fused()`` when the model itself is fusable). The result equals the original in
    eval mode, where BatchNorm uses its running statistics; a module's training mode carries over.

    Example:
        >>> net = reparameterize(acnet_resnet18_module)  # doctest: +SKIP
    """
    if is_fusable(model):
        return _fused(model)
    for name, child in list(model.named_children()):
        setattr(model, name, reparameterize(child))
    return model


def is_fusable(module: nn.Module) -> bool:
    """Whether ``module``'s class defines ``fused()`` (a child module that happens to be named so does not count)."""
    return callable(getattr(type(module), "fused", None))


def _fused(module: nn.Module) -> nn.Module:
    fused = module.fused()
    fused.train(module.training)
    return fused
