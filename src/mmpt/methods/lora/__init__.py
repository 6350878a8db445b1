"""``lora``: PEFT's LoRA layers swapped into chosen towers (PT-PEFT stage-2 default: r=16, alpha=32, q/k/v)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from mmpt.method_configs import DEFAULT_TARGETS, LoRAConfig  # noqa: F401 - torch-free, with every method's config
from mmpt.methods.base import MethodEntry, detach_from_model, register_method
from mmpt.models.family import blocks

if TYPE_CHECKING:
    from mmpt.models import LoadedModel

def _targeted(path: str, targets: list[str]) -> bool:
    """Whether a module's dotted path inside its block is one of ``targets`` (a name or a dotted path end)."""
    return any(path == t or path.endswith("." + t) for t in targets)


class LoRAMethod(nn.Module):
    """Swaps each target ``nn.Linear`` for PEFT's ``lora.Linear`` wrapping it; ``remove()`` swaps back."""

    attach = False  # its LoRA modules already live inside the model

    def __init__(self, loaded: LoadedModel, config: LoRAConfig) -> None:
        super().__init__()
        from peft import LoraConfig as PeftLoraConfig
        from peft.tuners.lora.layer import Linear as LoraLinear

        self.config = config
        peft_config = PeftLoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout)
        self._swapped: list[tuple[nn.Module, str, nn.Linear, nn.Module]] = []
        self.adapted = nn.ModuleDict()
        for tower_name in loaded.family.resolve(config.towers):
            tower = loaded.family.tower(tower_name)
            for i, block in enumerate(blocks(loaded.model, tower)):
                for path, module in list(block.named_modules()):
                    leaf = path.rsplit(".", 1)[-1]
                    if not _targeted(path, config.targets) or not isinstance(module, nn.Linear):
                        continue
                    parent = block.get_submodule(path.rsplit(".", 1)[0]) if "." in path else block
                    lora = LoraLinear(module, "default", peft_config, r=config.r, lora_alpha=config.alpha,
                                      lora_dropout=config.dropout)
                    lora.train(module.training)  # new modules start in training mode (dropout on)
                    setattr(parent, leaf, lora)
                    self._swapped.append((parent, leaf, module, lora))
                    self.adapted[f"{tower_name}__{i}__{path.replace('.', '__')}"] = nn.ModuleList(
                        [lora.lora_A["default"], lora.lora_B["default"]]
                    )
        if not self._swapped:
            raise ValueError(
                f"lora found none of {config.targets} in towers {config.towers} of '{loaded.family.name}'"
            )

    def remove(self) -> None:
        """Put the original ``nn.Linear`` modules back."""
        for parent, leaf, original, _ in self._swapped:
            setattr(parent, leaf, original)
        self._swapped = []
        detach_from_model(self)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:  # type: ignore[override]
        return self.adapted.parameters(recurse)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the LoRA update into the base weights (then :meth:`remove` keeps the merged weights)."""
        for _, _, original, lora in self._swapped:
            original.weight += lora.get_delta_weight("default")


register_method(MethodEntry("lora", LoRAConfig, LoRAMethod, "LoRA via PEFT's layers (r=16, alpha=32 on q,k,v)"))
