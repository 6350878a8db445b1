"""PaliGemma 2 (SigLIP + linear projector + Gemma 2: sliding-window and global layers alternate).

Real PaliGemma 2 checkpoints (``google/paligemma2-3b-pt-224`` and similar) have model type ``paligemma`` and load
through the ``paligemma`` family, whose towers are the same; this family covers no model type. It exists so that
the test matrix runs a PaliGemma with a Gemma 2 text tower: sliding-window cache layers, attention logit
softcapping and a ``{"full_attention", "sliding_attention"}`` dict of masks.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from mmpt.models.families import paligemma
from mmpt.models.family import Family

FAMILY: Family = replace(
    paligemma.FAMILY,
    name="paligemma2",
    model_types=(),
    notes="PaliGemma with a Gemma 2 LM (alternating sliding-window / global layers); real checkpoints load as "
    "'paligemma'. Prefix-LM: token_type_ids 0 mark the bidirectional image+prompt part.",
)
IMAGE_TOKEN_ID = paligemma.IMAGE_TOKEN_ID
NUM_IMAGE_TOKENS = paligemma.NUM_IMAGE_TOKENS
SLIDING_WINDOW = 16
"""Shorter than the tiny batches (16 image tokens + prompt + generated tokens), so the window matters."""


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    """A tiny random PaliGemma 2: 2-layer SigLIP (32x32 images, 8x8 patches) and 2-layer Gemma 2 whose first layer
    attends within a sliding window. ``attn_implementation`` applies to the vision tower; the LM is always eager."""
    from transformers import Gemma2Config, PaliGemmaConfig, PaliGemmaForConditionalGeneration

    torch.manual_seed(seed)
    config = PaliGemmaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=64),
        text_config=Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, vocab_size=1000,
                                 pad_token_id=0, sliding_window=SLIDING_WINDOW,
                                 layer_types=["sliding_attention", "full_attention"]),
        image_token_index=IMAGE_TOKEN_ID, projection_dim=64,
    )
    config._attn_implementation = attn_implementation
    # Gemma 2 has no SDPA path (SDPA cannot softcap attention logits): its LM runs eager, as from_pretrained
    # chooses for real PaliGemma 2 checkpoints
    config.text_config._attn_implementation = "eager"
    return PaliGemmaForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """PaliGemma's batch layout: ``<image>*16 <bos> text``, ``token_type_ids`` 0 over image + prompt."""
    return paligemma.tiny_inputs(model, lengths, seed)
