"""``visual_prompt``: a learned pixel-space frame around the image (Bahng et al. 2022), for any vision tower.

It suits CNN towers such as mmpt-tiny's EfficientNet, where token prompts do not apply: the tower sees
``pixels + frame``, where the frame is learned in a border of ``width`` pixels and zero inside.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmpt.contract import ContractError
from mmpt.method_configs import VisualPromptConfig  # noqa: F401 - torch-free, with every method's config
from mmpt.methods.base import MethodEntry, detach_from_model, register_method
from mmpt.models.family import get_submodule

if TYPE_CHECKING:
    from mmpt.models import LoadedModel


class VisualPromptMethod(nn.Module):
    """Adds the learned frame to ``pixel_values`` in a forward pre-hook on the vision tower."""

    def __init__(self, loaded: LoadedModel, config: VisualPromptConfig) -> None:
        super().__init__()
        self.config = config
        tower = loaded.family.tower(config.tower)
        if tower.kind == "decoder":
            raise ValueError(f"tower '{config.tower}' is a language model; visual prompts need a vision tower")
        if tower.packed:
            raise ValueError(f"visual prompts pad an image's pixels, but the '{config.tower}' tower of "
                             f"'{loaded.family.name}' takes its images as packed patches (no pixel frame to pad); "
                             "use deep_prompt or prefix on that tower")
        tower_module = get_submodule(loaded.model, tower.module)
        if not any(isinstance(m, nn.Conv2d) for m in tower_module.modules()):
            raise ValueError(f"visual prompts pad an image's pixels, but the '{config.tower}' tower of "
                             f"'{loaded.family.name}' embeds flattened patches with no convolution over an image "
                             "(e.g. SigLIP2 NaFlex): there is no pixel frame to pad; use deep_prompt or prefix on "
                             "that tower")
        size, width = config.image_size, config.width
        device = next(loaded.model.parameters()).device
        self.frame = nn.Parameter(torch.zeros(3, size, size, device=device))
        mask = torch.ones(1, size, size, device=device)
        mask[:, width:-width, width:-width] = 0
        self.register_buffer("mask", mask, persistent=False)
        self._handle = tower_module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        pixels = args[0] if args else kwargs.get("pixel_values")
        if not isinstance(pixels, torch.Tensor) or pixels.dim() < 4 or pixels.shape[-3] != 3:
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ContractError(f"visual_prompt expects the vision tower's pixel_values as (..., 3, height, width) "
                                f"images (each tile of a tiled image gets the frame), got {shape}")
        if pixels.shape[-2:] != self.frame.shape[-2:]:
            raise ValueError(
                f"visual_prompt was built for {tuple(self.frame.shape[-2:])} images but the tower got "
                f"{tuple(pixels.shape[-2:])}; set method.image_size={pixels.shape[-1]}"
            )
        prompted = pixels + (self.frame * self.mask).to(pixels.dtype)
        if args:
            return (prompted, *args[1:]), kwargs
        return args, {**kwargs, "pixel_values": prompted}

    def remove(self) -> None:
        """Remove the hook (and the frame from the model)."""
        self._handle.remove()
        detach_from_model(self)


register_method(MethodEntry("visual_prompt", VisualPromptConfig, VisualPromptMethod,
                            "learned pixel-space frame around the image (CNN or ViT towers)"))
