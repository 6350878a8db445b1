"""Reliability of the data side: bad records, images that convert wrongly, over-long samples, pickles, fuzzing.

Each fault found by fuzzing the readers has a test here; the property-based tests at the end feed random JSON
and random bytes to every reader and check that it returns samples or raises DataError, nothing else.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmpt.data.formats import common
from mmpt.data.formats.common import sample_problem, size_problem
from mmpt.data.formats.refcoco import convert_refcoco_refs
from mmpt.data.images import load_rgb, to_rgb
from mmpt.data.readers import (
    ReadResult,
    read_coco_karpathy,
    read_jsonl,
    read_llava,
    read_refcoco,
    read_snli_ve,
    read_vqav2,
)
from mmpt.data.sample import DataError, Sample
from mmpt.data.sources import read_source
from mmpt.data.validate import check_lengths
from mmpt.runconfig import SourceConfig

VQA_IMAGE = "COCO_val2014_000000000001.jpg"

# ------------------------------------------------------------------------------ one small file set per format
# Each format: documents(texts) -> {file name: JSON document} with one record per text (record i has id i and
# the text where the format puts its prompt / caption / question), and a read(folder, on_error) call.


def _jsonl_docs(texts: list[Any]) -> dict[str, Any]:
    return {"d.jsonl": [{"id": f"r{i}", "image": "a.png", "prompt": t, "target": "t"} for i, t in enumerate(texts)]}


def _vqa_docs(texts: list[Any]) -> dict[str, Any]:
    questions = [{"image_id": 1, "question": t, "question_id": i} for i, t in enumerate(texts)]
    answers = [{"answer": "yes", "answer_confidence": "yes", "answer_id": 1}]
    annotations = [{"question_id": i, "image_id": 1, "multiple_choice_answer": "yes", "answer_type": "yes/no",
                    "answers": answers} for i in range(len(texts))]  # fmt: skip
    return {"q.json": {"data_subtype": "val2014", "questions": questions},
            "a.json": {"data_subtype": "val2014", "annotations": annotations}}  # fmt: skip


def _karpathy_docs(texts: list[Any]) -> dict[str, Any]:
    images = [{"filename": "a.png", "imgid": i, "split": "test", "sentences": [{"raw": t, "sentid": i}]}
              for i, t in enumerate(texts)]  # fmt: skip
    return {"k.json": {"images": images, "dataset": "coco"}}


def _snli_docs(texts: list[Any]) -> dict[str, Any]:
    return {"s.jsonl": [{"Flickr30K_ID": "1", "sentence2": t, "gold_label": "entailment", "pairID": f"p{i}"}
                        for i, t in enumerate(texts)]}  # fmt: skip


def _llava_docs(texts: list[Any]) -> dict[str, Any]:
    return {"l.json": [{"id": f"r{i}", "image": "a.png", "conversations": [
        {"from": "human", "value": f"<image>\n{t}" if isinstance(t, str) else t}, {"from": "gpt", "value": "ok"}]}
        for i, t in enumerate(texts)]}  # fmt: skip


def _refcoco_docs(texts: list[Any], bbox: list[Any] | None = None, size: tuple[Any, Any] = (8, 8)) -> dict[str, Any]:
    refs = [{"ref_id": i, "ann_id": 1, "image_id": 1, "split": "train", "sentences": [{"sent": t, "sent_id": i}]}
            for i, t in enumerate(texts)]  # fmt: skip
    instances = {"images": [{"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]}],
                 "annotations": [{"id": 1, "image_id": 1, "bbox": bbox or [1, 1, 4, 4]}]}  # fmt: skip
    return {"refs.json": refs, "instances.json": instances}


Reader = Callable[[Path, Path, str], ReadResult]
FORMATS: dict[str, tuple[Callable[[list[Any]], dict[str, Any]], Reader]] = {
    "jsonl": (_jsonl_docs, lambda d, im, e: read_jsonl(d / "d.jsonl", im, on_error=e)),  # type: ignore[arg-type]
    "vqav2": (_vqa_docs, lambda d, im, e: read_vqav2(d / "q.json", d / "a.json", im, on_error=e)),  # type: ignore[arg-type]
    "karpathy": (_karpathy_docs, lambda d, im, e: read_coco_karpathy(d / "k.json", im, "test", on_error=e)),  # type: ignore[arg-type]
    "snli-ve": (_snli_docs, lambda d, im, e: read_snli_ve(d / "s.jsonl", im, on_error=e)),  # type: ignore[arg-type]
    "llava": (_llava_docs, lambda d, im, e: read_llava(d / "l.json", im, on_error=e)),  # type: ignore[arg-type]
    "refcoco": (
        _refcoco_docs,
        lambda d, im, e: read_refcoco(d / "refs.json", d / "instances.json", im, "train", on_error=e),  # type: ignore[arg-type]
    ),
}


def write_docs(folder: Path, docs: dict[str, Any]) -> None:
    """Each document as JSON, or one JSON value per line for a ``.jsonl`` name (a ``bytes`` line as it is)."""
    for name, doc in docs.items():
        if name.endswith(".jsonl") and isinstance(doc, list):
            lines = [d if isinstance(d, bytes) else json.dumps(d).encode() for d in doc]
            (folder / name).write_bytes(b"".join(line + b"\n" for line in lines))
        else:
            (folder / name).write_text(json.dumps(doc))


def write_images(folder: Path) -> Path:
    """The images the files above name, 8x8 RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "1.jpg", VQA_IMAGE):
        Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("images"))


def read(fmt: str, docs: dict[str, Any], images: Path, on_error: str) -> ReadResult:
    """``docs`` written to a fresh folder and read by ``fmt``'s reader."""
    with tempfile.TemporaryDirectory() as folder:
        write_docs(Path(folder), docs)
        return FORMATS[fmt][1](Path(folder), images, on_error)


def check_outcome(fmt: str, docs: dict[str, Any], images: Path) -> None:
    """The property: in both modes the reader returns usable samples or raises DataError (one line in raise)."""
    for on_error in ("raise", "skip"):
        try:
            result = read(fmt, docs, images, on_error)
        except DataError as exc:
            assert str(exc)
            if on_error == "raise":
                assert "\n" not in str(exc), str(exc)
            continue
        assert isinstance(result, ReadResult) and result.samples
        for sample in result.samples:
            assert sample_problem(sample) == "", sample
        assert len(result.problems) == min(result.skipped, 20)


# --------------------------------------------------------------------- 1. bad records: text, boxes, image size

SURROGATE = "What is \ud800 this?"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_lone_surrogate_text_is_a_bad_record(fmt: str, images: Path) -> None:
    docs = FORMATS[fmt][0](["What is this?", SURROGATE])
    with pytest.raises(DataError, match=r"not valid text: lone surrogate '\\ud800'") as raised:
        read(fmt, docs, images, "raise")
    message = str(raised.value)
    assert "\n" not in message and re.search(r"\[1\]|line 2", message), message
    assert "fix the text" in message and "on_error: skip" in message
    result = read(fmt, docs, images, "skip")
    assert len(result.samples) == 1 and result.skipped == 1
    assert "lone surrogate" in result.problems[0]
    assert all(s.prompt.encode("utf-8") for s in result.samples)


def test_jsonl_line_not_utf8_is_one_bad_record(images: Path) -> None:
    docs = {"d.jsonl": [{"id": "r0", "image": "a.png", "prompt": "p", "target": "t"}, b'{"prompt": "\xff"}']}
    with pytest.raises(DataError, match=r"^d\.jsonl line 2: not valid UTF-8 \(byte 12 of the line\); re-save"):
        read("jsonl", docs, images, "raise")
    result = read("jsonl", docs, images, "skip")
    assert [s.id for s in result.samples] == ["r0"] and result.skipped == 1


@pytest.mark.parametrize(
    ("bbox", "size", "problem"),
    [
        ([1, 1, float("inf"), 4], (8, 8), r"box \(x1, y1, x2, y2\) = \(1, 1, inf, 5\) is not finite"),
        ([float("nan"), 1, 4, 4], (8, 8), r"= \(nan, 1, nan, 5\) is not finite"),
        ([4, 1, -2, 4], (8, 8), r"has width -2 and height 4; both must be positive"),
        ([1, 1, 0, 4], (8, 8), r"has width 0 and height 4; both must be positive"),
        ([4, 4, 10, 2], (8, 8), r"reaches outside the 8x8 image"),
        ([-3, 1, 4, 4], (8, 8), r"reaches outside the 8x8 image"),
        ([1, 1, 4, 4], (0, 8), r"image size 0x8 is empty or impossible .*fix its width and height"),
        ([1, 1, 4, 4], (8, -1), r"image size 8x-1 is empty"),
        ([1, 1, 10**400, 4], (8, 8), r"key 'bbox' holds a number too large for a box"),
    ],
)
def test_bad_boxes_and_image_sizes_are_bad_records(
    bbox: list[Any], size: tuple[int, int], problem: str, images: Path
) -> None:
    docs = _refcoco_docs(["the lady"], bbox, size)
    with pytest.raises(DataError, match=r"^refs\.json\[0\] \(ref_id 0\)[,:] .*" + problem) as raised:
        read("refcoco", docs, images, "raise")
    assert "\n" not in str(raised.value) and "on_error: skip" in str(raised.value)
    docs["refs.json"].append({"ref_id": 1, "ann_id": 2, "image_id": 2, "split": "train",
                              "sentences": [{"sent": "ok", "sent_id": 1}]})  # fmt: skip
    docs["instances.json"]["images"].append({"id": 2, "file_name": "a.png", "width": 8, "height": 8})
    docs["instances.json"]["annotations"].append({"id": 2, "image_id": 2, "bbox": [0, 0, 8.5, 8]})  # within 1 px
    result = read("refcoco", docs, images, "skip")
    assert [s.id for s in result.samples] == ["1:1"] and result.skipped == 1


def test_image_file_of_size_zero_is_a_bad_record(
    tmp_path: Path, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Empty:  # PIL refuses such headers itself; this stands for a format that would not
        size = (0, 5)

        def __enter__(self) -> Empty:
            return self

        def __exit__(self, *args: object) -> None:
            pass

    monkeypatch.setattr(common.Image, "open", lambda path: Empty())
    with pytest.raises(DataError, match=r"^d\.jsonl line 1 \(id 'r0'\): unusable image .*a\.png: image size 0x5 is empty"):
        read("jsonl", _jsonl_docs(["p"]), images, "raise")
    with pytest.raises(DataError, match=r"no usable records \(1 skipped\)"):
        read("jsonl", _jsonl_docs(["p"]), images, "skip")


def test_sample_check_covers_every_text_field_and_box() -> None:
    good = Sample(Path("a.png"), "p", "t", box=(1.0, 1.0, 4.0, 4.0), image_size=(8, 8))
    assert sample_problem(good) == ""
    assert "answers[1]" in sample_problem(Sample(Path("a.png"), "p", "t", answers=("a", "\udfff")))
    assert "context[0][1]" in sample_problem(Sample(Path("a.png"), "p", "t", context=(("q", "\ud800"),)))
    assert "not finite" in sample_problem(Sample(Path("a.png"), "p", "t", box=(0.0, 0.0, float("inf"), 1.0)))
    assert size_problem((0, 5)) and size_problem((5, 2**40)) and not size_problem((1, 1))


def test_huge_numbers_and_deep_nesting_are_data_errors(images: Path, tmp_path: Path) -> None:
    deep = tmp_path / "d.jsonl"
    deep.write_text('{"image": "a.png", "prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n" + "1" * 5000 + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl line 1: unusable JSON \(maximum recursion depth"):
        read_jsonl(deep, images)
    with pytest.raises(DataError, match=r"no usable records \(2 skipped\).*\n.*\n  d\.jsonl line 2: unusable JSON"):
        read_jsonl(deep, images, on_error="skip")
    big = tmp_path / "k.json"
    big.write_text('{"images": [' + "1" * 5000 + "]}")
    with pytest.raises(DataError, match=r"Karpathy split file .*k\.json is not usable JSON: Exceeds the limit"):
        read_coco_karpathy(big, images, "test")


# ----------------------------------------------------------------------------- 2. images converted correctly


def test_16bit_png_keeps_its_range(tmp_path: Path) -> None:
    values = np.full((6, 10), 30000, np.uint16)
    values[:, :5] = 10000
    Image.fromarray(values).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        assert im.mode.startswith("I")  # "I;16" (older Pillow: "I")
        assert np.asarray(im.convert("RGB")).mean() > 250  # the bug: PIL clips to white
    rgb = np.asarray(load_rgb(tmp_path / "x.png"))
    assert rgb.shape == (6, 10, 3) and rgb.dtype == np.uint8
    assert abs(rgb.mean() - 20000 / 257) < 1


def test_float_tiff_in_unit_range_and_beyond(tmp_path: Path) -> None:
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "unit.tiff")
    with Image.open(tmp_path / "unit.tiff") as im:
        assert im.mode == "F" and np.asarray(im.convert("RGB")).mean() < 1  # the bug: black
    assert abs(np.asarray(load_rgb(tmp_path / "unit.tiff")).mean() - 127.5) < 1
    Image.fromarray(ramp * 4000 - 1000).save(tmp_path / "wide.tiff")  # min-max normalized
    rgb = np.asarray(load_rgb(tmp_path / "wide.tiff"))
    assert abs(rgb.mean() - 127.5) < 1 and rgb.min() == 0 and rgb.max() == 255


def test_other_modes(tmp_path: Path) -> None:
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 65535, np.int32)))).mean() == 255  # I as 16-bit
    wide = np.array([[-5, 0], [5, 10**6]], np.int32)
    assert np.asarray(to_rgb(Image.fromarray(wide))).tolist()[0][0] == [0, 0, 0]
    nan = np.array([[np.nan, 2.0], [np.inf, 4.0]], np.float32)
    assert np.asarray(to_rgb(Image.fromarray(nan)))[:, :, 0].tolist() == [[0, 0], [0, 255]]
    rgba = Image.new("RGBA", (3, 3), (10, 20, 30, 0))
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [10, 20, 30]
    palette = Image.new("P", (3, 3), 0)
    assert to_rgb(palette).mode == "RGB" and to_rgb(Image.new("CMYK", (2, 2))).mode == "RGB"


def test_open_image_uses_the_conversion(tmp_path: Path) -> None:
    from mmpt.tasks.common import open_image

    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "half.tiff")
    image = open_image(tmp_path / "half.tiff")
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert np.asarray(image).mean() == 128


# ---------------------------------------------------------------------------------- 3. prompt + answer length


def _samples(*ids: str) -> list[Sample]:
    return [Sample(Path("a.png"), "x " * (10 * (i + 1)), "y", id=name) for i, name in enumerate(ids)]


def test_check_lengths(caplog: pytest.LogCaptureFixture) -> None:
    samples = _samples("q1", "q2", "q3")  # 10, 20, 30 words

    def count(s: Sample) -> int:
        return len(s.prompt.split()) + len(s.target.split())

    assert check_lengths(samples, count, 31, "raise", "data.train") == samples
    with pytest.raises(
        DataError,
        match=r"^data\.train: record 'q3' has 31 tokens \(prompt \+ answer\), over the limit of 25; shorten",
    ) as raised:
        check_lengths(samples, count, 25, "raise", "data.train")
    assert "\n" not in str(raised.value) and "raise the limit" in str(raised.value)
    with caplog.at_level(logging.WARNING, logger="mmpt"):
        kept = check_lengths(samples, count, 15, "skip", "data.eval")
    assert kept == samples[:1]
    assert "data.eval: skipped 2 sample(s) longer than 15 tokens" in caplog.text and "'q3' with 31" in caplog.text
    no_id = [Sample(Path("a.png"), "p " * 50, "t")]
    with pytest.raises(DataError, match=r"sample #0 \(no record id\) has 51 tokens"):
        check_lengths(no_id, count, 10, "raise", "data.train")
    with pytest.raises(ValueError, match="on_error"):
        check_lengths(samples, count, 10, "ignore", "x")
    with pytest.raises(ValueError, match="limit"):
        check_lengths(samples, count, 0, "raise", "x")


# ------------------------------------------------------------------------------------------ 4. refs pickles


class _Payload:
    """Unpickling this with a plain ``pickle.load`` would run ``os.system``: create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_crafted_refs_pickle_is_refused_and_does_not_run(tmp_path: Path, images: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    crafted = tmp_path / "refs(unc).p"
    crafted.write_bytes(pickle.dumps([{"ref_id": 0}, _Payload(marker)], protocol=protocol))
    docs = _refcoco_docs(["x"])
    write_docs(tmp_path, {"instances.json": docs["instances.json"]})
    with pytest.raises(DataError, match=r"is a Python pickle, and loading a pickle can run code"):
        read_refcoco(crafted, tmp_path / "instances.json", images, "train")
    with pytest.raises(DataError, match=r"cannot unpickle .*: it names the Python object (posix|os)\.system"):
        read_refcoco(crafted, tmp_path / "instances.json", images, "train", allow_pickle=True)
    with pytest.raises(DataError, match=r"it names the Python object"):
        convert_refcoco_refs(crafted, tmp_path / "refs.json")
    assert not marker.exists() and not (tmp_path / "refs.json").exists()


def test_refs_pickle_must_hold_plain_data(tmp_path: Path) -> None:
    loop: list[Any] = []
    loop.append(loop)
    for value, problem in ((loop, "contains itself"), ([{"ref_id": 2**70}], "more than 19 digits"),
                           ({1, 2}, "holds a set"), ([b"raw"], "holds a bytes")):  # fmt: skip
        (tmp_path / "r.p").write_bytes(pickle.dumps(value, protocol=4))
        with pytest.raises(DataError, match=problem):
            convert_refcoco_refs(tmp_path / "r.p", tmp_path / "r.json")
    (tmp_path / "r.p").write_bytes(pickle.dumps({"not": "a list"}, protocol=2))
    with pytest.raises(DataError, match="expected a list of refs, got dict"):
        convert_refcoco_refs(tmp_path / "r.p", tmp_path / "r.json")
    with pytest.raises(DataError, match="would overwrite the pickle"):
        convert_refcoco_refs(tmp_path / "r.p", tmp_path / "r.p")


def test_read_source_threads_allow_pickle(tmp_path: Path, images: Path) -> None:
    docs = _refcoco_docs(["the lady"])
    write_docs(tmp_path, {"instances.json": docs["instances.json"]})
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(docs["refs.json"], protocol=2))
    source = SourceConfig(format="refcoco", refs=str(tmp_path / "refs(unc).p"),
                          instances=str(tmp_path / "instances.json"), images=str(images), split="train")  # fmt: skip
    with pytest.raises(DataError, match="allow_pickle: true"):
        read_source(source)
    source.allow_pickle = True
    assert [s.id for s in read_source(source)] == ["0:0"]


# ------------------------------------------------------------------------------- 5. property-based fuzzing

TEXT = st.text(alphabet=st.characters() | st.characters(categories=["Cs"]), max_size=6)
KEYS = st.sampled_from([
    "id", "image", "prompt", "target", "answers", "kind", "question", "question_id", "image_id", "questions",
    "annotations", "multiple_choice_answer", "answer_type", "answer", "images", "filename", "filepath", "split",
    "sentences", "raw", "sentid", "cocoid", "imgid", "Flickr30K_ID", "sentence2", "gold_label", "pairID",
    "conversations", "from", "value", "ref_id", "ann_id", "sent", "sent_id", "bbox", "width", "height",
    "file_name", "data_subtype",
])  # fmt: skip
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT
    | st.sampled_from([0, -1, 10**30, 1e308, "", "a.png", "1.jpg", "train", "test", "human", "gpt", "entailment",
                       "val2014", "../a.png", "/", "\x00", "{question}"])
)  # fmt: skip
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS | TEXT, inner, max_size=5),
    max_leaves=12,
)  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a JSON document, as the keys and indices leading to it."""
    out = [prefix]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out += _paths(child, (*prefix, key))
    return out


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with 1 to 3 parts replaced by random JSON, removed, or given a random extra key (a near-valid
    document reaches the deeper code of a reader)."""
    value = copy.deepcopy(value)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(value)))
        operation = draw(st.sampled_from(["replace", "remove", "add"]))
        if not path:
            value = draw(JSON)
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        if operation == "replace":
            parent[path[-1]] = draw(JSON)
        elif operation == "remove":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(KEYS)] = draw(JSON)
        elif isinstance(parent[path[-1]], list):
            parent[path[-1]].append(draw(JSON))
    return value


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@FUZZ
@given(data=st.data())
def test_readers_on_random_json(fmt: str, images: Path, data: st.DataObject) -> None:
    valid = FORMATS[fmt][0](["What is this?", "Two dogs."])
    if data.draw(st.booleans(), label="random shape"):
        docs = {name: data.draw(JSON, label=name) for name in valid}
    else:
        docs = {name: data.draw(mutated(doc), label=name) for name, doc in valid.items()}
    check_outcome(fmt, docs, images)


def _encoded(kind: str) -> bytes:
    """A small valid image file in one of several formats and modes."""
    arrays = {"png16": np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000,
              "tiff": np.linspace(-1, 3, 64, dtype=np.float32).reshape(8, 8)}  # fmt: skip
    image = Image.fromarray(arrays[kind]) if kind in arrays else Image.new("RGB", (8, 8), (9, 99, 199))
    out = io.BytesIO()
    image.save(out, {"png16": "PNG", "tiff": "TIFF"}.get(kind, kind))
    return out.getvalue()


VALID_IMAGES = {kind: _encoded(kind) for kind in ("png16", "tiff", "PNG", "JPEG", "GIF", "BMP", "WEBP")}


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid image file truncated or with some bytes changed."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=200))
    raw = bytearray(VALID_IMAGES[draw(st.sampled_from(sorted(VALID_IMAGES)))])
    for _ in range(draw(st.integers(0, 6))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw[: draw(st.integers(0, len(raw)))])


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")
@FUZZ
@given(content=image_bytes())
def test_random_bytes_as_images(content: bytes) -> None:
    from mmpt.tasks.common import open_image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, 10**6  # a damaged header may claim 10^8 pixels
    try:
        _open_through_reader_and_model_input(content, open_image)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _open_through_reader_and_model_input(content: bytes, open_image: Callable[..., Any]) -> None:
    """``content`` as the image of a JSONL record: read in both modes, then opened as the model would."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "a.png").write_bytes(content)
        for on_error in ("raise", "skip"):
            try:
                samples = read_jsonl_one(Path(folder), on_error)
            except DataError:
                continue
            try:
                image = open_image(samples[0].image, samples[0])
            except DataError as exc:
                assert "\n" not in str(exc) and "replace the file" in str(exc)
                continue
            assert isinstance(image, Image.Image) and image.mode == "RGB" and min(image.size) >= 1


def read_jsonl_one(folder: Path, on_error: str) -> list[Sample]:
    """One JSONL record naming ``folder/a.png``, read."""
    write_docs(folder, _jsonl_docs(["p"]))
    return read_jsonl(folder / "d.jsonl", folder, on_error=on_error).samples  # type: ignore[arg-type]
