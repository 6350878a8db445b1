"""Gemma 3 (SigLIP + average-pooled projector + Gemma 3 with sliding-window attention in 5 of 6 layers).

Real checkpoints: ``google/gemma-3-4b-it`` and similar. The language model receives a dict of masks (full and
sliding window) and builds a cache with sliding-window layers; prefixes stay visible in every layer for the
whole generation (they never slide out of the window).
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="gemma3",
    model_types=("gemma3",),
    hf_class="Gemma3ForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model"),
        "vision": Tower("encoder", "model.vision_tower", "model.vision_tower.encoder.layers",
                        "self_attn"),
    },
    projector="model.multi_modal_projector",
    head="lm_head",
    notes="Gemma 3 LM with sliding-window layers (window 512 in real checkpoints); image tokens attend "
          "bidirectionally to each other.",
)
IMAGE_TOKEN_ID = 999
BOI_TOKEN_ID = 997
EOI_TOKEN_ID = 998
NUM_IMAGE_TOKENS = 4  # (32 / 8) ** 2 = 16 patches, average-pooled to 2 x 2
SLIDING_WINDOW = 6  # shorter than the test prompts, so the window really slides


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    torch.manual_seed(seed)
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=32, patch_size=8),
        text_config=Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                     num_attention_heads=4, num_key_value_heads=1, head_dim=16, vocab_size=1000,
                                     pad_token_id=0, sliding_window=SLIDING_WINDOW,
                                     layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                     max_position_embeddings=256),
        mm_tokens_per_image=NUM_IMAGE_TOKENS, image_token_index=IMAGE_TOKEN_ID, boi_token_index=BOI_TOKEN_ID,
        eoi_token_index=EOI_TOKEN_ID,
    )
    config._attn_implementation = attn_implementation
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # transformers initializes the projection to zeros: images would change nothing
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.2)
    return model


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[2, BOI_TOKEN_ID] + [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + [EOI_TOKEN_ID] + random_text(n, 3, 900, gen)
            for n in lengths]
    batch = left_padded(rows, 0)
    batch["pixel_values"] = torch.randn(len(lengths), 3, 32, 32, generator=gen)
    batch["token_type_ids"] = (batch["input_ids"] == IMAGE_TOKEN_ID).long()
    return batch
