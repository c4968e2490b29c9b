"""Small user models for tests (imported as `tiny_models:Name` and as a file path)."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F


class TinyNet(nn.Module):
    """Conv 3->8 (3x3, pad 1) -> ReLU -> global pool -> Linear 8->10."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


class Attention(nn.Module):
    """Functional attention: two projections and scaled_dot_product_attention, nothing else."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)


class FixedInputNet(nn.Module):
    """Only works at 3x8x8: its Linear expects 3*8*8 features."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(x))


def make_tiny() -> TinyNet:
    return TinyNet()


def not_a_module() -> str:
    return "surprise"


def broken() -> nn.Module:
    raise RuntimeError("constructor exploded")


class BatchNormNet(nn.Module):
    """BatchNorm first, so its running statistics are those of the input images."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.norm(x)).flatten(1))


class ShapeNet(nn.Module):
    """A small CNN for 32x32 pictures of coloured shapes (the classify tests train it in seconds)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


# --- module graphs that are not trees: shared, re-entered and cyclic modules ------------------------------------


class SharedActivation(nn.Module):
    """One ReLU object registered in two Sequentials (a.1 and b.1), as model code often does."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        act = nn.ReLU()
        self.a = nn.Sequential(nn.Linear(width, width), act)
        self.b = nn.Sequential(nn.Linear(width, width), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


class Recursive(nn.Module):
    """Calls itself ``times`` more times; each call applies the same Linear once."""

    def __init__(self, width: int = 10, times: int = 2) -> None:
        super().__init__()
        self.times = times
        self.lin = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, remaining: int | None = None) -> torch.Tensor:
        remaining = self.times if remaining is None else remaining
        x = self.lin(x)
        return x if remaining == 0 else self(x, remaining - 1)


class Unrolled(nn.Module):
    """One Linear applied three times, and a ModuleList that is never called itself."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.cell = nn.Linear(width, width)
        self.heads = nn.ModuleList([nn.Linear(width, 2), nn.Linear(width, 3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = self.cell(x)
        return torch.cat([head(x) for head in self.heads], dim=-1)


class Cyclic(nn.Module):
    """A module registered as its own descendant (inner.outer is the root again)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.inner = nn.Sequential(nn.Linear(4, 4))
        self.inner.add_module("outer", self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner[0](self.lin(x))


class PassThrough(nn.Module):
    """Outputs that are no new memory: Identity, Dropout in eval, an in-place ReLU, a view."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.identity = nn.Identity()
        self.dropout = nn.Dropout(0.5)
        self.act = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.act(self.dropout(self.identity(self.lin(x)))))


class Twice(nn.Module):
    """One Linear registered twice in the same Sequential: applied twice, its weights held once."""

    def __init__(self) -> None:
        super().__init__()
        lin = nn.Linear(4, 4)
        self.body = nn.Sequential(lin, lin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


# --- user models of other input shapes ----------------------------------------------------------------------------


class Conv1dNet(nn.Module):
    """Takes (batch, 4 channels, length): two Conv1d layers and a Linear over the pooled channels."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 8, 5, stride=2))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(-1))


class LSTMCellNet(nn.Module):
    """Takes (batch, 10): an LSTMCell stepped three times on the same input."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(10, 20)
        self.head = nn.Linear(20, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = x.new_zeros(x.shape[0], 20)
        for _ in range(3):
            h, c = self.cell(x, (h, c))
        return self.head(h)


class MatmulNet(nn.Module):
    """Takes (batch, T, 8): functional matmuls only (a Gram matrix, then a product with a weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gram = x @ x.transpose(-1, -2)
        return torch.mm((gram @ x).flatten(0, 1), self.weight)


class Conv3dNet(nn.Module):
    """Takes (batch, 4, D, H, W): four sample dimensions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ModuleListNet(nn.Module):
    """Takes (batch, 6): Linears held in a ModuleList, each applied in a loop."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(6, 6) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


# --- TorchScript ------------------------------------------------------------------------------------------------


def scripted_tinynet() -> nn.Module:
    """TinyNet compiled whole by TorchScript: no module in it accepts hooks."""
    return torch.jit.script(TinyNet())


class PartlyScripted(nn.Module):
    """An eager stem and head around a scripted block (a Sequential of Linear, ReLU, Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.block = torch.jit.script(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


# --- forward passes that read tensor values (the meta device has none) -------------------------------------------


class GaussianHead(nn.Module):
    """Takes (batch, 6): a Normal distribution whose argument check reads its parameters' values."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = nn.Linear(6, 3)
        self.scale = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normal = torch.distributions.Normal(self.mean(x), F.softplus(self.scale(x)) + 1e-3, validate_args=True)
        return normal.rsample()


class NonzeroNet(nn.Module):
    """Takes (batch, 6): also returns the indices of its positive outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.lin(x)
        return y, (y > 0).nonzero()


class ItemNet(nn.Module):
    """Takes (batch, 6): scales by a value read with ``.item()``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) / (1.0 + abs(x.sum().item()))


class TolistNet(nn.Module):
    """Takes (batch, 6): reads its input as Python numbers with ``.tolist()``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * len(x.tolist())


def traced_item_net() -> nn.Module:
    """ItemNet traced by TorchScript at build time: tracing runs the forward, which reads a value."""
    with torch.device("cpu"):
        example = torch.randn(1, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the value read becomes a constant: intended
        return torch.jit.trace(ItemNet(), example, check_trace=False)


class Discarding(nn.Module):
    """Applies one Linear 20 times to the same input, dropping each output: 20 allocations, each freed at once."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(20):
            y = self.lin(x)
        return y


class TokenTagger(nn.Module):
    """Token ids with an attention mask by keyword, like a transformer encoder's call."""

    def __init__(self, vocab: int = 50, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.proj(self.embed(input_ids))
        scores = x @ x.transpose(1, 2)
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask.bool()[:, None, :], float("-inf"))
        return scores.softmax(-1) @ x


class ImageListNet(nn.Module):
    """A list of images of any sizes, as torchvision's detection models take them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.conv(image[None]) for image in images]
