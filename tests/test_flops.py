"""MAC counting against hand-computed figures, on the meta device."""

from __future__ import annotations

import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.modules import module as module_hooks

from rlcli.core.flops import NeedsRealValues, profile_forward
from rlcli.core.meta import ValueSteps, build_on_meta, value_steps_on_meta
from rlcli.errors import ModelRunError
from tiny_models import (
    Attention,
    Cyclic,
    Discarding,
    FixedInputNet,
    PassThrough,
    Recursive,
    SharedActivation,
    TinyNet,
    Unrolled,
)


def meta_input(*shape: int) -> tuple[torch.Tensor]:
    return (torch.empty(*shape, device="meta"),)


def test_conv_and_linear_macs_are_exact_and_attributed_to_layers():
    net = build_on_meta(TinyNet)
    profile = profile_forward(net, meta_input(2, 3, 8, 8))
    conv = 2 * 8 * 8 * 8 * (3 * 3 * 3)  # batch * H * W * out channels * (in channels * kernel)
    linear = 2 * 8 * 10
    by_name = {r.name: r for r in profile.modules}
    assert profile.total_macs == conv + linear
    assert by_name["features.0"].macs == conv
    assert by_name["head"].macs == linear
    assert by_name["features"].macs == conv  # containers include their children
    assert by_name[""].macs == conv + linear
    assert by_name["features.0"].output_shapes == [(2, 8, 8, 8)]
    assert by_name["head"].output_shapes == [(2, 10)]
    assert all(p.device.type == "meta" for p in net.parameters())


def test_functional_attention_is_counted():
    net = build_on_meta(Attention)
    profile = profile_forward(net, meta_input(1, 4, 8))
    projection = 4 * 8 * 24
    attention = 2 * (2 * 4 * 4 * 4)  # q @ k^T and attn @ v: heads * T * T * head_dim each
    assert profile.total_macs == projection + attention


def test_multihead_attention_fast_path_does_not_hide_work():
    with torch.device("meta"):
        mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    profile = profile_forward(SelfAttention(), meta_input(1, 4, 8))
    in_proj, attention, out_proj = 4 * 8 * 24, 2 * (2 * 4 * 4 * 4), 4 * 8 * 8
    assert profile.total_macs == in_proj + attention + out_proj
    assert torch.backends.mha.get_fastpath_enabled()  # restored afterwards


def test_activation_bytes_count_new_storage_of_module_outputs():
    net = build_on_meta(TinyNet)
    profile = profile_forward(net, meta_input(1, 3, 8, 8))
    conv_out = relu_out = 8 * 8 * 8 * 4  # TinyNet's ReLU is not in place: a new tensor
    pool_out, head_out = 8 * 4, 10 * 4  # flatten(1) between them is a view
    assert profile.activation_bytes == conv_out + relu_out + pool_out + head_out


def test_in_place_results_views_and_passed_through_inputs_are_no_new_memory():
    net = build_on_meta(PassThrough).eval()
    profile = profile_forward(net, meta_input(3, 8))
    assert profile.activation_bytes == 3 * 8 * 4  # the Linear's output, and nothing after it


def test_a_freed_outputs_storage_is_not_taken_for_a_later_one():
    net = build_on_meta(Discarding)
    profile = profile_forward(net, meta_input(2, 8))
    # Each call's output is new memory, though the one before was freed (its address may come back).
    assert profile.activation_bytes == 20 * 2 * 8 * 4


def test_resnet18_activation_bytes_equal_the_outputs_that_allocate():
    import torchvision

    net = build_on_meta(torchvision.models.resnet18).eval()
    profile = profile_forward(net, meta_input(1, 3, 224, 224))
    # Every ReLU is in place and `out += identity` too; flatten is a view. What allocates: conv and batch-norm
    # outputs, the max pool, the average pool and the classifier.
    stem = 2 * 64 * 112 * 112 + 64 * 56 * 56
    layer1 = 2 * 4 * 64 * 56 * 56  # two blocks of conv1, bn1, conv2, bn2
    layer2, layer3, layer4 = (10 * c * s * s for c, s in ((128, 28), (256, 14), (512, 7)))  # + downsample conv, bn
    head = 512 + 1000
    assert profile.activation_bytes == 4 * (stem + layer1 + layer2 + layer3 + layer4 + head)  # 19.7 MiB


def by_name(profile):
    return {record.name: record for record in profile.modules}


def test_a_module_shared_by_two_parents_is_listed_at_each_place():
    net = build_on_meta(SharedActivation)
    profile = profile_forward(net, meta_input(2, 4))
    rows = by_name(profile)
    linear = 2 * 4 * 4
    assert profile.total_macs == rows[""].macs == 2 * linear
    assert rows["a"].macs == rows["b"].macs == linear
    assert rows["a.1"].calls == rows["b.1"].calls == 1  # each call goes to the place whose parent was running
    assert rows["a.1"].shared and rows["b.1"].shared and not rows["a.0"].shared
    assert [r.name for r in profile.modules] == ["", "a", "a.0", "a.1", "b", "b.0", "b.1"]


def test_a_re_entered_module_counts_each_operator_once():
    net = build_on_meta(Recursive)  # three calls of the root, each applying one 10x10 Linear
    profile = profile_forward(net, meta_input(1, 10))
    rows = by_name(profile)
    assert profile.total_macs == 3 * 10 * 10
    assert rows[""].macs == 3 * 10 * 10  # not 600 (once per stack level)
    assert rows[""].calls == 3
    assert rows[""].output_shapes == [(1, 10)]  # the first call's, though it returns last
    assert rows["lin"].macs == 3 * 10 * 10 and rows["lin"].calls == 3


def test_calls_are_counted_and_uncalled_containers_get_their_childrens_work():
    net = build_on_meta(Unrolled)
    profile = profile_forward(net, meta_input(2, 6))
    rows = by_name(profile)
    assert rows["cell"].calls == 3 and rows["cell"].macs == 3 * 2 * 6 * 6
    assert rows["heads"].calls == 0 and rows["heads"].macs == 2 * 6 * (2 + 3)
    assert rows[""].macs == profile.total_macs == 3 * 2 * 6 * 6 + 2 * 6 * 5


def test_a_cyclic_module_graph_terminates():
    net = build_on_meta(Cyclic)
    profile = profile_forward(net, meta_input(1, 4))
    rows = by_name(profile)
    assert profile.total_macs == rows[""].macs == 2 * 4 * 4
    assert rows["inner.outer"].shared  # the root again, listed where it is registered, not expanded
    assert not any(name.startswith("inner.outer.") for name in rows)


def test_failure_names_the_innermost_layer_and_hooks_are_removed():
    net = build_on_meta(FixedInputNet)
    with pytest.raises(ModelRunError, match=r"layer 'classifier' \(Linear\)"):
        profile_forward(net, meta_input(1, 3, 9, 9))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert not module_hooks._global_forward_hooks and not module_hooks._global_forward_pre_hooks


def test_meta_build_falls_back_for_constructors_that_read_tensors():
    import torchvision

    net = build_on_meta(torchvision.models.regnet_y_400mf)
    assert all(p.device.type == "meta" for p in net.parameters())
    assert sum(p.numel() for p in net.parameters()) == 4_344_144


# --- forward passes whose work depends on values: selections at their caps, value-reading steps on the CPU -------


def select_by_overlap(boxes, scores):
    """A stand-in for NMS as a model calls it by module attribute: reads values, returns kept indices."""
    keep = [i for i in scores.argsort(descending=True).tolist() if boxes[i, 0] >= 0]
    return torch.tensor(keep, dtype=torch.int64)


def describe_corners(boxes):
    """Reads values to size its result, and does a matmul on real tensors (counted like any other work)."""
    width = int(boxes[0, 2] - boxes[0, 0] + 1)
    return torch.zeros(boxes.shape[0], width) @ torch.zeros(width, 5)


class Selecting(nn.Module):
    """Scores candidates, keeps those above a threshold and what the selection function keeps, caps them at 3, runs a
    head on what is left and describes it with a value-reading function."""

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(4, 1)
        self.head = nn.Linear(4, 6)

    def forward(self, boxes):
        scores = self.score(boxes).squeeze(1)
        keep = torch.where(scores > 0.5)[0]
        boxes, scores = boxes[keep], scores[keep]
        kept = boxes[select_by_overlap(boxes, scores)][:3]  # looked up at call time: a step can stand in for it
        return self.head(kept), describe_corners(kept)


def keep_every_box(boxes, scores):
    return scores.argsort(descending=True)


STEPS = ValueSteps(
    selections={f"{__name__}:select_by_overlap": keep_every_box},
    on_cpu=(f"{__name__}:describe_corners",),
    caps=lambda model: ["3 boxes"],
)


def test_without_value_steps_a_selection_needs_real_values():
    with pytest.raises(NeedsRealValues):
        profile_forward(build_on_meta(Selecting), meta_input(10, 4))


def test_selections_keep_every_candidate_up_to_the_cap_and_value_steps_run_on_real_tensors():
    net = build_on_meta(Selecting)
    with value_steps_on_meta(STEPS) as ran:
        profile = profile_forward(net, meta_input(10, 4))
    layers = by_name(profile)
    assert layers["score"].macs == 10 * 4
    assert layers["head"].macs == 3 * 4 * 6  # every box passed the threshold and the selection: the cap of 3
    assert layers["head"].output_shapes == [(3, 6)]
    # describe_corners ran on zeros of the shape that reached it: width 1, so a 3x1 @ 1x5 product
    assert profile.total_macs == 10 * 4 + 3 * 4 * 6 + 3 * 1 * 5
    [step] = ran
    assert step.function == f"{__name__}:describe_corners" and step.calls == 1
    assert step.input_shapes == [[3, 4]] and step.output_shapes == [[3, 5]]
    assert step.tensor_bytes == 3 * 4 * 4 + 3 * 5 * 4
    assert all(p.device.type == "meta" for p in net.parameters())


def test_value_steps_are_undone_afterwards():
    module = sys.modules[__name__]
    original = module.select_by_overlap, module.describe_corners
    with pytest.raises(RuntimeError), value_steps_on_meta(STEPS):
        raise RuntimeError("interrupted")
    assert (module.select_by_overlap, module.describe_corners) == original
    with pytest.raises(NeedsRealValues):  # boolean masks need real values again
        profile_forward(build_on_meta(Selecting), meta_input(10, 4))


def test_a_step_that_names_nothing_is_an_error():
    with (
        pytest.raises(ValueError, match="no_such_function"),
        value_steps_on_meta(ValueSteps(on_cpu=(f"{__name__}:no_such_function",))),
    ):
        pass


# --- a property: randomly composed networks against MACs computed from their layer shapes ------------------------

WIDTH, BATCH = 4, 3


class MatmulStep(nn.Module):
    """Functional work only: ``x @ W`` or the same product through einsum."""

    def __init__(self, einsum: bool) -> None:
        super().__init__()
        self.einsum = einsum
        self.weight = nn.Parameter(torch.empty(WIDTH, WIDTH))

    def forward(self, x):
        return torch.einsum("bi,ij->bj", x, self.weight) if self.einsum else x @ self.weight


class ConvStep(nn.Module):
    """A Conv1d over the features as a sequence of length WIDTH (odd kernel, same padding)."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x):
        return self.conv(x.unsqueeze(1)).squeeze(1)


class RecurseStep(nn.Module):
    """Applies ``inner`` and calls itself ``times`` more times: a module re-entered while it runs."""

    def __init__(self, inner: nn.Module, times: int) -> None:
        super().__init__()
        self.inner, self.times = inner, times

    def forward(self, x, remaining=None):
        remaining = self.times if remaining is None else remaining
        x = self.inner(x)
        return x if remaining == 0 else self(x, remaining - 1)


class Steps(nn.Module):
    def __init__(self, steps: list[nn.Module]) -> None:
        super().__init__()
        self.steps = nn.ModuleList(steps)  # a container that never runs itself

    def forward(self, x):
        for step in self.steps:
            x = torch.relu(step(x))
        return x


def _compose(choices):
    """Build a network from drawn choices; returns it, MACs of one call per module, and each module's sub-calls."""
    cost: dict[int, int] = {}
    inner_calls: dict[int, list[tuple[nn.Module, int]]] = {}
    pool: list[nn.Module] = []

    def add(module, macs, calls=()):
        cost[id(module)], inner_calls[id(module)] = macs, list(calls)
        pool.append(module)
        return module

    steps = []
    for kind, number, flag in choices:
        if kind == "linear":
            module = add(nn.Linear(WIDTH, WIDTH, bias=flag), BATCH * WIDTH * WIDTH)
        elif kind == "matmul":
            module = add(MatmulStep(einsum=flag), BATCH * WIDTH * WIDTH)
        elif kind == "conv":
            kernel = 2 * (number % 2) + 1
            step = ConvStep(kernel)
            cost[id(step.conv)], inner_calls[id(step.conv)] = BATCH * WIDTH * kernel, []
            module = add(step, BATCH * WIDTH * kernel, [(step.conv, 1)])
        elif kind == "relu":
            module = add(nn.ReLU(), 0)
        elif kind == "reuse" and pool:
            module = pool[number % len(pool)]  # registered again: shared
        elif kind == "sequential" and pool:
            first, second = pool[number % len(pool)], nn.Linear(WIDTH, WIDTH, bias=flag)
            add(second, BATCH * WIDTH * WIDTH)
            module = add(nn.Sequential(first, second), cost[id(first)] + cost[id(second)], [(first, 1), (second, 1)])
        elif kind == "recurse" and pool:
            inner, times = pool[number % len(pool)], number % 3
            module = add(RecurseStep(inner, times), (times + 1) * cost[id(inner)], [(inner, times + 1)])
        else:
            continue
        steps.append(module)
    return Steps(steps), cost, inner_calls


def _work_per_module(net, cost, inner_calls):
    """MACs each module object runs in one forward pass (a re-entered module's nested calls count once)."""
    work: dict[int, int] = {}

    def run(module, times):
        work[id(module)] = work.get(id(module), 0) + times * cost[id(module)]
        for inner, per_call in inner_calls[id(module)]:
            run(inner, times * per_call)

    for step in net.steps:
        run(step, 1)
    return work


@settings(derandomize=True, deadline=None, max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["linear", "matmul", "conv", "relu", "reuse", "sequential", "recurse"]),
            st.integers(0, 20),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_macs_of_random_networks_equal_the_analytic_count(choices):
    with torch.device("meta"):
        net, cost, inner_calls = _compose(choices)
    profile = profile_forward(net, meta_input(BATCH, WIDTH))
    expected = sum(cost[id(step)] for step in net.steps)
    rows = {record.name: record for record in profile.modules}
    assert profile.total_macs == expected
    assert rows[""].macs == expected
    assert all(record.macs <= expected for record in profile.modules)
    # Each module's calls land at one of its places: over its places, its rows hold exactly its own work.
    by_module: dict[int, int] = {}
    for name, record in rows.items():
        module = net.get_submodule(name)
        by_module[id(module)] = by_module.get(id(module), 0) + record.macs
    for key, work in _work_per_module(net, cost, inner_calls).items():
        assert by_module[key] == work
