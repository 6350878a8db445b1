"""Shared fixtures. Everything runs offline: no hub access is ever attempted."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist (`make test` runs one worker per core) each worker takes its share of the cores.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@pytest.fixture(scope="session")
def base_tokenizer():
    """The embedded SmolLM2 tokenizer (HF processors of the tiny family models are built on copies of it)."""
    from transformers import AutoTokenizer

    from mmpt.models.tiny import smollm2_folder

    return AutoTokenizer.from_pretrained(smollm2_folder())


@pytest.fixture(scope="session")
def real_model():
    """The embedded pretrained mmpt-tiny (built into the user cache on first use)."""
    from mmpt.models import load

    return load("mmpt-tiny")


def randomize(model, std: float = 0.3, seed: int = 0):
    """Re-draw every weight matrix from N(0, std): tiny random models then give input-dependent outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, std, generator=gen)
    return model


def make_tiny(attn: str = "sdpa", seed: int = 0):
    """A fresh tiny random mmpt-tiny with non-degenerate weights (std 0.2) so that outputs differ by input."""
    from mmpt.models import load

    loaded = load("mmpt-tiny-random", attn_implementation=attn, seed=seed)
    with torch.no_grad():
        for name, p in loaded.model.language_model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(hash(name) % 2**31 + seed))
    return loaded


@pytest.fixture
def tiny():
    return make_tiny()


@pytest.fixture(scope="session")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]


PROMPTS = ["what color is the shape?", "is there a red circle in the image at all?", "shape?"]
ANSWERS = ["blue", "no", "triangle"]
