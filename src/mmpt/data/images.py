"""Any image file as the RGB uint8 picture the model sees, without clipping high-bit-depth pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
"""PIL modes of 16-bit grayscale images (what a 16-bit PNG opens as)."""


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    """A 2-D uint8 array as an RGB image (the gray value in every channel)."""
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1), "RGB")


def _from_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 (divide by 257, rounded): 65535 is white, as 255 is in 8 bits."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Min-max normalization of the finite values to 0..255 (non-finite values become 0)."""
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.uint8)
    low, high = float(values[finite].min()), float(values[finite].max())
    if high > low:  # halves: high - low may not fit a float64
        scaled = (np.where(finite, values, low) / 2 - low / 2) / (high / 2 - low / 2)
    else:  # one value everywhere: black below 0, white above 1, its own gray in between
        scaled = np.full(values.shape, min(1.0, max(0.0, low)))
    return np.round(np.clip(np.nan_to_num(scaled), 0.0, 1.0) * 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB with 8 bits a channel, scaling high-bit-depth pixels instead of clipping them.

    ``Image.convert("RGB")`` clips every value above 255, so a 16-bit PNG comes out almost white and a float
    TIFF almost black. Here:

    * 16-bit (``I;16*``): divided by 257 (0..65535 -> 0..255);
    * 32-bit integer (``I``): as 16-bit when every value is within 0..65535, else min-max normalized;
    * float (``F``): times 255 when every value is within [0, 1], else min-max normalized (NaN/inf -> 0);
    * anything else (``L``, ``P``, ``LA``, ``RGBA``, ``CMYK``, ``YCbCr``, ...): PIL's own conversion (alpha
      is dropped).

    Raises what PIL raises for pixels it cannot decode (``OSError``, ``ValueError``, ...).
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode in SIXTEEN_BIT_MODES:
        return _gray_to_rgb(_from_16bit(np.asarray(image)))
    if mode == "I":
        values = np.asarray(image)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _gray_to_rgb(_from_16bit(values))
        return _gray_to_rgb(_stretch(values))
    if mode == "F":
        values = np.asarray(image)
        finite = np.isfinite(values)
        if finite.all() and (not values.size or (values.min() >= 0.0 and values.max() <= 1.0)):
            return _gray_to_rgb(np.round(values.astype(np.float64) * 255).astype(np.uint8))
        return _gray_to_rgb(_stretch(values))
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """The image file at ``path``, decoded and converted by :func:`to_rgb`; PIL's errors pass through."""
    with Image.open(path) as image:
        return to_rgb(image)
