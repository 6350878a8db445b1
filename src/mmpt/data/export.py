"""Export the packaged easy-VQA data into the real on-disk formats mmpt's readers read.

:func:`export_easy_vqa` writes Karpathy captions, VQAv2, SNLI-VE, RefCOCO, LLaVA (+ an MME-style held-out
yes/no file) and generic JSONL files for a seeded subset of easy-VQA's images, so every task pipeline can run
on the default data. ``README.md`` in the output folder says how each file was derived and its caveats.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmpt.data.easyvqa import COLORS, SHAPES, Split, _questions, data_root, question_type
from mmpt.data.images import load_rgb

TEST_ID_OFFSET = 100_000
"""Exported id of easy-VQA test image ``i``: ``TEST_ID_OFFSET + i`` (train image ``i`` keeps id ``i``)."""
VAL_FRACTION = 0.1
RGB = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
    "gray": (128, 128, 128), "yellow": (255, 255, 0), "teal": (0, 128, 128), "brown": (165, 42, 42),
}  # fmt: skip
"""The fill colors easy-VQA draws with (measured on its images)."""
CAPTIONS = (
    "A {color} {shape}.", "A {shape} colored {color}.", "There is a {color} {shape} on a light background."
)  # fmt: skip
ENTAIL_COLOR = ("The shape is {color}.", "Something {color} is shown.", "The image contains a {color} shape.")
ENTAIL_SHAPE = ("There is a {shape}.", "The image shows a {shape}.", "A {shape} is drawn.")
NEUTRAL = (
    "The {shape} was drawn by a child.", "The {shape} is made of wood.", "The {shape} is heavy.",
    "The {color} {shape} is someone's favorite.", "The picture was made in the morning.",
    "The {shape} is about to move.",
)  # fmt: skip
SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's suffix for VQA data
MME_SUFFIX = "Please answer yes or no."  # MME's prompt suffix


@dataclass
class _Image:
    """One exported image and what is known about it."""

    split: str  # train / val / test
    source: Path  # the package's PNG
    name: str  # its path under images/: "train/12.png"
    gid: int  # exported image id
    color: str
    shape: str
    box: tuple[int, int, int, int]  # tight [x, y, width, height] of the shape
    area: int  # shape pixels
    size: tuple[int, int]
    questions: list[tuple[str, str]]


def _facts(split: Split) -> tuple[dict[int, str], dict[int, str]]:
    """Color and shape per image, read off the questions that state them (``what color is the circle?``)."""
    color: dict[int, str] = {}
    shape: dict[int, str] = {}
    for q, a, i in _questions(split):
        words = q.rstrip("?").split()
        kind = question_type(a)
        if kind == "yes_no":  # "is there (not) a red shape?": the named word is present when yes != negated
            negated = " not " in f" {q} " or q.startswith("is no ")
            if (a == "yes") == negated:
                continue
        else:
            (color if kind == "color" else shape)[i] = a
        for w in words:
            if w in COLORS and kind != "color":
                color[i] = w
            elif w in SHAPES and kind != "shape":
                shape[i] = w
    return color, shape


def _unpack(value: int) -> np.ndarray:
    """``0xRRGGBB`` -> ``[R, G, B]``."""
    return np.array([(value >> s) & 255 for s in (16, 8, 0)])


def _analyse(path: Path) -> tuple[tuple[int, int, int, int], int, str, str, tuple[int, int]]:
    """Tight box, pixel count, color and shape of an image's shape, from its pixels.

    The background is the most common color (a light tint, different per image). A pixel belongs to the shape
    when it differs from the background by more than half the shape's contrast: antialiased edge pixels that
    are less than half covered are left out. The color is the named color nearest to the shape's commonest
    pixel; the shape follows from how much of its box it fills (rectangle ~1, circle ~0.8, triangle ~0.55).
    """
    rgb = np.asarray(load_rgb(path), dtype=np.int32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    values, counts = np.unique(packed, return_counts=True)
    background = _unpack(int(values[counts.argmax()]))
    diff = np.abs(rgb - background).max(-1)
    mask = diff * 2 > diff.max()
    ys, xs = np.nonzero(mask)
    x, y, w, h = int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
    fill_values, fill_counts = np.unique(packed[mask], return_counts=True)
    fill = _unpack(int(fill_values[fill_counts.argmax()]))
    color = min(RGB, key=lambda c: int(np.abs(fill - np.array(RGB[c])).sum()))
    ratio = mask.sum() / (w * h)
    shape = "rectangle" if ratio > 0.94 else "circle" if ratio > 0.71 else "triangle"
    return (x, y, w, h), int(mask.sum()), color, shape, (rgb.shape[1], rgb.shape[0])


def _select(split: Split, n: int, rng: random.Random) -> list[_Image]:
    """``n`` seeded images of an easy-VQA split with their questions, color, shape and box."""
    questions: dict[int, list[tuple[str, str]]] = {}
    for q, a, i in _questions(split):
        questions.setdefault(i, []).append((q, a))
    if n > len(questions):
        raise ValueError(f"easy-VQA {split} has {len(questions)} images; asked for {n}")
    colors, shapes = _facts(split)
    images = []
    for i in sorted(rng.sample(sorted(questions), n)):
        source = data_root() / split / "images" / f"{i}.png"
        box, area, color, shape, size = _analyse(source)
        gid = i + (TEST_ID_OFFSET if split == "test" else 0)
        images.append(
            _Image(split, source, f"{split}/{i}.png", gid, colors.get(i, color), shapes.get(i, shape),
                   box, area, size, questions[i])
        )  # fmt: skip
    return images


def _link(source: Path, target: Path) -> None:
    """Hard link ``target`` to ``source``, or copy where links are not possible (other file system)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _write_json(path: Path, data: Any) -> Path:
    """``data`` as compact JSON at ``path`` (folders made); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, separators=(",", ":")))
    return path


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    """One JSON object per line at ``path`` (folders made); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _write_images(out: Path, images: list[_Image]) -> dict[str, Path]:
    """PNGs under images/ (links to the package), JPEGs for the readers that want ``.jpg`` names."""
    for img in images:
        _link(img.source, out / "images" / img.name)
        jpeg = out / "snli_ve" / "images" / f"{img.gid}.jpg"
        jpeg.parent.mkdir(parents=True, exist_ok=True)
        load_rgb(img.source).save(jpeg, quality=95)
        if img.split != "test":
            subtype = f"{img.split}2014"
            _link(jpeg, out / "vqa" / "images" / subtype / f"COCO_{subtype}_{img.gid:012d}.jpg")
    vqa = out / "vqa" / "images"
    return {"images": out / "images", "snli_ve_images": out / "snli_ve" / "images",
            "vqa_train_images": vqa / "train2014", "vqa_val_images": vqa / "val2014"}  # fmt: skip


def _write_captions(out: Path, images: list[_Image]) -> dict[str, Path]:
    """Karpathy split file, Flickr30k style (no ``filepath``; ``filename`` relative to images/)."""
    records, sentid = [], 0
    for img in images:
        sentences = []
        for template in CAPTIONS:
            raw = template.format(color=img.color, shape=img.shape)
            tokens = raw.lower().rstrip(".").split()
            sentences.append({"raw": raw, "tokens": tokens, "imgid": img.gid, "sentid": sentid})
            sentid += 1
        records.append({"filename": img.name, "imgid": img.gid, "split": img.split, "sentences": sentences,
                        "sentids": [s["sentid"] for s in sentences]})  # fmt: skip
    path = _write_json(out / "captions" / "dataset_easyvqa.json", {"images": records, "dataset": "easyvqa"})
    return {"captions": path}


def _write_vqa(out: Path, images: list[_Image]) -> dict[str, Path]:
    """Official VQAv2 questions and annotations files: train2014 (train split) and val2014 (val split)."""
    paths: dict[str, Path] = {}
    for split in ("train", "val"):
        subtype = f"{split}2014"
        questions, annotations = [], []
        for img in (i for i in images if i.split == split):
            for k, (question, answer) in enumerate(img.questions):
                qid = img.gid * 1000 + k
                questions.append({"image_id": img.gid, "question": question, "question_id": qid})
                ten = [{"answer": answer, "answer_confidence": "yes", "answer_id": j} for j in range(1, 11)]
                annotations.append({
                    "question_id": qid, "image_id": img.gid, "answers": ten, "multiple_choice_answer": answer,
                    "answer_type": "yes/no" if answer in ("yes", "no") else "other",
                    "question_type": " ".join(question.split()[:2]),
                })  # fmt: skip
        common = {"task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": subtype,
                  "info": {"description": "easy-VQA exported by mmpt"}, "license": {}}  # fmt: skip
        paths[f"vqa_{split}_questions"] = _write_json(
            out / "vqa" / f"v2_OpenEnded_mscoco_{subtype}_questions.json", {**common, "questions": questions}
        )
        paths[f"vqa_{split}_annotations"] = _write_json(
            out / "vqa" / f"v2_mscoco_{subtype}_annotations.json", {**common, "annotations": annotations}
        )
    return paths


def _write_snli_ve(out: Path, images: list[_Image], rng: random.Random) -> dict[str, Path]:
    """Two entailment, two contradiction and two neutral hypotheses per image (balanced labels)."""
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "dev": [], "test": []}
    for img in images:
        other_color = rng.choice([c for c in COLORS if c != img.color])
        other_shape = rng.choice([s for s in SHAPES if s != img.shape])
        hypotheses = [
            ("entailment", rng.choice(ENTAIL_COLOR).format(color=img.color)),
            ("entailment", rng.choice(ENTAIL_SHAPE).format(shape=img.shape)),
            ("contradiction", rng.choice(ENTAIL_COLOR).format(color=other_color)),
            ("contradiction", rng.choice(ENTAIL_SHAPE).format(shape=other_shape)),
        ] + [("neutral", t.format(color=img.color, shape=img.shape)) for t in rng.sample(NEUTRAL, 2)]
        caption_id = f"{img.gid}.jpg#0"
        premise = CAPTIONS[0].format(color=img.color, shape=img.shape)
        for k, (label, hypothesis) in enumerate(hypotheses):
            rows["dev" if img.split == "val" else img.split].append({
                "Flickr30K_ID": str(img.gid), "captionID": caption_id, "sentence1": premise,
                "sentence2": hypothesis, "gold_label": label, "pairID": f"{caption_id}r{k}{label[0]}",
            })  # fmt: skip
    return {f"snli_ve_{s}": _write_jsonl(out / "snli_ve" / f"snli_ve_{s}.jsonl", r) for s, r in rows.items()}


def _write_refcoco(out: Path, images: list[_Image], rng: random.Random) -> dict[str, Path]:
    """``refs(unc).json`` and ``instances.json``: one ref (the shape, 2 sentences) per image (the refs as
    JSON, what :func:`~mmpt.data.formats.refcoco.convert_refcoco_refs` makes of the released pickles)."""
    test = [img.gid for img in images if img.split == "test"]
    test_a = set(rng.sample(test, len(test) // 2))
    category = {s: k + 1 for k, s in enumerate(SHAPES)}
    refs, infos, annotations = [], [], []
    for ref_id, img in enumerate(images):
        split = img.split if img.split != "test" else "testA" if img.gid in test_a else "testB"
        sents = [f"the {img.color} {img.shape}", f"{img.color} shape"]
        sentences = [
            {"sent": s, "raw": s, "tokens": s.split(), "sent_id": 2 * ref_id + j} for j, s in enumerate(sents)
        ]
        refs.append({"ref_id": ref_id, "ann_id": img.gid, "image_id": img.gid, "split": split,
                     "category_id": category[img.shape], "file_name": f"{img.gid}_{img.gid}.png",
                     "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences})  # fmt: skip
        infos.append({"id": img.gid, "file_name": img.name, "width": img.size[0], "height": img.size[1]})
        annotations.append({"id": img.gid, "image_id": img.gid, "category_id": category[img.shape],
                            "bbox": list(img.box), "area": img.area, "iscrowd": 0})  # fmt: skip
    categories = [{"id": k, "name": s, "supercategory": "shape"} for s, k in category.items()]
    refs_path = _write_json(out / "refcoco" / "refs(unc).json", refs)
    instances = {"images": infos, "annotations": annotations, "categories": categories}
    instances_path = _write_json(out / "refcoco" / "instances.json", instances)
    return {"refcoco_refs": refs_path, "refcoco_instances": instances_path}


def _mme_pair(img: _Image, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """``(subtask, question, answer, source)``: one "yes" and one "no" question of one subtask.

    The subtask is one (in random order) for which the image has both a "yes" and a "no" easy-VQA question;
    where neither has, a random one, and the missing question is written in easy-VQA's wording ("is there a
    red shape?", "is there a circle in the image?").
    """
    tasks = rng.sample(("color_existence", "shape_existence"), 2)
    own: dict[str, list[tuple[str, str]]] = {task: [] for task in tasks}
    for q, a in img.questions:
        if a in ("yes", "no"):
            names_color = any(w in COLORS for w in q.split())
            own["color_existence" if names_color else "shape_existence"].append((q, a))
    task = next((t for t in tasks if {a for _, a in own[t]} == {"yes", "no"}), tasks[0])
    is_color = task == "color_existence"
    pair = []
    for answer in ("yes", "no"):
        found = [qa for qa in own[task] if qa[1] == answer]
        if found:
            pair.append((*rng.choice(found), "easy-vqa"))
            continue
        true, pool = (img.color, COLORS) if is_color else (img.shape, SHAPES)
        word = true if answer == "yes" else rng.choice([w for w in pool if w != true])
        question = f"is there a {word} shape?" if is_color else f"is there a {word} in the image?"
        pair.append((question, answer, "template"))
    rng.shuffle(pair)
    return [(task, *qas) for qas in pair]


def _names_color(question: str) -> bool:
    return any(w in COLORS for w in question.rstrip("?").split())


def _write_llava(out: Path, images: list[_Image], rng: random.Random) -> dict[str, Path]:
    """LLaVA conversations of 2-3 questions per train image (1 where an image has one): color and shape
    questions, and the yes/no questions about a color ("is there a red shape?") with MME's suffix. Yes/no
    questions about shapes are held out: MME's ``shape_existence`` is the unseen task."""
    records = []
    for img in (i for i in images if i.split == "train"):
        turns = [qa for qa in img.questions if qa[1] not in ("yes", "no") or _names_color(qa[0])]
        rng.shuffle(turns)
        start = 0
        while start < len(turns):
            size = 2 if len(turns) - start in (2, 4) else min(3, len(turns) - start)
            conversation = []
            for k, (q, a) in enumerate(turns[start : start + size]):
                marker = "<image>\n" if k == 0 else ""
                human = f"{marker}{q}\n{MME_SUFFIX if a in ('yes', 'no') else SHORT_ANSWER}"
                conversation += [{"from": "human", "value": human}, {"from": "gpt", "value": a}]
            records.append({"id": f"{img.gid}-{start}", "image": img.name, "conversations": conversation})
            start += size
    return {"llava": _write_json(out / "llava" / "llava_easyvqa.json", records)}


def _write_mme(out: Path, images: list[_Image], rng: random.Random) -> dict[str, Path]:
    """The held-out yes/no task, MME-style: a yes/no pair per test image, generic JSONL."""
    records = [
        {"image": img.name, "prompt": f"{q} {MME_SUFFIX}", "target": a, "kind": task, "id": f"{img.gid}-{k}",
         "source": source}
        for img in images if img.split == "test" for k, (task, q, a, source) in enumerate(_mme_pair(img, rng))
    ]  # fmt: skip
    return {"mme": _write_jsonl(out / "llava" / "mme_easyvqa.jsonl", records)}


def _write_generic(out: Path, images: list[_Image]) -> dict[str, Path]:
    """Generic JSONL VQA files, one per split, every question of the split's images."""
    return {
        f"jsonl_{split}": _write_jsonl(out / "jsonl" / f"{split}.jsonl", (
            {"image": img.name, "prompt": q, "target": a, "kind": question_type(a), "id": f"{img.gid}-{k}"}
            for img in images if img.split == split for k, (q, a) in enumerate(img.questions)
        ))
        for split in ("train", "val", "test")
    }  # fmt: skip


README = """# easy-VQA in the real dataset formats

Written by `mmpt.data.export.export_easy_vqa` (seed {seed}): {n_train} train, {n_val} val (carved from
easy-VQA's train split, {val_pct}%) and {n_test} test images of easy-VQA (64x64 PNG, one colored shape on a
light, slightly tinted background). **Synthetic data**: for exercising pipelines, not for benchmark numbers.
Image ids: easy-VQA train image `i` keeps id `i`; test image `i` has id `{offset} + i`. Every format uses the
same train / val / test images, so no image is trained on in one format and evaluated on in another.

Files, with the mmpt reader (`format:`) and the `images` folder to give it:

* `images/{{train,test}}/<i>.png`: the images (hard links to the installed easy-vqa package where possible:
  do not edit them in place).
* `captions/dataset_easyvqa.json` (`flickr30k-karpathy`, images `images/`): Karpathy split file, 3 captions
  per image, splits train / val / test.
* `vqa/v2_OpenEnded_mscoco_{{train,val}}2014_questions.json`,
  `vqa/v2_mscoco_{{train,val}}2014_annotations.json` (`vqav2`, images `vqa/images/train2014`,
  `vqa/images/val2014`): every question of the train / val images.
* `snli_ve/snli_ve_{{train,dev,test}}.jsonl` (`snli-ve`, images `snli_ve/images`, JPEG quality 95 as the
  reader wants `<id>.jpg`): 6 hypotheses per image, 2 per label; dev = the val images.
* `refcoco/refs(unc).json`, `refcoco/instances.json` (`refcoco`, images `images/`): one ref per image, splits
  train / val / testA / testB.
* `llava/llava_easyvqa.json` (`llava`, images `images/`): the color and shape questions of the train images
  as conversations of 2-3 turns (1 where an image has one such question).
* `llava/mme_easyvqa.jsonl` (`jsonl`, images `images/`): held-out yes/no task on test images, MME-style.
* `jsonl/{{train,val,test}}.jsonl` (`jsonl`, images `images/`): every question of each split's images, `kind`
  = the easy-VQA question type (color / shape / yes_no).

How it was derived, and the caveats:

* **Color and shape** of each image come from the questions that state them (e.g. "what color is the
  circle?" -> blue, circle); where none does, from the pixels (the named color nearest the fill; the shape
  from how much of its box it fills). The two agree on every easy-VQA image where both are known.
* **Boxes** (RefCOCO): the tight box of the pixels that differ from the background (the commonest color) by
  more than half the shape's contrast; antialiased edge pixels less than half covered are outside.
* **VQAv2**: easy-VQA has one answer per question, so all 10 answers equal it (VQA accuracy is then exact
  match). `answer_type` is `yes/no` or `other`; `question_type` is the question's first two words. The
  JPEGs (quality 95) are hard links of the SNLI-VE ones, under the official `COCO_<subset>_<id:012d>.jpg`
  names.
* **SNLI-VE**: the premise is the first caption; hypotheses come from templates: entailment states the true
  color or shape, contradiction a false color or shape, neutral something the image cannot tell ("The circle
  is made of wood.", "The circle was drawn by a child."). These neutral statements are our choice, by
  template, not annotated.
* **RefCOCO**: sentences "the <color> <shape>" and "<color> shape"; testA and testB are a seeded half of the
  test images each (not people / other objects as in RefCOCO). Categories are the 3 shapes.
* **LLaVA**: color and shape questions end with LLaVA-1.5's "{short}"; yes/no questions that name a color
  ("is there a red shape?") end with MME's "{mme}". Yes/no questions about shapes are held out of this file:
  in the MME file, `shape_existence` is an unseen task, `color_existence` a seen task on unseen images.
* **MME**: per test image exactly 2 questions of one subtask (`color_existence` if the question names a
  color, else `shape_existence`; one for which the image has a "yes" and a "no" question, picked at random
  if both do), one "yes" and one "no": the image's own easy-VQA questions where it has them, else written
  in easy-VQA's wording ("is there a red shape?"; those records have `"source": "template"`, the others
  `"easy-vqa"`). Prompts end with MME's suffix "{mme}" Score with MME acc / acc+ (per subtask, image).
"""


def _write_readme(out: Path, images: list[_Image], seed: int) -> dict[str, Path]:
    """``README.md``: what each file is and how it was derived."""
    count = {s: sum(i.split == s for i in images) for s in ("train", "val", "test")}
    text = README.format(seed=seed, n_train=count["train"], n_val=count["val"], n_test=count["test"],
                         val_pct=round(VAL_FRACTION * 100), offset=TEST_ID_OFFSET, short=SHORT_ANSWER,
                         mme=MME_SUFFIX)  # fmt: skip
    (out / "README.md").write_text(text)
    return {"readme": out / "README.md"}


def _refuse_nonempty(out: Path) -> None:
    """FileExistsError unless ``out`` is missing or an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; export into a new or empty folder")


def export_easy_vqa(
    out_dir: str | Path, train_images: int | None = None, test_images: int | None = None, seed: int = 0
) -> dict[str, Path]:
    """Write easy-VQA images and annotations under ``out_dir`` in the formats of every mmpt reader.

    Args:
        out_dir: a new or empty folder (anything else is refused: user files are never overwritten).
        train_images: easy-VQA train images to use (default 600; 2 to 4,000); ~10% become the val split.
        test_images: easy-VQA test images to use (default 200; 2 to 1,000).
        seed: picks the images, the val split, hypotheses, testA/testB and question pairs (deterministic).

    Returns:
        name -> path of the main files and image folders (``captions``, ``vqa_train_questions``,
        ``snli_ve_dev``, ``refcoco_refs``, ``llava``, ``mme``, ``jsonl_test``, ``images``, ...); see
        ``out_dir/README.md`` for what each holds and which reader and images folder go with it.
    """
    out = Path(out_dir)
    _refuse_nonempty(out)
    n_train = 600 if train_images is None else train_images
    n_test = 200 if test_images is None else test_images
    if n_train < 2 or n_test < 2:
        raise ValueError(f"need 2+ train and 2+ test images (every split non-empty); got {n_train}, {n_test}")
    train = _select("train", n_train, random.Random(f"{seed}-train"))
    test = _select("test", n_test, random.Random(f"{seed}-test"))
    n_val = max(1, round(VAL_FRACTION * n_train))
    for img in random.Random(f"{seed}-val").sample(train, n_val):
        img.split = "val"
    images = train + test
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"  # renamed to out_dir when complete
    tmp.mkdir()
    try:
        paths = {
            **_write_images(tmp, images),
            **_write_captions(tmp, images),
            **_write_vqa(tmp, images),
            **_write_snli_ve(tmp, images, random.Random(f"{seed}-snli")),
            **_write_refcoco(tmp, images, random.Random(f"{seed}-refcoco")),
            **_write_llava(tmp, images, random.Random(f"{seed}-llava")),
            **_write_mme(tmp, images, random.Random(f"{seed}-mme")),
            **_write_generic(tmp, images),
            **_write_readme(tmp, images, seed),
        }
        _refuse_nonempty(out)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {name: out / path.relative_to(tmp) for name, path in paths.items()}
