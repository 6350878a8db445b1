"""The base of every method's config, importable without torch: ``mmpt.runconfig`` parses and checks a whole
config with only this, so a config or CLI error answers before the heavy imports (transformers, torch). The
method registry itself (:mod:`mmpt.methods`) loads when a method section is converted: config errors elsewhere are
found first (:func:`mmpt.config.from_dict` converts polymorphic sections last)."""

from __future__ import annotations

from dataclasses import dataclass

from mmpt.config import register_resolver


@dataclass
class MethodConfig:
    """Base of every method's config; ``name`` selects the method in YAML (``method: {name: prefix, ...}``)."""

    name: str = ""

    def validate(self) -> None:
        """Check value ranges; raise ``ConfigError`` naming the key."""


def method_config_class(name: str) -> type[MethodConfig]:
    """The config class of registered method ``name`` (imports the method registry); ValueError lists the
    known methods."""
    from mmpt.methods import get_method

    return get_method(name).config_cls


register_resolver(MethodConfig, method_config_class)
