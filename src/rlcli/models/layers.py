"""Building blocks several papers' networks share, under the names their official code gives them (so that the
released state dicts load as-is): one copy here instead of one per paper file."""

from __future__ import annotations

from torch import Tensor, nn


class Mlp(nn.Module):
    """A transformer block's feed-forward part: fc1, GELU, fc2 (timm's and the ViT-derived official codes' names)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))
