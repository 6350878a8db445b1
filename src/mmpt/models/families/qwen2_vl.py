"""Qwen2-VL (ViT with 2-D RoPE over packed patches + merger + Qwen2 LM with multimodal RoPE).

Real checkpoints: ``Qwen/Qwen2-VL-2B-Instruct`` and similar. Two things differ from LLaVA-style models, both
handled by the contract (:mod:`mmpt.contract`): the vision tower's hidden states are packed ``(tokens, dim)``
for all images of a batch, delimited by ``cu_seqlens``; the LM's positions are 3-D (temporal, height, width).
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.families._tiny import tiny_row as batched_row
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="qwen2_vl",
    model_types=("qwen2_vl",),
    hf_class="Qwen2VLForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model"),
        "vision": Tower("encoder", "model.visual", "model.visual.blocks", "attn", packed=True),
    },
    projector="model.visual.merger",
    head="lm_head",
    notes="Packed vision tokens (cu_seqlens); multimodal RoPE positions (3, B, L) in the LM.",
)
IMAGE_TOKEN_ID = 999
VISION_START_ID = 997
VISION_END_ID = 998
PATCH, MERGE, TEMPORAL, SIDE = 4, 2, 2, 16
GRID = SIDE // PATCH  # 4 x 4 patches per image
NUM_IMAGE_TOKENS = GRID * GRID // (MERGE * MERGE)


def _config(model_type: str = "qwen2_vl") -> dict:
    return dict(
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=PATCH,
                           spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL, in_channels=3),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        image_token_id=IMAGE_TOKEN_ID, vision_start_token_id=VISION_START_ID, vision_end_token_id=VISION_END_ID,
    )


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen2VLConfig(**_config())
    config._attn_implementation = attn_implementation
    return Qwen2VLForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    return packed_inputs(lengths, seed, VISION_START_ID, VISION_END_ID)


def packed_inputs(lengths: list[int], seed: int, start: int, end: int) -> dict[str, torch.Tensor]:
    """A left-padded batch of one packed 16 x 16 image per sample between the ``start`` and ``end`` tokens (also
    GLM-4V's and Qwen3's layout)."""
    gen = torch.Generator().manual_seed(seed)
    rows = [[start] + [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + [end] + random_text(n, 3, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    patches = GRID * GRID
    batch["pixel_values"] = torch.randn(len(lengths) * patches, 3 * TEMPORAL * PATCH * PATCH, generator=gen)
    batch["image_grid_thw"] = torch.tensor([[1, GRID, GRID]] * len(lengths))
    batch["mm_token_type_ids"] = (batch["input_ids"] == IMAGE_TOKEN_ID).int()  # 1: image token (M-RoPE)
    return batch


def tiny_row(batch: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Sample ``i`` alone: its own patches out of the packed ``pixel_values``."""
    patches = GRID * GRID
    row = batched_row({k: v for k, v in batch.items() if k != "pixel_values"}, i)
    row["pixel_values"] = batch["pixel_values"][i * patches : (i + 1) * patches]
    return row
