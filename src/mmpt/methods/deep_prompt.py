"""``deep_prompt``: learned hidden-state tokens at every chosen layer (VPT-deep; M2PT's prompts).

Encoder towers (ViTs, Q-Former, seq2seq encoders without padding): before each chosen block its prompt tokens
are inserted in front of the hidden states, and after the block they are dropped again, so each layer sees
its own prompts and the tower's output keeps its shape. Positions are added before the first block, so the
prompts carry none.

Decoder towers (LMs) whose chosen layers include layer 0: layer 0's prompts are prepended to the input like
``prompt`` (positions, padding mask and KV cache handled there); before every later chosen layer the hidden
states at the prompt positions are replaced by that layer's prompts. With a KV cache this happens once, at
prefill. Later layers' prompts start from what layer 0's prompts become there, so an untrained deep prompt
behaves as a shallow one instead of disrupting the pretrained LM (see ``_propagate_init``; ``propagate_init:
false`` draws them by ``init`` instead, as M2PT's paper does and ``m2pt`` does by default).

Decoder towers whose chosen layers start above layer 0 (M2PT's location ablation): in a decoder, prompts
replaced at a layer act on the real tokens only through that layer's attention, as keys and values; so each
chosen layer's prompts enter its attention as key/value tokens, computed from the prompt vectors by the layer's
own input norm and key/value projections (no rotary position, like prefixes; :mod:`mmpt.methods.kv`). Layers
below the first chosen one (and between chosen ones) see no prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmpt.contract import (
    CallArguments,
    ContractError,
    embeds_only_inputs,
    map_masks,
    refuse_unknown_token_inputs,
)
from mmpt.method_configs import DeepPromptConfig  # noqa: F401 - torch-free, with every method's config
from mmpt.methods.base import MethodEntry, detach_from_model, register_method
from mmpt.methods.blocks import hidden_of, with_hidden
from mmpt.methods.kv import pad_mask
from mmpt.methods.prompt import PromptConfig, PromptMethod
from mmpt.models.family import attention_layers, get_submodule, hooked_blocks, tower_width

if TYPE_CHECKING:
    from mmpt.models import LoadedModel


class DeepPromptMethod(nn.Module):
    """Per-layer prompt tokens for one tower (see module docstring)."""

    def __init__(self, loaded: LoadedModel, config: DeepPromptConfig) -> None:
        super().__init__()
        self.config = config
        tower = loaded.family.tower(config.tower)
        if tower.kind == "cnn":
            raise ValueError(f"tower '{config.tower}' is a CNN; use visual_prompt for pixel-space prompts")
        all_blocks = hooked_blocks(loaded.model, tower, "deep_prompt")
        n = len(all_blocks)
        bad = [i for i in config.layers if not -n <= i < n]
        if bad:
            raise ValueError(f"tower '{config.tower}' has layers 0..{n - 1}; layer(s) {bad} do not exist")
        chosen = sorted({i % n for i in config.layers}) if config.layers else list(range(n))
        width = tower_width(loaded.model, tower)
        param = next(all_blocks[0].parameters())
        self.prompts = nn.Parameter(
            torch.randn(len(chosen), config.length, width, device=param.device) * config.init_scale
        )
        if config.init == "xavier":
            with torch.no_grad():
                for layer in self.prompts:
                    nn.init.xavier_uniform_(layer)
        self._handles: list[Any] = []
        if tower.kind == "decoder" and chosen[0] != 0:
            self._as_key_values(loaded, tower, all_blocks, chosen)
        elif tower.kind == "encoder":
            for slot, i in enumerate(chosen):
                insert, drop = (self._insert_packed(slot), self._drop_packed) if tower.packed else (
                    self._insert(slot), self._drop)
                self._handles.append(all_blocks[i].register_forward_pre_hook(insert, with_kwargs=True))
                # prepend: drop the prompts before any output-recording hook of transformers sees them
                self._handles.append(all_blocks[i].register_forward_hook(drop, prepend=True))
        else:
            if config.propagate_init:
                self._propagate_init(loaded, tower, all_blocks, chosen)
            inner = PromptMethod(loaded, PromptConfig(length=config.length, tower=config.tower),
                                 source=lambda: self.prompts[0])
            self._inner_list = [inner]  # a list: not registered as a submodule
            for slot, i in enumerate(chosen[1:], start=1):
                self._handles.append(all_blocks[i].register_forward_pre_hook(self._replace(slot), with_kwargs=True))

    def _as_key_values(self, loaded: LoadedModel, tower: Any, all_blocks: list[nn.Module], chosen: list[int]) -> None:
        """Decoder prompts from a layer above 0: key/value tokens of each chosen layer (see the module docstring)."""
        from mmpt.methods.kv import KVInjection, kv_layout, projections

        found = dict(attention_layers(loaded.model, tower))
        lacking = [i for i in chosen if i not in found]
        if lacking:
            raise ValueError(f"deep_prompt: decoder layer(s) {lacking} of '{self.config.tower}' have no self-attention")
        modules = [found[i] for i in chosen]
        providers = []
        for slot, (i, module) in enumerate(zip(chosen, modules, strict=True)):
            norm = next((getattr(all_blocks[i], n) for n in INPUT_NORMS if isinstance(getattr(all_blocks[i], n, None),
                                                                                     nn.Module)), None)
            if norm is None:
                raise ValueError(f"deep_prompt from layer {chosen[0]}: {type(all_blocks[i]).__name__} has none of the "
                                 f"input norms {', '.join(INPUT_NORMS)}; include layer 0 in layers")
            k_proj, v_proj = projections(module)
            heads, head_dim = kv_layout(module)
            providers.append(self._kv_provider(slot, norm, k_proj, v_proj, getattr(module, "k_norm", None),
                                               heads, head_dim))
        self._injection = KVInjection(modules, providers, cross=False, mode="interface")

    def _kv_provider(self, slot: int, norm: nn.Module, k_proj: nn.Module, v_proj: nn.Module, k_norm: Any,
                     heads: int, head_dim: int) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        def provide() -> tuple[torch.Tensor, torch.Tensor]:
            x = norm(self.prompts[slot].to(next(norm.parameters()).dtype))
            k = k_proj(x).view(-1, heads, head_dim)
            if k_norm is not None:  # Gemma 3 / Qwen3: keys are normalized per head before attention
                k = k_norm(k)
            return k.transpose(0, 1), v_proj(x).view(-1, heads, head_dim).transpose(0, 1)

        return provide

    @torch.no_grad()
    def _propagate_init(self, loaded: LoadedModel, tower: Any, all_blocks: list[nn.Module], chosen: list[int]) -> None:
        """Decoder towers: start each later layer's prompts from the hidden states that layer 0's prompts reach
        there, so that at initialization deep prompts equal shallow prompt tuning.

        Prompt positions come first and attend only to each other, so those hidden states do not depend on the
        input: one forward pass of the prompts alone gives them. Random later-layer prompts would instead wipe
        out what the model builds at its first positions (its attention sink) and raise the loss of a pretrained
        LM several-fold before any training (SmolLM2-135M: 1.85 -> 16.6 on LLaVA-style data).
        """
        if len(chosen) < 2:
            return
        seen: dict[int, torch.Tensor] = {}

        def capture(slot: int) -> Callable[..., Any]:
            def hook(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                seen[slot] = CallArguments(block, args, kwargs).hidden()[0].detach().clone()

            return hook

        handles = [all_blocks[i].register_forward_pre_hook(capture(slot), with_kwargs=True)
                   for slot, i in enumerate(chosen) if slot > 0]
        backbone = get_submodule(loaded.model, tower.backbone)
        was_training = backbone.training
        try:
            backbone.eval()
            backbone(**embeds_only_inputs(backbone, self.prompts[:1].to(next(backbone.parameters()).dtype)),
                     use_cache=False)
        finally:
            backbone.train(was_training)
            for handle in handles:
                handle.remove()
        for slot, hidden in seen.items():
            self.prompts[slot].copy_(hidden.to(self.prompts.dtype))

    def _insert(self, slot: int) -> Callable[..., Any]:
        def hook(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            call = CallArguments(block, args, kwargs)
            hidden = call.hidden()
            n, length = self.config.length, hidden.shape[1]
            prompts = self.prompts[slot].to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
            call.set("hidden_states", torch.cat([prompts, hidden], dim=1))
            if call.mask() is not None:  # setting None would add an argument the block may not take
                call.set("attention_mask", map_masks(call.mask(), self._grow_encoder_mask))
            rotary = call.get("position_embeddings")
            if rotary is not None:  # rotary ViTs (Pixtral): the prompts take the identity rotation (no position)
                call.set("position_embeddings", identity_rotation_first(rotary, n, length, type(block).__name__))
            refuse_unknown_token_inputs(call, length)
            return call.result()

        return hook

    def _grow_encoder_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, Q, K) encoder mask: the prompts' rows and columns are visible."""
        if mask.ndim != 4:
            raise ValueError(f"deep_prompt expects a prepared (B, 1, Q, K) encoder mask, got shape {tuple(mask.shape)}")
        mask = pad_mask(mask, self.config.length)
        rows = mask[..., :1, :].expand(*mask.shape[:-2], self.config.length, mask.shape[-1])
        return torch.cat([rows, mask], dim=-2)

    def _insert_packed(self, slot: int) -> Callable[..., Any]:
        """Packed towers (Qwen2-VL's ViT): hidden states ``(tokens, dim)`` of all images, ``cu_seqlens`` marking
        where each starts. Each image gets its prompts in front; rotary embeddings of the prompts are the
        identity (cos 1, sin 0), so prompts carry no position, as in batched encoders."""

        def hook(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            call = CallArguments(block, args, kwargs)
            hidden, cu = call.hidden(), call.get("cu_seqlens")
            if hidden.ndim != 2 or not isinstance(cu, torch.Tensor):
                raise ContractError(f"{type(block).__name__}: a packed tower's block needs (tokens, dim) hidden "
                                    f"states and cu_seqlens, got {tuple(hidden.shape)} and {type(cu).__name__}")
            n, lengths = self.config.length, (cu[1:] - cu[:-1]).tolist()
            prompts = self.prompts[slot].to(hidden.dtype)
            segments = torch.split(hidden, lengths)
            call.set("hidden_states", torch.cat([t for seg in segments for t in (prompts, seg)]))
            keep = torch.cat([torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(k, dtype=torch.bool)])
                              for k in lengths]).to(hidden.device)
            self._packed_keep = keep
            call.set("cu_seqlens", cu + n * torch.arange(len(cu), device=cu.device, dtype=cu.dtype))
            rotary = call.get("position_embeddings")
            if rotary is not None:
                cos, sin = rotary
                full_cos = torch.ones(keep.shape[0], *cos.shape[1:], dtype=cos.dtype, device=cos.device)
                full_sin = torch.zeros(keep.shape[0], *sin.shape[1:], dtype=sin.dtype, device=sin.device)
                full_cos[keep], full_sin[keep] = cos, sin
                call.set("position_embeddings", (full_cos, full_sin))
            return call.result()

        return hook

    def _drop_packed(self, block: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        return with_hidden(out, hidden_of(out)[self._packed_keep])

    def _drop(self, block: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        return with_hidden(out, hidden_of(out)[:, self.config.length :])

    def _replace(self, slot: int) -> Callable[..., Any]:
        def hook(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if not self._inner_list[0]._stripping:  # decoding step: prompts are in the cache already
                return None
            call = CallArguments(block, args, kwargs)
            # the prompt's columns as the inner prompt placed them (in front, or after each row's padding)
            call.set("hidden_states", self._inner_list[0].place(call.hidden(), self.prompts[slot]))
            return call.result()

        return hook

    def remove(self) -> None:
        """Remove every hook (and the prompts from the model)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for inner in getattr(self, "_inner_list", []):
            inner.remove()
        if getattr(self, "_injection", None) is not None:
            self._injection.remove()
            self._injection = None
        detach_from_model(self)


def identity_rotation_first(rotary: Any, n: int, length: int, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary ``(cos, sin)`` over ``length`` tokens (the sequence on axis -2: ``(L, d)`` or ``(B, L, d)``) with ``n``
    identity rotations (cos 1, sin 0) in front, for prompts put before the tokens."""
    if not (isinstance(rotary, tuple | list) and len(rotary) == 2 and all(isinstance(t, torch.Tensor) for t in rotary)
            and rotary[0].ndim >= 2 and rotary[0].shape[-2] == length and rotary[0].shape == rotary[1].shape):
        shapes = [tuple(t.shape) for t in rotary] if isinstance(rotary, tuple | list) else type(rotary).__name__
        raise ContractError(f"{owner}: position_embeddings should be (cos, sin) over the {length} tokens on axis -2, "
                            f"got {shapes}; mmpt cannot give prompts their rotary rows")
    cos, sin = rotary
    shape = (*cos.shape[:-2], n, cos.shape[-1])
    return (torch.cat([torch.ones(shape, dtype=cos.dtype, device=cos.device), cos], dim=-2),
            torch.cat([torch.zeros(shape, dtype=sin.dtype, device=sin.device), sin], dim=-2))


INPUT_NORMS = ("input_layernorm", "self_attn_layer_norm", "ln_1", "layer_norm1")
"""Names of a decoder block's pre-attention norm across families (Llama/Gemma/Qwen, OPT/BART, GPT-2, SigLIP)."""


register_method(MethodEntry("deep_prompt", DeepPromptConfig, DeepPromptMethod,
                            "deep prompts: per-layer tokens (VPT-deep) in ViTs or LMs"))
