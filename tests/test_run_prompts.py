"""Prompts follow the run: predict, chat and eval put the user's text into the run's prompt template, as training
built its prompts (issue 19: "what is the color of the rectangle?" without "Answer with one word." got a sentence)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

from mmpt import methods
from mmpt.config import to_dict
from mmpt.data.sources import fill_prompt, prompt_format, with_prompt_format
from mmpt.models import load
from mmpt.runconfig import load_run_config


@pytest.mark.parametrize("overrides,template", [
    ([], "{question} Answer with one word."),
    (["data.prompt_template='{question} Reply briefly.'"], "{question} Reply briefly."),
    (["data.dataset=easy-vqa-captions", "task=caption"], "Describe the image briefly."),
    (["data.dataset=files", "data.eval={format: vqav2, questions: q.json, images: i}"], "{question}"),
    (["data.dataset=files", "data.eval={format: snli-ve, path: s.jsonl, images: i}"],
     'Does the image describe "{hypothesis}"?'),
    (["data.dataset=files", "data.eval={format: refcoco, refs: r.json, instances: n.json, images: i, split: val, "
      "prompt_template: 'Find {expression}.'}"], "Find {expression}."),
    (["data.dataset=files", "data.eval={format: jsonl, path: d.jsonl}"], ""),
])
def test_prompt_format_is_what_the_readers_built_prompts_with(overrides, template):
    config = load_run_config(None, ["method={name: prefix}", *overrides])
    assert prompt_format(config.data) == template


def test_fill_prompt():
    assert fill_prompt("{question} Answer with one word.", "what color?") == "what color? Answer with one word."
    assert fill_prompt("Describe the image briefly.", "anything") == "Describe the image briefly."
    assert fill_prompt("", "as typed {braces}") == "as typed {braces}"
    assert fill_prompt("Q: {question}", "a {b} c") == "Q: a {b} c"
    with pytest.raises(ValueError, match="needs hypothesis, premise; give the whole prompt and --raw-prompt"):
        fill_prompt("{premise} / {hypothesis}", "x")


def test_a_config_evaluated_with_a_run_gets_the_runs_template():
    run = load_run_config(None, ["method={name: prefix}"])
    other = load_run_config(None, ["method={name: prefix}", "data.dataset=files", "data.eval={format: vqav2, questions: q.json, images: i}"])
    adapted = with_prompt_format(other.data, prompt_format(run.data))
    assert adapted.eval.prompt_template == "{question} Answer with one word."
    ve = load_run_config(None, ["method={name: prefix}", "data.dataset=files", "data.eval={format: snli-ve, path: s.jsonl, images: i}"])
    assert with_prompt_format(ve.data, prompt_format(run.data)).eval.prompt_template == \
        "{hypothesis} Answer with one word."
    assert with_prompt_format(run.data, prompt_format(run.data)) == run.data


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    config = load_run_config(None, ["model.name=mmpt-tiny-random", "method={name: prefix, length: 2}",
                                    f"output_dir={tmp}", "name=r"])
    loaded = load("mmpt-tiny-random")
    method = methods.apply(loaded, config.method)
    folder = tmp / "r"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    methods.save(method, folder / "prefix.safetensors", methods.fingerprint(loaded.model))
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp / "x.png")
    return folder


@pytest.mark.parametrize("raw", [False, True])
def test_predict_and_chat_put_the_question_into_the_runs_template(run_dir, monkeypatch, raw):
    import mmpt.inference as inference

    seen: list[str] = []

    def capture(task, model, processor, samples, config, progress=False, label="eval"):
        seen.extend(s.prompt for s in samples)
        return ["red"] * len(samples)

    monkeypatch.setattr(inference, "predict_task", capture)
    image = run_dir.parent / "x.png"
    answer = inference.predict_one(image, "what color is it?", run_dir=run_dir, raw_prompt=raw, max_new_tokens=2)
    predictor = inference.Predictor(run_dir=run_dir, raw_prompt=raw, max_new_tokens=2)
    said: list[str] = []
    questions = iter(["what shape?", "/quit"])
    inference.chat(predictor, image, read=lambda _: next(questions), write=said.append)
    want = ["what color is it?", "what shape?"] if raw else ["what color is it? Answer with one word.",
                                                            "what shape? Answer with one word."]
    assert answer == "red" and seen == want
    assert any("prompt template" in line for line in said) != raw
