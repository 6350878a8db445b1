"""Extra key/value tokens in front of attention, injected without subclassing or editing HF classes.

Two routes, chosen per tower by the family description:

``interface`` (most models): the tower's config switches ``_attn_implementation`` from ``sdpa`` to
``mmpt_sdpa`` (or ``eager`` to ``mmpt_eager``), a registered attention function that wraps the original: SDPA
stays SDPA. Flash-attention implementations are refused with a clear message for now. Without a KV cache (training, encoders, gradient checkpointing) the wrapper concatenates
the module's extra keys/values in front of its own. With a cache (generation) a forward pre-hook writes them
into the cache once, at prefill, so decoding steps read them from the cache instead of copying them again.

``cache`` (fallback for attention that is computed outside the interface but appends to ``past_key_values``,
e.g. BLIP's BERT-style text decoder): a pre-hook writes the tokens into the layer's cache (a throw-away cache
when there is none) and the module's own concatenation puts them in front.

Either way the cache layer *reports* only real tokens (``get_seq_length`` excludes the injected ones; dynamic
and sliding-window dynamic layers are supported, static ones are refused), so the model computes positions and
masks exactly as without injection; masks are then right-aligned to the keys, with the injected columns visible
to every query. Semantics: injected tokens carry no position (keys are not rotated) and real tokens keep the
positions they have without injection.

Sliding-window layers (Gemma 2/3, Mistral-style): injected tokens and *pinned* leading real tokens (input
prompts, see :class:`Pin`) never slide out. The cache layer keeps them in front of the window, and the wrapper
shows their columns to every later query, with and without a cache alike.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from mmpt.contract import CallArguments, ContractError, is_sliding, map_masks

PREFIX = "mmpt_"
SLOT_ATTR = "_mmpt_kv_slot"  # on an attention module
PINS_ATTR = "_mmpt_pins"  # on a sliding-window attention module: the Pins of prompt methods
_CONFIG_USERS: dict[int, list[Any]] = {}  # id(config) -> [config, original implementation, number of users]


def _base_function(module: nn.Module, base: str) -> Callable[..., Any]:
    if base == "eager":
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if eager is None:
            raise RuntimeError(f"{type(module).__name__} has no eager_attention_forward in its modeling file")
        return eager
    return ALL_ATTENTION_FUNCTIONS[base]


def align_mask(
    mask: torch.Tensor | None, q_len: int, kv_len: int, causal: bool, query: torch.Tensor, eager: bool
) -> torch.Tensor | None:
    """Right-align ``mask`` to ``kv_len`` keys: extra leading columns are visible; build one if needed."""
    if mask is None:
        if not causal or q_len == 1 or kv_len == q_len:
            return None
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)[None, None]
        if eager:
            zero = torch.zeros((), dtype=query.dtype, device=query.device)
            return torch.where(allowed, zero, torch.finfo(query.dtype).min)
        return allowed
    width = mask.shape[-1]
    if width == kv_len:
        return mask
    if width > kv_len:
        raise RuntimeError(f"attention mask covers {width} keys but attention has {kv_len}; mmpt cannot align them")
    return pad_mask(mask, kv_len - width)


def pad_mask(mask: torch.Tensor, extra: int) -> torch.Tensor:
    """Prepend ``extra`` visible key columns to a boolean or additive mask."""
    fill = True if mask.dtype == torch.bool else 0.0
    pad = torch.full((*mask.shape[:-1], extra), fill, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], dim=-1)


def show_pinned(mask: torch.Tensor, start: int, count: int, q_len: int) -> torch.Tensor:
    """Make key columns ``start..start+count`` visible to every query at or after them (causal), whatever a
    sliding window said: pinned prompt tokens never slide out."""
    kv_len = mask.shape[-1]
    cols = torch.arange(start, start + count, device=mask.device)
    rows = kv_len - q_len + torch.arange(q_len, device=mask.device)  # queries are the last q_len keys
    allowed = (cols[None, :] - start <= rows[:, None]).expand(*mask.shape[:-2], q_len, count)
    old = mask[..., start : start + count]
    if mask.dtype == torch.bool:
        new = old | allowed
    else:
        new = torch.where(allowed, torch.zeros((), dtype=mask.dtype, device=mask.device), old)
    return torch.cat([mask[..., :start], new, mask[..., start + count :]], dim=-1)


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
        injected = 0
        if slot is not None and slot.active:
            if not slot.in_cache:
                extra_k, extra_v = slot.provide(query.shape[0], key.dtype)
                key = torch.cat([extra_k, key], dim=2)
                value = torch.cat([extra_v, value], dim=2)
            injected = slot.length
        causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", False)))
        attention_mask = align_mask(attention_mask, query.shape[2], key.shape[2], causal, query, base == "eager")
        pinned = sum(pin.length for pin in getattr(module, PINS_ATTR, ()) if pin.active)
        if pinned and attention_mask is not None:
            attention_mask = show_pinned(attention_mask, injected, pinned, query.shape[2])
        return _base_function(module, base)(module, query, key, value, attention_mask, **kwargs)

    return attention


def ensure_registered(base: str) -> str:
    """Register ``mmpt_<base>`` (attention and mask functions) and return that name."""
    if base not in ("sdpa", "eager"):
        raise ValueError(
            f"key/value injection supports the 'sdpa' and 'eager' attention implementations, not '{base}'; "
            "load the model with attn_implementation='sdpa'"
        )
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
        cross: the module is a cross-attention (its cache is the cross-attention part).
    """

    def __init__(
        self, provider: Callable[[], tuple[torch.Tensor, torch.Tensor]], layer_idx: int | None, cross: bool = False
    ) -> None:
        self.provider = provider
        self.layer_idx = layer_idx
        self.cross = cross
        self.active = True
        self.in_cache = False
        self.length = 0  # number of tokens, known after the first provide()

    def provide(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, heads, length, head_dim) key and value tensors."""
        k, v = self.provider()
        self.length = k.shape[1]
        return (
            k.to(dtype).unsqueeze(0).expand(batch, -1, -1, -1),
            v.to(dtype).unsqueeze(0).expand(batch, -1, -1, -1),
        )

    def write_to_cache(self, cache: Any, batch: int, dtype: torch.dtype) -> int:
        """Write the tokens into this layer of ``cache`` unless already there; return how many it holds."""
        if hasattr(cache, "self_attention_cache"):  # encoder-decoder cache
            cache = cache.cross_attention_cache if self.cross else cache.self_attention_cache
        layers = getattr(cache, "layers", [])
        if self.layer_idx < len(layers) and isinstance(layers[self.layer_idx], _PrefixedLayer):
            return layers[self.layer_idx].injected
        if self.layer_idx < len(layers) and isinstance(layers[self.layer_idx], DynamicSlidingWindowLayer):
            return self._write_sliding(layers[self.layer_idx], batch, dtype)
        if self.layer_idx < len(layers) and type(layers[self.layer_idx]) is not DynamicLayer:
            raise ValueError(
                f"key/value injection needs a dynamic KV cache, got {type(layers[self.layer_idx]).__name__} "
                "(static caches size their masks for a fixed length); generate with cache_implementation='dynamic'"
            )
        k, v = self.provide(batch, dtype)
        cache.update(k, v, self.layer_idx)
        layer = cache.layers[self.layer_idx]
        if type(layer) is not DynamicLayer:
            raise ValueError(f"key/value injection needs a dynamic KV cache, got {type(layer).__name__}")
        layer.__class__ = _PrefixedLayer
        layer.injected = k.shape[2]
        return layer.injected


    def _write_sliding(self, layer: DynamicSlidingWindowLayer, batch: int, dtype: torch.dtype) -> int:
        pinned = pin_sliding_layer(layer, id(self))
        if pinned.written.get(id(self)):
            return pinned.injected
        if pinned.cumulative_length > 0:
            raise ContractError("a sliding-window cache layer already holds tokens; key/value injection must "
                                "enter it before the first real token (start generation from an empty cache)")
        k, v = self.provide(batch, dtype)
        pinned.pinned += k.shape[2]  # before the update, so that the window keeps them
        pinned.injected += k.shape[2]
        pinned.update(k, v)
        pinned.cumulative_length -= k.shape[2]  # injected tokens are not real: positions and masks ignore them
        pinned.written[id(self)] = True
        return pinned.injected


class Pin:
    """``length`` leading real tokens (an input prompt) that sliding-window attention always shows.

    A prompt method registers its Pin on every sliding-window attention module of its tower
    (:func:`install_pins`): the wrapper unmasks the pinned columns and the cache layer keeps them.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self.active = True


class _PinnedSlidingLayer(DynamicSlidingWindowLayer):
    """A sliding-window cache layer that keeps its first ``pinned`` keys (injected tokens, then pinned prompt
    tokens) in front of the window forever; ``injected`` of them are not real tokens and are not counted."""

    pinned: int = 0
    injected: int = 0
    written: dict[int, bool]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.record_past:
            raise ContractError("mmpt's pinned sliding-window cache does not support past recording (assisted "
                                "decoding); generate without an assistant model")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        full_k = torch.cat([self.keys, key_states], dim=-2)
        full_v = torch.cat([self.values, value_states], dim=-2)
        keep = self.sliding_window - 1
        p = self.pinned
        self.keys = torch.cat([full_k[:, :, :p], full_k[:, :, p:][:, :, -keep:]], dim=-2)
        self.values = torch.cat([full_v[:, :, :p], full_v[:, :, p:][:, :, -keep:]], dim=-2)
        return full_k, full_v

    def reset(self) -> None:
        super().reset()
        self.__class__ = DynamicSlidingWindowLayer
        for name in ("pinned", "injected", "written"):
            self.__dict__.pop(name, None)


def pin_sliding_layer(layer: DynamicSlidingWindowLayer, owner: int, pinned: int = 0) -> _PinnedSlidingLayer:
    """Turn a sliding-window cache layer into a pinned one (before its first real token) and add ``pinned``
    leading real tokens for ``owner`` (once per owner); raises when the layer already holds real tokens."""
    if not isinstance(layer, _PinnedSlidingLayer):
        if layer.is_initialized and layer.get_seq_length() > 0:
            raise ContractError("a sliding-window cache layer already holds tokens that are not pinned; mmpt "
                                "must see the cache before its first token (start generation from an empty cache)")
        layer.__class__ = _PinnedSlidingLayer
        layer.pinned, layer.injected, layer.written = 0, 0, {}
    if pinned and not layer.written.get(owner):
        if layer.cumulative_length > 0:
            raise ContractError("a sliding-window cache layer already holds real tokens; an input prompt must "
                                "enter it first (start generation from an empty cache)")
        layer.pinned += pinned
        layer.written[owner] = True
    return layer


def install_pins(modules: list[nn.Module], length: int) -> tuple[Pin, list[Any], list[Callable[[], None]]]:
    """Pin ``length`` leading tokens on every sliding-window attention module among ``modules``.

    Returns the :class:`Pin`, the hook handles and the release functions (call both to undo). Modules that are not
    sliding-window are left alone; so is a tower without any.
    """
    pin = Pin(length)
    handles: list[Any] = []
    releases: list[Callable[[], None]] = []
    for module in modules:
        if not is_sliding(module):
            continue
        if getattr(module, "layer_idx", None) is None:
            raise ContractError(f"{type(module).__name__} is sliding-window attention without a layer_idx")
        releases.append(use_wrapper(module))
        module.__dict__.setdefault(PINS_ATTR, []).append(pin)

        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            cache = CallArguments(mod, args, kwargs).cache()
            if cache is None or not pin.active:
                return
            if hasattr(cache, "self_attention_cache"):
                cache = cache.self_attention_cache
            if mod.layer_idx >= len(cache.layers):  # a cache built without the config: its layers keep everything
                return
            layer = cache.layers[mod.layer_idx]
            if isinstance(layer, DynamicSlidingWindowLayer):
                pin_sliding_layer(layer, id(pin), pin.length)
            elif not isinstance(layer, DynamicLayer):
                raise ContractError(f"input prompts on a sliding-window model need a dynamic cache, got "
                                    f"{type(layer).__name__}; generate with cache_implementation='dynamic'")

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

        def release(module: nn.Module = module) -> None:
            pins = module.__dict__.get(PINS_ATTR, [])
            if pin in pins:
                pins.remove(pin)
            if not pins:
                module.__dict__.pop(PINS_ATTR, None)

        releases.append(release)
    return pin, handles, releases


def use_wrapper(module: nn.Module) -> Callable[[], None]:
    """Route ``module``'s attention through mmpt's wrapper (its config's ``_attn_implementation``, shared by all
    users of that config); returns the function that gives the config back when its last user is done."""
    config = getattr(module, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if config is None or current is None:
        raise ValueError(f"{type(module).__name__} does not dispatch through transformers' attention interface")
    users = _CONFIG_USERS.setdefault(id(config), [config, current, 0])
    if users[2] == 0:
        config._attn_implementation = ensure_registered(current.removeprefix(PREFIX))
    users[2] += 1
    released = [False]

    def release() -> None:
        if released[0]:
            return
        released[0] = True
        users[2] -= 1
        if users[2] == 0:
            config._attn_implementation = users[1]
            _CONFIG_USERS.pop(id(config), None)

    return release


class _PrefixedLayer(DynamicLayer):
    """A dynamic cache layer holding injected tokens in front; it reports only the real tokens' length, so the
    model sizes masks and positions as without injection. Survives ``deepcopy``; ``reset`` forgets the tokens."""

    injected: int = 0

    def get_seq_length(self) -> int:
        return max(super().get_seq_length() - self.injected, 0)

    def reset(self) -> None:
        super().reset()
        self.__class__ = DynamicLayer
        del self.injected


class KVInjection:
    """Installs :class:`KVSlot` s on attention modules; :meth:`remove` restores the model exactly.

    Args:
        modules: the attention modules to inject into.
        providers: one provider per module.
        cross: the modules are cross-attention (keys from the encoder).
        mode: ``interface`` or ``cache`` (see the module docstring).
    """

    def __init__(
        self,
        modules: list[nn.Module],
        providers: list[Callable[[], tuple[torch.Tensor, torch.Tensor]]],
        cross: bool = False,
        mode: str = "interface",
    ) -> None:
        self.modules = modules
        self.slots: list[KVSlot] = []
        self._handles: list[Any] = []
        self._configs: dict[int, Callable[[], None]] = {}  # id(config) -> release
        for module, provider in zip(modules, providers, strict=True):
            if getattr(module, SLOT_ATTR, None) is not None:
                raise ValueError(f"{type(module).__name__} already has injected key/value tokens")
            slot = KVSlot(provider, getattr(module, "layer_idx", None), cross)
            hook = self._interface_hook(module, slot) if mode == "interface" else self._cache_hook(module, slot)
            self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            setattr(module, SLOT_ATTR, slot)
            self.slots.append(slot)

    def _interface_hook(self, module: nn.Module, slot: KVSlot) -> Callable[..., None]:
        config = getattr(module, "config", None)
        if id(config) not in self._configs:  # shared by several injections: restored when the last one goes
            self._configs[id(config)] = use_wrapper(module)

        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            call = CallArguments(mod, args, kwargs)
            cache = call.cache()
            slot.in_cache = cache is not None and slot.active and slot.layer_idx is not None
            if slot.in_cache:
                hidden = call.hidden()
                slot.write_to_cache(cache, hidden.shape[0], hidden.dtype)

        return hook

    @staticmethod
    def _cache_hook(module: nn.Module, slot: KVSlot) -> Callable[..., Any]:
        from transformers import DynamicCache

        if slot.layer_idx is None:
            raise ValueError(f"{type(module).__name__} has no layer_idx; it cannot take cached key/values")

        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if not slot.active:
                return None
            call = CallArguments(mod, args, kwargs)
            cache = call.cache()
            if cache is None:
                cache = DynamicCache()
                call.set_cache(cache)
            hidden = call.hidden()
            n = slot.write_to_cache(cache, hidden.shape[0], hidden.dtype)
            if call.mask() is not None:
                call.set("attention_mask", map_masks(call.mask(), lambda m: pad_mask(m, n)))
            return call.result()

        return hook

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
        for release in self._configs.values():
            release()
        self._handles, self.slots, self._configs = [], [], {}


def projections(module: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The key and value projections of an attention module (``k_proj``/``v_proj`` or ``key``/``value``)."""
    for k_name, v_name in (("k_proj", "v_proj"), ("key", "value")):
        k, v = getattr(module, k_name, None), getattr(module, v_name, None)
        if isinstance(k, nn.Linear) and isinstance(v, nn.Linear):
            return k, v
    raise ValueError(f"{type(module).__name__} has no separate key/value projections")


def kv_layout(module: nn.Module) -> tuple[int, int]:
    """(num_kv_heads, head_dim) of an attention module, from its key projection or its head attributes."""
    head_dim = getattr(module, "head_dim", None) or getattr(module, "attention_head_size", None)
    try:
        key_out: int | None = projections(module)[0].out_features
    except ValueError:
        key_out = None  # fused QKV projection: rely on the head attributes
    config = getattr(module, "config", None)
    heads = (
        getattr(module, "num_key_value_heads", None)
        or getattr(config, "num_key_value_heads", None)
        or getattr(module, "num_heads", None)
        or getattr(module, "num_attention_heads", None)
    )
    if key_out is not None and head_dim:
        return key_out // head_dim, head_dim
    if key_out is not None and heads:
        return heads, key_out // heads
    if heads and head_dim:
        return heads, head_dim
    raise ValueError(f"cannot read the key/value head layout of {type(module).__name__}")
