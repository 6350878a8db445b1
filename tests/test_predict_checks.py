"""What predict, eval and model loading check before they run (issue 20): valid prompt text, the context length
with the tokens to generate, pickle-only checkpoint folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpt.data.sample import DataError, Sample
from mmpt.data.validate import context_limit, fit_context
from mmpt.inference import Predictor
from mmpt.models import load

IMAGE = np.zeros((16, 16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor("mmpt-tiny-random", max_new_tokens=4, batch_size=2)


def test_a_prompt_with_a_lone_surrogate_is_one_line(predictor):
    with pytest.raises(DataError, match="lone surrogate") as info:
        predictor([Sample(IMAGE, "what is \ud800 this?", "", id="q1")])
    assert "q1" in str(info.value) and "\n" not in str(info.value)


def test_prompts_and_new_tokens_must_fit_the_context(predictor):
    limit = context_limit(predictor.loaded.model)
    assert isinstance(limit, int)
    long = Sample(IMAGE, "word " * (limit + 10), "", id="long")
    with pytest.raises(DataError, match="over the limit") as info:
        predictor([Sample(IMAGE, "short?", "", id="ok"), long])
    assert "'long'" in str(info.value) and "\n" not in str(info.value)
    assert predictor([Sample(IMAGE, "short?", "", id="ok")])  # a short one still answers
    # the tokens to generate count too: a prompt that fits alone does not fit with too many new tokens
    loaded = predictor.loaded
    tokens = len(loaded.processor.tokenizer("short?", add_special_tokens=False)["input_ids"])
    image_tokens = int(getattr(loaded.processor, "num_image_tokens", 0) or 0)
    fitting = Sample(IMAGE, "short?", "", id="edge")
    assert fit_context(loaded, [fitting], "raise", "input", limit - tokens - image_tokens) == [fitting]
    with pytest.raises(DataError):
        fit_context(loaded, [fitting], "raise", "input", limit - tokens - image_tokens + 1)
    assert fit_context(loaded, [fitting, long], "skip", "input", 4) == [fitting]


def test_a_checkpoint_folder_of_pickles_is_refused_before_loading(tmp_path):
    from mmpt.models.hf import load_pretrained

    model = load("llava-tiny-random").model
    model.save_pretrained(tmp_path / "ok")
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin: pickle files") as info:
        load_pretrained(folder)
    assert "\n" not in str(info.value)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a model config"):
        load_pretrained(folder)


def test_predict_jsonl_that_is_not_utf8_names_the_line(tmp_path):
    from PIL import Image

    from mmpt.inference import read_inputs

    Image.fromarray(IMAGE).save(tmp_path / "a.png")
    source = tmp_path / "inputs.jsonl"
    source.write_bytes(b'{"image": "a.png"}\n{"image": "a.png", "prompt": "caf\xe9?"}\n')
    with pytest.raises(ValueError, match="line 2: not UTF-8") as info:
        read_inputs(source, "what?")
    assert "\n" not in str(info.value)
