"""Aya Vision (SigLIP ViT + pixel-shuffle projector + Cohere2 LM with sliding-window layers).

Real checkpoints: ``CohereLabs/aya-vision-8b`` and similar.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="aya_vision",
    model_types=("aya_vision",),
    hf_class="AyaVisionForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model"),
        "vision": Tower("encoder", "model.vision_tower", "model.vision_tower.encoder.layers", "self_attn"),
    },
    projector="model.multi_modal_projector",
    head="lm_head",
    notes="SigLIP tower, pixel-shuffle + SwiGLU projector, Cohere2 LM (sliding-window and global layers).",
)
IMAGE_TOKEN_ID = 999
NUM_IMAGE_TOKENS = 4  # (32 / 8) ** 2 patches, pixel-shuffled by 2


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration

    torch.manual_seed(seed)
    config = AyaVisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
        text_config=dict(model_type="cohere2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
        image_token_index=IMAGE_TOKEN_ID, downsample_factor=2, vision_feature_layer=-1,
    )
    config._attn_implementation = attn_implementation
    return AyaVisionForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[1] + [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + random_text(n, 2, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    batch["pixel_values"] = torch.randn(len(lengths), 3, 32, 32, generator=gen)
    return batch
