"""Hugging Face VLM families mmpt knows: one small file each (towers + a tiny random config for tests).

Each module defines ``FAMILY`` (a :class:`~mmpt.models.family.Family`), ``build_tiny(seed)`` returning a tiny
random-initialised model, and ``tiny_inputs(model, lengths, seed)`` returning a left-padded batch for it.
"""

from __future__ import annotations

from types import ModuleType

from mmpt.models.families import (
    blip,
    blip2,
    florence2,
    gemma3,
    git,
    idefics3,
    internvl,
    lfm2_vl,
    llava,
    llava_next,
    llava_onevision,
    mistral3,
    mllama,
    paligemma,
    paligemma2,
    qwen2_5_vl,
    qwen2_vl,
    qwen3_vl,
)

FAMILY_MODULES: dict[str, ModuleType] = {
    m.FAMILY.name: m
    for m in (llava, blip2, idefics3, paligemma, florence2, blip, gemma3, llava_next, llava_onevision, internvl,
              paligemma2, qwen2_vl, qwen2_5_vl, mllama, git, lfm2_vl, qwen3_vl, mistral3)
}


def family_for_model_type(model_type: str) -> ModuleType:
    """The family module whose ``FAMILY.model_types`` contains ``model_type``."""
    for module in FAMILY_MODULES.values():
        if model_type in module.FAMILY.model_types:
            return module
    known = sorted(t for m in FAMILY_MODULES.values() for t in m.FAMILY.model_types)
    raise ValueError(
        f"mmpt does not know model type '{model_type}'; supported: {', '.join(known)} "
        "(docs/adding_a_family.md explains how to add one)"
    )
