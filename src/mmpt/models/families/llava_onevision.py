"""LLaVA-OneVision (SigLIP ViT on AnyRes tiles + projector + Qwen2).

Images are tiled as in LLaVA-NeXT (a base tile plus a grid on the best ``image_grid_pinpoints`` resolution,
unpadded to the original aspect ratio, a newline token per feature row); features of large grids are
downsampled to at most ``anyres_max_9`` tiles' worth. Real checkpoints: ``llava-hf/llava-onevision-qwen2-0.5b-ov-hf``
and similar.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="llava_onevision",
    model_types=("llava_onevision",),
    hf_class="LlavaOnevisionForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "model.language_model", "model.language_model.layers", "self_attn",
                    "model.language_model"),
        "vision": Tower("encoder", "model.vision_tower", "model.vision_tower.encoder.layers", "self_attn"),
    },
    projector="model.multi_modal_projector",
    head="lm_head",
    notes="SigLIP vision tower over AnyRes tiles (no CLS token: all patches kept), Qwen2 LM.",
)
IMAGE_TOKEN_ID = 999
VIDEO_TOKEN_ID = 998
TILE = 32  # the tiny vision tower's image_size: one tile
PINPOINTS = [[32, 32], [32, 64], [64, 32]]
IMAGE_SIZES = [(32, 32), (32, 48), (48, 24)]
"""Original (height, width) of the tiny batch's images, cycled over samples: 1x1, 1x2 and 2x1 tile grids."""


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    """A tiny random LLaVA-OneVision: 2-layer SigLIP (32x32 tiles, 8x8 patches) and 2-layer Qwen2."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )

    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=TILE, patch_size=8,
                                         vision_use_head=False),
        text_config=Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2),
        image_token_index=IMAGE_TOKEN_ID, video_token_index=VIDEO_TOKEN_ID, vision_feature_layer=-1,
        image_grid_pinpoints=PINPOINTS,
    )
    config._attn_implementation = attn_implementation
    return LlavaOnevisionForConditionalGeneration(config).eval()


def num_tiles(model: nn.Module, image_size: tuple[int, int]) -> int:
    """Tiles (base tile included) the model cuts an image of ``image_size`` (height, width) into."""
    from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

    config = model.config
    return int(image_size_to_num_patches(list(image_size), config.image_grid_pinpoints,
                                         config.vision_config.image_size))


def num_image_tokens(model: nn.Module, image_sizes: torch.Tensor) -> list[int]:
    """Image tokens per image, as the model packs them (``get_image_features`` on blank tiles)."""
    tiles = [num_tiles(model, (int(h), int(w))) for h, w in image_sizes.tolist()]
    side = model.config.vision_config.image_size
    param = next(model.parameters())
    pixels = torch.zeros(len(tiles), max(tiles), 3, side, side, dtype=param.dtype, device=param.device)
    with torch.no_grad():
        out = model.model.get_image_features(pixels, image_sizes.to(pixels.device))
    return [int(f.shape[0]) for f in getattr(out, "pooler_output", out)]


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """A left-padded batch: ``<image>*n text`` per sample (Qwen2 has no bos), images of different sizes
    (``image_sizes``) and ``pixel_values`` (B, max tiles, 3, 32, 32) as the processor pads them."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([IMAGE_SIZES[i % len(IMAGE_SIZES)] for i in range(len(lengths))])
    counts = num_image_tokens(model, sizes)
    rows = [[IMAGE_TOKEN_ID] * k + random_text(n, 3, 900, gen) for n, k in zip(lengths, counts, strict=True)]
    batch = left_padded(rows, 0)
    tiles = max(num_tiles(model, (int(h), int(w))) for h, w in sizes.tolist())
    batch["pixel_values"] = torch.randn(len(lengths), tiles, 3, TILE, TILE, generator=gen)
    batch["image_sizes"] = sizes
    return batch
