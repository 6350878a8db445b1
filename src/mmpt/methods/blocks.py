"""Helpers for forward hooks: call arguments by name, block widths and (possibly tuple) block outputs."""

from __future__ import annotations

import inspect
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


class CallArguments:
    """Read and replace named arguments of a hooked forward call, whether passed by position or keyword."""

    def __init__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        params = inspect.signature(module.forward).parameters.values()
        self.names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.args, self.kwargs = list(args), dict(kwargs)

    def get(self, name: str) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        if name in self.names and self.names.index(name) < len(self.args):
            return self.args[self.names.index(name)]
        return None

    def set(self, name: str, value: Any) -> None:
        if name in self.names and self.names.index(name) < len(self.args):
            self.args[self.names.index(name)] = value
        else:
            self.kwargs[name] = value

    def result(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return tuple(self.args), self.kwargs
