"""All-candidate ranking: prompt reuse (KV cache / encoder output shared by the candidates) gives the scores of
one full forward pass per (sample, candidate), on every family, with tuning methods applied."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_tiny, randomize
from mmpt import methods
from mmpt.data import Sample
from mmpt.methods import DeepPromptConfig, M2PTConfig, PrefixConfig, PromptConfig
from mmpt.models import LoadedModel
from mmpt.models.families import FAMILY_MODULES
from mmpt.tasks.vqa import can_reuse_prompt, candidate_scores, rank_candidates
from test_hf_processor import build

CANDIDATES = ["blue", "no", "yes it is", "red", "a big green circle"]
CASES = [
    ("mmpt-tiny", None), ("mmpt-tiny", PrefixConfig(length=3)), ("mmpt-tiny", PromptConfig(length=2)),
    ("mmpt-tiny", DeepPromptConfig(length=2, tower="lm")), ("mmpt-tiny", M2PTConfig(text_length=2, visual_length=2)),
    ("llava", PrefixConfig(length=3)), ("llava", M2PTConfig(text_length=2, visual_length=2)),
    ("idefics3", PromptConfig(length=2)), ("paligemma", DeepPromptConfig(length=2, tower="lm")),
    ("paligemma", PrefixConfig(length=3)), ("blip2", PromptConfig(length=2)),
    ("florence2", PrefixConfig(length=3, towers=["both"])), ("florence2", PromptConfig(length=2, tower="decoder")),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)


def _loaded(family: str, base_tokenizer) -> LoadedModel:
    if family == "mmpt-tiny":
        return make_tiny()
    model, hp = build(base_tokenizer, family)
    randomize(model, 0.3, 0)
    return LoadedModel(f"{family}-test", model, hp, FAMILY_MODULES[family].FAMILY)


@pytest.mark.parametrize(("family", "config"), CASES, ids=lambda v: v if isinstance(v, str) else str(v and v.name))
def test_prompt_reuse_equals_full_forward(family, config, base_tokenizer, image):
    loaded = _loaded(family, base_tokenizer)
    if config is not None:
        method = methods.apply(loaded, config)
        with torch.no_grad():
            for p in method.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)) * 0.1)
    samples = [Sample(image=image, prompt="what color is the shape?", target="blue")]
    if family in ("mmpt-tiny", "llava"):  # multi-turn: only the final answer is scored
        samples.append(Sample(image=image, prompt="is it big?", target="no", context=[("what shape?", "a circle")]))
    assert can_reuse_prompt(loaded.processor)
    fast = candidate_scores(loaded.model, loaded.processor, samples, CANDIDATES, progress=False,
                            candidate_batch_size=2)
    # reference: one full forward per pair, as in training: left-padded batches of 3 (a sample's score must not
    # depend on the padding: HF batches carry position ids counted from the first real token)
    full = candidate_scores(loaded.model, loaded.processor, samples, CANDIDATES, batch_size=3, progress=False,
                            reuse_prompt=False)
    assert fast.shape == (len(samples), len(CANDIDATES))
    assert torch.allclose(fast, full, atol=1e-4), (fast - full).abs().max()
    assert len(set(fast[0].tolist())) == len(CANDIDATES)  # the scores tell candidates apart


@pytest.mark.parametrize("family", ["llava", "idefics3", "paligemma", "blip2", "florence2"])
def test_answer_ids_follow_the_generation_prompt(family, base_tokenizer, image):
    """What ranking scores is what training labels: prompt ids + answer ids == the training sequence."""
    _, hp = build(base_tokenizer, family)
    for answer in CANDIDATES:
        train = hp([image], ["what color is the shape?"], [answer])
        ids = hp.answer_ids(answer)
        if hp.is_encoder_decoder:
            assert train["labels"][0].tolist() == ids
            continue
        prompt = hp([image], ["what color is the shape?"])["input_ids"][0].tolist()
        assert train["input_ids"][0].tolist() == prompt + ids
        labels = train["labels"][0]
        assert labels[labels >= 0].tolist() == ids


def test_blip_falls_back_to_full_forward(base_tokenizer, image):
    loaded = _loaded("blip", base_tokenizer)
    assert not can_reuse_prompt(loaded.processor)
    samples = [Sample(image=image, prompt="", target="blue")]
    with pytest.raises(ValueError, match="reuse_prompt=False"):
        candidate_scores(loaded.model, loaded.processor, samples, ["blue", "no"], reuse_prompt=True, progress=False)
    picked = rank_candidates(loaded.model, loaded.processor, samples, ["blue", "no"], progress=False)
    assert picked[0] in ("blue", "no")


def test_rank_picks_the_most_likely_and_rejects_an_empty_list(image):
    loaded = make_tiny()
    samples = [Sample(image=image, prompt="what color?", target="blue")] * 2
    scores = candidate_scores(loaded.model, loaded.processor, samples, CANDIDATES, progress=False)
    assert rank_candidates(loaded.model, loaded.processor, samples, CANDIDATES, progress=False) == [
        CANDIDATES[int(i)] for i in scores.argmax(-1)
    ]
    with pytest.raises(ValueError, match="at least one candidate"):
        rank_candidates(loaded.model, loaded.processor, samples, [], progress=False)
