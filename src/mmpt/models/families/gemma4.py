"""Gemma 4 (a ViT over flattened patches with 2-D positions, pooled + projected by ``embed_vision``; Gemma 4 LM with
sliding-window layers and per-layer token inputs).

Real checkpoints: ``google/gemma-4-E4B-it`` and similar. The LM's blocks each take a slice of ``per_layer_inputs``
(one vector per token and layer, looked up from the token ids): a per-token side input, which tokens a method
adds extend with zero rows (:data:`mmpt.contract.TOKEN_SIDE_INPUTS`); the model still adds the projection of
their embeddings. The vision tower embeds flattened patches (no convolution), so ``visual_prompt`` has no pixel
frame to pad and is refused.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="gemma4",
    model_types=("gemma4",),
    hf_class="Gemma4ForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model"),
        "vision": Tower("encoder", "model.vision_tower", "model.vision_tower.encoder.layers", "self_attn"),
    },
    projector="model.embed_vision",
    head="lm_head",
    notes="Flattened-patch ViT with 2-D positions, pooled; Gemma 4 LM with per-layer token inputs.",
)
IMAGE_TOKEN_ID, BOI, EOI = 999, 997, 998
PATCH, GRID, POOL = 4, 4, 2  # a 16 x 16 image: 4 x 4 patches, pooled 2 x 2
NUM_IMAGE_TOKENS = (GRID // POOL) ** 2


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    torch.manual_seed(seed)
    config = Gemma4Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, head_dim=8, patch_size=PATCH, pooling_kernel_size=POOL,
                           position_embedding_size=64),
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, vocab_size=1000, vocab_size_per_layer_input=1000,
                         hidden_size_per_layer_input=8, sliding_window=8, max_position_embeddings=256,
                         layer_types=["sliding_attention", "full_attention"], pad_token_id=0),
        audio_config=None, image_token_id=IMAGE_TOKEN_ID, boi_token_id=BOI, eoi_token_id=EOI, video_token_id=996,
        audio_token_id=995, boa_token_id=994, eoa_token_index=993,
    )
    config._attn_implementation = attn_implementation
    return Gemma4ForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[2, BOI] + [IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + [EOI] + random_text(n, 3, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    patches = GRID * GRID
    batch["pixel_values"] = torch.randn(len(lengths), patches, 3 * PATCH * PATCH, generator=gen)
    xy = torch.stack(torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="xy"), -1).reshape(patches, 2)
    batch["image_position_ids"] = xy.expand(len(lengths), patches, 2).clone()
    return batch
