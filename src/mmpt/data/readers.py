"""Readers for the dataset files users have on disk: Karpathy captions, VQAv2, SNLI-VE, RefCOCO, LLaVA, JSONL.

Every reader returns a :class:`ReadResult` of :class:`~mmpt.data.sample.Sample` records and follows one error
policy, ``on_error``:

* a missing or unparsable file, or a missing images folder, always raises :class:`~mmpt.data.sample.DataError`
  naming the file and what it should be;
* a malformed record (missing key, wrong type, unknown label; text that is not valid, i.e. holds a lone
  surrogate; a box that is not finite, empty or outside its image; an image size below 1x1) or a record whose
  image file is missing or not an image raises DataError naming the file, the record and the key or image path
  (``on_error="raise"``), or is skipped and counted in ``ReadResult.skipped`` with its message kept in
  ``ReadResult.problems`` (the first 20; ``on_error="skip"``);
* a read that leaves no samples raises DataError (naming the splits the file has, where it has splits).

Image files are checked once per distinct path: they must exist and PIL must identify their header (about
0.1 ms a file, some 10 s for COCO's 123k images); the pixels are not decoded, so a file truncated after its
header is reported when it is loaded (training replaces it under ``on_error="skip"``). ``limit=N`` keeps the first N usable
samples in file order (samples, not records: a COCO image read per caption gives 5); records after them are
neither read nor checked. ``docs/data_formats.md`` says where the files come from and how they map to Sample
fields.
"""

from __future__ import annotations

from collections.abc import Callable

from mmpt.data.formats.common import MAX_PROBLEMS, OnError, ReadResult
from mmpt.data.formats.conversations import read_jsonl, read_llava
from mmpt.data.formats.hf import read_hf
from mmpt.data.formats.karpathy import read_coco_karpathy
from mmpt.data.formats.refcoco import read_refcoco
from mmpt.data.formats.vqa import SNLI_VE_ANSWERS, read_snli_ve, read_vqav2

READERS: dict[str, Callable[..., ReadResult]] = {
    "coco-karpathy": read_coco_karpathy,
    "flickr30k-karpathy": read_coco_karpathy,
    "vqav2": read_vqav2,
    "snli-ve": read_snli_ve,
    "refcoco": read_refcoco,
    "llava": read_llava,
    "jsonl": read_jsonl,
    "hf": read_hf,
}
"""Format name (a config's ``format``) -> reader."""

__all__ = [
    "MAX_PROBLEMS",
    "READERS",
    "SNLI_VE_ANSWERS",
    "OnError",
    "ReadResult",
    "read_coco_karpathy",
    "read_jsonl",
    "read_llava",
    "read_refcoco",
    "read_snli_ve",
    "read_vqav2",
]
