"""``adapter``: bottleneck adapters per block: after the block, Houlsby's two per block, or parallel (He et al.)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmpt.method_configs import AdapterConfig  # noqa: F401 - torch-free, with every method's config
from mmpt.methods.base import MethodEntry, detach_from_model, register_method
from mmpt.methods.blocks import hidden_of, with_hidden
from mmpt.models.family import hooked_blocks, tower_width

if TYPE_CHECKING:
    from mmpt.models import LoadedModel


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
                for suffix, module, hook_of in self._sites(block, tower.attention, config.placement):
                    adapter = Bottleneck(dim, config.bottleneck).to(device)
                    self.adapters[f"{tower_name}_{i}{suffix}"] = adapter
                    self._handles.append(module.register_forward_hook(hook_of(adapter), with_kwargs=True))

    def _sites(self, block: nn.Module, attention: str, placement: str) -> list[tuple[str, nn.Module, Any]]:
        """(name suffix, module to hook, hook factory) of each adapter of one block."""
        if placement == "sequential":
            return [("", block, self._sequential)]
        if placement == "parallel":
            return [("", block, self._parallel)]
        mlp = _mlp_of(block)
        if placement == "parallel_ffn":
            return [("", mlp, self._parallel)]
        try:
            attn = block.get_submodule(attention)
        except AttributeError:
            raise ValueError(f"adapter placement houlsby: {type(block).__name__} has no attention module "
                             f"'{attention}' (a block without self-attention)") from None
        return [("_attn", attn, self._sequential), ("_mlp", mlp, self._sequential)]

    @staticmethod
    def _sequential(adapter: Bottleneck) -> Callable[..., Any]:
        def hook(block: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            h = hidden_of(out)
            return with_hidden(out, h + adapter(h.to(adapter.down.weight.dtype)).to(h.dtype))

        return hook

    def _parallel(self, adapter: Bottleneck) -> Callable[..., Any]:
        scale = self.config.scale

        def hook(block: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            x = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
            h = hidden_of(out)
            return with_hidden(out, h + scale * adapter(x.to(adapter.down.weight.dtype)).to(h.dtype))

        return hook

    def remove(self) -> None:
        """Remove the hooks (and the adapters from the model)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        detach_from_model(self)


MLP_NAMES = ("mlp", "feed_forward", "ffn")


def _mlp_of(block: nn.Module) -> nn.Module:
    """A block's MLP (feed-forward) sublayer, found by its usual names; refused where it has none of them (e.g.
    BERT-style blocks whose ``output`` module adds the residual and normalizes inside)."""
    for name in MLP_NAMES:
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return module
    children = ", ".join(n for n, _ in block.named_children())
    raise ValueError(f"adapter placements houlsby/parallel_ffn need the block's MLP sublayer ({' / '.join(MLP_NAMES)});"
                     f" {type(block).__name__} has: {children}. Use placement sequential or parallel there")


register_method(MethodEntry("adapter", AdapterConfig, AdapterMethod, "bottleneck adapters: sequential or parallel"))
