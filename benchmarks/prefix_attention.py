"""Attention with a key/value prefix: one SDPA call with an explicit shifted-causal mask (what mmpt and PEFT do)
against two calls merged by their log-sum-exp (prefix part without a mask + a causal part on SDPA's causal fast
path), and against the base model's causal call without a prefix (the lower bound).

    python benchmarks/prefix_attention.py [--repeats 20] [--threads 2] [--device cpu|cuda] [--dtype fp32|bf16]

Shapes: SmolLM2-135M's attention (9 query heads, 3 key/value heads, head size 64), prefix 16, batch 8, sequence
91 (a quickstart batch) and 512. Forward + backward into the queries, keys, values and prefix, median of repeats,
all variants interleaved in one process. The merge needs the log-sum-exp of each call, which only PyTorch's
private flash-attention op returns (``aten::_scaled_dot_product_flash_attention_for_cpu`` on CPU,
``aten::_scaled_dot_product_flash_attention`` on CUDA); mmpt would adopt it only for a clear gain.

Note: a left-padded batch needs an explicit mask with or without a prefix (padding keys must be hidden), so
the causal fast path applies only to batches without padding (equal lengths, batch 1, packed rows).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812

HEADS, KV_HEADS, HEAD_DIM, PREFIX = 9, 3, 64, 16


def masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
    """One call: prefix keys/values in front, the causal mask shifted right by the prefix."""
    length = q.shape[-2]
    keys = torch.cat([pk, k], dim=-2).repeat_interleave(HEADS // KV_HEADS, 1)
    values = torch.cat([pv, v], dim=-2).repeat_interleave(HEADS // KV_HEADS, 1)
    mask = torch.ones(length, PREFIX + length, dtype=torch.bool, device=q.device).tril(PREFIX)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if q.is_cuda:
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal)
        return out[0], out[1]
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal)
    return out, lse


def merged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
    """Two calls: every query sees the whole prefix (no mask) and the real keys causally; the outputs are
    weighted by each call's share of the softmax mass, exp(lse_i - logaddexp(lse_1, lse_2))."""
    rep = HEADS // KV_HEADS
    out_p, lse_p = _flash(q, pk.repeat_interleave(rep, 1), pv.repeat_interleave(rep, 1), False)
    out_c, lse_c = _flash(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), True)
    total = torch.logaddexp(lse_p, lse_c)
    return out_p * torch.exp(lse_p - total).unsqueeze(-1) + out_c * torch.exp(lse_c - total).unsqueeze(-1)


def causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
    """The base model: no prefix, SDPA's causal path."""
    rep = HEADS // KV_HEADS
    return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.device}, {args.dtype}, {args.threads} threads, median of {args.repeats}")
    print("| batch x length | one call, explicit mask (ms) | two calls merged (ms) | causal, no prefix (ms) | "
          "merged / masked | max difference |\n| --- | --- | --- | --- | --- | --- |")
    for batch, length in ((8, 91), (8, 512)):
        inputs = tuple(torch.randn(batch, heads, n, HEAD_DIM, generator=gen).to(args.device, dtype).requires_grad_(True)
                       for heads, n in ((HEADS, length), (KV_HEADS, length), (KV_HEADS, length),
                                        (KV_HEADS, PREFIX), (KV_HEADS, PREFIX)))
        grads = []
        for fn in (masked, merged):
            out = fn(*inputs)
            out.float().square().mean().backward()
            grads.append((out.detach().float(), [x.grad.float().clone() for x in inputs]))
            for x in inputs:
                x.grad = None
        diff = max(float((a - b).abs().max()) for a, b in zip([grads[0][0], *grads[0][1]], [grads[1][0], *grads[1][1]],
                                                               strict=True))
        variants: dict[str, Callable[..., torch.Tensor]] = {"masked": masked, "merged": merged, "causal": causal}
        times: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(args.repeats + 2):
            for name in names[r % 3:] + names[: r % 3]:
                if args.device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                variants[name](*inputs).float().square().mean().backward()
                if args.device == "cuda":
                    torch.cuda.synchronize()
                if r >= 2:  # two warm-up rounds
                    times[name].append(time.perf_counter() - start)
        ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
        print(f"| {batch} x {length} | {ms['masked']:.2f} | {ms['merged']:.2f} | {ms['causal']:.2f} | "
              f"{ms['merged'] / ms['masked']:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
