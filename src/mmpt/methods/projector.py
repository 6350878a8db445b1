"""``projector``: train only the interaction layer (LLaVA stage 1 / M2PT's tunable projector)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from mmpt.method_configs import ProjectorConfig  # noqa: F401 - torch-free, with every method's config
from mmpt.methods.base import MethodEntry, detach_from_model, register_method
from mmpt.models.family import get_submodule

if TYPE_CHECKING:
    from mmpt.models import LoadedModel


class ProjectorMethod:
    """Exposes the existing projector's parameters as the trainable set."""

    def __init__(self, loaded: LoadedModel, config: ProjectorConfig) -> None:
        if not loaded.family.projector:
            raise ValueError(f"model family '{loaded.family.name}' has no projector to train")
        self.config = config
        self.module = get_submodule(loaded.model, loaded.family.projector)
        self._initial = {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.module.parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)

    def remove(self) -> None:
        """Restore the projector weights it had when the method was applied, and every ``requires_grad``."""
        self.module.load_state_dict(self._initial)
        detach_from_model(self)


register_method(MethodEntry("projector", ProjectorConfig, ProjectorMethod, "train the vision-to-text projector only"))
