"""Dataset readers on tiny files in the real formats (Karpathy, VQAv2, SNLI-VE, RefCOCO, LLaVA, JSONL)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mmpt.data.formats.refcoco import convert_refcoco_refs
from mmpt.data.readers import (
    MAX_PROBLEMS,
    READERS,
    SNLI_VE_ANSWERS,
    ReadResult,
    read_coco_karpathy,
    read_jsonl,
    read_llava,
    read_refcoco,
    read_snli_ve,
    read_vqav2,
)
from mmpt.data.sample import DataError, Sample, box_to_text, text_to_box


def image(path: Path, size: tuple[int, int] = (8, 8)) -> Path:
    """A tiny RGB image at ``path`` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def py2_pickle(obj: Any) -> bytes:
    """``obj`` (lists, dicts, str, int, float) pickled as Python 2 does: strs as 8-bit SHORT_BINSTRING."""

    def enc(o: Any) -> bytes:
        if isinstance(o, str):
            raw = o.encode("latin1")
            return b"U" + bytes([len(raw)]) + raw
        if isinstance(o, bool) or not isinstance(o, int | float | list | dict):
            raise TypeError(o)
        if isinstance(o, int):
            return b"J" + struct.pack("<i", o)
        if isinstance(o, float):
            return b"G" + struct.pack(">d", o)
        if isinstance(o, list):
            return b"](" + b"".join(enc(v) for v in o) + b"e"
        return b"}(" + b"".join(enc(k) + enc(v) for k, v in o.items()) + b"u"

    return b"\x80\x02" + enc(obj) + b"."


# --------------------------------------------------------------------------------------------------- Karpathy


def coco_entry(split: str, cocoid: int, sentences: list[tuple[str, int]], folder: str = "val2014") -> dict:
    return {
        "filepath": folder,
        "sentids": [s for _, s in sentences],
        "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
        "imgid": cocoid % 100,
        "split": split,
        "sentences": [
            {"tokens": raw.lower().strip(" .").split(), "raw": raw, "imgid": cocoid % 100, "sentid": s}
            for raw, s in sentences
        ],
        "cocoid": cocoid,
    }


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "coco"
    entries = [
        coco_entry("train", 101, [("A man riding a horse.", 1), ("A person on a horse ", 2)], "train2014"),
        coco_entry("restval", 102, [("Two dogs play.", 3)]),
        coco_entry("val", 103, [("A red bus.", 4), ("A bus on a street.", 5)]),
        coco_entry("test", 104, [("A cat.", 6)]),
    ]
    for e in entries:
        image(root / e["filepath"] / e["filename"])
    return write_json(tmp_path / "dataset_coco.json", {"images": entries, "dataset": "coco"}), root


def test_karpathy_train_includes_restval_one_sample_per_caption(coco: tuple[Path, Path]) -> None:
    path, root = coco
    result = read_coco_karpathy(path, root, "train")
    assert result.skipped == 0 and result.problems == []
    prompt = "Describe the image briefly."
    assert result.samples == [
        Sample(
            root / "train2014/COCO_train2014_000000000101.jpg",
            prompt,
            "A man riding a horse.",
            "caption",
            101,
            "1",
        ),
        Sample(
            root / "train2014/COCO_train2014_000000000101.jpg",
            prompt,
            "A person on a horse",
            "caption",
            101,
            "2",
        ),
        Sample(root / "val2014/COCO_val2014_000000000102.jpg", prompt, "Two dogs play.", "caption", 102, "3"),
    ]
    assert [s.id for s in read_coco_karpathy(path, root, "restval").samples] == ["3"]


def test_karpathy_eval_split_one_sample_per_image(coco: tuple[Path, Path]) -> None:
    path, root = coco
    (sample,) = read_coco_karpathy(path, root, "val", prompt="Caption:").samples
    assert sample == Sample(
        root / "val2014/COCO_val2014_000000000103.jpg",
        "Caption:",
        "A red bus.",
        "caption",
        103,
        "103",
        answers=("A red bus.", "A bus on a street."),
    )
    per_caption = read_coco_karpathy(path, root, "val", per_caption=True).samples
    assert [(s.target, s.id) for s in per_caption] == [("A red bus.", "4"), ("A bus on a street.", "5")]
    assert len(read_coco_karpathy(path, root, "train", per_caption=False).samples) == 2


def test_karpathy_flickr_has_no_filepath_and_uses_imgid(tmp_path: Path) -> None:
    entry = {
        "sentids": [10],
        "imgid": 7,
        "split": "test",
        "filename": "1000092795.jpg",
        "sentences": [{"tokens": ["two", "men"], "raw": "Two men.", "imgid": 7, "sentid": 10}],
    }
    path = write_json(tmp_path / "dataset_flickr30k.json", {"images": [entry], "dataset": "flickr30k"})
    image(tmp_path / "flickr30k-images/1000092795.jpg")
    (sample,) = READERS["flickr30k-karpathy"](path, tmp_path / "flickr30k-images", "test").samples
    assert sample == Sample(
        tmp_path / "flickr30k-images/1000092795.jpg",
        "Describe the image briefly.",
        "Two men.",
        "caption",
        7,
        "7",
        answers=("Two men.",),
    )


def test_karpathy_unknown_split_names_the_splits(coco: tuple[Path, Path]) -> None:
    path, root = coco
    with pytest.raises(
        DataError,
        match=r"no records in split 'validation'; splits in the file: 'restval', "
        r"'test', 'train', 'val'",
    ):
        read_coco_karpathy(path, root, "validation")


def test_karpathy_malformed_and_missing_image(coco: tuple[Path, Path], tmp_path: Path) -> None:
    path, root = coco
    data = json.loads(path.read_text())
    del data["images"][1]["sentences"][0]["raw"]
    bad = write_json(tmp_path / "bad" / "dataset_coco.json", data)
    with pytest.raises(
        DataError, match=r"dataset_coco\.json images\[1\] \(cocoid 102\) sentences\[0\]: missing key 'raw'"
    ):
        read_coco_karpathy(bad, root, "train")
    missing = root / "train2014/COCO_train2014_000000000101.jpg"
    missing.unlink()
    with pytest.raises(
        DataError, match=r"images\[0\] \(cocoid 101\): image not found: .*COCO_train2014_000000000101\.jpg"
    ):
        read_coco_karpathy(path, root, "train")
    result = read_coco_karpathy(path, root, "train", on_error="skip")
    assert [s.id for s in result.samples] == ["3"] and result.skipped == 1
    assert result.problems[0].startswith(f"dataset_coco.json images[0] (cocoid 101): image not found: {missing}")
    with pytest.raises(DataError, match=r"no usable records \(2 skipped\)"):
        read_coco_karpathy(bad, root, "train", on_error="skip")


def test_karpathy_limit_counts_samples(coco: tuple[Path, Path]) -> None:
    path, root = coco
    assert [s.id for s in read_coco_karpathy(path, root, "train", limit=1).samples] == ["1"]
    assert [s.id for s in read_coco_karpathy(path, root, "train", limit=2).samples] == ["1", "2"]


# ------------------------------------------------------------------------------------------------------ VQAv2


def vqa_files(tmp_path: Path, subtype: str = "val2014") -> tuple[Path, Path]:
    questions = {
        "info": {},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "license": {},
        "data_subtype": subtype,
        "questions": [
            {"image_id": 42, "question": "What color is the bus?", "question_id": 42000},
            {"image_id": 42, "question": "How many wheels?", "question_id": 42001},
            {"image_id": 7, "question": "Is it raining?", "question_id": 7000},
        ],
    }

    def answers(*words: str) -> list[dict]:
        return [{"answer": w, "answer_confidence": "yes", "answer_id": i + 1} for i, w in enumerate(words)]

    annotations = {
        "info": {},
        "license": {},
        "data_subtype": subtype,
        "data_type": "mscoco",
        "annotations": [
            {
                "question_type": "what color is the",
                "multiple_choice_answer": "red",
                "image_id": 42,
                "answer_type": "other",
                "question_id": 42000,
                "answers": answers(*["red"] * 9, "dark red"),
            },
            {
                "question_type": "how many",
                "multiple_choice_answer": "4",
                "image_id": 42,
                "answer_type": "number",
                "question_id": 42001,
                "answers": answers(*["4"] * 8, "6", "four"),
            },
            {
                "question_type": "is it",
                "multiple_choice_answer": "no",
                "image_id": 7,
                "answer_type": "yes/no",
                "question_id": 7000,
                "answers": answers(*["no"] * 10),
            },
        ],
    }
    return (
        write_json(tmp_path / f"v2_OpenEnded_mscoco_{subtype}_questions.json", questions),
        write_json(tmp_path / f"v2_mscoco_{subtype}_annotations.json", annotations),
    )


def test_vqav2_official_naming(tmp_path: Path) -> None:
    questions, annotations = vqa_files(tmp_path)
    root = tmp_path / "val2014"
    for i in (42, 7):
        image(root / f"COCO_val2014_{i:012d}.jpg")
    result = read_vqav2(questions, annotations, root, prompt_template="Q: {question} A:")
    bus = root / "COCO_val2014_000000000042.jpg"
    assert result.samples == [
        Sample(
            bus, "Q: What color is the bus? A:", "red", "other", 42, "42000", ("red",) * 9 + ("dark red",)
        ),
        Sample(bus, "Q: How many wheels? A:", "4", "number", 42, "42001", ("4",) * 8 + ("6", "four")),
        Sample(
            root / "COCO_val2014_000000000007.jpg",
            "Q: Is it raining? A:",
            "no",
            "yes/no",
            7,
            "7000",
            ("no",) * 10,
        ),
    ]


def test_vqav2_coco2017_naming_and_test_dev_without_annotations(tmp_path: Path) -> None:
    questions, annotations = vqa_files(tmp_path)
    root = tmp_path / "val2017"
    for i in (42, 7):
        image(root / f"{i:012d}.jpg")
    assert read_vqav2(questions, annotations, root).samples[2].image == root / "000000000007.jpg"

    test_dev, _ = vqa_files(tmp_path / "testdev", "test-dev2015")
    test_root = tmp_path / "test2015"
    for i in (42, 7):
        image(test_root / f"COCO_test2015_{i:012d}.jpg")
    samples = read_vqav2(test_dev, None, test_root).samples
    assert samples[0] == Sample(
        test_root / "COCO_test2015_000000000042.jpg", "What color is the bus?", "", "", 42, "42000"
    )


def test_vqav2_errors(tmp_path: Path) -> None:
    questions, annotations = vqa_files(tmp_path)
    root = tmp_path / "val2014"
    image(root / "COCO_val2014_000000000042.jpg")
    with pytest.raises(
        DataError,
        match=r"VQAv2 annotations file not found: .*nope\.json \(expected "
        r"v2_mscoco_<subset>_annotations\.json from visualqa\.org\)",
    ):
        read_vqav2(questions, tmp_path / "nope.json", root)
    with pytest.raises(
        DataError,
        match=r"questions\[2\] \(question_id 7000\): image not found: "
        r".*COCO_val2014_000000000007\.jpg or .*000000000007\.jpg",
    ):
        read_vqav2(questions, annotations, root)
    with pytest.raises(DataError, match="annotations swapped"):
        read_vqav2(annotations, questions, root)

    data = json.loads(annotations.read_text())
    del data["annotations"][1]["multiple_choice_answer"]
    write_json(annotations, data)
    with pytest.raises(
        DataError,
        match=r"v2_mscoco_val2014_annotations\.json annotation of question_id 42001: "
        r"missing key 'multiple_choice_answer'",
    ):
        read_vqav2(questions, annotations, root)
    result = read_vqav2(questions, annotations, root, on_error="skip")
    assert [s.id for s in result.samples] == ["42000"] and result.skipped == 2
    assert "multiple_choice_answer" in result.problems[0] and "image not found" in result.problems[1]
    assert read_vqav2(questions, annotations, root, on_error="skip", limit=1).skipped == 0

    data["data_subtype"] = "train2014"
    write_json(annotations, data)
    with pytest.raises(DataError, match="are val2014 but annotations .* are train2014"):
        read_vqav2(questions, annotations, root)


# ---------------------------------------------------------------------------------------------------- SNLI-VE


def snli_record(flickr_id: str, hypothesis: str, label: str, pair: str) -> dict:
    return {
        "Flickr30K_ID": flickr_id,
        "annotator_labels": [label],
        "captionID": f"{flickr_id}.jpg#0",
        "gold_label": label,
        "pairID": pair,
        "sentence1": "Two women are embracing.",
        "sentence2": hypothesis,
        "sentence1_binary_parse": "( ... )",
        "sentence2_parse": "(ROOT ...)",
    }


@pytest.fixture
def snli(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "flickr30k_images"
    image(root / "3637013.jpg")
    image(root / "4564320256.jpg")
    path = write_jsonl(
        tmp_path / "snli_ve_dev.jsonl",
        [
            snli_record("3637013", "The sisters are hugging.", "neutral", "3637013.jpg#0r1n"),
            snli_record("3637013", "Two women are embracing ", "entailment", "3637013.jpg#0r1e"),
            snli_record("4564320256", "The men are fighting.", "contradiction", "4564320256.jpg#2r1c"),
        ],
    )
    return path, root


def test_snli_ve(snli: tuple[Path, Path]) -> None:
    path, root = snli
    samples = read_snli_ve(path, root).samples
    assert SNLI_VE_ANSWERS == {"entailment": "yes", "neutral": "maybe", "contradiction": "no"}
    assert samples == [
        Sample(
            root / "3637013.jpg",
            'Does the image describe "The sisters are hugging."?',
            "maybe",
            "neutral",
            3637013,
            "3637013.jpg#0r1n",
            ("maybe",),
        ),
        Sample(
            root / "3637013.jpg",
            'Does the image describe "Two women are embracing"?',
            "yes",
            "entailment",
            3637013,
            "3637013.jpg#0r1e",
            ("yes",),
        ),
        Sample(
            root / "4564320256.jpg",
            'Does the image describe "The men are fighting."?',
            "no",
            "contradiction",
            4564320256,
            "4564320256.jpg#2r1c",
            ("no",),
        ),
    ]
    assert len(read_snli_ve(path, root, limit=2).samples) == 2


def test_snli_ve_malformed_lines(snli: tuple[Path, Path]) -> None:
    path, root = snli
    record = snli_record("3637013", "A hug.", "-", "3637013.jpg#0r2n")
    no_label = {k: v for k, v in record.items() if k != "gold_label"}
    lines = path.read_text().splitlines() + ["", json.dumps(record), json.dumps(no_label), "{not json"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError,
        match=r"^snli_ve_dev\.jsonl line 5 \(pairID '3637013\.jpg#0r2n'\): key 'gold_label' is '-', "
        r"expected one of",
    ):
        read_snli_ve(path, root)
    result = read_snli_ve(path, root, on_error="skip")
    assert len(result.samples) == 3 and result.skipped == 3
    assert result.problems[1] == "snli_ve_dev.jsonl line 6 (pairID '3637013.jpg#0r2n'): missing key 'gold_label'"
    assert result.problems[2].startswith("snli_ve_dev.jsonl line 7: invalid JSON")


# ---------------------------------------------------------------------------------------------------- RefCOCO


def refcoco_files(tmp_path: Path) -> tuple[list[dict], Path, Path]:
    refs = [
        {
            "sent_ids": [0, 1],
            "file_name": "COCO_train2014_000000581857_1719310.jpg",
            "ann_id": 1719310,
            "ref_id": 0,
            "image_id": 581857,
            "split": "train",
            "category_id": 1,
            "sentences": [
                {"tokens": ["the", "lady"], "raw": "THE LADY", "sent_id": 0, "sent": "the lady"},
                {"tokens": ["woman", "left"], "raw": "woman left", "sent_id": 1, "sent": "woman left"},
            ],
        },
        {
            "sent_ids": [2],
            "file_name": "COCO_train2014_000000581857_1719311.jpg",
            "ann_id": 1719311,
            "ref_id": 1,
            "image_id": 581857,
            "split": "testA",
            "category_id": 1,
            "sentences": [
                {"tokens": ["right", "guy"], "raw": "right guy", "sent_id": 2, "sent": "right guy"}
            ],
        },
        {
            "sent_ids": [3],
            "file_name": "COCO_train2014_000000000009_5.jpg",
            "ann_id": 5,
            "ref_id": 2,
            "image_id": 9,
            "split": "testB",
            "category_id": 3,
            "sentences": [{"tokens": ["car"], "raw": "car", "sent_id": 3, "sent": "car"}],
        },
    ]
    instances = {
        "info": {},
        "licenses": [],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
        "images": [
            {"id": 581857, "file_name": "COCO_train2014_000000581857.jpg", "width": 640, "height": 480},
            {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 640, "height": 480},
        ],
        "annotations": [
            {
                "id": 1719310,
                "image_id": 581857,
                "bbox": [103.93, 299.99, 134.22, 177.42],
                "category_id": 1,
                "area": 1.0,
                "iscrowd": 0,
                "segmentation": [[1.0, 2.0]],
            },
            {"id": 1719311, "image_id": 581857, "bbox": [400, 10, 200, 400], "category_id": 1},
            {"id": 5, "image_id": 9, "bbox": [0.0, 0.0, 640.0, 480.0], "category_id": 3},
        ],
    }
    folder = tmp_path / "refcoco"
    (folder).mkdir()
    (folder / "refs(unc).p").write_bytes(py2_pickle(refs))
    root = tmp_path / "train2014"
    image(root / "COCO_train2014_000000581857.jpg")
    image(root / "COCO_train2014_000000000009.jpg")
    return refs, write_json(folder / "instances.json", instances), root


def test_refcoco_python2_pickle_and_split_filter(tmp_path: Path) -> None:
    _, instances, root = refcoco_files(tmp_path)
    refs = instances.parent / "refs(unc).p"
    with pytest.raises(DataError, match=r"is a Python pickle, and loading a pickle can run code") as refused:
        read_refcoco(refs, instances, root, "train")
    message = str(refused.value)
    assert "\n" not in message and "convert_refcoco_refs(" in message and "allow_pickle: true" in message
    samples = read_refcoco(refs, instances, root, "train", allow_pickle=True).samples
    box = (103.93, 299.99, 103.93 + 134.22, 299.99 + 177.42)
    expected = [
        Sample(
            root / "COCO_train2014_000000581857.jpg",
            f'Which region does the text "{sent}" describe?',
            "[162, 624, 372, 994]",
            "train",
            581857,
            f"0:{i}",
            box=box,
            image_size=(640, 480),
        )
        for i, sent in enumerate(("the lady", "woman left"))
    ]
    assert samples == expected
    assert samples[0].target == box_to_text(box, (640, 480))
    (test_a,) = read_refcoco(
        refs, instances, root, "testA", prompt_template="{expression}", allow_pickle=True
    ).samples
    assert (test_a.prompt, test_a.box, test_a.kind, test_a.id) == (
        "right guy",
        (400.0, 10.0, 600.0, 410.0),
        "testA",
        "1:2",
    )
    with pytest.raises(
        DataError,
        match=r"no records in split 'val'; splits in the file: 'testA', 'testB', "
        r"'train'",
    ):
        read_refcoco(refs, instances, root, "val", allow_pickle=True)
    converted = convert_refcoco_refs(refs, instances.parent / "refs(unc).json")
    assert converted == instances.parent / "refs(unc).json"
    assert read_refcoco(converted, instances, root, "train").samples == expected
    with pytest.raises(DataError, match=r"refs\(unc\)\.json already exists: point refs: at it"):
        read_refcoco(refs, instances, root, "train")


def test_refcoco_target_round_trips_within_a_bin(tmp_path: Path) -> None:
    _, instances, root = refcoco_files(tmp_path)
    for split in ("train", "testA", "testB"):
        for s in read_refcoco(instances.parent / "refs(unc).p", instances, root, split, allow_pickle=True).samples:
            assert s.box is not None and s.image_size is not None
            back = text_to_box(s.target, s.image_size)
            assert back is not None
            w, h = s.image_size
            for i, (a, b) in enumerate(zip(s.box, back, strict=True)):
                assert abs(a - b) <= (w if i % 2 == 0 else h) / 1000, (s.box, back)


def test_refcoco_json_refs_and_errors(tmp_path: Path) -> None:
    refs, instances, root = refcoco_files(tmp_path)
    refs[2]["ann_id"] = 77
    del refs[0]["sentences"][1]["sent"]
    path = write_json(tmp_path / "refs.json", refs)
    with pytest.raises(DataError, match=r"refs\.json\[0\] \(ref_id 0\) sentences\[1\]: missing key 'sent'"):
        read_refcoco(path, instances, root, "train")
    with pytest.raises(
        DataError, match=r"refs\.json\[2\] \(ref_id 2\): ann_id 77 is not in .*instances\.json"
    ):
        read_refcoco(path, instances, root, "testB")
    result = read_refcoco(path, instances, root, "testA", on_error="skip")
    assert len(result.samples) == 1 and result.skipped == 0
    (root / "COCO_train2014_000000581857.jpg").unlink()
    with pytest.raises(
        DataError,
        match=r"refs\.json\[1\] \(ref_id 1\): image not found: "
        r".*train2014/COCO_train2014_000000581857\.jpg;",
    ):
        read_refcoco(path, instances, root, "testA")
    with pytest.raises(DataError, match=r"RefCOCO refs file not found: .*refs\(umd\)\.p \(expected"):
        read_refcoco(tmp_path / "refs(umd).p", instances, root, "val")


# ------------------------------------------------------------------------------------------------------ LLaVA


def llava_records() -> list[dict]:
    return [
        {
            "id": "000000033471",
            "image": "coco/train2017/000000033471.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
                {"from": "gpt", "value": "The bus in the image is white and red."},
                {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                {"from": "gpt", "value": "The back of the bus features an advertisement."},
            ],
        },
        {
            "id": "i6IyJda_0",
            "model": "",
            "conversations": [
                {"from": "human", "value": "How to get good results?"},
                {"from": "gpt", "value": "Practice."},
            ],
        },
        {
            "id": 17,
            "image": "ocr_vqa/images/17.jpg",
            "conversations": [
                {"from": "human", "value": "Who wrote this book?\n<image>"},
                {"from": "gpt", "value": "Jane Doe"},
            ],
        },
    ]


def test_llava(tmp_path: Path) -> None:
    root = tmp_path / "llava"
    image(root / "coco/train2017/000000033471.jpg")
    image(root / "ocr_vqa/images/17.jpg")
    path = write_json(tmp_path / "llava_v1_5_mix665k.json", llava_records())
    with pytest.raises(
        DataError,
        match=r"llava_v1_5_mix665k\.json\[1\] \(id 'i6IyJda_0'\): text-only record "
        r".*mmpt needs an image per record",
    ):
        read_llava(path, root)
    result = read_llava(path, root, on_error="skip")
    assert result.skipped == 1 and "text-only" in result.problems[0]
    assert result.samples == [
        Sample(
            root / "coco/train2017/000000033471.jpg",
            "What feature can be seen on the back of the bus?",
            "The back of the bus features an advertisement.",
            "",
            "coco/train2017/000000033471.jpg",
            "000000033471",
            context=(
                ("What are the colors of the bus in the image?", "The bus in the image is white and red."),
            ),
        ),
        Sample(
            root / "ocr_vqa/images/17.jpg",
            "Who wrote this book?",
            "Jane Doe",
            "",
            "ocr_vqa/images/17.jpg",
            "17",
        ),
    ]
    assert len(read_llava(path, root, on_error="skip", limit=1).samples) == 1


def test_llava_turns_must_alternate_and_images_exist(tmp_path: Path) -> None:
    records = llava_records()
    records[0]["conversations"][1]["from"] = "human"
    path = write_json(tmp_path / "vf.json", [records[0], records[2]])
    image(tmp_path / "coco/train2017/000000033471.jpg")
    with pytest.raises(
        DataError,
        match=r"vf\.json\[0\] \(id '000000033471'\) conversations\[1\]: key 'from' is "
        r"'human', expected 'gpt'",
    ):
        read_llava(path, tmp_path)
    records[0]["conversations"][1]["from"] = "gpt"
    write_json(path, [records[0], records[2]])
    with pytest.raises(
        DataError, match=r"vf\.json\[1\] \(id 17\): image not found: .*ocr_vqa/images/17\.jpg"
    ):
        read_llava(path, tmp_path)


# ------------------------------------------------------------------------------------------------------ JSONL


def test_jsonl(tmp_path: Path) -> None:
    absolute = image(tmp_path / "elsewhere" / "a.png")
    image(tmp_path / "imgs" / "sub" / "b.jpg")
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {
                "image": str(absolute),
                "prompt": "What is it?",
                "target": "a square",
                "answers": ["a square", "square"],
                "kind": "what",
                "id": 3,
                "extra": 1,
            },
            {"image": "sub/b.jpg", "prompt": "Describe.", "target": "Red."},
        ],
    )
    assert read_jsonl(path, tmp_path / "imgs").samples == [
        Sample(absolute, "What is it?", "a square", "what", str(absolute), "3", ("a square", "square")),
        Sample(tmp_path / "imgs/sub/b.jpg", "Describe.", "Red.", "", "sub/b.jpg"),
    ]


def test_jsonl_skip_counts_and_keeps_the_first_problems(tmp_path: Path) -> None:
    image(tmp_path / "ok.jpg")
    records = [{"image": "ok.jpg", "prompt": "p", "target": "t"}]
    records += [{"image": "ok.jpg", "prompt": "p", "target": 5}] * 25 + [
        {"image": "gone.jpg", "prompt": "p", "target": "t"}
    ]
    path = write_jsonl(tmp_path / "data.jsonl", records)
    with pytest.raises(DataError, match=r"^data\.jsonl line 2: key 'target' should be str, got int 5$"):
        read_jsonl(path, tmp_path)
    result = read_jsonl(path, tmp_path, on_error="skip")
    assert len(result.samples) == 1 and result.skipped == 26 and len(result.problems) == MAX_PROBLEMS
    assert isinstance(result, ReadResult)


# ----------------------------------------------------------------------------------------------------- shared


def test_file_level_errors(tmp_path: Path) -> None:
    image(tmp_path / "x.jpg")
    with pytest.raises(
        DataError, match=r"SNLI-VE file not found: .*snli_ve_test\.jsonl \(expected .*necla-ml"
    ):
        read_snli_ve(tmp_path / "snli_ve_test.jsonl", tmp_path)
    broken = tmp_path / "dataset_coco.json"
    broken.write_text('{"images": [\n  {"split": "train",}\n]}')
    with pytest.raises(DataError, match=r"dataset_coco\.json is not valid JSON: .* at line 2"):
        read_coco_karpathy(broken, tmp_path, "train")
    path = write_jsonl(tmp_path / "d.jsonl", [{"image": "x.jpg", "prompt": "p", "target": "t"}])
    with pytest.raises(DataError, match=r"images folder not found: .*no_such_dir"):
        read_jsonl(path, tmp_path / "no_such_dir")
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataError, match="no records"):
        read_jsonl(empty, tmp_path)
    gone = write_jsonl(tmp_path / "gone.jsonl", [{"image": "gone.jpg", "prompt": "p", "target": "t"}])
    with pytest.raises(
        DataError, match=r"no usable records \(1 skipped\); first problems:\n  gone\.jsonl line 1"
    ):
        read_jsonl(gone, tmp_path, on_error="skip")
    with pytest.raises(ValueError, match="on_error"):
        read_jsonl(path, tmp_path, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        read_jsonl(path, tmp_path, limit=0)
    with pytest.raises(ValueError, match=r"it may use only \{hypothesis\}, \{premise\}"):
        read_snli_ve(path, tmp_path, prompt_template="{caption}")


def test_unreadable_images_stop_or_are_skipped(tmp_path: Path) -> None:
    image(tmp_path / "good.png")
    (tmp_path / "notes.jpg").write_text("not an image")  # exists, but PIL cannot identify it
    (tmp_path / "empty.png").write_bytes(b"")
    records = [{"id": f"r{i}", "image": name, "prompt": "p", "target": "t"}
               for i, name in enumerate(["good.png", "notes.jpg", "empty.png"])]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(DataError, match=r"d\.jsonl line 2 \(id 'r1'\): unreadable image .*notes\.jpg"):
        read_jsonl(path, tmp_path)
    result = read_jsonl(path, tmp_path, on_error="skip")
    assert [s.id for s in result.samples] == ["r0"] and result.skipped == 2
    assert "notes.jpg" in result.problems[0] and "empty.png" in result.problems[1]


def test_image_existence_is_checked_once_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image(tmp_path / "one.jpg")
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"image": "one.jpg", "prompt": f"p{i}", "target": "t"} for i in range(5)]
    )
    calls: list[Path] = []
    original = Path.is_file

    def counting(self: Path) -> bool:
        calls.append(self)
        return original(self)

    monkeypatch.setattr(Path, "is_file", counting)
    assert len(read_jsonl(path, tmp_path).samples) == 5
    assert calls.count(tmp_path / "one.jpg") == 1


def test_registry() -> None:
    assert set(READERS) == {
        "coco-karpathy",
        "flickr30k-karpathy",
        "vqav2",
        "snli-ve",
        "refcoco",
        "llava",
        "jsonl",
        "hf",
    }
    assert READERS["coco-karpathy"] is READERS["flickr30k-karpathy"] is read_coco_karpathy


def test_snli_ve_premise_in_the_prompt_as_ofa_does(snli: tuple[Path, Path]) -> None:
    from mmpt.data.formats.vqa import OFA_VE_TEMPLATE

    path, root = snli
    samples = read_snli_ve(path, root, prompt_template=OFA_VE_TEMPLATE).samples
    assert samples[0].prompt == 'Can image and text1 "Two women are embracing." imply text2 "The sisters are hugging."?'
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    del record["sentence1"]
    path.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    with pytest.raises(DataError, match="missing key 'sentence1'"):
        read_snli_ve(path, root, prompt_template=OFA_VE_TEMPLATE)
    assert len(read_snli_ve(path, root).samples) == 3  # the default prompt does not need the premise
