"""InternVL 2.5 / 3 (InternViT + pixel-shuffle MLP projector + Qwen2 or Llama), transformers-native layout.

Each image tile becomes ``image_seq_length`` ``<IMG_CONTEXT>`` tokens between ``<img>`` and ``</img>``; the
vision attention computes q/k/v separately and calls transformers' attention functions, so prefixes reach it.
Real checkpoints: ``OpenGVLab/InternVL3-1B-hf`` and similar (the ``-hf`` conversions; the original
remote-code checkpoints have another layout).
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="internvl",
    model_types=("internvl",),
    hf_class="InternVLForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model"),
        "vision": Tower("encoder", "model.vision_tower", "model.vision_tower.encoder.layer", "attention"),
    },
    projector="model.multi_modal_projector",
    head="lm_head",
    notes="InternViT (layer-scaled blocks, CLS dropped), pixel shuffle 0.5 then MLP projector; Qwen2 LM.",
)
IMAGE_TOKEN_ID = 999  # <IMG_CONTEXT>
IMAGE_START_ID = 997  # <img>
IMAGE_END_ID = 998  # </img>
NUM_IMAGE_TOKENS = 4  # (32 / 8) ** 2 patches, pixel-shuffled by 0.5 in each direction


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    """A tiny random InternVL: 2-layer InternViT (32x32 images, 8x8 patches) and 2-layer Qwen2."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration, Qwen2Config

    torch.manual_seed(seed)
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=[32, 32], patch_size=[8, 8]),
        text_config=Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False),
        image_token_id=IMAGE_TOKEN_ID, image_seq_length=NUM_IMAGE_TOKENS, downsample_ratio=0.5,
        vision_feature_layer=-1, tie_word_embeddings=False,
    )
    config._attn_implementation = attn_implementation
    return InternVLForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """A left-padded batch: ``<img> <IMG_CONTEXT>*4 </img> text`` per sample, one 32x32 tile each."""
    gen = torch.Generator().manual_seed(seed)
    image = [IMAGE_START_ID] + [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + [IMAGE_END_ID]
    rows = [image + random_text(n, 3, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    batch["pixel_values"] = torch.randn(len(lengths), 3, 32, 32, generator=gen)
    return batch
