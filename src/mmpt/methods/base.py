"""The method protocol and registry shared by all tuning methods."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

from mmpt.config import register_resolver

if TYPE_CHECKING:
    from mmpt.models import LoadedModel


@dataclass
class MethodConfig:
    """Base of every method's config; ``name`` selects the method in YAML (``method: {name: prefix, ...}``)."""

    name: str = ""

    def validate(self) -> None:
        """Check value ranges; raise ``ConfigError`` naming the key."""


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


register_resolver(MethodConfig, lambda name: get_method(name).config_cls)
