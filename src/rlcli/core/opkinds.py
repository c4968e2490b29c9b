"""Which operators carry multiply-accumulates under rl's convention, and the formulas that count them.

Every operator a pass runs is one of three kinds:

- ``counted``: it has a formula here (torch's ``flop_registry``, with rl's corrections and additions below);
- ``not counted``: it does no multiply-accumulates under the convention (elementwise, normalisation, activations,
  pooling, softmax, reductions, losses, data movement, views, creation, random numbers, selection) — named by torch's
  own operator tags where they say so, else by the families below;
- ``no formula``: anything else (a custom operator, a new aten operator, linear algebra, FFTs): it may do work rl
  cannot count, so it is reported as a warning, never silently as zero.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter

COUNTED, NOT_COUNTED, NO_FORMULA = "counted", "not counted", "no formula"

aten = torch.ops.aten


def _conv_backward_flops(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
    """torch's convolution_backward formula, its weight-gradient part divided by the groups.

    torch up to 2.14 counts the weight gradient of a grouped convolution as if it were ungrouped (``groups`` times
    too many: a depthwise layer's by its channel count); pytorch/pytorch#183405 divides it. The weight gradient
    does exactly the forward pass's multiply-accumulates: one per (output element, weight element) pair it joins.
    """
    torch_formula = flop_counter.flop_registry[aten.convolution_backward]
    grad_input_mask, grad_weight_mask, _ = args[10]
    groups = args[9]
    grad_input = torch_formula(*args[:10], [grad_input_mask, False, False], *args[11:], out_val=out_val, **kwargs)
    grad_weight = torch_formula(*args[:10], [False, grad_weight_mask, False], *args[11:], out_val=out_val, **kwargs)
    return grad_input + (grad_weight // groups if _torch_counts_grouped_weight_gradient_whole() else grad_weight)


@functools.cache
def _torch_counts_grouped_weight_gradient_whole() -> bool:
    """Whether this torch's formula has the grouped weight-gradient error (a 2-channel depthwise 1x1 case: 2 MACs)."""
    meta = {"device": "meta"}
    grad_out, x, w = torch.empty(1, 2, 1, 1, **meta), torch.empty(1, 2, 1, 1, **meta), torch.empty(2, 1, 1, 1, **meta)
    flops = flop_counter.flop_registry[aten.convolution_backward](
        grad_out, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 2, [False, True, False], out_val=(None, w, None)
    )
    return flops != 2 * 2


def _cpu_flash_attention_flops(query, key, value, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    # torch's CPU attention kernel has no formula of its own (pytorch/pytorch#131041); it computes the same products.
    return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)


def _cpu_flash_attention_backward_flops(grad_out, query, key, value, *args: Any, out_val: Any = None, **kw) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


# Matrix-vector and vector products, which torch's registry leaves out (a Linear on one unbatched vector runs mv).
def _mv_flops(matrix, vector, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    return 2 * matrix.shape[0] * matrix.shape[1]


def _addmv_flops(bias, matrix, vector, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    return _mv_flops(matrix, vector)


def _dot_flops(a, b, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    return 2 * a.shape[0]


def _addbmm_flops(bias, batch1, batch2, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    return 2 * batch1.shape[0] * batch1.shape[1] * batch1.shape[2] * batch2.shape[2]


#: FLOP formulas by operator packet (FLOPs = 2 x MACs, torch's unit): torch's registry with rl's corrections.
FORMULAS: dict[Any, Callable[..., int]] = {
    **flop_counter.flop_registry,
    aten.convolution_backward: _conv_backward_flops,
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_attention_backward_flops,
    aten.mv: _mv_flops,
    aten.addmv: _addmv_flops,
    aten.dot: _dot_flops,
    aten.vdot: _dot_flops,
    aten.addbmm: _addbmm_flops,
}


def macs_of(func, args: tuple, kwargs: dict, out: Any) -> int:
    """MACs of one call of a counted operator."""
    return int(FORMULAS[func._overloadpacket](*args, **kwargs, out_val=out)) // 2


# The families of operators that do no multiply-accumulates under the convention, by their aten names (an in-place
# variant's trailing underscore removed). A backward operator is of its forward operator's kind.
_NO_MACS = {
    "elementwise": r"add|sub|rsub|mul|div|neg|abs|sign|sgn|reciprocal|sqrt|rsqrt|pow|exp|exp2|expm1|log|log1p|log2|"
    r"log10|sin|cos|tan|tanh|sinh|cosh|asin|acos|atan|atan2|erf|erfc|erfinv|floor|ceil|round|trunc|frac|fmod|"
    r"remainder|clamp|clamp_min|clamp_max|clip|maximum|minimum|fmax|fmin|lerp|addcmul|addcdiv|where|masked_fill|"
    r"eq|ne|lt|le|gt|ge|logical_\w+|bitwise_\w+|isnan|isinf|isfinite|nan_to_num|square|hypot|xlogy|copysign|"
    r"floor_divide|true_divide|heaviside|polar|real|imag|conj|_conj|resolve_conj|resolve_neg|_neg_view",
    "activations": r"relu|relu6|leaky_relu|prelu|_prelu_kernel|rrelu\w*|elu|selu|celu|gelu|silu|mish|hardswish|"
    r"hardsigmoid|hardtanh|hardshrink|softshrink|tanhshrink|softplus|sigmoid|logsigmoid|log_sigmoid_forward|glu|"
    r"threshold",
    "normalisation": r"native_batch_norm|_native_batch_norm_legit\w*|_batch_norm_with_update\w*|"
    r"_batch_norm_no_update|batch_norm_\w+|cudnn_batch_norm|miopen_batch_norm|native_layer_norm|native_group_norm|"
    r"_fused_rms_norm|rms_norm|instance_norm|renorm|_weight_norm\w*|_weight_norm_interface",
    "pooling": r"\w*pool[123]d\w*|max_unpool[123]d|fractional_max_pool\w*|_adaptive_avg_pool\w*",
    "softmax": r"_?softmax|_log_softmax|_safe_softmax|_softmax_backward_data|_log_softmax_backward_data",
    "reductions": r"sum|mean|nansum|nanmean|amax|amin|aminmax|max|min|argmax|argmin|var|std|var_mean|std_mean|prod|"
    r"cumsum|cumprod|cummax|cummin|_cummax_helper|_cummin_helper|logsumexp|logcumsumexp|any|all|norm|"
    r"linalg_vector_norm|count_nonzero|median|nanmedian|mode|kthvalue|topk|sort|argsort|msort",
    "losses": r"nll_loss\w*|nll_loss2d\w*|mse_loss|l1_loss|smooth_l1_loss|huber_loss|binary_cross_entropy\w*|"
    r"soft_margin_loss|multilabel_margin_loss\w*|multi_margin_loss|kl_div|_ctc_loss|ctc_loss",
    "data movement": r"cat|_cat|stack|clone|copy|_copy_from|_copy_from_and_resize|_to_copy|contiguous|index|"
    r"_index_put_impl|index_put|index_select|index_add|index_copy|index_fill|index_reduce|gather|scatter|"
    r"scatter_add|scatter_reduce|slice_scatter|select_scatter|diagonal_scatter|as_strided_scatter|masked_scatter|"
    r"masked_select|take|take_along_dim|put|embedding|embedding_dense|embedding_sparse|_embedding_bag\w*|"
    r"embedding_bag|embedding_renorm|constant_pad_nd|reflection_pad[123]d|replication_pad[123]d|_pad_circular|"
    r"as_strided|_pad_enum|pad|roll|flip|rot90|repeat|repeat_interleave|tile|tril|triu|narrow_copy|channel_shuffle|"
    r"native_channel_shuffle|pixel_shuffle|pixel_unshuffle|im2col|col2im|upsample_\w+|_upsample_\w+|"
    r"grid_sampler\w*|_unsafe_view|_reshape_alias|_reshape_copy|view_copy|\w+_copy|alias|lift|lift_fresh|"
    r"detach|resize|_resize_output|set|_unsafe_index|_unsafe_index_put|unfold|unfold_backward|diag_embed|"
    r"block_diag|_unsafe_masked_index\w*|tensor_split|split_with_sizes_copy|unbind_copy|chunk|unsafe_chunk|"
    r"unsafe_split\w*|_nested\w*|_fused_moving_avg_obs_fq_helper",
    "views": r"view|view_as|reshape|flatten|unflatten|select|slice|narrow|diagonal|expand|expand_as|permute|"
    r"transpose|t|squeeze|unsqueeze|movedim|split|split_with_sizes|unbind|as_strided",
    "creation": r"empty|empty_like|empty_strided|_empty_affine_quantized|zeros|zeros_like|ones|ones_like|full|"
    r"full_like|arange|linspace|logspace|scalar_tensor|new_empty|new_empty_strided|new_zeros|new_ones|new_full|"
    r"eye|fill|zero|_efficientzerotensor|tensor|_tensor|range|tril_indices|triu_indices|meshgrid|"
    r"cartesian_prod|lift_fresh_copy",
    "random numbers": r"rand|rand_like|randn|randn_like|randint|randint_like|randperm|bernoulli|uniform|normal|"
    r"multinomial|exponential|geometric|cauchy|log_normal|random|native_dropout|dropout|feature_dropout|"
    r"alpha_dropout|feature_alpha_dropout|_fused_dropout|_masked_scale",
    "selection": r"nonzero|nonzero_static|argwhere|unique\w*|_unique\w*|searchsorted|bucketize|histc|bincount|"
    r"isin",
    "metadata and values": r"_local_scalar_dense|item|is_nonzero|equal|allclose|isclose|sym_\w+|size|stride|numel|"
    r"dim|is_same_size|_has_compatible_shallow_copy_type|record_stream|_assert_\w+|_functional_assert_\w+|"
    r"_print|is_pinned|_pin_memory|pin_memory|_version|device|layout|dtype|is_contiguous|storage_offset|"
    r"is_strides_like_format|is_non_overlapping_and_dense|_nested_tensor_size|result_type|can_cast|"
    r"promote_types|to|type_as|_make_dep_token|_check_tensor\w*|_shape_as_tensor|output_nr|_assert_async",
}
_NO_MACS_NAMES = re.compile("|".join(f"(?:{pattern})" for pattern in _NO_MACS.values()))

# Operators of other libraries that are selection or pooling (torchvision's detection ops).
_NO_MACS_ELSEWHERE = {
    "torchvision": {"nms", "roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool", "_roi_align_backward",
                    "_roi_pool_backward", "_ps_roi_align_backward", "_ps_roi_pool_backward"},
    "prim": None,  # TorchScript's own: device, layout, dtype queries, no work
}  # fmt: skip

_NO_WORK_TAGS = (torch.Tag.pointwise, torch.Tag.nondeterministic_seeded)


def op_name(func) -> str:
    """``add``, ``convolution`` for aten operators; ``torchvision.roi_align`` for others."""
    return _names(func)[0]


@functools.cache
def _names(func) -> tuple[str, str, str]:
    """(display name, namespace, base name) of an operator overload."""
    packet = func._overloadpacket
    qualified = getattr(packet, "_qualified_op_name", None) or str(packet).replace(".", "::", 1)
    namespace, _, base = qualified.partition("::")
    return (base if namespace == "aten" else f"{namespace}.{base}"), namespace, base


@functools.cache
def op_kind(func) -> str:
    """``counted``, ``not counted`` or ``no formula`` (see the module's docstring)."""
    if func._overloadpacket in FORMULAS:
        return COUNTED
    _, namespace, base = _names(func)
    if namespace != "aten":
        known = _NO_MACS_ELSEWHERE.get(namespace, set())
        return NOT_COUNTED if known is None or base in known else NO_FORMULA
    if getattr(func, "is_view", False) or any(tag in _NO_WORK_TAGS for tag in getattr(func, "tags", ())):
        return NOT_COUNTED
    return NOT_COUNTED if _no_macs_by_name(base) else NO_FORMULA


def _no_macs_by_name(base: str) -> bool:
    name = base[:-1] if base.endswith("_") and not base.endswith("__") else base
    if _NO_MACS_NAMES.fullmatch(name):
        return True
    forward = re.sub(r"_backward(?:_data|_input|_weight|_elemt|_reduce)?$", "", name)
    return forward != name and _no_macs_by_name(forward)
