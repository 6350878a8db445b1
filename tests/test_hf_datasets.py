"""Hugging Face datasets as data: `data.dataset: hf:<folder>` and the `hf` source format with a column mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")

from mmpt.data.formats.common import DataError  # noqa: E402
from mmpt.data.formats.hf import read_hf  # noqa: E402
from mmpt.data.sources import build_data  # noqa: E402
from mmpt.runconfig import load_run_config  # noqa: E402


def _images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def vqa_folder(tmp_path_factory) -> str:
    def split(n: int, seed: int) -> datasets.Dataset:
        return datasets.Dataset.from_dict({
            "image": _images(n, seed),
            "question": [f"what is {i}?" for i in range(n)],
            "answers": [[{"answer": "yes"}, {"answer": "no"}, {"answer": "yes"}] for _ in range(n)],
            "question_id": list(range(100 * seed, 100 * seed + n)),
        }).cast_column("image", datasets.Image())

    folder = tmp_path_factory.mktemp("hf") / "vqa"
    datasets.DatasetDict({"train": split(6, 1), "validation": split(3, 2)}).save_to_disk(str(folder))
    return str(folder)


def test_vqa_columns_become_samples(vqa_folder):
    samples = read_hf(vqa_folder, "train", columns={"id": "question_id"}, prompt_template="Q: {question}").samples
    assert len(samples) == 6
    first = samples[0]
    assert first.prompt == "Q: what is 0?" and first.target == "yes" and first.answers == ("yes", "no", "yes")
    assert first.id == "100" and isinstance(first.image, np.ndarray) and first.image.shape == (24, 32, 3)
    assert read_hf(vqa_folder, "train", limit=2).samples[1].id == "1"  # limit; the row number when no id column
    with pytest.raises(DataError, match="no split 'test'; its splits: train, validation"):
        read_hf(vqa_folder, "test")
    with pytest.raises(DataError, match="neither a question nor a caption column"):
        read_hf(vqa_folder, "train", columns={"question": "prompt"})


def test_hf_shorthand_trains(vqa_folder, tmp_path):
    from mmpt.train import run

    config = load_run_config(None, [f"data.dataset=hf:{vqa_folder}", "model.name=mmpt-tiny-random",
                                    "train.precision=fp32", "train.max_steps=1", "train.batch_size=2",
                                    "eval.max_new_tokens=2", "eval.before=false", f"output_dir={tmp_path}",
                                    "method={name: prefix, length: 2}"])
    train, evals = build_data(config.data, config.seed)
    assert (len(train), len(evals)) == (6, 3)  # train + validation
    assert train[0].prompt.endswith("Answer with one word.")  # the data section's prompt template
    metrics = run(config, progress=False)
    assert metrics["after"]["n"] == 3 and 0.0 <= metrics["after"]["accuracy"] <= 1.0


def test_captions_and_boxes_with_a_mapping(tmp_path):
    images = _images(2, 3)
    ds = datasets.Dataset.from_dict({"img": images, "sentences": [["a cat", "one cat"], ["a dog"]],
                                     "expr": ["left thing", "right thing"], "bbox": [[2, 4, 10, 8], [0, 0, 32, 24]]})
    ds = ds.cast_column("img", datasets.Image())
    ds.save_to_disk(str(tmp_path / "refs"))
    captions = read_hf(str(tmp_path / "refs"), columns={"image": "img", "caption": "sentences"}).samples
    assert [(s.target, s.answers) for s in captions] == [("a cat", ("a cat", "one cat")), ("a dog", ("a dog",))]
    boxes = read_hf(str(tmp_path / "refs"), columns={"image": "img", "question": "expr", "box": "bbox"},
                    box_format="xywh").samples
    assert boxes[0].box == (2.0, 4.0, 12.0, 12.0) and boxes[0].image_size == (32, 24)
    assert boxes[0].prompt == "left thing" and boxes[0].target.startswith("[")
    # the files form of a data section
    config = load_run_config(None, ["data.dataset=files", "method={name: prefix}", "data.train={format: hf, path: "
                                    f"{tmp_path / 'refs'}, columns: {{image: img, caption: sentences}}}}"])
    train, _ = build_data(config.data, config.seed)
    assert sorted(s.target for s in train) == ["a cat", "a dog"]


def test_missing_dataset_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="could not be read offline"):
        read_hf(str(tmp_path / "nothing-here"), "train")


def test_one_saved_dataset_is_never_evaluated_on_its_training_rows(tmp_path, caplog):
    """An hf: folder holding one Dataset (no splits) trains on it and says there is no evaluation, instead of
    evaluating on the same rows (issue 20)."""
    folder = tmp_path / "single"
    datasets.Dataset.from_dict({"image": _images(4, 3), "question": [f"q{i}?" for i in range(4)],
                                "answer": ["yes"] * 4}).cast_column("image", datasets.Image()).save_to_disk(str(folder))
    config = load_run_config(None, [f"data.dataset=hf:{folder}", "model.name=mmpt-tiny-random",
                                    "method={name: prefix, length: 2}"])
    with caplog.at_level("WARNING", logger="mmpt"):
        train, evals = build_data(config.data, config.seed)
    assert (len(train), len(evals)) == (4, 0)
    assert "no validation, val or test split" in caplog.text
    with pytest.raises(DataError, match="no split 'validation'; its splits: train"):
        read_hf(str(folder), "validation")


@pytest.mark.parametrize("column,value,message", [
    ("question", None, "the question is None, not text"),
    ("question", "  ", "not text"),
    ("bbox", [1.0, 2.0, float("inf"), 4.0], "4 finite numbers"),
    ("bbox", None, "4 finite numbers"),
    ("bbox", [1.0, 2.0, 3.0], "4 finite numbers"),
])
def test_bad_cells_are_bad_records(tmp_path, column, value, message):
    """A null or blank question, a box of Infinity / null / 3 numbers: a DataError naming the row (skipped with
    on_error: skip), never a traceback or the prompt "None" (issue 20)."""
    rows = {"image": _images(2, 4), "question": ["where is it?", "where is it?"],
            "bbox": [[1.0, 2.0, 10.0, 12.0], [1.0, 2.0, 10.0, 12.0]]}
    rows[column] = [rows[column][0], value]
    folder = tmp_path / "refs"
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "bbox": datasets.Sequence(datasets.Value("float64"))})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(folder))
    with pytest.raises(DataError, match="row 1") as info:
        read_hf(str(folder), "", columns={"box": "bbox"})
    assert message in str(info.value) and "\n" not in str(info.value)
    kept = read_hf(str(folder), "", columns={"box": "bbox"}, on_error="skip")
    assert len(kept.samples) == 1 and kept.skipped == 1


def _jsonl_folder(tmp_path: Path, name: str, lines: list[str]) -> Path:
    """A folder of one JSON-lines file (read by datasets.load_dataset) whose rows point at two PNG files."""
    folder = tmp_path / name
    folder.mkdir()
    for i, image in enumerate(_images(2, 5)):
        image.save(tmp_path / f"{i}.png")
    text = "\n".join(line.replace("IMG", str(tmp_path)) for line in lines) + "\n"
    (folder / "train.jsonl").write_bytes(text.encode("utf-8", "surrogatepass"))
    return folder


ROW0 = '{"image": "IMG/0.png", "question": "what color?", "answers": "red"}'


@pytest.mark.parametrize("answers,targets", [
    ('{"answer": "blue"}', ["red", "blue"]),  # one VQAv2 answer object beside a plain string
    ('["blue", "blue", "green"]', ["red", "blue"]),
    ('[{"answer": "blue"}]', ["red", "blue"]),
])
def test_answers_of_mixed_types_across_rows_are_read(tmp_path, answers, targets):
    line = '{"image": "IMG/1.png", "question": "what color?", "answers": ANS}'.replace("ANS", answers)
    read = read_hf(str(_jsonl_folder(tmp_path, "mixed", [ROW0, line])), "train")
    assert [s.target for s in read.samples] == targets


@pytest.mark.parametrize("answers", ["null", "true", "3", '[["blue"]]', "[]", '{"text": "blue"}'])
def test_answers_of_an_unreadable_type_are_a_bad_record(tmp_path, answers):
    line = '{"image": "IMG/1.png", "question": "what color?", "answers": ANS}'.replace("ANS", answers)
    folder = _jsonl_folder(tmp_path, "bad", [ROW0, line])
    with pytest.raises(DataError, match=r"\[train\] row 1: answers should be") as info:
        read_hf(str(folder), "train")
    assert "\n" not in str(info.value)
    assert len(read_hf(str(folder), "train", on_error="skip").samples) == 1


@pytest.mark.parametrize("line,said", [
    ("{not json", "JSON parse error"),
    ('{"image": "IMG/1.png", "question": "what \\ud800?", "answers": "red"}', "surrogate"),
])
def test_datasets_own_errors_are_one_line_naming_the_file_and_row(tmp_path, line, said):
    with pytest.raises(DataError, match=said) as info:
        read_hf(str(_jsonl_folder(tmp_path, "broken", [ROW0, line])), "train")
    message = str(info.value)
    assert "in row 1" in message and "train.jsonl" in message and "fix that record" in message
    assert "\n" not in message


def test_a_dataset_folder_with_a_loading_script_is_refused_without_running_it(tmp_path):
    folder = _jsonl_folder(tmp_path, "scripted", [ROW0])
    marker = tmp_path / "ran"
    (folder / "scripted.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(DataError, match=r"holds a loading script \(scripted.py\); mmpt runs no code"):
        read_hf(str(folder), "train")
    assert not marker.exists()
