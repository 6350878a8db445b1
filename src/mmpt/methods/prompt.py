"""``prompt``: shallow prompt tuning (Lester et al. 2021) — learned embeddings prepended to the text input.

A pre-hook on the decoder's backbone prepends the prompt to ``inputs_embeds`` (extending the padding mask and
explicit position ids); a forward hook drops the prompt positions from the backbone's output, so logits and
labels keep their shapes. Prompt tokens occupy positions ``0..length-1`` and real tokens follow them. With a KV
cache the prompt is computed once, at prefill; later steps only extend the mask and shift position ids. In
sliding-window layers the prompt is pinned (:class:`~mmpt.methods.kv.Pin`): it stays visible to every token for
the whole generation instead of sliding out of the window.

Where the padding goes: in a tower whose blocks all mix tokens by attention, the prompt goes in front of the
whole (left-padded) row; the mask hides the padding between prompt and text. A tower with other token mixers
(short convolutions, state-space or linear-attention layers: :func:`~mmpt.models.family.token_mixers`) reads
its neighbours whatever the mask says, so there each row's prompt is put **after its left padding**, right
before its first real token, as for the sample alone; the mask then must be a left-padded 2-D padding mask
(anything else is a :class:`~mmpt.contract.ContractError`). The same layout serves a left-padded prefill whose
caller gives no position ids (a plain ``model(input_ids, attention_mask)``): the backbone then counts positions
from the left edge, and only prompts next to the first real token keep the sample's own distances. mmpt's
processor and ``generate()`` give position ids; with a prepared 4-D mask and none, the call is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmpt.contract import CallArguments, ContractError, insert_token_inputs, map_masks
from mmpt.method_configs import PromptConfig  # noqa: F401 - torch-free, with every method's config
from mmpt.methods.base import MethodEntry, detach_from_model, register_method
from mmpt.methods.kv import install_pins, pad_mask
from mmpt.models.family import attention_modules, get_submodule, reads_neighbours

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
        if tower.no_input_prompts:
            raise ValueError(f"prompt: the '{config.tower}' tower of {loaded.family.name} cannot take input prompts "
                             f"({tower.no_input_prompts}); use prefix, which adds no tokens")
        backbone = get_submodule(loaded.model, tower.backbone)
        embed = backbone.get_input_embeddings()
        self._embed = [embed]  # a list: not registered as a submodule
        if source is None:
            scale = embed.weight.detach().std()
            shape = (config.length, embed.weight.shape[1])
            self.prompt = nn.Parameter(torch.randn(shape, device=embed.weight.device) * scale * config.init_scale)
        self._source = source or (lambda: self.prompt)
        self._stripping = False
        # prompts after each row's left padding where a convolution / SSM reads the neighbours (module docstring);
        # elsewhere too at a prefill of a left-padded batch without position ids (see _prefill_adjacent)
        self.adjacent = reads_neighbours(loaded.model, tower)
        self._adjacent_now = self.adjacent  # the layout of the last prefill
        self._keep: torch.Tensor | None = None  # (B, L) columns of the real (and padding) tokens at this prefill
        self.prompt_columns: torch.Tensor | None = None  # (B, n) columns of the prompt at this prefill
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
            if getattr(call.cache(), f"{self._mark}_adjacent", self.adjacent):  # each row's prompt after its padding
                self._extended = after_padding(mask, mask.new_ones(mask.shape[0], n), mask, "attention_mask")
            else:
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
        batch, length = embeds.shape[:2]
        prompt = self._source().to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        self._adjacent_now = self.adjacent or _prefill_adjacent(mask, positions, batch, type(call.module).__name__)
        if cache is not None:
            setattr(cache, f"{self._mark}_adjacent", self._adjacent_now)
        if self._adjacent_now:
            self._prepend_adjacent(call, embeds, prompt, mask, positions)
        else:
            call.set("inputs_embeds", torch.cat([prompt, embeds], dim=1))
            # e.g. Mllama's cross-attention masks, Qwen3-VL's DeepStack positions
            insert_token_inputs(call, n, length, lambda value, rows, axis, name: torch.cat([rows, value], dim=axis))
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
            columns = torch.arange(n + length, device=embeds.device).expand(batch, -1)
            self.prompt_columns, self._keep = columns[:, :n], columns[:, n:]
        if cache is not None:
            setattr(cache, self._mark, n)
            if positions is not None:
                setattr(cache, f"{self._mark}_next", positions[..., -1:] + n + 1)
        self._stripping = True
        return call.result()

    def _prepend_adjacent(self, call: CallArguments, embeds: torch.Tensor, prompt: torch.Tensor, mask: Any,
                          positions: torch.Tensor | None) -> None:
        """Put each row's prompt after its left padding (towers whose mixers read neighbours, and left-padded
        prefills whose positions do not follow the padding: :func:`_prefill_adjacent`)."""
        n = self.config.length
        batch, length = embeds.shape[:2]
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
        elif not (isinstance(mask, torch.Tensor) and mask.ndim == 2):
            raise ContractError(
                f"prompt: the '{self.config.tower}' tower mixes tokens by convolution / state-space layers, so its "
                f"prompts go after each row's padding, which needs a 2-D padding mask; {type(call.module).__name__} "
                f"got {type(mask).__name__}{'' if not isinstance(mask, torch.Tensor) else tuple(mask.shape)}")

        pads = padding_of(mask)  # once: every tensor below is rearranged by it

        def insert(value: torch.Tensor, rows: torch.Tensor, axis: int, name: str) -> torch.Tensor:
            if axis != 1:
                raise ContractError(f"prompt: '{name}' has its tokens on axis {axis}; prompts placed after each row's "
                                    "padding extend per-token inputs on axis 1 only")
            return after_padding(mask, rows, value, name, pads=pads)

        insert_token_inputs(call, n, length, insert)
        call.set("inputs_embeds", after_padding(mask, prompt, embeds, "inputs_embeds", pads=pads))
        call.set("attention_mask", after_padding(mask, mask.new_ones(batch, n), mask, "attention_mask", pads=pads))
        if positions is not None:
            # the prompt takes the positions just before the first real token's, which move up by n
            positions = positions[None] if positions.ndim == 1 else positions
            positions = positions.expand(*positions.shape[:-2], batch, positions.shape[-1])  # one row for all
            first = positions.gather(-1, pads.view(*[1] * (positions.ndim - 2), batch, 1).expand(
                *positions.shape[:-1], 1))
            head = first + torch.arange(n, device=positions.device)
            call.set("position_ids", after_padding(mask, head, positions + n, "position_ids", positions.ndim - 1,
                                                   pads))
        columns = torch.arange(length, device=embeds.device).expand(batch, -1)
        self.prompt_columns = pads[:, None] + torch.arange(n, device=embeds.device)
        self._keep = torch.where(columns < pads[:, None], columns, columns + n)

    def real_columns(self) -> torch.Tensor | None:
        """``(B, L)`` columns of the input's own tokens (padding included) in the last prefill's sequence, prompt
        columns left out; None before any prefill."""
        return self._keep

    def place(self, hidden: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """``hidden`` (this prefill's layout, prompt included) with the prompt's columns replaced by ``prompts``
        (``(n, D)``); used by ``deep_prompt`` at later layers."""
        if self.prompt_columns is None or self._keep is None:
            raise RuntimeError("place() is called at a prefill, after the prompt was inserted")
        columns = self.prompt_columns
        added = hidden.shape[1] - columns.shape[1] - self._keep.shape[1]  # tokens the backbone added itself
        if added < 0:
            raise ContractError(f"deep_prompt: a block of '{self.config.tower}' got {hidden.shape[1]} positions; the "
                                f"prompt was put into a sequence of {columns.shape[1] + self._keep.shape[1]}")
        # GIT's backbone puts its image tokens in front of the text it is given (prompt included)
        index = (columns + added)[..., None].expand(-1, -1, hidden.shape[-1])
        return hidden.scatter(1, index, prompts.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1))

    def _strip(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        if self._stripping:
            hidden = out.last_hidden_state
            if self._adjacent_now:  # the backbone's own tokens in front (GIT's image tokens), then each row's text
                added = hidden.shape[1] - self.config.length - self._keep.shape[1]
                if added < 0:
                    raise ContractError(f"prompt: the '{self.config.tower}' backbone returned {hidden.shape[1]} "
                                        f"positions for a sequence of {self.config.length + self._keep.shape[1]}")
                own = torch.arange(added, device=hidden.device).expand(hidden.shape[0], -1)
                keep = torch.cat([own, self._keep + added], dim=1)
                out.last_hidden_state = hidden.gather(1, keep[..., None].expand(-1, -1, hidden.shape[-1]))
            else:  # the first n (GIT's backbone puts its image tokens in front: its text stays last)
                out.last_hidden_state = hidden[:, self.config.length :]
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


def padding_of(mask: torch.Tensor) -> torch.Tensor:
    """Each row's count of left padding in a 2-D ``(B, L)`` mask; a mask that is not left-padded (zeros after a
    one) is a :class:`~mmpt.contract.ContractError`."""
    real = mask.bool()
    pads = (~real).int().cumprod(-1).sum(-1)
    if int((~real).sum()) != int(pads.sum()):
        raise ContractError("prompt: the padding mask is not left-padded (a zero after a one); tokenize with "
                            "padding_side='left' for this tower (its convolution / state-space layers read neighbours)")
    return pads


def without_inserted(mask: torch.Tensor, n: int) -> torch.Tensor:
    """A 2-D mask that some prompt method extended by ``n`` columns, as it was: the first ``n`` columns dropped
    when they are all ones (prompt in front), else the ``n`` after each row's left padding."""
    if bool(mask[:, :n].bool().all()):
        return mask[:, n:]
    pads = padding_of(mask)[:, None]
    columns = torch.arange(mask.shape[1] - n, device=mask.device).expand(mask.shape[0], -1)
    return mask.gather(1, torch.where(columns < pads, columns, columns + n))


def after_padding(mask: torch.Tensor, inserted: torch.Tensor, rows: torch.Tensor, what: str,
                  seq_axis: int = 1, pads: torch.Tensor | None = None) -> torch.Tensor:
    """``rows`` (``(..., B, L, ...)``, the sequence on ``seq_axis``, the batch just before it) with ``inserted``
    (``(..., B, n, ...)``) put after each row's left padding as ``mask`` (``(B, L)``) gives it (``pads``: its
    :func:`padding_of`, when the caller has it already)."""
    batch, length = mask.shape
    if rows.shape[seq_axis] != length or rows.shape[seq_axis - 1] != batch:
        raise ContractError(f"prompt: {what} has shape {tuple(rows.shape)}, not aligned with the (B, L) = "
                            f"{tuple(mask.shape)} padding mask")
    n = inserted.shape[seq_axis]
    pads = (padding_of(mask) if pads is None else pads)[:, None]
    target = torch.arange(n + length, device=mask.device).expand(batch, -1)
    # column j of the result, as an index into [inserted, rows]: padding rows[j], then inserted[j - pads], then
    # the row's token rows[j - n]
    index = torch.where(target < pads, target + n, torch.where(target < pads + n, target - pads, target))
    shape = [1] * rows.ndim
    shape[seq_axis - 1], shape[seq_axis] = batch, n + length
    joined = torch.cat([inserted, rows], dim=seq_axis)
    index = index.view(shape).expand(*joined.shape[:seq_axis], n + length, *joined.shape[seq_axis + 1:])
    return joined.gather(seq_axis, index)


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


def _prefill_adjacent(mask: Any, positions: torch.Tensor | None, batch: int, module: str) -> bool:
    """Whether a prefill in front of the padding would be wrong: a left-padded batch whose positions do not follow
    each row's padding (no position ids, or one row of them for the whole batch, as a plain ``model(input_ids,
    attention_mask)`` call gives). The backbone then counts positions from the left edge, padding included, so
    prompts in front would stand as many positions away from each row's first token as the row has padding, and a
    padded sample would differ from the sample alone. After each row's padding, prompt and tokens stay contiguous
    whichever way the backbone counts. A prepared (4-D or per-layer-type) mask cannot be rearranged so: that call
    is a :class:`ContractError` asking for position ids."""
    if positions is not None and (batch == 1 or (positions.ndim >= 2 and positions.shape[-2] != 1)):
        return False  # per-row positions (or a batch of one): the caller's count, kept
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        return bool((mask[:, 0] == 0).any())
    if _left_padded_prepared(mask):
        raise ContractError(
            f"prompt: {module} got a left-padded batch with a prepared attention mask and positions that do not "
            "follow each row's padding; prompts in front of the padding would sit farther from each row's tokens "
            "than in the sample alone. Pass position_ids counted from each row's first real token (as mmpt's "
            "processor and generate() do)")
    return False


def _left_padded_prepared(mask: Any) -> bool:
    """Whether a 4-D mask (or any of a dict of them) hides column 0 from some row's last query."""
    if isinstance(mask, dict):
        return any(_left_padded_prepared(m) for m in mask.values())
    if not (isinstance(mask, torch.Tensor) and mask.ndim == 4):
        return False
    corner = mask[:, :, -1, 0]
    hidden = ~corner if corner.dtype == torch.bool else corner < torch.finfo(corner.dtype).min / 2 if (
        corner.is_floating_point()) else corner == 0
    return bool(hidden.any())
