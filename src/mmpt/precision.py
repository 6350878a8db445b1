"""Which floating-point precision a run computes in: ``train.precision: auto`` picks bf16 only where the hardware
computes it natively.

bfloat16 autocast on a CPU without native support (AVX2-only x86, no AVX512-BF16/AMX) is emulated: a quickstart
step takes ~80 s instead of ~2 s in fp32 on 2 cores, so ``auto`` means fp32 there. An explicit ``bf16`` is kept
(the user asked for it) with a warning.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def native_bf16() -> bool:
    """Whether the device a run uses computes bfloat16 natively (CUDA with bf16 support, or a CPU with
    AVX512-BF16/AMX as oneDNN reports it)."""
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str) -> str:
    """``fp32``/``bf16``/``fp16`` for a config's ``train.precision`` (``auto`` resolved); says what it chose."""
    if requested == "auto":
        chosen = "bf16" if native_bf16() else "fp32"
        why = "native bfloat16" if chosen == "bf16" else "no native bfloat16 on this device; emulated it is ~40x slower"
        print(f"mmpt: train.precision auto -> {chosen} ({why})")
        return chosen
    if requested == "fp16" and not torch.cuda.is_available():
        from mmpt.config import ConfigError

        raise ConfigError("train.precision=fp16: float16 training (autocast with loss scaling) needs a CUDA GPU and "
                          "this machine has none (it would train in fp32 without a word); use auto, bf16 or fp32")
    if requested == "bf16" and not torch.cuda.is_available() and not native_bf16():
        log.warning("train.precision=bf16 on a CPU without native bfloat16: it is emulated and ~40x slower than "
                    "fp32 here; use train.precision=auto (or fp32)")
    return requested
