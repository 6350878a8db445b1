"""Instruction data in LLaVA's conversation format, and mmpt's generic JSONL format."""

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
    decode_line,
    get_key,
    get_list,
    jsonl_lines,
    load_json,
    nonempty,
    require_dir,
    require_file,
    with_id,
)
from mmpt.data.sample import DataError, Sample

IMAGE_MARKER = "<image>"


def _turns(record: dict[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    """``conversations`` as (human, gpt) pairs, markers and surrounding whitespace removed."""
    texts: list[str] = []
    for j, turn in enumerate(get_list(record, "conversations", where)):
        at = f"{where} conversations[{j}]"
        turn = as_dict(turn, at)
        role, expected = get_key(turn, "from", str, at), ("human", "gpt")[j % 2]
        if role != expected:
            raise DataError(
                f"{at}: key 'from' is {role!r}, expected {expected!r} (turns alternate human, gpt)"
            )
        texts.append(get_key(turn, "value", str, at).replace(IMAGE_MARKER, "").strip())
    if len(texts) % 2:
        raise DataError(f"{where}: key 'conversations' ends with a human turn (no gpt answer)")
    return tuple(zip(texts[::2], texts[1::2], strict=True))


def read_llava(
    path: str | Path,
    images: str | Path,
    *,
    on_error: OnError = "raise",
    limit: int | None = None,
) -> ReadResult:
    """Conversations from a LLaVA-format JSON list (``llava_v1_5_mix665k.json``, Vision-Flan, ...).

    Args:
        path: the JSON file: a list of ``{"id", "image", "conversations": [{"from", "value"}, ...]}``.
        images: the folder the records' ``image`` paths are relative to.
        on_error: ``raise`` or ``skip`` malformed records, text-only records and missing images.
        limit: stop after this many samples (file order).

    Samples, one per record: the last human/gpt pair becomes ``prompt``/``target``, earlier pairs ``context``;
    the ``<image>`` marker and surrounding whitespace are removed (the processor places the image).
    ``image_id`` = the record's ``image`` string, ``id`` = its ``id``, ``kind=""``. Turns must alternate
    human, gpt. A text-only record (no ``image``; mix665k has about 40k) is an error, as mmpt needs an image
    per record: read such files with ``on_error="skip"``.
    """
    check_args(on_error, limit)
    path = require_file(
        path, "LLaVA file", "a JSON list of {id, image, conversations}, e.g. llava_v1_5_mix665k.json"
    )
    root = require_dir(images, "the folder the records' image paths are relative to")
    data = load_json(path, "LLaVA file")
    if not isinstance(data, list):
        raise DataError(
            f"{path} is not a LLaVA file: expected a JSON list of records, got {type(data).__name__}"
        )
    checked: dict[Path, str] = {}

    def parse(record: Any, where: str) -> list[Sample]:
        record = as_dict(record, where)
        record_id = get_key(record, "id", (str, int), where)
        if "image" not in record:
            raise DataError(f"{where}: text-only record (no 'image' key); mmpt needs an image per record")
        relative = get_key(record, "image", str, where)
        pairs = _turns(record, where)
        image = check_image(root / relative, where, checked)
        prompt, target = pairs[-1]
        return [Sample(image, prompt, target, "", relative, str(record_id), context=pairs[:-1])]

    records = ((with_id(f"{path.name}[{i}]", r, "id"), r) for i, r in enumerate(data))
    return nonempty(collect(records, parse, on_error, limit), path)


def read_jsonl(
    path: str | Path,
    images: str | Path,
    *,
    on_error: OnError = "raise",
    limit: int | None = None,
) -> ReadResult:
    """mmpt's generic format: one ``{"image", "prompt", "target"}`` object per line.

    Args:
        path: the JSONL file.
        images: the folder relative ``image`` paths resolve under (absolute paths are used as they are).
        on_error: ``raise`` or ``skip`` malformed records and missing images.
        limit: stop after this many samples (file order).

    Optional keys: ``answers`` (list of strings), ``kind`` (string), ``id`` (string or int); other keys are
    ignored. ``image_id`` is the ``image`` string as written.
    """
    check_args(on_error, limit)
    path = require_file(path, "JSONL file", 'one {"image", "prompt", "target"} object per line')
    root = require_dir(images, "the folder relative image paths resolve under")
    checked: dict[Path, str] = {}

    def parse(line: bytes, where: str) -> list[Sample]:
        record = decode_line(line, where)
        where = with_id(where, record, "id")
        relative = get_key(record, "image", str, where)
        prompt = get_key(record, "prompt", str, where)
        target = get_key(record, "target", str, where)
        answers: list[Any] = get_key(record, "answers", list, where) if "answers" in record else []
        if not all(isinstance(a, str) for a in answers):
            raise DataError(f"{where}: key 'answers' should be a list of strings, got {answers!r:.60}")
        kind = get_key(record, "kind", str, where) if "kind" in record else ""
        record_id = str(get_key(record, "id", (str, int), where)) if "id" in record else ""
        image = check_image(root / relative, where, checked)
        return [Sample(image, prompt, target, kind, relative, record_id, tuple(answers))]

    return nonempty(collect(jsonl_lines(path), parse, on_error, limit), path)
