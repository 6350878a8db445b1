"""The method protocol and registry shared by all tuning methods."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

from mmpt.method_configs import MethodConfig, register_config

if TYPE_CHECKING:
    from mmpt.models import LoadedModel

__all__ = ["MethodConfig", "Method", "MethodEntry", "register_method", "get_method", "list_methods", "apply"]


@runtime_checkable
class Method(Protocol):
    """An applied tuning method: owns its trainable parameters and can be saved, reloaded and removed."""

    config: MethodConfig

    def parameters(self) -> Iterator[nn.Parameter]:
        """The parameters this method trains."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Method parameters only (no base-model weights)."""
        ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`state_dict` returned."""
        ...

    def remove(self) -> None:
        """Undo the injection: the model computes exactly what it did before ``apply``."""
        ...


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its config class, the function that applies it and a one-line description."""

    name: str
    config_cls: type[MethodConfig]
    apply: Callable[[LoadedModel, MethodConfig], Method]
    description: str


_METHODS: dict[str, MethodEntry] = {}


def register_method(entry: MethodEntry) -> None:
    """Add a method to the registry (``mmpt methods`` lists it)."""
    if entry.name in _METHODS:
        raise ValueError(f"method '{entry.name}' is already registered")
    _METHODS[entry.name] = entry
    register_config(entry.name, entry.config_cls)


def get_method(name: str) -> MethodEntry:
    """The registered method ``name``; the error lists the known ones."""
    if name not in _METHODS:
        raise ValueError(f"unknown method '{name}'; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> list[MethodEntry]:
    """All registered methods, sorted by name."""
    return [_METHODS[k] for k in sorted(_METHODS)]


def detach_from_model(method: object) -> None:
    """Undo what :func:`mmpt.methods.apply` attached for ``method`` (its ``mmpt_<name>`` submodule), if anything."""
    detach = getattr(method, "detach_from_model", None)
    if detach is not None:
        detach()
        del method.detach_from_model  # type: ignore[attr-defined]


def apply(loaded: LoadedModel, config: MethodConfig, freeze_base: bool = True) -> Method:
    """Inject ``config``'s method into ``loaded.model``; with ``freeze_base`` only the method trains. Removing the
    method gives the frozen parameters their ``requires_grad`` back."""
    frozen = [p for p in loaded.model.parameters() if p.requires_grad] if freeze_base else []
    for p in frozen:
        p.requires_grad_(False)
    entry = get_method(config.name)
    attach_name = f"{ATTACH_PREFIX}{config.name}"
    if hasattr(loaded.model, attach_name):
        raise ValueError(f"method '{config.name}' is already applied to this model; remove it first")
    method = entry.apply(loaded, config)
    for p in method.parameters():
        p.requires_grad_(True)
    if isinstance(method, torch.nn.Module):
        method.train(loaded.model.training)  # e.g. prefix dropout follows the model's mode
    attached = isinstance(method, torch.nn.Module) and getattr(method, "attach", True)
    if attached:
        # Attach so that .to(device), DDP and optimizer sharding see the method's parameters.
        loaded.model.add_module(attach_name, method)

    def detach() -> None:
        if attached:
            delattr(loaded.model, attach_name)
        for p in frozen:
            p.requires_grad_(True)

    method.detach_from_model = detach  # type: ignore[attr-defined]
    return method


ATTACH_PREFIX = "mmpt_"
