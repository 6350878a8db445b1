"""Length-grouped batching (``train.group_by_length``): batches of samples of similar length, so that rows of a
padded batch waste fewer padding tokens where lengths vary (captions, conversations).

Each epoch the samples are shuffled (seeded by the run's seed and the epoch, so resuming replays the same order),
cut into windows of ``batch_size x window`` samples, and each window is sorted by length before it is cut into
batches; the batches are then shuffled, so long and short batches alternate. Lengths are estimated from the text
(characters of the prompt, the answer and earlier turns): a cheap proxy that orders rows as their token counts do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from mmpt.data.sample import Sample

WINDOW = 50
"""Batches per sorted window: large enough to group lengths, small enough to keep batches varied."""


def text_length(sample: Sample) -> int:
    """A sample's text length in characters (prompt, answer and earlier turns): the part of a row that varies."""
    return len(sample.prompt) + len(sample.target) + sum(len(u) + len(a) for u, a in sample.context)


class LengthGroupedSampler(Sampler[int]):
    """Indices of ``samples`` in length-grouped order (see the module docstring); ``set_epoch`` picks the epoch's
    order, as Accelerate and the training loop call it."""

    def __init__(self, samples: Sequence[Sample], batch_size: int, seed: int, window: int = WINDOW) -> None:
        self.lengths = [text_length(s) for s in samples]
        self.batch_size, self.seed, self.window = batch_size, seed, window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order for the next iteration."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=gen).tolist()
        size = self.batch_size * self.window
        batches: list[list[int]] = []
        for start in range(0, len(order), size):
            window = sorted(order[start : start + size], key=lambda i: self.lengths[i], reverse=True)
            batches += [window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)]
        # the last batch may be short: keep it last, as a plain shuffled loader does
        full = batches[:-1] if batches and len(batches[-1]) < self.batch_size else batches
        shuffled = [full[i] for i in torch.randperm(len(full), generator=gen).tolist()] + batches[len(full):]
        for batch in shuffled:
            yield from batch


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of padded positions when each batch is padded to its longest row (``lengths`` per index)."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    return 1 - sum(lengths[i] for b in batches for i in b) / max(padded, 1)
