"""What a run cost: parameters, time, throughput, peak memory and GPU-hours (``metrics.json``'s ``cost``)."""

from __future__ import annotations

import resource
import sys
from typing import Any

import torch


def peak_memory_mib() -> dict[str, float]:
    """Peak resident memory of this process (``peak_rss_mib``) and, on a GPU, the peak memory torch allocated
    there (``peak_gpu_mib``), in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_mib": round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)}
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def run_cost(parameters: dict[str, Any], train: dict[str, Any], wall_seconds: float, processes: int,
             device: str) -> dict[str, Any]:
    """The ``cost`` section of ``metrics.json``.

    ``wall_seconds`` covers the run in this process (loading, evaluations, training, saving; a resumed run counts
    from its resume); ``train_seconds`` the optimizer steps of every stage.
    ``gpu_hours`` (OFA's cost measure) is ``wall_seconds x processes / 3600`` when the run used GPUs, else absent.
    """
    samples = train.get("samples", 0)
    seconds = train.get("seconds", 0.0)
    cost: dict[str, Any] = {
        "trainable_parameters": parameters.get("trainable"),
        "trainable_percent": parameters.get("percent"),
        "wall_seconds": round(wall_seconds, 1),
        "train_seconds": seconds,
        "seconds_per_100_samples": round(100 * seconds / samples, 3) if samples else None,
        "samples_per_s": round(samples / seconds, 3) if seconds else None,
        "processes": processes,
        "device": device,
        **peak_memory_mib(),
    }
    if device == "cuda":
        cost["gpu_hours"] = round(wall_seconds * processes / 3600, 4)
    return cost
