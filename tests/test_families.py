"""The prefix method over every supported family (tiny random models built from configs)."""

import pytest
import torch

from conftest import randomize
from mmpt import methods, models
from mmpt.methods import PrefixConfig
from mmpt.models.families import FAMILY_MODULES
from mmpt.models.families._tiny import tiny_row


def _prefix_cases() -> list[tuple[str, list[str]]]:
    """(family, towers) for every registered family: each tower whose attention takes prefixes (a tower with
    ``injection: none`` is refused: test_unsupported_towers_fail_clearly), and each distinct preset (Florence-2's
    ``lm`` = encoder + decoder, OFA's "depth")."""
    cases = []
    for name, module in sorted(FAMILY_MODULES.items()):
        family = module.FAMILY
        cases += [(name, [t]) for t, spec in family.towers.items() if spec.kind != "cnn" and spec.injection != "none"]
        presets: set[tuple[str, ...]] = set()
        for alias, expansion in family.aliases.items():
            if expansion not in presets:
                presets.add(expansion)
                cases.append((name, [alias]))
    return cases


CASES = _prefix_cases()

# Gemma 2 cannot run SDPA (no logit softcapping there): its LM is eager; transformers implements GIT eager only
EAGER_ONLY = [("paligemma2", ["lm"]), ("git", ["lm"]), ("git", ["vision"])]


BASE_PADDING_INEXACT = {  # family -> why its own left-padded generation differs from each sample alone
    "florence2": "BART's learned encoder positions count the padding",
    "blip": "its BERT decoder's absolute positions count the padding",
    "git": "its text positions are counted past the padding",
}


def _load(name, seed=0):
    loaded = models.load(f"{name}-tiny-random", seed=seed)
    randomize(loaded.model, 0.3, seed)
    return loaded, FAMILY_MODULES[name]


def _logits(model, batch, **kw):
    with torch.no_grad():
        return model(**batch, **kw).logits


def _row(batch, i, module=None):
    """Sample ``i`` of a left-padded batch, padding removed (the family's own ``tiny_row`` where it has one)."""
    return getattr(module, "tiny_row", tiny_row)(batch, i)


def _randomize(method):
    with torch.no_grad():
        for p in method.parameters():
            p.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(("family", "towers"), CASES, ids=lambda v: v if isinstance(v, str) else "+".join(v))
def test_prefix_matrix(family, towers):
    loaded, module = _load(family)
    model = loaded.model
    batch = module.tiny_inputs(model, [5, 2, 7])
    base = _logits(model, batch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen_inputs = {k: v for k, v in batch.items() if k != "decoder_input_ids"}
    kw = dict(max_new_tokens=4, do_sample=False)

    def batch_matches_single() -> bool:
        cached = model.generate(**gen_inputs, **kw)
        one = model.generate(**_row(gen_inputs, 1, module), **kw)
        row = cached[1, -one.shape[1]:] if not model.config.is_encoder_decoder else cached[1]
        return torch.equal(row, one[0])

    # some base models' own left-padded outputs differ from one-by-one (BASE_PADDING_INEXACT); check where the base
    # model agrees, logits included, and never skip silently
    padding_exact = batch_matches_single()
    if padding_exact and not model.config.is_encoder_decoder:
        one_logits = _logits(model, _row(gen_inputs, 1, module))[0, -1]
        padding_exact = torch.allclose(_logits(model, gen_inputs)[1, -1], one_logits, atol=1e-4)
    assert padding_exact != (family in BASE_PADDING_INEXACT), f"{family}: the base model's padded generation " + (
        "matches after all" if padding_exact else "differs from the sample alone; fix the tiny config or say why")

    method = methods.apply(loaded, PrefixConfig(length=3, towers=towers))
    _randomize(method)
    with_prefix = _logits(model, batch, use_cache=False)
    assert not torch.allclose(with_prefix, base), "the prefix changed nothing"
    assert torch.allclose(_logits(model, batch, use_cache=True), with_prefix, atol=1e-5)

    # only the prefix trains; base weights stay bit-identical after optimizer steps
    trainable = {id(p) for p in method.parameters()}
    assert all(p.requires_grad == (id(p) in trainable) for p in model.parameters())
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(2):
        model(**batch, use_cache=False).logits.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before.items())

    # greedy generation: KV cache == no cache; a left-padded batch == samples one by one
    cached = model.generate(**gen_inputs, **kw)
    assert torch.equal(cached, model.generate(**gen_inputs, use_cache=False, **kw))
    if padding_exact:
        assert batch_matches_single()

    method.remove()
    if family != "blip":  # BLIP's generate() leaves state behind in the HF model itself (not mmpt's)
        assert torch.equal(_logits(model, batch), base)
    assert not any(n.startswith("mmpt_") for n, _ in model.named_parameters())
    assert not any(str(getattr(getattr(m, "config", None), "_attn_implementation", "")).startswith("mmpt_")
                   for m in model.modules())  # shared configs (Florence-2's encoder+decoder) restored too


@pytest.mark.parametrize("family", ["florence2", "blip2"])
def test_save_load_roundtrip_and_fold(tmp_path, family):
    loaded, module = _load(family)
    method = methods.apply(loaded, PrefixConfig(length=2, towers=["lm"], reparam="mlp_type", mlp_hidden=8))
    _randomize(method)
    batch = module.tiny_inputs(loaded.model, [4, 6])
    expected = _logits(loaded.model, batch)
    path = tmp_path / "p.safetensors"
    methods.save(method, path, methods.fingerprint(loaded.model))
    fresh, _ = _load(family)
    methods.load(fresh, path)
    assert torch.equal(_logits(fresh.model, batch), expected)
    method.fold()
    assert torch.allclose(_logits(loaded.model, batch), expected, atol=1e-6)


def test_cross_attention_prefix(tmp_path):
    loaded, module = _load("florence2")
    batch = module.tiny_inputs(loaded.model, [4, 6])
    base = _logits(loaded.model, batch)
    method = methods.apply(loaded, PrefixConfig(length=2, towers=["decoder"], layers=[0], cross_attention=True))
    assert set(method.encoders) == {"decoder", "decoder_cross"}
    _randomize(method)
    assert torch.allclose(_logits(loaded.model, batch, use_cache=True), _logits(loaded.model, batch, use_cache=False),
                          atol=1e-5)
    method.remove()
    assert torch.equal(_logits(loaded.model, batch), base)


@pytest.mark.parametrize("family", sorted(set(FAMILY_MODULES) - {"blip", "git", "florence2"}))  # their own rows
def test_lm_prefix_with_eager_attention(family):
    """Eager attention goes through mmpt's eager wrapper (additive masks): the prefix gives what it gives under
    SDPA, generation with the KV cache equals generation without, and removal restores the model exactly."""
    module = FAMILY_MODULES[family]
    logits = {}
    for attn in ("sdpa", "eager"):
        loaded = models.load(f"{family}-tiny-random", attn_implementation=attn)
        randomize(loaded.model, 0.3, 0)
        model = loaded.model
        batch = module.tiny_inputs(model, [3, 5])
        base = _logits(model, batch)
        method = methods.apply(loaded, PrefixConfig(length=2, towers=["lm"]))
        _randomize(method)
        logits[attn] = _logits(model, batch, use_cache=False)
        if attn == "sdpa":
            continue
        lm = model.get_submodule(loaded.family.tower("lm").module)
        assert lm.config._attn_implementation == "mmpt_eager"
        kw = dict(max_new_tokens=3, do_sample=False)
        assert torch.equal(model.generate(**batch, **kw), model.generate(**batch, use_cache=False, **kw))
        method.remove()
        assert lm.config._attn_implementation == "eager"
        assert torch.equal(_logits(model, batch), base)
    assert not torch.allclose(logits["eager"], base)
    assert torch.allclose(logits["eager"], logits["sdpa"], atol=1e-4)


@pytest.mark.parametrize(
    ("family", "towers", "message"),
    [
        ("blip", ["vision"], "outside transformers' attention functions"),
        ("florence2", ["vision"], "outside transformers' attention functions"),
        ("llava", ["qformer"], "has no tower 'qformer'; it has: lm, vision"),
    ],
)
def test_unsupported_towers_fail_clearly(family, towers, message):
    loaded, _ = _load(family)
    with pytest.raises(ValueError, match=message):
        methods.apply(loaded, PrefixConfig(towers=towers))
    assert loaded.model.config._attn_implementation in ("sdpa", "eager")


def test_unknown_family_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "no_such_vlm"}')
    with pytest.raises(ValueError, match="model type 'no_such_vlm' has no family file and the config names no "
                                         "'architectures'"):
        models.load(str(tmp_path))


# BLIP and GIT: no SDPA in transformers; GIT's embeddings also add positions in place, which transformers'
# gradient-checkpointing input hook rejects ("a leaf Variable that requires grad"), with or without mmpt.
# Vision towers: one plain ViT (LLaVA's CLIP), one packed (Qwen2-VL), one rotary (Pixtral) and BLIP-2's Q-Former
# path stand for the rest (the suite's 10-minute budget); every language model and preset is checked.
CHECKPOINTING_VISION = {("llava", "vision"), ("qwen2_vl", "vision"), ("mistral3", "vision"), ("blip2", "qformer")}
CHECKPOINTING_CASES = [c for c in CASES if c[0] not in ("blip", "git")
                       and (c[1][0] not in ("vision", "qformer") or (c[0], c[1][0]) in CHECKPOINTING_VISION)]


@pytest.mark.parametrize(("family", "towers"), CHECKPOINTING_CASES,
                         ids=lambda v: v if isinstance(v, str) else "+".join(v))
def test_prefix_checkpointing_bf16_cache_once_and_sdpa(family, towers, monkeypatch):
    grads = []
    for checkpointing in (False, True):
        loaded, module = _load(family)
        model = loaded.model
        method = methods.apply(loaded, PrefixConfig(length=3, towers=towers))
        _randomize(method)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        batch = module.tiny_inputs(model, [5, 2, 7])
        model(**batch, use_cache=False).logits.float().pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in method.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)

    model.eval()
    # bf16 autocast follows fp32 gradients (on the default small-init weights: random 0.3-std ones are chaotic)
    mild = models.load(f"{family}-tiny-random")
    mild_method = methods.apply(mild, PrefixConfig(length=3, towers=towers))
    mild_batch = module.tiny_inputs(mild.model, [5, 2, 7])
    mild_grads = []
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            mild.model(**mild_batch, use_cache=False).logits.float().pow(2).mean().backward()
        mild_grads.append(torch.cat([p.grad.flatten() for p in mild_method.parameters()]))
        for p in mild_method.parameters():
            p.grad = None
    assert torch.nn.functional.cosine_similarity(mild_grads[0], mild_grads[1], dim=0) > 0.95

    # SDPA stays SDPA, through mmpt's wrapper (eager stays eager where the tower has no SDPA path: Gemma 2)
    allowed = ("mmpt_sdpa", "sdpa", *(("mmpt_eager",) if (family, towers) in EAGER_ONLY else ()))
    assert all(getattr(m, "config", None) is None or m.config._attn_implementation in allowed
               for inj in method.injections for m in inj.modules)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    _logits(model, batch)
    assert calls

    # during generation each prefixed decoder layer writes its prefix into the cache once (at prefill)
    decoder_slots = [s for inj in method.injections for s in inj.slots if s.layer_idx is not None]
    if decoder_slots and any(loaded.family.tower(t).kind == "decoder" for t in loaded.family.resolve(towers)):
        reads = []
        for slot in decoder_slots:
            original = slot.provider
            slot.provider = lambda original=original: reads.append(1) or original()
        gen_inputs = {k: v for k, v in batch.items() if k != "decoder_input_ids"}
        model.generate(**gen_inputs, max_new_tokens=5, do_sample=False)
        assert len(reads) == len(decoder_slots)
