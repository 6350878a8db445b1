"""Captions in Karpathy split files (``dataset_coco.json``, ``dataset_flickr30k.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmpt.data.formats.common import (
    OnError,
    ReadResult,
    as_dict,
    check_args,
    check_image,
    collect,
    get_key,
    get_list,
    load_json,
    nonempty,
    require_dir,
    require_file,
    with_id,
)
from mmpt.data.sample import DataError, Sample


def read_coco_karpathy(
    path: str | Path,
    images: str | Path,
    split: str,
    *,
    on_error: OnError = "raise",
    per_caption: bool | None = None,
    prompt: str = "Describe the image briefly.",
    limit: int | None = None,
) -> ReadResult:
    """Captions from a Karpathy split file (``dataset_coco.json``, ``dataset_flickr30k.json``).

    Args:
        path: the split file.
        images: the folder holding ``train2014/`` and ``val2014/`` (COCO: the image is
            ``images/filepath/filename``), or the Flickr30k images folder (``images/filename``).
        split: ``train`` (which includes ``restval``, the standard Karpathy practice: 113,287 COCO images),
            ``restval``, ``val`` or ``test``.
        on_error: ``raise`` or ``skip`` malformed records and missing images.
        per_caption: one Sample per caption (target: that caption) when True; one per image (target: the first
            caption, ``answers``: all of them) when False. None: True for ``train``/``restval``, else False.
        prompt: the prompt of every sample.
        limit: stop after this many samples (file order).

    Samples: ``kind="caption"``, ``image_id`` = ``cocoid`` (else ``imgid``), ``id`` = the image id (per image)
    or the ``sentid`` (per caption). Captions are the ``raw`` sentences, whitespace-stripped.
    """
    check_args(on_error, limit)
    path = require_file(path, "Karpathy split file", "dataset_coco.json or dataset_flickr30k.json")
    root = require_dir(images, "the folder holding train2014/ and val2014/ (COCO), or the Flickr30k images")
    data = load_json(path, "Karpathy split file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f'{path} is not a Karpathy split file: expected {{"images": [...], "dataset": ...}}')
    wanted = {"train", "restval"} if split == "train" else {split}
    if per_caption is None:
        per_caption = split in ("train", "restval")
    seen: set[str] = set()
    checked: dict[Path, str] = {}

    def parse(record: Any, where: str) -> list[Sample]:
        record = as_dict(record, where)
        record_split = get_key(record, "split", str, where)
        seen.add(record_split)
        if record_split not in wanted:
            return []
        filename = get_key(record, "filename", str, where)
        folder = get_key(record, "filepath", str, where) if "filepath" in record else ""
        image_id = get_key(record, "cocoid" if "cocoid" in record else "imgid", int, where)
        captions: list[tuple[str, str]] = []
        for j, sentence in enumerate(get_list(record, "sentences", where)):
            at = f"{where} sentences[{j}]"
            sentence = as_dict(sentence, at)
            captions.append(
                (get_key(sentence, "raw", str, at).strip(), str(get_key(sentence, "sentid", int, at)))
            )
        image = check_image(root / folder / filename, where, checked)
        if per_caption:
            return [Sample(image, prompt, raw, "caption", image_id, sentid) for raw, sentid in captions]
        raws = tuple(raw for raw, _ in captions)
        return [Sample(image, prompt, raws[0], "caption", image_id, str(image_id), answers=raws)]

    records = (
        (
            with_id(
                f"{path.name} images[{i}]", r, "cocoid" if isinstance(r, dict) and "cocoid" in r else "imgid"
            ),
            r,
        )
        for i, r in enumerate(data["images"])
    )
    result = collect(records, parse, on_error, limit)
    return nonempty(result, path, "'train' (train + restval)" if split == "train" else repr(split), seen)
