"""Idefics2 (SigLIP-style ViT + perceiver resampler connector + Mistral LM).

Real checkpoints: ``HuggingFaceM4/idefics2-8b`` and similar. The connector's perceiver resampler turns each image
into a fixed number of latents (64 in the real model), the image tokens of the text.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="idefics2",
    model_types=("idefics2",),
    hf_class="Idefics2ForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.text_model", "model.text_model.layers", "self_attn", "model.text_model"),
        "vision": Tower("encoder", "model.vision_model", "model.vision_model.encoder.layers", "self_attn"),
    },
    projector="model.connector",
    head="lm_head",
    notes="Vision transformer, perceiver-resampler connector (fixed latents per image), Mistral LM.",
)
IMAGE_TOKEN_ID = 999
NUM_IMAGE_TOKENS = 4  # the resampler's latents


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration

    torch.manual_seed(seed)
    config = Idefics2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        perceiver_config=dict(hidden_size=64, resampler_n_latents=NUM_IMAGE_TOKENS, resampler_depth=1,
                              resampler_n_heads=2, resampler_head_dim=8, num_key_value_heads=1),
        text_config=dict(model_type="mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256,
                         pad_token_id=0),
        image_token_id=IMAGE_TOKEN_ID,
    )
    config._attn_implementation = attn_implementation
    return Idefics2ForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[1] + [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + random_text(n, 2, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    batch["pixel_values"] = torch.randn(len(lengths), 1, 3, 32, 32, generator=gen)
    return batch
