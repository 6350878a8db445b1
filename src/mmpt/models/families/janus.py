"""Janus (SigLIP ViT + MLP aligner + Llama LM; a VQ tokenizer for image generation, unused for understanding).

Real checkpoints: ``deepseek-community/Janus-Pro-1B`` and similar. mmpt tunes Janus's understanding path: image in,
text out.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="janus",
    model_types=("janus",),
    hf_class="JanusForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model"),
        "vision": Tower("encoder", "model.vision_model", "model.vision_model.encoder.layers", "self_attn"),
    },
    projector="model.aligner",
    head="lm_head",
    notes="SigLIP tower, MLP aligner, Llama LM; the VQ image generator is not tuned.",
)
IMAGE_TOKEN_ID = 999
NUM_IMAGE_TOKENS = 4  # (16 / 8) ** 2 patches


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import JanusConfig, JanusForConditionalGeneration

    torch.manual_seed(seed)
    config = JanusConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=16, patch_size=8, projection_dim=64, depth=1),
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256,
                         pad_token_id=0),
        vq_config=dict(embed_dim=8, num_embeddings=16, base_channels=32, channel_multiplier=[1, 1],
                       num_res_blocks=1, projection_dim=64, image_token_embed_dim=64, num_hidden_layers=1,
                       hidden_size=64, num_patches=2),
        image_token_id=IMAGE_TOKEN_ID,
    )
    config._attn_implementation = attn_implementation
    return JanusForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[1] + [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + random_text(n, 2, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    batch["pixel_values"] = torch.randn(len(lengths), 3, 16, 16, generator=gen)
    return batch
