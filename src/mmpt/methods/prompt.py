"""``prompt``: shallow prompt tuning (Lester et al. 2021) — learned embeddings prepended to the text input.

A pre-hook on the decoder's backbone prepends the prompt to ``inputs_embeds`` (extending the padding mask and
explicit position ids); a forward hook drops the prompt positions from the backbone's output, so logits and
labels keep their shapes. Prompt tokens occupy positions ``0..length-1`` and real tokens follow them. With a KV
cache the prompt is computed once, at prefill; later steps only extend the mask and shift position ids. In
sliding-window layers the prompt is pinned (:class:`~mmpt.methods.kv.Pin`): it stays visible to every token for
the whole generation instead of sliding out of the window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmpt.contract import CallArguments, map_masks, prepend_token_rows
from mmpt.method_configs import PromptConfig  # noqa: F401 - torch-free, with every method's config
from mmpt.methods.base import MethodEntry, detach_from_model, register_method
from mmpt.methods.kv import install_pins, pad_mask
from mmpt.models.family import attention_modules, get_submodule

if TYPE_CHECKING:
    from mmpt.models import LoadedModel

CACHE_MARK = "_mmpt_prompt_length"


class PromptMethod(nn.Module):
    """Prepends learned embeddings to the input of a decoder tower (see module docstring)."""

    def __init__(
        self, loaded: LoadedModel, config: PromptConfig, source: Callable[[], torch.Tensor] | None = None
    ) -> None:
        """``source`` supplies the prompt tensor instead of an own parameter (used by ``deep_prompt``)."""
        super().__init__()
        self.config = config
        tower = loaded.family.tower(config.tower)
        if tower.kind != "decoder" or not tower.backbone:
            raise ValueError(f"prompt needs a decoder tower with a backbone; '{config.tower}' is a {tower.kind}")
        if not tower.input_prompts:
            raise ValueError(
                f"prompt: the '{config.tower}' tower of {loaded.family.name} cannot take input prompts (its "
                "generate() re-feeds cached tokens, which would shift them); use prefix, which this tower supports"
            )
        backbone = get_submodule(loaded.model, tower.backbone)
        embed = backbone.get_input_embeddings()
        self._embed = [embed]  # a list: not registered as a submodule
        if source is None:
            scale = embed.weight.detach().std()
            shape = (config.length, embed.weight.shape[1])
            self.prompt = nn.Parameter(torch.randn(shape, device=embed.weight.device) * scale * config.init_scale)
        self._source = source or (lambda: self.prompt)
        self._stripping = False
        self._extended: torch.Tensor | None = None  # the last decoding mask this method extended
        self._mark = f"{CACHE_MARK}_{id(self)}"  # per instance: several prompt methods may share a cache
        self._handles = [
            backbone.register_forward_pre_hook(self._prepend, with_kwargs=True),
            backbone.register_forward_hook(self._strip),
        ]
        if loaded.model is not backbone:  # outer models may build the attention mask before the backbone runs
            self._handles.append(loaded.model.register_forward_pre_hook(self._extend_mask, with_kwargs=True))
        # sliding-window layers (Gemma 2/3, Mistral): the prompt never slides out of the window
        attention = attention_modules(loaded.model, tower) if tower.attention else []
        _, pin_handles, self._pin_releases = install_pins(attention, config.length)
        self._handles += pin_handles

    def _decoding(self, call: CallArguments) -> bool:
        cache = call.cache()
        return cache is not None and getattr(cache, self._mark, None) == self.config.length and (
            cache.get_seq_length() > 0
        )

    def _extend_mask(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """At a decoding step, add the cached prompt's columns to a 2D padding mask the caller sized without them."""
        call = CallArguments(module, args, kwargs)
        if not self._decoding(call):
            return None
        mask, n = call.mask(), self.config.length
        new = call.get("inputs_embeds") if call.get("inputs_embeds") is not None else call.get("input_ids")
        # callers size the mask without the prompt (HF generate: cache - prompt + new tokens; GIT also leaves out
        # the image tokens it adds itself); a mask this method extended already (outer model, then backbone) or
        # one that covers the whole cache is left alone
        if isinstance(mask, torch.Tensor) and mask.ndim == 2 and new is not None and mask is not self._extended and (
            mask.shape[1] < call.cache().get_seq_length() + new.shape[1]
        ):
            self._extended = torch.cat([mask.new_ones(mask.shape[0], n), mask], dim=1)
            call.set("attention_mask", self._extended)
            return call.result()
        return None

    def _prepend(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = CallArguments(module, args, kwargs)
        n = self.config.length
        cache = call.cache()
        mask = call.mask()
        positions = call.positions()
        self._stripping = False
        if self._decoding(call):
            # decoding step: the prompt is in the cache; extend the caller's mask and positions
            extended = self._extend_mask(module, args, kwargs)
            if extended is not None:
                call = CallArguments(module, *extended)
            if positions is not None:
                # continue from where prefill ended; callers differ in whether their positions count the
                # cached prompt (HF generate() counts from the mask, PaliGemma from the cache length)
                following = getattr(cache, f"{self._mark}_next", None)
                if following is not None and following.shape[-2] in (1, positions.shape[-2]):
                    # (one row: a cache copied to a batch of continuations, e.g. candidate ranking);
                    # positions are (B, L) or multimodal-RoPE (k, B, L): the batch axis is -2
                    q = positions.shape[-1]
                    following = following.expand(*positions.shape[:-1], 1)
                    call.set("position_ids", following + torch.arange(q, device=positions.device))
                    setattr(cache, f"{self._mark}_next", following + q)
                else:
                    call.set("position_ids", positions + n)
            return call.result()
        embeds = call.get("inputs_embeds")
        if embeds is None:
            embeds = self._embed[0](call.get("input_ids"))
            call.set("input_ids", None)
        batch = embeds.shape[0]
        prompt = self._source().to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        call.set("inputs_embeds", torch.cat([prompt, embeds], dim=1))
        prepend_token_rows(call, n, embeds.shape[1])  # e.g. Mllama's cross-attention masks
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            call.set("attention_mask", torch.cat([mask.new_ones(batch, n), mask], dim=1))
        elif isinstance(mask, dict) or (isinstance(mask, torch.Tensor) and mask.ndim == 4):
            # prepared (B, 1, Q, K) masks (PaliGemma), or one per attention type (full / sliding window): the
            # prompt columns are visible to every query, so prompts never slide out of a window
            call.set("attention_mask", map_masks(mask, lambda m: _prepend_to_4d(m, n)))
        if positions is not None:
            # contiguous with the real positions (some models count from 1; a gap would read as a new packed
            # sequence to transformers' mask builder)
            head = positions.amin(-1, keepdim=True) + torch.arange(n, device=positions.device)
            call.set("position_ids", torch.cat([head, positions + n], dim=-1))
        if cache is not None:
            setattr(cache, self._mark, n)
            if positions is not None:
                setattr(cache, f"{self._mark}_next", positions[..., -1:] + n + 1)
        self._stripping = True
        return call.result()

    def _strip(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        if self._stripping:
            out.last_hidden_state = out.last_hidden_state[:, self.config.length :]
            self._stripping = False
        return out

    def remove(self) -> None:
        """Remove the hooks (and the prompt from the model)."""
        for handle in self._handles:
            handle.remove()
        for release in self._pin_releases:
            release()
        self._handles, self._pin_releases = [], []
        detach_from_model(self)


def _prepend_to_4d(mask: torch.Tensor, n: int) -> torch.Tensor:
    """Add ``n`` prompt rows/columns in front: every query sees the prompt; prompts see earlier prompts only."""
    mask = pad_mask(mask, n)
    allowed = torch.ones(n, mask.shape[-1], dtype=torch.bool, device=mask.device).tril()
    if mask.dtype == torch.bool:
        rows = allowed
    else:
        rows = torch.where(allowed, torch.zeros((), dtype=mask.dtype, device=mask.device), torch.finfo(mask.dtype).min)
    rows = rows.expand(*mask.shape[:-2], n, mask.shape[-1])
    return torch.cat([rows, mask], dim=-2)


register_method(MethodEntry("prompt", PromptConfig, PromptMethod, "shallow prompt tuning: embeddings before the text"))
