"""``m2pt``: Multimodal Prompt Tuning (Wang et al. 2024) — visual prompts in the vision tower, textual prompts
in the LM and the interaction layer (projector) trained; everything else frozen.

Visual prompts are deep prompts (VPT-deep) for transformer vision towers; for a CNN tower such as mmpt-tiny's
EfficientNet they fall back to a pixel-space frame (``visual_prompt``). Textual prompts are deep prompts in the
LM.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from mmpt.config import MAX_IMAGE_SIZE, MAX_LAYERS, MAX_TOKENS, check, check_range
from mmpt.methods.base import MethodConfig, MethodEntry, detach_from_model, register_method
from mmpt.methods.deep_prompt import DeepPromptConfig, DeepPromptMethod
from mmpt.methods.visual_prompt import VisualPromptConfig, VisualPromptMethod
from mmpt.models.family import get_submodule

if TYPE_CHECKING:
    from mmpt.models import LoadedModel


@dataclass
class M2PTConfig(MethodConfig):
    """M2PT.

    Attributes:
        visual_length / text_length: prompt tokens per layer in the vision tower / the LM (0 disables).
        visual_layers / text_layers: layer indices (empty = all; the paper's "location" ablation; textual prompts may
            start at any LM layer, see :mod:`mmpt.methods.deep_prompt`).
        train_projector: train the interaction layer too (the paper does).
        interaction: which interaction layer: ``projector`` (the model's own projector, trained) or ``linear`` (a
            fresh ``width x width`` linear projection after the projector, M2PT's ``f_in``; it starts as the
            identity, so the untrained method leaves the image features as they were; the projector stays frozen).
        init: prompt initialization: ``xavier`` (the paper's) or ``normal`` (std 0.02).
        frame_width: pixel frame width used when the vision tower is a CNN.
        image_size: image side for the pixel frame.
    """

    name: str = "m2pt"
    visual_length: int = 10
    text_length: int = 10
    visual_layers: list[int] = field(default_factory=list)
    text_layers: list[int] = field(default_factory=list)
    train_projector: bool = True
    interaction: Literal["projector", "linear"] = "projector"
    init: Literal["xavier", "normal"] = "xavier"
    frame_width: int = 16
    image_size: int = 224

    def validate(self) -> None:
        check_range(self, "visual_length", 0, MAX_TOKENS)
        check_range(self, "text_length", 0, MAX_TOKENS)
        for key in ("visual_layers", "text_layers"):
            check_range(self, key, -MAX_LAYERS, MAX_LAYERS - 1, fix="give layer indices such as [0, 1, -1]")
        check_range(self, "image_size", 8, MAX_IMAGE_SIZE)
        check_range(self, "frame_width", 1, (self.image_size - 1) // 2,
                    fix=f"the frame must leave an image inside image_size={self.image_size} px")
        check(self.interaction == "projector" or self.train_projector,
              "interaction: 'linear' is a trained interaction layer; it needs train_projector: true")
        check(self.visual_length + self.text_length > 0 or self.train_projector,
              f"visual_length: m2pt has nothing to train, got visual_length={self.visual_length}, text_length="
              f"{self.text_length}, train_projector=false; give a prompt length or train_projector: true")


class M2PTMethod(nn.Module):
    """Composes visual prompts, textual deep prompts and the projector."""

    def __init__(self, loaded: LoadedModel, config: M2PTConfig) -> None:
        super().__init__()
        self.config = config
        self.parts = nn.ModuleDict()
        vision = loaded.family.towers.get("vision")
        if config.visual_length and vision is not None:
            if vision.kind == "cnn":
                self.parts["visual"] = VisualPromptMethod(
                    loaded, VisualPromptConfig(width=config.frame_width, image_size=config.image_size)
                )
            else:
                self.parts["visual"] = DeepPromptMethod(
                    loaded, DeepPromptConfig(length=config.visual_length, tower="vision", layers=config.visual_layers,
                                             init=config.init)
                )
        if config.text_length:
            self.parts["text"] = DeepPromptMethod(
                loaded, DeepPromptConfig(length=config.text_length, tower="lm", layers=config.text_layers,
                                         init_scale=0.02, init=config.init)
            )
        self._projector: list[nn.Module] = []
        self._handles: list[Any] = []
        if config.train_projector:
            if not loaded.family.projector:
                raise ValueError(f"model family '{loaded.family.name}' has no projector for M2PT to train")
            projector = get_submodule(loaded.model, loaded.family.projector)
            if config.interaction == "linear":
                self.interaction = self._fresh_linear(projector)
            else:
                self._projector.append(projector)
                self._initial = {k: v.detach().clone() for k, v in projector.state_dict().items()}

    def _fresh_linear(self, projector: nn.Module) -> nn.Linear:
        """An identity-initialised linear layer applied to the projector's output by a forward hook."""
        width = [m for m in projector.modules() if isinstance(m, nn.Linear)][-1].out_features
        param = next(projector.parameters())
        layer = nn.Linear(width, width, device=param.device, dtype=torch.float32)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(width))
            layer.bias.zero_()

        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
            return layer(out.to(layer.weight.dtype)).to(out.dtype)

        self._handles.append(projector.register_forward_hook(hook))
        return layer

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:  # type: ignore[override]
        yield from self.parts.parameters(recurse)
        if hasattr(self, "interaction"):
            yield from self.interaction.parameters(recurse)
        for module in self._projector:
            yield from module.parameters(recurse)

    def state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        """Prompt parameters plus, when trained, the projector's (under ``projector.``)."""
        state = super().state_dict(*args, **kwargs)
        if self._projector and not args and not kwargs:
            state.update({f"projector.{k}": v for k, v in self._projector[0].state_dict().items()})
        return state

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):  # type: ignore[no-untyped-def, override]
        own = {k: v for k, v in state.items() if not k.startswith("projector.")}
        if self._projector:
            self._projector[0].load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("projector.")})
        return super().load_state_dict(own, strict=strict, assign=assign)

    def remove(self) -> None:
        """Remove the prompts and restore the projector's weights from when M2PT was applied."""
        for part in self.parts.values():
            part.remove()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._projector:
            self._projector[0].load_state_dict(self._initial)
        detach_from_model(self)


register_method(MethodEntry("m2pt", M2PTConfig, M2PTMethod,
                            "M2PT: visual prompts + textual prompts + trained projector"))
