"""Model registry: ``load(name)`` returns a :class:`LoadedModel`; ``list_models()`` names what is available."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from mmpt.models.family import Family, Tower, attention_modules, get_submodule
from mmpt.models.vlm import VisionLanguageModel, VLMProcessor


@dataclass
class LoadedModel:
    """A model ready for tuning: the module, its processor, and the family that says where to inject."""

    name: str
    model: nn.Module
    processor: Any
    family: Family


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build it, its family and a one-line description.

    ``not_runnable`` is empty when ``mmpt train``/``eval``/``predict`` can use the model, else why not (e.g. a
    random model built from a config has no tokenizer): such entries serve the Python API and the test matrix.
    """

    name: str
    builder: Callable[..., tuple[nn.Module, VLMProcessor]]
    family: Family
    description: str
    not_runnable: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> None:
    """Add a model to the registry (names are unique)."""
    if entry.name in _REGISTRY:
        raise ValueError(f"model '{entry.name}' is already registered")
    _REGISTRY[entry.name] = entry


def list_models() -> list[ModelEntry]:
    """All registered models, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def load(name: str, **kwargs: Any) -> LoadedModel:
    """Load a model: a registered name (``load("mmpt-tiny")``), a local checkpoint folder, or a hub id that is
    already in the local HF cache (``load("llava-hf/llava-1.5-7b-hf")``). Nothing is downloaded.

    Keyword arguments go to the builder (registered models) or to ``from_pretrained`` (checkpoints).
    """
    if name in _REGISTRY:
        entry = _REGISTRY[name]
        model, processor = entry.builder(**kwargs)
        return LoadedModel(name=name, model=model, processor=processor, family=entry.family)
    from mmpt.models.hf import load_pretrained, resolve_local

    folder = resolve_local(name)
    if folder is None:
        raise ValueError(
            f"unknown model '{name}': not a registered model ({', '.join(sorted(_REGISTRY))}), not a local "
            "folder, and not in the local Hugging Face cache (mmpt never downloads; fetch it with "
            "`huggingface-cli download` on a connected machine first)"
        )
    model, processor, family = load_pretrained(folder, **kwargs)
    return LoadedModel(name=name, model=model, processor=processor, family=family)


def _register_builtin() -> None:
    from mmpt.models import tiny, tiny_gemma3
    from mmpt.models.families import FAMILY_MODULES

    register_model(ModelEntry(
        "mmpt-tiny", tiny.load_tiny, tiny.FAMILY,
        "EfficientNet-Lite0 + MLP projector + SmolLM2-135M-Instruct; embedded, offline, pretrained projector",
    ))
    register_model(ModelEntry(
        "mmpt-tiny-random", tiny.load_tiny_random, tiny.FAMILY,
        "mmpt-tiny's architecture with a random 2-layer LM and random vision tower (tests)",
    ))
    register_model(ModelEntry(
        "mmpt-tiny-gemma3", tiny_gemma3.load_tiny_gemma3, tiny_gemma3.FAMILY,
        "EfficientNet-Lite0 + MLP projector + Gemma-3-270M (base, sliding window); pretrained projector; needs "
        "`make install-gemma3`",
    ))
    for fam_name, module in FAMILY_MODULES.items():
        register_model(ModelEntry(
            f"{fam_name}-tiny-random",
            lambda seed=0, _m=module, **kw: (_m.build_tiny(seed, **kw), None),
            module.FAMILY,
            f"tiny random-initialised {fam_name} (tests); real checkpoints load by path or hub id",
            not_runnable="built from a config without a tokenizer or processor (for the method x family tests and the "
                         f"Python API); train a real {fam_name} checkpoint by its folder or cached hub id instead",
        ))


_register_builtin()

__all__ = [
    "Family", "LoadedModel", "ModelEntry", "Tower", "VLMProcessor", "VisionLanguageModel",
    "attention_modules", "get_submodule", "list_models", "load", "register_model",
]
