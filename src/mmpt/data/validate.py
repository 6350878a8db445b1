"""Checks of whole samples against the model that will see them: prompt + answer within the context length."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from mmpt.data.sample import DataError, Sample

log = logging.getLogger("mmpt")


def check_lengths(
    samples: Iterable[Sample],
    count_tokens: Callable[[Sample], int],
    limit: int,
    on_error: str,
    where: str,
) -> list[Sample]:
    """The samples whose prompt + answer fit in ``limit`` tokens.

    Args:
        samples: the samples to check, in order.
        count_tokens: the number of tokens of a sample's prompt and answer (context turns included where the
            model sees them), as the model's processor counts them.
        limit: the most tokens a sample may have (the model's context, or the configured maximum length).
        on_error: ``raise``: a longer sample raises :class:`~mmpt.data.sample.DataError` naming its record id,
            its token count and the limit. ``skip``: longer samples are left out, and a warning says how many.
        where: what the samples are (e.g. ``data.train``), for the messages.

    Raises:
        ValueError: for an ``on_error`` other than raise/skip or a ``limit`` below 1.
        DataError: with ``on_error="raise"``, for the first sample over the limit.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error should be 'raise' or 'skip', got {on_error!r}")
    if limit < 1:
        raise ValueError(f"limit should be a positive number of tokens, got {limit}")
    kept: list[Sample] = []
    over: list[tuple[str, int]] = []
    for index, sample in enumerate(samples):
        tokens = count_tokens(sample)
        if tokens <= limit:
            kept.append(sample)
            continue
        record = f"record {sample.id!r}" if sample.id else f"sample #{index} (no record id)"
        if on_error == "raise":
            raise DataError(
                f"{where}: {record} has {tokens} tokens (prompt + answer), over the limit of {limit}; "
                "shorten its prompt or answer, raise the limit (a longer max length, up to the model's context), or "
                "drop such records (data.on_error: skip)"
            )
        over.append((record, tokens))
    if over:
        longest = max(over, key=lambda item: item[1])
        log.warning(
            "%s: skipped %d sample(s) longer than %d tokens (prompt + answer; data.on_error: skip), e.g. %s "
            "with %d tokens",
            where, len(over), limit, longest[0], longest[1],
        )  # fmt: skip
    return kept


def context_limit(model: Any) -> int | None:
    """The language model's context length (``max_position_embeddings`` of its text config), or None."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text_config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) else None


def fit_context(loaded: Any, samples: list[Sample], on_error: str, where: str, new_tokens: int = 0) -> list[Sample]:
    """Samples whose tokens fit the language model's context: prompt (+ earlier turns) + image tokens, plus the
    answer when training (``new_tokens=0``) or the tokens to generate (``new_tokens``, evaluation and
    prediction). Longer ones raise a one-line :class:`~mmpt.data.sample.DataError` or, with ``on_error="skip"``,
    are left out (:func:`check_lengths`). Models without a known context or tokenizer pass everything."""
    limit = context_limit(loaded.model)
    processor = loaded.processor
    tokenizer = getattr(processor, "tokenizer", None)
    if limit is None or tokenizer is None:
        return samples
    image_tokens = int(getattr(processor, "num_image_tokens", 0) or 0)

    def count(sample: Sample) -> int:
        parts = [*(turn for pair in sample.context for turn in pair), sample.prompt]
        if not new_tokens:
            parts.append(sample.target)
        return len(tokenizer(" ".join(parts), add_special_tokens=False)["input_ids"]) + image_tokens + new_tokens

    return check_lengths(samples, count, limit, on_error, where)
