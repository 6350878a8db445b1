"""Florence-2 (DaViT + BART encoder-decoder): the seq2seq case, like OFA.

Real checkpoints: ``florence-community/Florence-2-base`` (transformers-native). Prefixes go into the encoder,
the decoder, or both — the OFA paper's "depth" presets.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="florence2",
    model_types=("florence2",),
    hf_class="Florence2ForConditionalGeneration",
    towers={
        "encoder": Tower("encoder", "model.language_model.encoder", "model.language_model.encoder.layers",
                         "self_attn"),
        "decoder": Tower("decoder", "model.language_model.decoder", "model.language_model.decoder.layers",
                         "self_attn", "model.language_model.decoder", cross_attention="encoder_attn"),
        "vision": Tower("encoder", "model.vision_tower", "model.vision_tower.blocks", "", injection="none"),
    },
    projector="model.multi_modal_projector",
    head="lm_head",
    aliases={"lm": ("encoder", "decoder"), "both": ("encoder", "decoder")},
    notes="DaViT vision tower uses window/channel attention outside the attention interface.",
)
IMAGE_TOKEN_ID = 999


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    torch.manual_seed(seed)
    config = Florence2Config(
        text_config=dict(vocab_size=1000, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                         decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                         max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                         decoder_start_token_id=2),
        vision_config=dict(embed_dim=[16, 32], depths=[1, 1], num_heads=[2, 4], num_groups=[2, 4],
                           patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                           patch_prenorm=[False, True], projection_dim=64, window_size=2),
        image_token_id=IMAGE_TOKEN_ID,
    )
    config._attn_implementation = attn_implementation
    return Florence2ForConditionalGeneration(config).eval()


def num_image_tokens(model: nn.Module) -> int:
    """Visual tokens the tiny DaViT produces for a 32x32 image."""
    with torch.no_grad():
        out = model.model.get_image_features(torch.zeros(1, 3, 32, 32))
    features = getattr(out, "pooler_output", out)
    return features.shape[1]


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n_img = num_image_tokens(model)
    rows = [[0] + [IMAGE_TOKEN_ID] * n_img + random_text(n, 3, 900, gen) + [2] for n in lengths]
    batch = left_padded(rows, 1)
    batch["pixel_values"] = torch.randn(len(lengths), 3, 32, 32, generator=gen)
    batch["decoder_input_ids"] = torch.tensor([[2, 0] + random_text(3, 3, 900, gen)] * len(lengths))
    return batch
