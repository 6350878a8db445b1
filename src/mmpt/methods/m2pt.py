"""``m2pt``: Multimodal Prompt Tuning (Wang et al. 2024) — visual prompts in the vision tower, textual prompts
in the LM and the interaction layer (projector) trained; everything else frozen.

Visual prompts are deep prompts (VPT-deep) for transformer vision towers; for a CNN tower such as mmpt-tiny's
EfficientNet they fall back to a pixel-space frame (``visual_prompt``). Textual prompts are deep prompts in the
LM.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmpt.method_configs import M2PTConfig  # noqa: F401 - torch-free, with every method's config
from mmpt.methods.base import MethodEntry, detach_from_model, register_method
from mmpt.methods.deep_prompt import DeepPromptConfig, DeepPromptMethod
from mmpt.methods.visual_prompt import VisualPromptConfig, VisualPromptMethod
from mmpt.models.family import get_submodule

if TYPE_CHECKING:
    from mmpt.models import LoadedModel


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
                                         init_scale=0.02, init=config.init,
                                         propagate_init=config.text_propagate_init)
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
