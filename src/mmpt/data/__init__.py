"""Datasets: records of (image, prompt, target) that the processor turns into batches."""

from mmpt.data.easyvqa import (
    COLORS,
    QUESTION_TYPES,
    SHAPES,
    Sample,
    easy_vqa_captions,
    load_easy_vqa,
    question_type,
)
from mmpt.data.photos import skimage_captions

__all__ = [
    "COLORS", "QUESTION_TYPES", "SHAPES", "Sample", "easy_vqa_captions", "load_easy_vqa", "question_type",
    "skimage_captions",
]
