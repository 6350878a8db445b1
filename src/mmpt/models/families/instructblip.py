"""InstructBLIP (ViT + instruction-aware Q-Former + Vicuna / Llama LM).

Real checkpoints: ``Salesforce/instructblip-vicuna-7b`` and similar (the Flan-T5 variants are encoder-decoders and
need a family of their own). The Q-Former reads the instruction too (``qformer_input_ids``, one row per sample, not
per token of the LM's sequence); its query outputs become the image tokens at the front of the text.
"""

from __future__ import annotations

import torch
from torch import nn

from mmpt.models.families._tiny import left_padded, random_text
from mmpt.models.family import Family, Tower

FAMILY = Family(
    name="instructblip",
    model_types=("instructblip",),
    hf_class="InstructBlipForConditionalGeneration",
    towers={
        "lm": Tower("decoder", "language_model.model", "language_model.model.layers", "self_attn",
                    "language_model.model"),
        "vision": Tower("encoder", "vision_model", "vision_model.encoder.layers", "self_attn"),
        "qformer": Tower("encoder", "qformer", "qformer.encoder.layer", "attention.attention"),
    },
    projector="language_projection",
    head="language_model.lm_head",
    notes="Q-Former conditioned on the instruction; Vicuna (Llama) LM; Q-Former self-attention is a tower.",
)
IMAGE_TOKEN_ID = 999
NUM_IMAGE_TOKENS = 4  # the Q-Former's queries
QFORMER_LENGTH = 3  # the instruction as the Q-Former reads it (never the LM's sequence length in these batches)


def build_tiny(seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

    torch.manual_seed(seed)
    config = InstructBlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            encoder_hidden_size=32, vocab_size=1000),
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256,
                         pad_token_id=0),
        num_query_tokens=NUM_IMAGE_TOKENS, image_token_index=IMAGE_TOKEN_ID,
    )
    config._attn_implementation = attn_implementation
    return InstructBlipForConditionalGeneration(config).eval()


def tiny_inputs(model: nn.Module, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [[IMAGE_TOKEN_ID] * NUM_IMAGE_TOKENS + [1] + random_text(n, 2, 900, gen) for n in lengths]
    batch = left_padded(rows, 0)
    batch["pixel_values"] = torch.randn(len(lengths), 3, 32, 32, generator=gen)
    batch["qformer_input_ids"] = torch.randint(3, 900, (len(lengths), QFORMER_LENGTH), generator=gen)
    batch["qformer_attention_mask"] = torch.ones(len(lengths), QFORMER_LENGTH, dtype=torch.long)
    return batch
