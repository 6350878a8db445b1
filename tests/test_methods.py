"""Every non-prefix method on mmpt-tiny-random and on HF families: isolation, exact removal, saving, stages."""

import pytest
import torch

from conftest import ANSWERS, PROMPTS, make_tiny, randomize
from mmpt import methods, models
from mmpt.contract import ContractError
from mmpt.methods import (
    AdapterConfig,
    BitFitConfig,
    DeepPromptConfig,
    FullConfig,
    HeadConfig,
    LoRAConfig,
    M2PTConfig,
    PrefixConfig,
    ProjectorConfig,
    PromptConfig,
    VisualPromptConfig,
)
from mmpt.models.families import FAMILY_MODULES
from mmpt.models.families._tiny import tiny_row, with_positions

TINY_CASES = [
    PromptConfig(length=3),
    DeepPromptConfig(length=2, tower="lm"),
    M2PTConfig(visual_length=1, text_length=2, frame_width=8),
    LoRAConfig(r=4),
    AdapterConfig(bottleneck=8, placement="sequential"),
    AdapterConfig(bottleneck=8, placement="parallel"),
    FullConfig(towers=["lm"], freeze_embeddings=True, freeze_head=True),
    HeadConfig(),
    ProjectorConfig(),
    VisualPromptConfig(width=8),
    BitFitConfig(towers=["vision"]),
]


def _ids(config):
    return f"{config.name}-{getattr(config, 'placement', '')}".rstrip("-")


def _assert_effect_then_exact_removal(loaded, batch, base, config):
    """Applying ``config`` (nudged off its identity init) changes the logits; removing it restores them exactly."""
    method = methods.apply(loaded, config)
    _nudge(method)
    with torch.no_grad():
        assert not torch.allclose(loaded.model(**batch).logits, base)
    method.remove()
    with torch.no_grad():
        assert torch.equal(loaded.model(**batch).logits, base)


def _nudge(method):
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)) * 0.1)


@pytest.mark.parametrize("config", TINY_CASES, ids=_ids)
def test_method_on_tiny(config, images, tmp_path):
    loaded = make_tiny()
    model = loaded.model
    batch = loaded.processor(images, PROMPTS, ANSWERS)
    with torch.no_grad():
        base = model(**batch).logits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.get_input_embeddings().weight.requires_grad_(False)  # a user's own choice, which removal keeps
    trainable_before = {n: p.requires_grad for n, p in model.named_parameters()}
    if config.name == "bitfit" and not any(n.endswith("bias") for n, _ in model.named_parameters()):
        with pytest.raises(ValueError, match="found no parameters to train"):  # refused with the reason
            methods.apply(loaded, config)
        return
    method = methods.apply(loaded, config)
    trained = {id(p) for p in method.parameters()}
    assert trained and all(p.requires_grad == (id(p) in trained) for p in model.parameters())
    if config.name == "full":
        assert all(not p.requires_grad for p in model.language_model.get_input_embeddings().parameters())
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-2)
    model.train()
    for _ in range(2):
        model(**batch, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    _nudge(method)
    with torch.no_grad():
        tuned = model(**batch).logits
    assert not torch.allclose(tuned, base)
    if config.name not in ("full", "head", "projector", "bitfit", "m2pt"):  # these train base weights in place
        state = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()}  # LoRA wraps layers
        assert all(torch.equal(state[k], v) for k, v in before.items())
    path = tmp_path / "m.safetensors"
    methods.save(method, path)
    method.remove()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == trainable_before  # unfrozen as before
    reloaded = methods.load(loaded, path, strict_fingerprint=False)  # full/bitfit changed the base itself
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, tuned, atol=1e-6)
    reloaded.remove()


@pytest.mark.parametrize("family", sorted(FAMILY_MODULES))
@pytest.mark.parametrize("config", [LoRAConfig(r=2), AdapterConfig(bottleneck=4), BitFitConfig(), HeadConfig()],
                         ids=_ids)
def test_method_on_families(family, config):
    loaded = models.load(f"{family}-tiny-random")
    model = loaded.model
    batch = FAMILY_MODULES[family].tiny_inputs(model, [3, 5])
    with torch.no_grad():
        base = model(**batch).logits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.get_input_embeddings().weight.requires_grad_(False)  # a user's own choice, which removal keeps
    trainable_before = {n: p.requires_grad for n, p in model.named_parameters()}
    if config.name == "bitfit" and not any(n.endswith("bias") for n, _ in model.named_parameters()):
        with pytest.raises(ValueError, match="found no parameters to train"):  # refused with the reason
            methods.apply(loaded, config)
        return
    method = methods.apply(loaded, config)
    trained = {id(p) for p in method.parameters()}
    assert trained and all(p.requires_grad == (id(p) in trained) for p in model.parameters())
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        model(**batch, use_cache=False).logits.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    if config.name in ("lora", "adapter"):  # the others train base weights in place
        state = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items()}
        assert all(torch.equal(state[k], v) for k, v in before.items())
    method.remove()
    assert {n: p.requires_grad for n, p in model.named_parameters()} == trainable_before  # unfrozen as before
    model.load_state_dict(before)
    _assert_effect_then_exact_removal(loaded, batch, base, config)


def test_methods_compose_prefix_then_lora(images):
    loaded = make_tiny()
    batch = loaded.processor(images, PROMPTS, ANSWERS)
    with torch.no_grad():
        base = loaded.model(**batch).logits
    prefix = methods.apply(loaded, PrefixConfig(length=2))
    lora = methods.apply(loaded, LoRAConfig(r=2), freeze_base=False)
    assert all(p.requires_grad for p in prefix.parameters())
    _nudge(prefix)
    _nudge(lora)
    lora.remove()
    prefix.remove()
    with torch.no_grad():
        assert torch.equal(loaded.model(**batch).logits, base)


def test_bitfit_without_biases_says_so():
    loaded = make_tiny()
    with pytest.raises(ValueError, match="no bias terms"):
        methods.apply(loaded, BitFitConfig(towers=["lm"]))


def test_visual_prompt_rejects_wrong_image_size(images):
    loaded = make_tiny()
    methods.apply(loaded, VisualPromptConfig(width=4, image_size=64))
    batch = loaded.processor(images, PROMPTS)
    with pytest.raises(ValueError, match="set method.image_size=224"):
        loaded.model(**batch)


PROMPT_SKIPS = {  # family -> why input prompts are not in its generation matrix
    "blip": "its generate() re-feeds cached tokens: input prompts are refused (test_input_prompts_refused_...)",
    "kosmos2": "its positions count the padding in input_ids: input prompts are refused (test_input_prompts_...)",
    # the suite's 10-minute budget: the same language model class and tower paths as a family that stays
    "qwen2_5_vl": "Qwen2-VL's LM and tower paths (qwen2_vl covers them)",
    "llava_next": "LLaVA's Llama LM and tower paths (llava covers them)",
}
GENERATION_CASES = [
    (family, config)
    for family in ["mmpt-tiny", *sorted(set(FAMILY_MODULES) - set(PROMPT_SKIPS))]  # every registered family
    for config in [PromptConfig(length=3), DeepPromptConfig(length=2, tower="lm"),
                   M2PTConfig(visual_length=1, text_length=2, frame_width=8)]
    if not (family == "florence2" and config.name == "m2pt")  # no vision prompts for DaViT, no 'lm' tower
]
BASE_PADDING_INEXACT = {  # family -> why its own left-padded generation differs from a sample alone
    "florence2": "BART's learned encoder positions count the padding",
}


@pytest.mark.parametrize(("family", "config"), GENERATION_CASES, ids=lambda v: v if isinstance(v, str) else _ids(v))
def test_prompt_generation_with_cache_matches(family, config, images):
    """Greedy generation with prompts: KV cache == no cache; a left-padded batch == the sample alone."""
    if family == "mmpt-tiny":
        loaded = make_tiny()
        gen = loaded.processor(images, PROMPTS)
    else:
        loaded = models.load(f"{family}-tiny-random")
        randomize(loaded.model, 0.3, 0)
        gen = FAMILY_MODULES[family].tiny_inputs(loaded.model, [5, 2, 7])
        gen.pop("decoder_input_ids", None)
        if family == "florence2":  # prompts go into its decoder
            config = type(config)(**{**vars(config), "tower": "decoder"})
    single = getattr(FAMILY_MODULES.get(family), "tiny_row", tiny_row)(gen, 1)
    kw = dict(max_new_tokens=5, do_sample=False)
    encoder_decoder = loaded.model.config.is_encoder_decoder

    def batch_matches_single() -> bool:
        """Greedy tokens and every step's logits of sample 1 in the padded batch == the sample alone (tokens can
        agree while logits are wrong)."""
        out = dict(return_dict_in_generate=True, output_logits=True)
        batch, one = loaded.model.generate(**gen, **kw, **out), loaded.model.generate(**single, **kw, **out)
        tokens = batch.sequences[1] if encoder_decoder else batch.sequences[1, -one.sequences.shape[1]:]
        return torch.equal(tokens, one.sequences[0]) and all(
            torch.allclose(b[1], o[0], atol=1e-4) for b, o in zip(batch.logits, one.logits, strict=True))

    padding_exact = batch_matches_single()
    # never skipped silently: a base model whose padding is inexact (or a tiny config that stops early) is named
    assert padding_exact != (family in BASE_PADDING_INEXACT), f"{family}: the base model's padded generation " + (
        "matches after all" if padding_exact else "differs from the sample alone; fix the tiny config or say why")
    method = methods.apply(loaded, config)
    _nudge(method)
    cached = loaded.model.generate(**gen, **kw)
    assert torch.equal(cached, loaded.model.generate(**gen, use_cache=False, **kw))
    if padding_exact:
        assert batch_matches_single()


@pytest.mark.parametrize(("family", "reason"), [("blip", "re-feeds tokens"), ("kosmos2", "padding in input_ids")])
def test_input_prompts_refused_where_generate_refeeds_cache_or_positions_count_padding(family, reason):
    loaded = models.load(f"{family}-tiny-random")
    for config in (PromptConfig(length=2), DeepPromptConfig(length=2, tower="lm"), M2PTConfig(text_length=2)):
        with pytest.raises(ValueError, match=f"{reason}.*use prefix"):
            methods.apply(loaded, config)


def test_decoder_deep_prompts_from_layer_1_leave_layer_0_alone():
    loaded = make_tiny()
    layers = loaded.model.language_model.model.layers
    seen = []
    handle = layers[0].register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    batch = loaded.processor([torch.zeros(3, 224, 224)], ["What color?"])
    with torch.no_grad():
        base = loaded.model(**batch).logits
        method = methods.apply(loaded, DeepPromptConfig(length=2, tower="lm", layers=[1], init_scale=1.0))
        prompted = loaded.model(**batch).logits
    handle.remove()
    assert torch.equal(seen[0], seen[1])  # no prompt below the first chosen layer
    assert not torch.allclose(prompted, base)
    method.remove()
    methods.apply(loaded, DeepPromptConfig(length=2, tower="lm", layers=[0, 1])).remove()


VISION_PROMPT_SKIPS = {  # family -> why its vision tower is not in the deep-prompt / M2PT matrix
    "blip": "m2pt's text prompts are input prompts, which BLIP refuses (its generate() re-feeds cached tokens)",
    "florence2": "DaViT's layers are stages that are never called themselves: deep_prompt refuses them",
}


@pytest.mark.parametrize("family", sorted(set(FAMILY_MODULES) - set(VISION_PROMPT_SKIPS)))
def test_visual_deep_prompts_and_m2pt_on_vit_families(family):
    loaded = models.load(f"{family}-tiny-random")
    randomize(loaded.model)
    batch = with_positions(FAMILY_MODULES[family].tiny_inputs(loaded.model, [3, 5]), family)  # as mmpt's processor
    with torch.no_grad():
        base = loaded.model(**batch).logits
    _assert_effect_then_exact_removal(loaded, batch, base, DeepPromptConfig(length=2, tower="vision"))
    m2pt = M2PTConfig(visual_length=2, text_length=2)
    if loaded.family.tower("lm").no_input_prompts:  # Kosmos-2: m2pt's text prompts are input prompts
        with pytest.raises(ValueError, match="cannot take input prompts"):
            methods.apply(loaded, m2pt)
    else:
        _assert_effect_then_exact_removal(loaded, batch, base, m2pt)


def test_untrained_decoder_deep_prompts_equal_shallow_prompts(images):
    """Later layers' prompts start where layer 0's prompts arrive, so nothing of the LM is overwritten at init."""
    loaded = make_tiny()
    batch = loaded.processor(images, PROMPTS, ANSWERS)
    deep = methods.apply(loaded, DeepPromptConfig(length=3, tower="lm"))
    with torch.no_grad():
        deep_logits = loaded.model(**batch).logits
        first = deep.prompts[0].clone()
    deep.remove()
    shallow = methods.apply(loaded, PromptConfig(length=3))
    with torch.no_grad():
        shallow.prompt.copy_(first)
        # equal up to fp32 rounding: the propagated prompts were computed alone, the shallow ones inside the batch
        torch.testing.assert_close(loaded.model(**batch).logits, deep_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_answer_head_pools_real_tokens_whatever_the_order(pooling, images):
    """With an input prompt on the same tower, the head pools the same positions whether it was applied before
    or after the prompt, and a padded batch gives each sample's logits alone."""
    from mmpt.methods import AnswerHeadConfig

    head_config = AnswerHeadConfig(answers=["yes", "no", "red"], pooling=pooling)
    results = []
    for head_first in (True, False):
        loaded = make_tiny()
        torch.manual_seed(0)
        first, second = (head_config, PromptConfig(length=3)) if head_first else (PromptConfig(length=3), head_config)
        applied = [methods.apply(loaded, first), methods.apply(loaded, second)]
        head = applied[0] if head_first else applied[1]
        prompt = applied[1] if head_first else applied[0]
        with torch.no_grad():
            prompt.prompt.copy_(torch.randn(prompt.prompt.shape, generator=torch.Generator().manual_seed(1)))
            head.head.weight.copy_(torch.randn(head.head.weight.shape, generator=torch.Generator().manual_seed(2)))
            loaded.model(**loaded.processor(images, PROMPTS), use_cache=False)
            both = head.logits()
            loaded.model(**loaded.processor(images[1:], PROMPTS[1:]), use_cache=False)
            alone = head.logits()
        assert torch.allclose(both[1], alone[0], atol=1e-5)
        results.append(both)
    assert torch.allclose(results[0], results[1], atol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_answer_head_pools_real_tokens_when_prompts_go_after_the_padding(pooling):
    """LFM2's convolution blocks put prompts after each row's left padding (not in front): the head still pools
    each sample's own positions, in either order of application, padded or alone."""
    from mmpt.methods import AnswerHeadConfig

    module, results = FAMILY_MODULES["lfm2_vl"], []
    for head_first in (True, False):
        loaded = models.load("lfm2_vl-tiny-random")
        randomize(loaded.model, 0.3, 0)
        configs = [AnswerHeadConfig(answers=["yes", "no"], pooling=pooling), PromptConfig(length=3)]
        head, prompt = (methods.apply(loaded, c) for c in (configs if head_first else configs[::-1]))
        if not head_first:
            head, prompt = prompt, head
        assert prompt.adjacent  # the case under test: prompts after the padding
        with torch.no_grad():
            prompt.prompt.copy_(torch.randn(prompt.prompt.shape, generator=torch.Generator().manual_seed(1)))
            head.head.weight.copy_(torch.randn(head.head.weight.shape, generator=torch.Generator().manual_seed(2)))
            batch = module.tiny_inputs(loaded.model, [5, 2, 7])
            loaded.model(**batch, use_cache=False)
            both = head.logits()
            loaded.model(**tiny_row(batch, 1), use_cache=False)
            alone = head.logits()
        assert torch.allclose(both[1], alone[0], atol=1e-4)
        results.append(both)
    assert torch.allclose(results[0], results[1], atol=1e-5)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "mllama", "gemma3", "paligemma"])
def test_a_plain_forward_on_a_left_padded_batch_without_position_ids_is_exact_or_refused(family):
    """`model(input_ids, attention_mask)` on a left-padded batch gives no position ids (or one row of arange for
    all rows): prompts in front of the padding then sat farther from a padded row's tokens than alone (LLaVA's
    logits off by 10). They go after each row's padding instead; where a prepared mask cannot be rearranged so
    (Gemma 3, PaliGemma), the call is refused asking for position ids."""
    loaded = models.load(f"{family}-tiny-random")
    randomize(loaded.model, 0.3, 0)
    method = methods.apply(loaded, PromptConfig(length=3))
    _nudge(method)
    ids = torch.tensor([[0, 0, 2, 5, 6, 7], [2, 8, 9, 10, 11, 12]])
    mask = (ids != 0).long()
    with torch.no_grad():
        if family in ("gemma3", "paligemma"):
            with pytest.raises(ContractError, match="Pass position_ids"):
                loaded.model(input_ids=ids, attention_mask=mask)
            return
        padded = loaded.model(input_ids=ids, attention_mask=mask).logits
        alone = loaded.model(input_ids=ids[:1, 2:], attention_mask=mask[:1, 2:]).logits
    assert torch.allclose(padded[0, 2:], alone[0], atol=1e-4)


def test_m2pt_draws_every_lm_layers_prompts_with_xavier_by_default():
    """issue 17: M2PT initialised only layer 0's textual prompts with Xavier; later layers were propagated hidden
    states (up to ~1e4 on SmolLM2). The paper draws every layer with Xavier; propagation stays an option."""
    import math

    from mmpt.methods import M2PTConfig

    def text_prompts(**options) -> torch.Tensor:
        loaded = models.load("mmpt-tiny-random")
        torch.manual_seed(0)
        method = methods.apply(loaded, M2PTConfig(text_length=4, visual_length=0, **options))
        return method.parts["text"].prompts.detach().clone()

    drawn, propagated = text_prompts(), text_prompts(text_propagate_init=True)
    layers, length, width = drawn.shape
    assert layers > 1
    bound = math.sqrt(6 / (length + width))  # Xavier uniform over each layer's length x width matrix
    assert drawn.abs().max() <= bound + 1e-6
    torch.testing.assert_close(propagated[0], drawn[0])  # layer 0 is drawn either way
    assert not torch.allclose(propagated[1:], drawn[1:])


def test_visual_prompt_on_a_tower_of_flattened_patches_is_refused_at_apply():
    """issue 18: LFM2-VL's SigLIP2 NaFlex tower takes flattened patches; the frame was refused only at the first
    forward."""
    loaded = models.load("lfm2_vl-tiny-random")
    with pytest.raises(ValueError, match="flattened patches with no convolution"):
        methods.apply(loaded, VisualPromptConfig(width=2))


def test_later_layers_prompts_replace_the_prompt_columns_not_a_backbones_own_tokens():
    """issue 18 (found on the way): GIT's backbone puts its image tokens in front of the text it is given, so
    replacing the first n columns at layer 1 overwrote image tokens; the prompt's own columns are replaced now."""
    loaded = models.load("git-tiny-random")
    batch = FAMILY_MODULES["git"].tiny_inputs(loaded.model, [5, 2, 7])
    method = methods.apply(loaded, DeepPromptConfig(length=2, tower="lm", propagate_init=False, init_scale=1.0))
    seen = []
    block = loaded.model.get_submodule(loaded.family.tower("lm").layers)[1]
    handle = block.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0] if a else kw["hidden_states"]),
                                             with_kwargs=True)
    with torch.no_grad():
        loaded.model(**batch, use_cache=False)
    handle.remove()
    hidden, text = seen[0], batch["input_ids"].shape[1]
    image = hidden.shape[1] - text - 2  # image tokens, then the text with the prompt where the prefill put it
    columns = method._inner_list[0].prompt_columns + image  # (after each row's padding: no position ids given)
    placed = hidden.gather(1, columns[..., None].expand(-1, -1, hidden.shape[-1]))
    torch.testing.assert_close(placed, method.prompts[1].expand(3, -1, -1))
    assert not torch.allclose(hidden[:, :2], method.prompts[1].expand(3, -1, -1))
