"""Deep prefix tuning on the tiny random mmpt-tiny: exactness, isolation, caching, saving, folding."""

import pytest
import torch

from conftest import ANSWERS, PROMPTS, make_tiny
from mmpt import methods
from mmpt.contract import cache_kwargs
from mmpt.methods import PrefixConfig


def _batch(loaded, images, answers=True):
    return loaded.processor(images, PROMPTS, ANSWERS if answers else None)


def _logits(loaded, batch, **kw):
    with torch.no_grad():
        return loaded.model(**batch, **kw).logits


def _randomize(method, std=1.0):
    with torch.no_grad():
        for p in method.parameters():
            p.normal_(0, std, generator=torch.Generator().manual_seed(1))


def test_injection_then_removal_is_bit_identical(tiny, images):
    batch = _batch(tiny, images)
    base = _logits(tiny, batch)
    method = methods.apply(tiny, PrefixConfig(length=5))
    _randomize(method)
    assert tiny.model.config._attn_implementation == "mmpt_sdpa"
    assert not torch.allclose(_logits(tiny, batch), base)
    method.remove()
    assert tiny.model.config._attn_implementation == "sdpa"
    assert torch.equal(_logits(tiny, batch), base)
    assert not any(n.startswith("mmpt_") for n, _ in tiny.model.named_parameters())


def test_only_prefix_trains_and_base_is_unchanged(tiny, images):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    method = methods.apply(tiny, PrefixConfig(length=4))
    trainable = {id(p) for p in method.parameters()}
    assert all((id(p) in trainable) == p.requires_grad for p in tiny.model.parameters())
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-2, weight_decay=0.1)
    start = [p.detach().clone() for p in method.parameters()]
    batch = _batch(tiny, images)
    tiny.model.train()
    for _ in range(3):
        loss = tiny.model(**batch, use_cache=False).loss
        loss.backward()
        for name, p in tiny.model.named_parameters():
            assert (p.grad is not None) == (id(p) in trainable), name
        optimizer.step()
        optimizer.zero_grad()
    after = tiny.model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert any(not torch.equal(a, b) for a, b in zip(start, method.parameters(), strict=True))


def test_cache_and_no_cache_agree_and_generation_matches(tiny, images):
    method = methods.apply(tiny, PrefixConfig(length=3))
    _randomize(method, 0.5)
    batch = _batch(tiny, images)
    assert torch.allclose(_logits(tiny, batch, use_cache=True), _logits(tiny, batch, use_cache=False), atol=1e-5)
    gen = _batch(tiny, images, answers=False)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tiny.processor.pad_token_id)
    with_cache = tiny.model.generate(**gen, **kw)
    without = tiny.model.generate(**gen, use_cache=False, **kw)
    assert torch.equal(with_cache, without)
    for i in range(len(images)):
        single = tiny.model.generate(**tiny.processor([images[i]], [PROMPTS[i]]), **kw)
        assert torch.equal(single[0], with_cache[i, : single.shape[1]]), i


def test_prefix_enters_the_cache_once(tiny, images):
    method = methods.apply(tiny, PrefixConfig(length=3))
    calls = []
    provider = method.injections[0].slots[0].provider
    method.injections[0].slots[0].provider = lambda: calls.append(1) or provider()
    gen = tiny.processor(images[:1], PROMPTS[:1])
    tiny.model.generate(**gen, max_new_tokens=5, do_sample=False, pad_token_id=tiny.processor.pad_token_id)
    assert len(calls) == 1  # prefill only, not once per decoding step


def test_eager_and_sdpa_agree(images):
    results = []
    for attn in ("eager", "sdpa"):
        loaded = make_tiny(attn)
        method = methods.apply(loaded, PrefixConfig(length=4))
        _randomize(method, 0.5)
        batch = _batch(loaded, images)
        results.append(_logits(loaded, batch, use_cache=False))
        results.append(_logits(loaded, batch, use_cache=True))
    for r in results[1:]:
        assert torch.allclose(results[0], r, atol=1e-4)


def test_sdpa_stays_in_use(tiny, images, monkeypatch):
    methods.apply(tiny, PrefixConfig(length=2))
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    _logits(tiny, _batch(tiny, images))
    assert len(calls) == tiny.model.config.num_hidden_layers


def test_save_and_reload_into_fresh_model(tmp_path, images):
    first = make_tiny()
    method = methods.apply(first, PrefixConfig(length=4, reparam="mlp", mlp_hidden=16))
    _randomize(method, 0.3)
    batch = _batch(first, images)
    expected = _logits(first, batch)
    path = tmp_path / "prefix.safetensors"
    methods.save(method, path, methods.fingerprint(first.model))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert all(k.startswith("encoders.") for k in f.keys())  # noqa: SIM118 - method parameters only
    fresh = make_tiny()
    methods.load(fresh, path)
    assert torch.equal(_logits(fresh, batch), expected)
    other = make_tiny(seed=1)
    with pytest.raises(ValueError, match="different base model"):
        methods.load(other, path)


def test_fold_keeps_outputs(tiny, images):
    method = methods.apply(tiny, PrefixConfig(length=4, reparam="mlp", mlp_hidden=16))
    _randomize(method, 0.3)
    batch = _batch(tiny, images)
    before = _logits(tiny, batch)
    method.fold()
    assert not any("mlp" in n for n, _ in method.named_parameters())
    assert torch.allclose(_logits(tiny, batch), before, atol=1e-6)


def test_gradient_checkpointing_and_bf16_match(images):
    grads = []
    for checkpointing in (False, True):
        loaded = make_tiny()
        method = methods.apply(loaded, PrefixConfig(length=4))
        _randomize(method, 0.3)
        if checkpointing:
            loaded.model.language_model.activation_checkpointing_enable()
        loaded.model.train()
        loaded.model(**_batch(loaded, images), use_cache=False).loss.backward()
        grads.append(next(method.parameters()).grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    loaded = make_tiny()
    method = methods.apply(loaded, PrefixConfig(length=4))
    _randomize(method, 0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loaded.model(**_batch(loaded, images), use_cache=False).loss.backward()
    bf16 = next(method.parameters()).grad
    assert torch.nn.functional.cosine_similarity(bf16.flatten(), grads[0].flatten(), dim=0) > 0.98


def test_layer_subset_and_text_init(tiny, images):
    method = methods.apply(tiny, PrefixConfig(length=3, layers=[-1], init="text", init_text="a photo"))
    assert next(method.parameters()).shape[0] == 1
    batch = _batch(tiny, images)
    assert torch.allclose(_logits(tiny, batch, use_cache=True), _logits(tiny, batch, use_cache=False), atol=1e-5)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (PrefixConfig(towers=["vision"]), "is a CNN without attention"),
        (PrefixConfig(towers=["encoder"]), "has no tower 'encoder'; it has: lm, vision"),
        (PrefixConfig(layers=[7]), "has layers 0..1; layer(s) [7] do not exist"),
    ],
)
def test_clear_errors_for_missing_towers_and_layers(tiny, config, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        methods.apply(tiny, config)


def test_fold_then_save_and_reload(tmp_path, images):
    first = make_tiny()
    method = methods.apply(first, PrefixConfig(length=3, reparam="mlp", mlp_hidden=8))
    _randomize(method, 0.3)
    method.fold()
    batch = _batch(first, images)
    expected = _logits(first, batch)
    methods.save(method, tmp_path / "p.safetensors", methods.fingerprint(first.model))
    fresh = make_tiny()
    assert methods.load(fresh, tmp_path / "p.safetensors").config.reparam == "none"
    assert torch.equal(_logits(fresh, batch), expected)


def test_cache_copy_and_reset_keep_prefix_consistent(tiny, images):
    import copy

    from transformers import DynamicCache

    method = methods.apply(tiny, PrefixConfig(length=3))
    _randomize(method, 0.5)
    batch = tiny.processor(images[:1], PROMPTS[:1])
    lm = tiny.model.language_model
    embeds = tiny.model.embed(batch["input_ids"], batch["pixel_values"])
    cache = DynamicCache()
    with torch.no_grad():
        lm(inputs_embeds=embeds[:, :-1], attention_mask=batch["attention_mask"][:, :-1], **cache_kwargs(lm, cache))
        assert cache.get_seq_length() == embeds.shape[1] - 1  # real tokens only
        copied = copy.deepcopy(cache)
        step = lm(inputs_embeds=embeds[:, -1:], attention_mask=batch["attention_mask"], **cache_kwargs(lm, copied))
        full = lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False)
        # cached and uncached paths sum in different orders: fp32 rounding, scaled to logits of size ~5
        torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], atol=1e-4, rtol=1e-4)
        cache.reset()
        again = lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"], **cache_kwargs(lm, cache))
        torch.testing.assert_close(again.logits, full.logits, atol=1e-4, rtol=1e-4)


def test_refused_second_apply_leaves_no_hooks(tiny, images):
    batch = _batch(tiny, images)
    base = _logits(tiny, batch)
    first = methods.apply(tiny, PrefixConfig(length=2))
    with pytest.raises(ValueError, match="already applied"):
        methods.apply(tiny, PrefixConfig(length=2))
    first.remove()
    assert torch.equal(_logits(tiny, batch), base)


def test_static_cache_is_refused_clearly(tiny, images):
    methods.apply(tiny, PrefixConfig(length=2))
    gen = tiny.processor(images[:1], PROMPTS[:1])
    with pytest.raises(ValueError, match="needs a dynamic KV cache"):
        tiny.model.generate(**gen, max_new_tokens=2, cache_implementation="static",
                            pad_token_id=tiny.processor.pad_token_id)
