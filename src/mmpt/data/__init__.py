"""Datasets: records of (image, prompt, target) that the processor turns into batches."""

from mmpt.data.easyvqa import (
    COLORS,
    QUESTION_TYPES,
    SHAPES,
    easy_vqa_captions,
    load_easy_vqa,
    question_type,
)
from mmpt.data.photos import skimage_captions
from mmpt.data.sample import DataError, Sample, box_to_text, text_to_box

__all__ = [
    "COLORS", "QUESTION_TYPES", "SHAPES", "DataError", "Sample", "box_to_text", "easy_vqa_captions",
    "load_easy_vqa", "question_type", "skimage_captions", "text_to_box",
]
