"""mmpt's prefix reproduces PEFT's PrefixTuningConfig on a tiny Llama given the same key/value tensors."""

import pytest
import torch
from peft import PrefixTuningConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from mmpt import methods
from mmpt.methods import PrefixConfig
from mmpt.models import Family, LoadedModel, Tower

LLAMA = Family(name="llama", towers={"lm": Tower("decoder", "model", "model.layers", "self_attn", "model")})


def _llama(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=200, max_position_embeddings=128)
    config._attn_implementation = attn
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prefix_matches_peft_prefix_tuning(attn):
    length, batch, seq = 5, 2, 9
    ids = torch.randint(3, 200, (batch, seq), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, :3] = 0  # left padding in the second row
    labels = ids.masked_fill(mask == 0, -100)

    peft_model = get_peft_model(_llama(attn), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=length))
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.normal_(0, 0.5)
        peft_out = peft_model(input_ids=ids, attention_mask=mask, labels=labels)
        prompt = peft_model.get_prompt(batch_size=1)  # past key values: one (key, value) per layer

    base = _llama(attn)
    loaded = LoadedModel("llama", base, None, LLAMA)
    method = methods.apply(loaded, PrefixConfig(length=length))
    with torch.no_grad():
        for i in range(3):
            layer = prompt.layers[i] if hasattr(prompt, "layers") else None
            k, v = (layer.keys, layer.values) if layer is not None else prompt[i]
            method.encoders["lm"].prefix[i, 0] = k[0]
            method.encoders["lm"].prefix[i, 1] = v[0]
        # PEFT's tokens sit after the prefix in position: give mmpt the same position ids.
        positions = torch.arange(length, length + seq).expand(batch, -1)
        ours = base(input_ids=ids, attention_mask=mask, labels=labels, position_ids=positions, use_cache=False)
    valid = mask.bool()
    assert torch.allclose(ours.logits[valid], peft_out.logits[valid], atol=1e-5)
    assert torch.allclose(ours.loss, peft_out.loss, atol=1e-5)
