"""Helpers shared by the family files to build tiny test batches."""

from __future__ import annotations

import torch


def left_padded(
    rows: list[list[int]], pad_id: int, extra: dict[str, list[list[int]]] | None = None
) -> dict[str, torch.Tensor]:
    """Left-pad token rows into ``input_ids`` / ``attention_mask`` (+ any aligned ``extra`` rows, padded with 0)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    for key in extra or {}:
        out[key] = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
        for key, values in (extra or {}).items():
            out[key][i, width - len(r) :] = torch.tensor(values[i])
    return out


def random_text(n: int, low: int, high: int, gen: torch.Generator) -> list[int]:
    """``n`` random token ids in [low, high)."""
    return torch.randint(low, high, (n,), generator=gen).tolist()


def tiny_row(batch: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """Sample ``i`` of a left-padded tiny batch, padding removed: per-token tensors (second axis = sequence) lose
    the padded positions, everything else keeps row ``i``. Families whose inputs are not batched by row
    (Qwen2-VL's packed patches) define their own ``tiny_row``."""
    keep = batch["attention_mask"][i].bool()
    return {k: (v[i][keep][None] if v.dim() >= 2 and v.shape[1] == keep.shape[0] else v[i : i + 1])
            for k, v in batch.items()}


def with_positions(batch: dict[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """``batch`` with the ``position_ids`` mmpt's processor gives a forward pass of ``family`` (counted from each
    row's first real token, from the family's ``first_position``); unchanged for families whose model computes
    its own positions (multimodal RoPE) or that take none. Forward passes only: ``generate()`` counts itself."""
    from mmpt.models.hf_processor import STRATEGIES, positions_from_mask

    strategy = STRATEGIES.get(family)
    positions = positions_from_mask(batch["attention_mask"], strategy.first_position) if strategy else None
    return batch if positions is None else {**batch, "position_ids": positions}
