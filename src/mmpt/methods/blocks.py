"""Helpers for hooks on transformer blocks: their width and their (possibly tuple) outputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def block_width(block: nn.Module) -> int:
    """Hidden size of a transformer block, read from its first LayerNorm / RMSNorm."""
    for module in block.modules():
        if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
            weight = getattr(module, "weight", None)
            if weight is not None:
                return weight.shape[0]
    raise ValueError(f"cannot find the hidden width of {type(block).__name__}")


def hidden_of(out: Any) -> torch.Tensor:
    """The hidden states in a block's output (a tensor, or the first item of a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def with_hidden(out: Any, hidden: torch.Tensor) -> Any:
    """A block output like ``out`` carrying ``hidden`` instead."""
    return (hidden, *out[1:]) if isinstance(out, tuple) else hidden
