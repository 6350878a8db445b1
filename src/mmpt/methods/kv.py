"""Extra key/value tokens in front of attention, injected through transformers' attention-function interface.

How it works (no HF class is subclassed or edited):

1. The tower's config switches ``_attn_implementation`` from e.g. ``sdpa`` to ``mmpt_sdpa``: a registered
   attention function that wraps the original one (SDPA stays SDPA, eager stays eager, flash stays flash).
2. Each injected attention module gets a :class:`KVSlot`. Without a KV cache (training, encoders, gradient
   checkpointing) the wrapper concatenates the slot's key/value tokens in front of the keys and values.
3. With a KV cache (generation) a forward pre-hook on the attention module writes them into the cache once, at
   prefill, so decoding steps read them from the cache instead of copying them again.
4. Masks are right-aligned to the keys: the extra columns are always visible. A pre-hook on the tower's backbone
   keeps the 2-D padding mask and default position ids consistent once the cache holds the extra tokens.

Semantics: the injected tokens carry no position (keys are not rotated); real tokens keep the positions they
would have without injection.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PREFIX = "mmpt_"
CACHE_ATTR = "_mmpt_extra_kv"  # on a Cache object: {layer_idx: number of injected tokens}
SLOT_ATTR = "_mmpt_kv_slot"  # on an attention module


def _base_name(name: str) -> str:
    return name.removeprefix(PREFIX)


def _base_function(module: nn.Module, base: str) -> Callable[..., Any]:
    if base == "eager":
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise RuntimeError(f"{type(module).__name__} has no eager_attention_forward in its modeling file")
        return eager
    return ALL_ATTENTION_FUNCTIONS[base]


def _align_mask(
    mask: torch.Tensor | None, q_len: int, kv_len: int, causal: bool, query: torch.Tensor, eager: bool
) -> torch.Tensor | None:
    """Right-align ``mask`` to ``kv_len`` keys: extra leading columns are visible; build one if needed."""
    if mask is None:
        if not causal or q_len == 1 or kv_len == q_len:
            return None
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
        mask = allowed[None, None]
        if eager:
            zero = torch.zeros((), dtype=query.dtype, device=query.device)
            return torch.where(mask, zero, torch.finfo(query.dtype).min)
        return mask
    width = mask.shape[-1]
    if width == kv_len:
        return mask
    if width > kv_len:
        return mask[..., width - kv_len :]
    fill = True if mask.dtype == torch.bool else 0.0
    pad = torch.full((*mask.shape[:-1], kv_len - width), fill, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], dim=-1)


def _wrapped_attention(base: str) -> Callable[..., Any]:
    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> Any:
        slot: KVSlot | None = getattr(module, SLOT_ATTR, None)
        if slot is not None and slot.active and not slot.in_cache:
            extra_k, extra_v = slot.provide(query.shape[0], key.dtype)
            key = torch.cat([extra_k, key], dim=2)
            value = torch.cat([extra_v, value], dim=2)
        causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", False)))
        attention_mask = _align_mask(
            attention_mask, query.shape[2], key.shape[2], causal, query, eager=base == "eager"
        )
        return _base_function(module, base)(module, query, key, value, attention_mask, **kwargs)

    return attention


def ensure_registered(base: str) -> str:
    """Register ``mmpt_<base>`` (attention and mask functions) and return that name."""
    name = PREFIX + base
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _wrapped_attention(base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


class KVSlot:
    """Extra key/value tokens for one attention module.

    Args:
        provider: returns (key, value), each (num_kv_heads, length, head_dim), for this module.
        layer_idx: the module's cache layer index (decoders) or None.
    """

    def __init__(self, provider: Callable[[], tuple[torch.Tensor, torch.Tensor]], layer_idx: int | None) -> None:
        self.provider = provider
        self.layer_idx = layer_idx
        self.active = True
        self.in_cache = False

    def provide(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, heads, length, head_dim) key and value tensors."""
        k, v = self.provider()
        return (
            k.to(dtype).unsqueeze(0).expand(batch, -1, -1, -1),
            v.to(dtype).unsqueeze(0).expand(batch, -1, -1, -1),
        )


class KVInjection:
    """Installs :class:`KVSlot` s on attention modules; :meth:`remove` restores the model exactly.

    Args:
        modules: the attention modules to inject into.
        providers: one provider per module.
        backbone: for decoder towers, the module that owns the layers (gets the cache-consistency hook).
    """

    def __init__(
        self,
        modules: list[nn.Module],
        providers: list[Callable[[], tuple[torch.Tensor, torch.Tensor]]],
        backbone: nn.Module | None = None,
    ) -> None:
        self.modules = modules
        self.slots: list[KVSlot] = []
        self._handles: list[Any] = []
        self._configs: dict[int, tuple[Any, str]] = {}
        for module, provider in zip(modules, providers, strict=True):
            if getattr(module, SLOT_ATTR, None) is not None:
                raise ValueError(f"{type(module).__name__} already has injected key/value tokens")
            config = getattr(module, "config", None)
            current = getattr(config, "_attn_implementation", None)
            if config is None or current is None:
                raise ValueError(
                    f"{type(module).__name__} does not dispatch through transformers' attention interface"
                )
            if id(config) not in self._configs:
                self._configs[id(config)] = (config, current)
                config._attn_implementation = ensure_registered(_base_name(current))
            slot = KVSlot(provider, getattr(module, "layer_idx", None))
            setattr(module, SLOT_ATTR, slot)
            self._handles.append(module.register_forward_pre_hook(self._cache_hook(slot), with_kwargs=True))
            self.slots.append(slot)
        if backbone is not None:
            self._handles.append(backbone.register_forward_pre_hook(self._backbone_hook, with_kwargs=True))

    @staticmethod
    def _cache_hook(slot: KVSlot) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            cache = kwargs.get("past_key_values")
            slot.in_cache = cache is not None and slot.active and slot.layer_idx is not None
            if not slot.in_cache:
                return
            injected = getattr(cache, CACHE_ATTR, None)
            if injected is None:
                injected = {}
                setattr(cache, CACHE_ATTR, injected)
            if slot.layer_idx not in injected:
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                k, v = slot.provide(hidden.shape[0], hidden.dtype)
                cache.update(k, v, slot.layer_idx)
                injected[slot.layer_idx] = k.shape[2]

        return hook

    @staticmethod
    def _backbone_hook(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        cache = kwargs.get("past_key_values")
        injected = getattr(cache, CACHE_ATTR, None) if cache is not None else None
        if not injected:
            return None
        from transformers.masking_utils import find_first_full_attention_index

        ref = find_first_full_attention_index(cache)
        extra = injected.get(ref, 0)
        seen = cache.get_seq_length(ref) - extra  # real tokens already in the cache
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids", args[0] if args else None)
        q_len = (embeds if embeds is not None else ids).shape[1]
        mask = kwargs.get("attention_mask")
        if extra and isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape[1] == seen + q_len:
            ones = torch.ones(mask.shape[0], extra, dtype=mask.dtype, device=mask.device)
            kwargs["attention_mask"] = torch.cat([ones, mask], dim=1)
        if kwargs.get("position_ids") is None:
            device = (embeds if embeds is not None else ids).device
            kwargs["position_ids"] = torch.arange(seen, seen + q_len, device=device).unsqueeze(0)
        return args, kwargs

    def set_active(self, active: bool) -> None:
        """Temporarily switch the injected tokens off (``False``) or on."""
        for slot in self.slots:
            slot.active = active

    def remove(self) -> None:
        """Remove hooks and slots and restore each config's attention implementation."""
        for handle in self._handles:
            handle.remove()
        for module in self.modules:
            if hasattr(module, SLOT_ATTR):
                delattr(module, SLOT_ATTR)
        for config, original in self._configs.values():
            config._attn_implementation = original
        self._handles, self.slots, self._configs = [], [], {}
