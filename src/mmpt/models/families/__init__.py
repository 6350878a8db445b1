"""Hugging Face VLM families mmpt knows: one small file each (towers + a tiny random config for tests).

Each module defines ``FAMILY`` (a :class:`~mmpt.models.family.Family`), ``build_tiny(seed)`` returning a tiny
random-initialised model, and ``tiny_inputs(model, lengths, seed)`` returning a left-padded batch for it.
"""

from __future__ import annotations

from types import ModuleType

from mmpt.models.families import (
    aya_vision,
    blip,
    blip2,
    florence2,
    gemma3,
    gemma4,
    git,
    glm4v,
    idefics2,
    idefics3,
    instructblip,
    internvl,
    janus,
    kosmos2,
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
    qwen3_5,
    qwen3_vl,
)

FAMILY_MODULES: dict[str, ModuleType] = {
    m.FAMILY.name: m
    for m in (llava, blip2, idefics3, paligemma, florence2, blip, gemma3, llava_next, llava_onevision, internvl,
              paligemma2, qwen2_vl, qwen2_5_vl, mllama, git, lfm2_vl, qwen3_vl, mistral3, idefics2, instructblip,
              aya_vision, glm4v, janus, kosmos2, qwen3_5, gemma4)
}


def _index_model_types() -> dict[str, ModuleType]:
    """``model_type`` -> family module; two families claiming one model type is an error, not a silent shadow."""
    index: dict[str, ModuleType] = {}
    for module in FAMILY_MODULES.values():
        for model_type in module.FAMILY.model_types:
            if model_type in index:
                raise ValueError(f"model type '{model_type}' is claimed by family '{index[model_type].FAMILY.name}' "
                                 f"and by '{module.FAMILY.name}'; one family per model type")
            index[model_type] = module
    return index


MODEL_TYPES = _index_model_types()


def known_family(model_type: str) -> ModuleType | None:
    """The family module whose ``FAMILY.model_types`` contains ``model_type``; None when no family file covers it
    (mmpt then derives the family from the loaded model: :mod:`mmpt.models.derive`)."""
    return MODEL_TYPES.get(model_type)


def family_for_model_type(model_type: str) -> ModuleType:
    """The family module whose ``FAMILY.model_types`` contains ``model_type``."""
    module = known_family(model_type)
    if module is not None:
        return module
    known = sorted(MODEL_TYPES)
    raise ValueError(
        f"mmpt does not know model type '{model_type}'; supported: {', '.join(known)} "
        "(docs/adding_a_family.md explains how to add one)"
    )
