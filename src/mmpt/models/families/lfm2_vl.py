"""LFM2-VL (SigLIP2 NaFlex + pixel-unshuffle projector + LFM2, a hybrid LM of short-convolution and attention blocks).

Real checkpoints: ``LiquidAI/LFM2-VL-450M`` / ``LFM2-VL-1.6B``. The LM tower is ``mixed``: prefixes go into its
attention blocks only (a convolution block has no keys or values), and prompts are placed after each row's left
padding, so a convolution reads the prompt right before the first real token, as it does for a sample alone
(:mod:`mmpt.methods.prompt`).
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="lfm2_vl",
    model_types=("lfm2_vl",),
    hf_class="Lfm2VlForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model", mixed=True),
        "vision": Tower("encoder", "model.vision_tower", "model.vision_tower.encoder.layers", "self_attn"),
    },
    projector="model.multi_modal_projector",
    head="lm_head",
    notes="LFM2: gated short-convolution blocks and grouped-query attention blocks; SigLIP2 NaFlex patches.",
)
IMAGE_TOKEN_ID = 999
NUM_IMAGE_TOKENS = 4  # a 4 x 4 patch grid, pixel-unshuffled by 2


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration

    torch.manual_seed(seed)
    config = Lfm2VlConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_patches=16, patch_size=8),
        text_config=dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, block_ff_dim=128, pad_token_id=0,
                         layer_types=["conv", "full_attention", "conv"]),
        image_token_id=IMAGE_TOKEN_ID, downsample_factor=2, projector_hidden_size=64,
    )
    config._attn_implementation = attn_implementation
    return Lfm2VlForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[1] + [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + random_text(n, 2, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    batch["pixel_values"] = torch.randn(len(lengths), 16, 3 * 8 * 8, generator=gen)  # flattened 8 x 8 patches
    batch["spatial_shapes"] = torch.tensor([[4, 4]] * len(lengths))
    batch["pixel_attention_mask"] = torch.ones(len(lengths), 16, dtype=torch.long)
    return batch
