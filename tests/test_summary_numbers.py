"""The numbers behind `rl summary`'s numbers (issue 18), each held against someone else's: a TorchDispatchMode
recorder for the operators not counted, torch's FlopCounterMode for a training step, torch.optim for optimizer state,
tensors allocated on the CPU for --dtype, hand-computed bytes for single layers, fvcore and torchinfo for --counter
all."""

from __future__ import annotations

import collections
import json
import textwrap

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop, conv_flop_count, flop_registry

from rlcli.models.registry import get_spec
from rlcli.tasks.summary import optimizer_state_bytes, summarize

NETS = '''
import torch
from torch import nn
from torch.nn import functional as F


def conv():
    return nn.Conv2d(3, 16, 3, padding=1)


def linear():
    return nn.Linear(64, 32)


class Block(nn.Module):
    """One transformer block with functional attention (scaled_dot_product_attention) and an MLP."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.mlp(x)


class Encoder(nn.Module):
    """torch's own nn.TransformerEncoder (nn.MultiheadAttention inside)."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x):
        return self.encoder(x)


@torch.library.custom_op("rltest::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class Mystery(nn.Module):
    """A Linear, then an operator nobody has a formula for."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return mystery(self.fc(x))
'''


# torch's formula on shapes (the registry's entry wraps it to take tensors).
CONV_BACKWARD = getattr(conv_backward_flop, "__wrapped__", conv_backward_flop)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    path = tmp_path_factory.mktemp("nets") / "nets.py"
    path.write_text(textwrap.dedent(NETS))
    return str(path)


class Recorder(TorchDispatchMode):
    """Every aten operator that runs, with its calls: the test's own, independent of rl's counter."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func._overloadpacket] += 1
        return func(*args, **(kwargs or {}))


def recorded_forward(reference: str, input_shape, dtype=torch.float32):
    """Operators of one forward pass of the model on the meta device, as the recorder sees them, in rl's names.

    rl counts with attention's math backend and nn.MultiheadAttention's fast path off (its README says so), so the
    recorder runs under the same switches."""
    spec = get_spec(reference, user_code=True)
    with torch.device("meta"):
        net = spec.build(tuple(input_shape[1:])).eval()
    recorder, x = Recorder(), torch.empty(*input_shape, device="meta", dtype=dtype)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), recorder:
            net(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    return {packet.__name__: calls for packet, calls in recorder.calls.items()}


def split_by_torch_registry(calls: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    counted = {name for name in calls if getattr(torch.ops.aten, name) in flop_registry}
    return {n: c for n, c in calls.items() if n not in counted}, {n: c for n, c in calls.items() if n in counted}


@pytest.mark.parametrize(
    ("model", "size"),
    [
        ("resnet18", "3x64x64"),
        ("mobilenet_v3_small", "3x64x64"),
        ("{nets}:Block", "16x32"),
        ("{nets}:Encoder", "16x32"),
    ],
)
def test_not_counted_equals_what_a_dispatch_recorder_sees(nets, model, size):
    reference = model.format(nets=nets)
    summary = summarize(reference, input_size=size, by_op=True)
    shape = [1, *map(int, size.split("x"))]
    not_counted, counted = split_by_torch_registry(recorded_forward(reference, shape))
    assert summary.not_counted == not_counted
    assert summary.no_formula == {}
    by_op = {op.op: op.calls for op in summary.by_op.ops if op.kind == "counted"}
    assert by_op == counted
    assert sum(op.macs for op in summary.by_op.ops) == summary.macs


def test_an_operator_without_a_formula_is_a_warning_not_a_silent_zero(nets, rl):
    summary = summarize(f"{nets}:Mystery", input_size="8")
    assert summary.no_formula == {"rltest.mystery": 1}
    assert "rltest.mystery" not in summary.not_counted
    assert summary.macs == 8 * 8
    result = rl("summary", f"{nets}:Mystery", "-i", "8")
    assert result.code == 0, result.stderr
    assert "warning:" in result.stderr and "rltest.mystery 1" in result.stderr
    assert "Warning: rl has no formula for these operators" in result.stdout
    document = json.loads(rl("summary", f"{nets}:Mystery", "-i", "8", "--json").stdout)["models"][0]
    assert document["no_formula"] == {"rltest.mystery": 1}


def test_the_not_counted_line_and_json(rl):
    result = rl("summary", "resnet18", "--depth", "0")
    assert result.code == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("Not counted"))
    assert "relu_ 17" in line and "add_ 8" in line and "max_pool2d_with_indices 1" in line
    document = json.loads(rl("summary", "resnet18", "--depth", "0", "--json").stdout)["models"][0]
    assert document["not_counted"]["relu_"] == 17 and document["no_formula"] == {}


# --- --by-op -------------------------------------------------------------------------------------------------


def test_by_op_for_one_row(rl):
    result = rl("summary", "resnet18", "--by-op", "--row", "layer1", "--json")
    assert result.code == 0, result.stderr
    document = json.loads(result.stdout)["models"][0]
    table = document["by_op"]
    layer1 = next(layer for layer in document["layers"] if layer["name"] == "layer1")
    assert table["row"] == "layer1" and table["macs"] == layer1["macs"]
    convolution = next(op for op in table["ops"] if op["op"] == "convolution")
    assert convolution["calls"] == 4 and convolution["macs"] == layer1["macs"]  # 4 convs of 64 channels at 56x56
    assert convolution["macs"] == 4 * 56 * 56 * 64 * 64 * 9
    text = rl("summary", "resnet18", "--depth", "0", "--by-op").stdout
    assert "Operators of resnet18" in text and "convolution" in text
    bad = rl("summary", "resnet18", "--by-op", "--row", "layer9")
    assert bad.code == 2 and bad.stderr.startswith("error: --row: no row named 'layer9'")


# --- --train ---------------------------------------------------------------------------------------------------


def flop_counter_mode_step(reference: str, size: tuple[int, ...], batch: int = 1) -> int:
    """torch's FlopCounterMode over forward + backward on the CPU, in training mode, of loss = sum of the output.

    Attention runs on the math backend: torch's registry has no formula for its CPU flash kernel (pytorch#131041).
    torch up to 2.14 counts the weight gradient of a grouped convolution as if ungrouped (pytorch#183405): the
    mapping below divides that part by the groups (the weight gradient joins each output element with each weight
    element it used once, as the forward pass does)."""
    spec = get_spec(reference, user_code=True)
    torch.manual_seed(0)
    net = spec.build(size).train()
    feed = spec.inputs_for(size).feed(batch, device="cpu")

    def convolution_backward(grad_out, x, w, bias, stride, padding, dilation, transposed, out_pad, groups, mask,
                             out_shape):  # fmt: skip
        data = CONV_BACKWARD(grad_out, x, w, bias, stride, padding, dilation, transposed, out_pad, groups,
                             [mask[0], False, False], out_shape)  # fmt: skip
        return data + (conv_flop_count(x, w, grad_out, transposed) if mask[1] else 0)

    with (
        sdpa_kernel(SDPBackend.MATH),
        FlopCounterMode(
            display=False, custom_mapping={torch.ops.aten.convolution_backward: convolution_backward}
        ) as counter,
    ):
        out = net(*feed.args, **feed.kwargs)
        out.sum().backward()
    return counter.get_total_flops() // 2


@pytest.mark.parametrize(
    ("model", "size"),
    [
        ("resnet18", (3, 64, 64)),  # convolutions, batch norm in training mode
        ("mobilenet_v2", (3, 64, 64)),  # depthwise convolutions
        ("{nets}:Block", (16, 32)),  # functional attention
        ("{nets}:Encoder", (16, 32)),  # nn.MultiheadAttention
        ("shakespeare", (64,)),  # GPT-2 (the bundled demo's configuration), tied embedding
    ],
)
def test_training_step_macs_equal_flop_counter_mode(nets, model, size):
    reference = model.format(nets=nets)
    summary = summarize(reference, input_size="x".join(map(str, size)), batch_size=2, train=True)
    step = summary.training
    expected = flop_counter_mode_step(reference, size, batch=2)
    assert step.step_macs == step.forward_macs + step.backward_macs
    assert abs(step.step_macs - expected) <= 0.001 * expected, (step.step_macs, expected)
    assert summary.layers[0].backward_macs == step.backward_macs


def test_torchs_grouped_weight_gradient_is_corrected():
    """The depthwise correction above is needed: torch's own formula counts a 2-channel depthwise 1x1 layer's weight
    gradient as 4 multiply-accumulates where there are 2 (one per output element)."""
    meta = {"device": "meta"}
    grad_out, x, w = torch.empty(1, 2, 1, 1, **meta), torch.empty(1, 2, 1, 1, **meta), torch.empty(2, 1, 1, 1, **meta)
    flops = flop_registry[torch.ops.aten.convolution_backward](
        grad_out, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 2, [False, True, False], out_val=(None, w, None)
    )
    if flops // 2 == 2:
        pytest.skip("this torch counts grouped weight gradients right")
    assert flops // 2 == 4


def real_optimizer_state_bytes(net: nn.Module, optimizer: str) -> int:
    """Bytes of the state torch.optim keeps after one step (every tensor of every parameter's state)."""
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), "adamw": lambda p: torch.optim.AdamW(p)}
    opt = make[optimizer](net.parameters())
    net(torch.randn(2, 3, 8, 8, dtype=next(net.parameters()).dtype)).sum().backward()
    opt.step()
    return sum(
        t.numel() * t.element_size() for state in opt.state.values() for t in state.values() if torch.is_tensor(t)
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_optimizer_state_formula_equals_torch_optim(optimizer, dtype):
    from tiny_models import TinyNet

    torch.manual_seed(0)
    net = TinyNet().to(getattr(torch, dtype))
    net.head.bias.requires_grad_(False)  # frozen parameters keep no state
    assert optimizer_state_bytes(net.parameters(), optimizer) == real_optimizer_state_bytes(net, optimizer)


def test_training_memory_in_the_summary_equals_torch(rl):
    from tiny_models import TinyNet

    for optimizer in ("sgd", "adamw"):
        result = rl("summary", "tiny_models:TinyNet", "-i", "3x8x8", "--train", "--optimizer", optimizer, "--json")
        assert result.code == 0, result.stderr
        step = json.loads(result.stdout)["models"][0]["training"]
        net = TinyNet()
        assert step["optimizer_bytes"] == real_optimizer_state_bytes(net, optimizer)
        assert step["grad_bytes"] == sum(p.grad.numel() * p.grad.element_size() for p in net.parameters())
        assert step["memory_bytes"] == step["weight_bytes"] + step["grad_bytes"] + step["optimizer_bytes"]
    assert rl("summary", "resnet18", "--optimizer", "sgd").code == 2  # --optimizer without --train


# --- --dtype ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_dtype_memory_equals_tensors_allocated_on_the_cpu(dtype):
    """Weights, activations and gradients at the dtype, against the storages a CPU run of the same model holds."""
    summary = summarize("resnet18", input_size="3x32x32", batch_size=2, dtype=dtype, train=True)
    torch.manual_seed(0)
    net = get_spec("resnet18").build((3, 32, 32)).to(getattr(torch, dtype)).eval()
    storages = {}
    hooks = [m.register_forward_hook(lambda m, i, o: storages.setdefault(o.untyped_storage().data_ptr(), o))
             for m in net.modules()]  # fmt: skip
    x = torch.randn(2, 3, 32, 32, dtype=getattr(torch, dtype))
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    held = {p.untyped_storage().data_ptr() for p in [*net.parameters(), *net.buffers(), x]}
    activations = sum(o.untyped_storage().nbytes() for ptr, o in storages.items() if ptr not in held)
    weights = sum(p.untyped_storage().nbytes() for p in net.parameters())
    assert summary.param_bytes == {dtype: weights}
    assert summary.activation_bytes == activations
    net.train()
    net(x).sum().backward()
    assert summary.training.grad_bytes == sum(p.grad.untyped_storage().nbytes() for p in net.parameters())


# --- bytes and intensity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bytes_and_intensity_of_one_conv2d_and_one_linear_by_hand(nets, dtype):
    size = 4 if dtype == "float32" else 2
    conv = summarize(f"{nets}:conv", input_size="3x32x32", dtype=dtype).layers[0]
    weights = (16 * 3 * 3 * 3 + 16) * size
    moved = weights + 3 * 32 * 32 * size + 16 * 32 * 32 * size
    macs = 16 * 32 * 32 * 3 * 3 * 3
    assert (conv.weight_bytes, conv.bytes_moved, conv.macs) == (weights, moved, macs)
    assert conv.intensity == pytest.approx(macs / moved)

    linear = summarize(f"{nets}:linear", input_size="64", batch_size=4, dtype=dtype)
    row = linear.layers[0]
    weights = (64 * 32 + 32) * size
    moved = weights + 4 * 64 * size + 4 * 32 * size
    assert (row.weight_bytes, row.bytes_moved, row.macs) == (weights, moved, 4 * 64 * 32)
    assert row.intensity == pytest.approx(4 * 64 * 32 / moved)
    assert (linear.bytes_moved, linear.intensity) == (moved, pytest.approx(4 * 64 * 32 / moved))


def test_bytes_and_intensity_in_the_table(rl, nets):
    result = rl("summary", f"{nets}:linear", "-i", "64", "-b", "4")
    assert result.code == 0, result.stderr
    header, row = result.stdout.splitlines()[1:3]
    assert header.split()[-2:] == ["Bytes", "MACs/B"]
    # (64 x 32 + 32) weights + 4 x 64 inputs + 4 x 32 outputs, 4 bytes each = 9,856 B; 8,192 MACs / 9,856 B = 0.83
    assert row.split()[-3:] == ["9.6", "KiB", "0.8"]
    assert "Bytes moved: 9.6 KiB at float32, arithmetic intensity 0.8 MACs/byte" in result.stdout


# --- --counter all ---------------------------------------------------------------------------------------------


def test_counter_all_shows_the_attention_fvcore_and_torchinfo_miss(rl, nets):
    pytest.importorskip("fvcore")
    pytest.importorskip("torchinfo")
    result = rl("summary", f"{nets}:Block", "-i", "16x32", "--counter", "all", "--json")
    assert result.code == 0, result.stderr
    document = json.loads(result.stdout)["models"][0]
    counters = {c["counter"]: c for c in document["counters"]}
    assert list(counters) == ["rlcli", "fvcore", "FlopCounterMode", "torchinfo"]
    t, c, heads = 16, 32, 4
    linears = t * c * 3 * c + t * c * c + 2 * t * c * 4 * c
    attention = 2 * heads * t * t * (c // heads)  # q @ k^T and weights @ v
    assert document["macs"] == linears + attention
    # torchinfo: each module's parameters times the batch for a Linear (not times the tokens), the LayerNorm's too;
    # functional attention, in no module with weights, is missed.
    params = (c * 3 * c + 3 * c) + (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c) + 2 * c
    assert counters["torchinfo"]["macs"] == params
    root = document["layers"][0]["counts"]
    assert root == {"rlcli": linears + attention, "fvcore": linears + 5 * t * c, "FlopCounterMode": linears,
                    "torchinfo": params}  # fmt: skip
    # fvcore adds the LayerNorm (5 per element) and skips the attention it has no handle for.
    assert counters["fvcore"]["macs"] == linears + 5 * t * c
    assert counters["fvcore"]["ignored"]["aten::scaled_dot_product_attention"] == 1
    # FlopCounterMode as users run it on the CPU: the attention kernel has no formula in torch's registry.
    assert counters["FlopCounterMode"]["macs"] == linears
    assert counters["FlopCounterMode"]["ignored"] == {"_scaled_dot_product_flash_attention_for_cpu": 1}
    text = rl("summary", f"{nets}:Block", "-i", "16x32", "--counter", "all").stdout
    assert text.splitlines()[1].split() == ["Layer", "Type", "rlcli", "fvcore", "FlopCounterMode", "torchinfo"]
    assert "Ignored by fvcore (operators fvcore has no handle for" in text
