"""Methods that train a subset of the model's own parameters: ``bitfit``, ``full``, ``head``.

Nothing is injected: the method marks existing parameters trainable, saves only them, and ``remove()`` puts
back the values they had when it was applied (a CPU snapshot taken then).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from mmpt.method_configs import BitFitConfig, FullConfig, HeadConfig  # noqa: F401 - torch-free, with every method's config
from mmpt.methods.base import MethodConfig, MethodEntry, detach_from_model, register_method
from mmpt.models.family import get_submodule

if TYPE_CHECKING:
    from mmpt.models import LoadedModel


class ParameterSelection:
    """Trains named parameters of the model; saves and restores exactly those."""

    def __init__(self, config: MethodConfig, named: dict[str, nn.Parameter], what: str) -> None:
        if not named:
            raise ValueError(f"method '{config.name}' found no parameters to train ({what})")
        self.config = config
        self.named = named
        self._snapshot = {k: p.detach().to("cpu", copy=True) for k, p in named.items()}

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.named.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self.named.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.named) - set(state)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} parameter(s) of '{self.config.name}', e.g. {min(missing)}")
        with torch.no_grad():
            for k, p in self.named.items():
                p.copy_(state[k])

    def remove(self) -> None:
        """Restore the values from when the method was applied, and every parameter's ``requires_grad``."""
        with torch.no_grad():
            for k, p in self.named.items():
                p.copy_(self._snapshot[k])
                p.requires_grad_(False)
        detach_from_model(self)


def _tower_parameters(loaded: LoadedModel, towers: list[str]) -> dict[str, nn.Parameter]:
    """Base-model parameters of ``towers`` (all towers when empty); other methods' parameters are excluded."""
    if not towers:
        return {k: p for k, p in loaded.model.named_parameters() if not _is_method_parameter(k)}
    out: dict[str, nn.Parameter] = {}
    for name in loaded.family.resolve(towers):
        path = loaded.family.tower(name).module
        for k, p in get_submodule(loaded.model, path).named_parameters():
            if not _is_method_parameter(k):
                out[f"{path}.{k}"] = p
    return out


def _is_method_parameter(name: str) -> bool:
    return name.startswith("mmpt_") or ".mmpt_" in name or ".lora_" in name


def _bitfit(loaded: LoadedModel, config: BitFitConfig) -> ParameterSelection:
    named = {k: p for k, p in _tower_parameters(loaded, config.towers).items() if k.endswith("bias")}
    return ParameterSelection(config, named, f"no bias terms in {config.towers or 'the model'}")


def _full(loaded: LoadedModel, config: FullConfig) -> ParameterSelection:
    named = _tower_parameters(loaded, config.towers)
    frozen: set[int] = set()
    if config.freeze_embeddings:
        frozen |= {id(p) for p in loaded.model.get_input_embeddings().parameters()}
    if config.freeze_head:
        head = loaded.model.get_output_embeddings()
        frozen |= {id(p) for p in head.parameters()} if head is not None else set()
    named = {k: p for k, p in named.items() if id(p) not in frozen}
    return ParameterSelection(config, named, "everything chosen is frozen")


def _head(loaded: LoadedModel, config: HeadConfig) -> ParameterSelection:
    if not loaded.family.head:
        raise ValueError(f"model family '{loaded.family.name}' declares no output head")
    module = get_submodule(loaded.model, loaded.family.head)
    named = {f"{loaded.family.head}.{k}": p for k, p in module.named_parameters()}
    return ParameterSelection(config, named, "the head has no parameters")


register_method(MethodEntry("bitfit", BitFitConfig, _bitfit, "train bias terms only (BitFit)"))
register_method(MethodEntry("full", FullConfig, _full, "full fine-tuning (optionally embeddings/head frozen)"))
register_method(MethodEntry("head", HeadConfig, _head, "train the output layer only"))
