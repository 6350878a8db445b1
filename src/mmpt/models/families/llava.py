"""LLaVA (CLIP ViT + projector + Llama). Real checkpoints: ``llava-hf/llava-1.5-7b-hf`` and similar."""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="llava",
    model_types=("llava",),
    hf_class="LlavaForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model"),
        "vision": Tower("encoder", "model.vision_tower", "model.vision_tower.encoder.layers",
                        "self_attn"),
    },
    projector="model.multi_modal_projector",
    head="lm_head",
    notes="CLIP vision tower, 2-layer MLP projector, Llama LM; image tokens expand <image>.",
)
IMAGE_TOKEN_ID = 999
NUM_IMAGE_TOKENS = 16  # (32 / 8) ** 2 patches; the CLS token is dropped


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=32, patch_size=8),
        text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256,
                                pad_token_id=0),
        image_token_index=IMAGE_TOKEN_ID, vision_feature_layer=-1,
    )
    config._attn_implementation = attn_implementation
    return LlavaForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[1] + [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + random_text(n, 2, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    batch["pixel_values"] = torch.randn(len(lengths), 3, 32, 32, generator=gen)
    return batch
