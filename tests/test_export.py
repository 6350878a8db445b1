"""easy-VQA exported to every real format, read back with mmpt's readers."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmpt.models.tiny import package_dir

try:
    EASY_VQA = package_dir("easy_vqa") / "data"
except FileNotFoundError:
    EASY_VQA = None
if EASY_VQA is None or not (EASY_VQA / "train" / "questions.json").is_file():
    pytest.skip("easy-vqa data is not installed", allow_module_level=True)

from mmpt.data.export import TEST_ID_OFFSET, export_easy_vqa  # noqa: E402
from mmpt.data.readers import (  # noqa: E402
    read_coco_karpathy,
    read_jsonl,
    read_llava,
    read_refcoco,
    read_snli_ve,
    read_vqav2,
)

N_TRAIN, N_TEST, N_VAL = 12, 8, 1
LABELS = ("entailment", "contradiction", "neutral")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_easy_vqa(tmp_path_factory.mktemp("export") / "easyvqa", N_TRAIN, N_TEST, seed=3)


@cache
def easy_vqa_questions(split: str) -> dict[int, list[tuple[str, str]]]:
    """easy-VQA's own questions per image id."""
    by_image: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for q, a, i in json.loads((EASY_VQA / split / "questions.json").read_text()):
        by_image[int(i)].append((q, a))
    return by_image


def source(image_id: int) -> tuple[str, int]:
    """(easy-VQA split, easy-VQA id) of an exported image id."""
    return ("test", image_id - TEST_ID_OFFSET) if image_id >= TEST_ID_OFFSET else ("train", image_id)


def test_every_file_is_written(exported: dict[str, Path]) -> None:
    for name, path in exported.items():
        assert path.exists(), name
    readme = exported["readme"].read_text()
    assert "10 answers" in readme and "Synthetic" in readme and "neutral" in readme


def test_captions_are_true_and_split(exported: dict[str, Path]) -> None:
    path, images = exported["captions"], exported["images"]
    train = read_coco_karpathy(path, images, "train").samples
    val = read_coco_karpathy(path, images, "val").samples
    test = read_coco_karpathy(path, images, "test").samples
    assert (len(train), len(val), len(test)) == (3 * (N_TRAIN - N_VAL), N_VAL, N_TEST)
    for sample in val + test:
        assert len(set(sample.answers)) == 3
        split, i = source(int(sample.image_id))
        assert sample.image == images / split / f"{i}.png"
        for q, a in easy_vqa_questions(split)[i]:
            if q.startswith(("what color", "what shape")):  # the answer is the image's color / shape
                assert all(a in caption.rstrip(".").split() for caption in sample.answers)


def test_vqav2(exported: dict[str, Path]) -> None:
    counts = {}
    for split in ("train", "val"):
        files = (exported[f"vqa_{split}_{name}"] for name in ("questions", "annotations", "images"))
        samples = read_vqav2(*files).samples
        for s in samples:
            assert s.answers == (s.target,) * 10
            assert s.kind == ("yes/no" if s.target in ("yes", "no") else "other")
            assert s.image.name == f"COCO_{split}2014_{s.image_id:012d}.jpg"
        counts[split] = len({s.image_id for s in samples}), len(samples)
    questions = easy_vqa_questions("train")
    assert counts["val"][0] == N_VAL and counts["train"][0] == N_TRAIN - N_VAL
    jsonl = read_jsonl(exported["jsonl_train"], exported["images"]).samples
    ids = {int(Path(str(s.image_id)).stem) for s in jsonl}
    assert counts["train"][1] == len(jsonl) == sum(len(questions[i]) for i in ids)


def test_snli_ve_is_balanced(exported: dict[str, Path]) -> None:
    ids = {}
    for split, n in (("train", N_TRAIN - N_VAL), ("dev", N_VAL), ("test", N_TEST)):
        samples = read_snli_ve(exported[f"snli_ve_{split}"], exported["snli_ve_images"]).samples
        assert Counter(s.kind for s in samples) == dict.fromkeys(LABELS, 2 * n)
        ids[split] = {s.image_id for s in samples}
        assert len(ids[split]) == n
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["dev"])


def test_refcoco_boxes_are_tight(exported: dict[str, Path]) -> None:
    seen = set()
    files = exported["refcoco_refs"], exported["refcoco_instances"], exported["images"]
    splits = ("train", N_TRAIN - N_VAL), ("val", N_VAL), ("testA", N_TEST // 2), ("testB", N_TEST // 2)
    for split, n in splits:
        samples = read_refcoco(*files, split).samples
        assert len(samples) == 2 * n
        for s in samples:
            seen.add(s.image_id)
            rgb = np.asarray(Image.open(s.image).convert("RGB"), dtype=int)
            colors, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
            diff = np.abs(rgb - colors[counts.argmax()]).max(-1)
            shape = diff * 2 > diff.max()  # pixels at least half covered by the shape
            x1, y1, x2, y2 = (int(v) for v in s.box)
            assert s.image_size == (64, 64) and 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
            inside = shape[y1:y2, x1:x2]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert inside.sum() == shape.sum()  # nothing of the shape outside the box
    assert len(seen) == N_TRAIN + N_TEST


def test_llava_holds_out_shape_existence(exported: dict[str, Path]) -> None:
    samples = read_llava(exported["llava"], exported["images"]).samples
    assert samples and all(str(s.image_id).startswith("train/") for s in samples)
    colors = ("red", "green", "blue", "black", "gray", "yellow", "teal", "brown")
    for s in samples:
        assert len(s.context) <= 2
        for question, answer in (*s.context, (s.prompt, s.target)):
            if answer in ("yes", "no"):  # only color-existence questions; shape existence is held out
                assert any(c in question.split() for c in colors) and question.endswith("Please answer yes or no.")
    images = {s.image_id for s in read_jsonl(exported["jsonl_train"], exported["images"]).samples}
    assert {s.image_id for s in samples} <= images


def test_mme_pairs_one_yes_one_no_per_image(exported: dict[str, Path]) -> None:
    samples = read_jsonl(exported["mme"], exported["images"]).samples
    by_image = defaultdict(list)
    for s in samples:
        assert s.prompt.endswith("Please answer yes or no.")
        by_image[s.image_id].append((s.kind, s.target))
    assert len(by_image) == N_TEST and all(str(i).startswith("test/") for i in by_image)
    for pair in by_image.values():
        assert sorted(t for _, t in pair) == ["no", "yes"]
        assert len({k for k, _ in pair}) == 1 and pair[0][0] in ("color_existence", "shape_existence")


def test_jsonl_covers_every_question(exported: dict[str, Path]) -> None:
    test = read_jsonl(exported["jsonl_test"], exported["images"]).samples
    questions = easy_vqa_questions("test")
    ids = {int(Path(str(s.image_id)).stem) for s in test}
    assert len(ids) == N_TEST and len(test) == sum(len(questions[i]) for i in ids)
    assert {s.kind for s in test} <= {"color", "shape", "yes_no"}


def test_refuses_existing_folder_and_is_deterministic(exported: dict[str, Path], tmp_path: Path) -> None:
    out = exported["readme"].parent
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export_easy_vqa(out, N_TRAIN, N_TEST, seed=3)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    (tmp_path / "empty").mkdir()
    again = export_easy_vqa(tmp_path / "empty", N_TRAIN, N_TEST, seed=3)
    for name in ("captions", "vqa_train_annotations", "snli_ve_test", "refcoco_refs", "llava", "mme"):
        assert again[name].read_bytes() == exported[name].read_bytes(), name
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no partial folder left behind
