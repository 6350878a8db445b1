"""Length-grouped batching: every sample once per epoch, reproducible per (seed, epoch), less padding."""

import random

import torch
from torch.utils.data import DataLoader

from mmpt.data import Sample
from mmpt.data.batching import LengthGroupedSampler, padding_fraction, text_length


def _samples(n=400, seed=0):
    rng = random.Random(seed)
    return [Sample(image=f"{i}.png", prompt="p" * rng.randint(5, 200), target="t" * rng.randint(1, 40))
            for i in range(n)]


def _batches(order, size):
    return [order[i:i + size] for i in range(0, len(order), size)]


def test_each_epoch_is_a_reproducible_permutation():
    samples = _samples()
    sampler = LengthGroupedSampler(samples, batch_size=8, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(len(samples)))
    assert list(LengthGroupedSampler(samples, batch_size=8, seed=3)) == first  # a resume replays it
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == sorted(first) and second != first


def test_grouping_cuts_padding():
    samples = _samples()
    lengths = [text_length(s) for s in samples]
    grouped = padding_fraction(lengths, _batches(list(LengthGroupedSampler(samples, 8, 0)), 8))
    plain = padding_fraction(lengths, _batches(torch.randperm(len(samples)).tolist(), 8))
    assert grouped < plain / 3, (grouped, plain)


def test_loader_batches_follow_the_sampler():
    samples = _samples(40)
    sampler = LengthGroupedSampler(samples, batch_size=4, seed=0)
    loader = DataLoader(samples, batch_size=4, sampler=sampler, collate_fn=lambda b: b)
    seen = [s for batch in loader for s in batch]
    assert [samples.index(s) for s in seen] == list(sampler)
