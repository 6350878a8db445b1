"""Helpers for forward hooks: (possibly tuple) block outputs. Call arguments: :mod:`mmpt.contract`."""

from __future__ import annotations

from typing import Any

import torch


def hidden_of(out: Any) -> torch.Tensor:
    """The hidden states in a block's output (a tensor, or the first item of a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def with_hidden(out: Any, hidden: torch.Tensor) -> Any:
    """A block output like ``out`` carrying ``hidden`` instead."""
    return (hidden, *out[1:]) if isinstance(out, tuple) else hidden
