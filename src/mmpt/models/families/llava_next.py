"""LLaVA-NeXT / LLaVA-1.6 (CLIP ViT on AnyRes tiles + projector + Llama/Mistral/Vicuna).

An image is split into tiles on the best-fitting ``image_grid_pinpoints`` resolution plus one downscaled base
tile; the model unpads the tile grid to the original aspect ratio (``image_sizes``) and appends a learned
newline token per feature row, so the number of image tokens depends on each image's size. Real checkpoints:
``llava-hf/llava-v1.6-mistral-7b-hf`` and similar.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="llava_next",
    model_types=("llava_next",),
    hf_class="LlavaNextForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model"),
        "vision": Tower("encoder", "model.vision_tower", "model.vision_tower.encoder.layers", "self_attn"),
    },
    projector="model.multi_modal_projector",
    head="lm_head",
    notes="CLIP vision tower over AnyRes tiles (base tile + grid), unpadded features with newline tokens.",
)
IMAGE_TOKEN_ID = 999
TILE = 32  # the tiny vision tower's image_size: one tile
PINPOINTS = [[32, 32], [32, 64], [64, 32]]
IMAGE_SIZES = [(32, 32), (32, 48), (48, 24)]
"""Original (height, width) of the tiny batch's images, cycled over samples: 1x1, 1x2 and 2x1 tile grids."""


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    """A tiny random LLaVA-NeXT: 2-layer CLIP (32x32 tiles, 8x8 patches) and 2-layer Llama."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    torch.manual_seed(seed)
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=TILE, patch_size=8),
        text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256,
                                pad_token_id=0),
        image_token_index=IMAGE_TOKEN_ID, vision_feature_layer=-1, image_grid_pinpoints=PINPOINTS,
    )
    config._attn_implementation = attn_implementation
    return LlavaNextForConditionalGeneration(config).eval()


def num_tiles(model: nn.Module, image_size: tuple[int, int]) -> int:
    """Tiles (base tile included) the model cuts an image of ``image_size`` (height, width) into."""
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    config = model.config
    return int(image_size_to_num_patches(list(image_size), config.image_grid_pinpoints,
                                         config.vision_config.image_size))


def num_image_tokens(model: nn.Module, image_sizes: torch.Tensor) -> list[int]:
    """Image tokens per image, as the model packs them (``get_image_features`` on blank tiles)."""
    tiles = [num_tiles(model, (int(h), int(w))) for h, w in image_sizes.tolist()]
    side = model.config.vision_config.image_size
    pixels = torch.zeros(len(tiles), max(tiles), 3, side, side, dtype=next(model.parameters()).dtype,
                         device=next(model.parameters()).device)
    with torch.no_grad():
        out = model.model.get_image_features(pixels, image_sizes.to(pixels.device))
    return [int(f.shape[0]) for f in getattr(out, "pooler_output", out)]


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """A left-padded batch: ``<s> <image>*n text`` per sample, images of different sizes (``image_sizes``) and
    ``pixel_values`` (B, max tiles, 3, 32, 32) as LLaVA-NeXT's processor pads them."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([IMAGE_SIZES[i % len(IMAGE_SIZES)] for i in range(len(lengths))])
    counts = num_image_tokens(model, sizes)
    rows = [[1] + [IMAGE_TOKEN_ID] * k + random_text(n, 2, 900, gen) for n, k in zip(lengths, counts, strict=True)]
    batch = left_padded(rows, 0)
    tiles = max(num_tiles(model, (int(h), int(w))) for h, w in sizes.tolist())
    batch["pixel_values"] = torch.randn(len(lengths), tiles, 3, TILE, TILE, generator=gen)
    batch["image_sizes"] = sizes
    return batch
