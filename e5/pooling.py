"""Pooling: a pass's token states to one vector per row, small pure tensor functions."""

from __future__ import annotations

import torch

from .registry import Pooling


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the unmasked token states, accumulated in float32 whatever the model dtype."""
    mask = attention_mask.to(torch.float32).unsqueeze(-1)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1.0)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The state of each row's last unmasked token; right for left and right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (positions * attention_mask.to(positions.dtype)).argmax(dim=1)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last].to(torch.float32)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Apply the registry's pooling to a batch of token states."""
    return _POOLERS[pooling](hidden, attention_mask)


_POOLERS = {Pooling.MEAN: mean_pool, Pooling.LAST_TOKEN: last_token_pool}
