"""Captions for scikit-image's bundled photos (used with easy-VQA captions to pretrain the projector)."""

from __future__ import annotations

import numpy as np

from mmpt.data.sample import Sample

# Hand-written captions of the colour photos that ship inside scikit-image (no download needed).
PHOTO_CAPTIONS: dict[str, str] = {
    "astronaut": "An astronaut in a white space suit posing in front of an American flag.",
    "chelsea": "A ginger tabby cat sitting and looking to the side.",
    "coffee": "A cup of coffee on a saucer with a spoon.",
    "rocket": "A rocket standing on a launch pad under a blue sky.",
    "colorwheel": "A color wheel showing a rainbow of hues.",
    "immunohistochemistry": "A microscope image of stained tissue with brown and blue cells.",
    "hubble_deep_field": "A deep space photo full of distant galaxies on a black background.",
    "retina": "A photo of the retina of an eye, orange with red blood vessels.",
    "skin": "A microscope image of pink skin tissue.",
    "logo": "The scikit-image logo with a snake on a green and blue background.",
    "lily": "A microscope image of a lily cell in green and purple.",
}


def skimage_captions(prompt: str = "Describe the image briefly.") -> list[Sample]:
    """A caption sample (image held as an RGB array) for every captioned photo available in scikit-image."""
    import skimage.data

    out = []
    for name, caption in PHOTO_CAPTIONS.items():
        try:
            image = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - some photos need an optional download; skip those
            continue
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.shape[-1] == 4:
            image = image[..., :3]
        if image.dtype != np.uint8:
            image = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-8)).astype(np.uint8)
        out.append(Sample(image, prompt, caption, "caption"))
    return out


__all__ = ["PHOTO_CAPTIONS", "Sample", "skimage_captions"]
