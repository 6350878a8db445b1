"""``adapter``: bottleneck adapters per block, sequential (Houlsby-style, after the block) or parallel."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from mmpt.config import MAX_WIDTH, check_range
from mmpt.methods.base import MethodConfig, MethodEntry, detach_from_model, register_method
from mmpt.methods.blocks import hidden_of, with_hidden
from mmpt.models.family import hooked_blocks, tower_width

if TYPE_CHECKING:
    from mmpt.models import LoadedModel


@dataclass
class AdapterConfig(MethodConfig):
    """Bottleneck adapters (down-projection, activation, zero-initialised up-projection).

    Attributes:
        placement: ``sequential`` — ``h = block(x); h = h + A(h)`` (Houlsby / Pfeiffer position, one per
            block) — or ``parallel`` — ``h = block(x) + s * A(x)`` (He et al. 2022).
        bottleneck: hidden size of the adapter.
        scale: ``s`` for parallel adapters.
        towers: towers whose blocks get adapters.
    """

    name: str = "adapter"
    placement: Literal["sequential", "parallel"] = "sequential"
    bottleneck: int = 64
    scale: float = 1.0
    towers: list[str] = field(default_factory=lambda: ["lm"])

    def validate(self) -> None:
        check_range(self, "bottleneck", 1, MAX_WIDTH)
        check_range(self, "scale", 0, 100, open_low=True)


class Bottleneck(nn.Module):
    """Down-project, ReLU, up-project; the up-projection starts at zero so the adapter starts as identity."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(x)))


class AdapterMethod(nn.Module):
    """Adds a :class:`Bottleneck` to every block of the chosen towers through forward hooks."""

    def __init__(self, loaded: LoadedModel, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.adapters = nn.ModuleDict()
        self._handles: list[Any] = []
        device = next(loaded.model.parameters()).device
        for tower_name in loaded.family.resolve(config.towers):
            tower = loaded.family.tower(tower_name)
            dim = tower_width(loaded.model, tower)
            for i, block in enumerate(hooked_blocks(loaded.model, tower, "adapter")):
                adapter = Bottleneck(dim, config.bottleneck).to(device)
                self.adapters[f"{tower_name}_{i}"] = adapter
                hook = self._parallel(adapter) if config.placement == "parallel" else self._sequential(adapter)
                self._handles.append(block.register_forward_hook(hook, with_kwargs=True))

    @staticmethod
    def _sequential(adapter: Bottleneck) -> Callable[..., Any]:
        def hook(block: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            h = hidden_of(out)
            return with_hidden(out, h + adapter(h.to(adapter.down.weight.dtype)).to(h.dtype))

        return hook

    def _parallel(self, adapter: Bottleneck) -> Callable[..., Any]:
        scale = self.config.scale

        def hook(block: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            x = args[0] if args else kwargs["hidden_states"]
            h = hidden_of(out)
            return with_hidden(out, h + scale * adapter(x.to(adapter.down.weight.dtype)).to(h.dtype))

        return hook

    def remove(self) -> None:
        """Remove the hooks (and the adapters from the model)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        detach_from_model(self)


register_method(MethodEntry("adapter", AdapterConfig, AdapterMethod, "bottleneck adapters: sequential or parallel"))
