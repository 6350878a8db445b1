"""Descriptions of model families: which towers a VLM has and where their attention layers live.

A family is data, not code: methods read it to find where to inject. Adding a family means writing one
``Family`` (see ``docs/adding_a_family.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn

TowerKind = Literal["decoder", "encoder", "cnn"]


@dataclass(frozen=True)
class Tower:
    """One tower of a VLM.

    Attributes:
        kind: ``decoder`` (causal self-attention with a KV cache), ``encoder`` (bidirectional self-attention)
            or ``cnn`` (no attention).
        module: dotted path of the tower's root module inside the model.
        layers: dotted path of its ``ModuleList`` of blocks (transformer towers).
        attention: path of the self-attention module inside one block, e.g. ``self_attn``.
        backbone: dotted path of the module that owns the blocks and receives ``attention_mask`` /
            ``past_key_values`` (decoders), used to keep masks and positions consistent with a KV cache.
    """

    kind: TowerKind
    module: str
    layers: str = ""
    attention: str = ""
    backbone: str = ""


@dataclass(frozen=True)
class Family:
    """A model family: its towers by name (``lm``, ``vision``, ``encoder``, ...) and the projector path."""

    name: str
    towers: dict[str, Tower]
    projector: str = ""
    notes: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def tower(self, name: str) -> Tower:
        """The tower called ``name``; a clear error lists the towers that exist."""
        if name not in self.towers:
            raise ValueError(
                f"model family '{self.name}' has no tower '{name}'; it has: {', '.join(sorted(self.towers))}"
            )
        return self.towers[name]


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """``root.get_submodule(path)`` with an error that names the missing path."""
    try:
        return root.get_submodule(path) if path else root
    except AttributeError as exc:
        raise ValueError(f"module path '{path}' not found in {type(root).__name__}: {exc}") from exc


def attention_modules(root: nn.Module, tower: Tower) -> list[nn.Module]:
    """The self-attention module of every block of a transformer tower, in layer order."""
    if tower.kind == "cnn":
        raise ValueError(f"tower '{tower.module}' is a CNN and has no attention layers")
    layers = get_submodule(root, tower.layers)
    return [get_submodule(block, tower.attention) for block in layers]
