"""The contract between mmpt and transformers: everything mmpt assumes about a model's call arguments.

Methods inject by hooks, so they read and replace the arguments transformers passes between its modules. Those
arguments change between releases (5.24 renamed ``past_key_values`` to ``cache`` in decoder layers and attention
modules), so every such assumption lives here, and methods never read a call argument by name themselves:

- **the KV cache**: passed as ``cache`` (transformers >= 5.24) or ``past_key_values`` (earlier 5.x), by position or
  keyword. A :class:`~transformers.cache_utils.Cache` object found under any other name raises
  :class:`ContractError` instead of being ignored: a hook that misses the cache while the model generates would
  re-inject its tokens at every step and silently change the output.
- **attention masks**: a tensor (2-D padding mask, or a prepared 4-D ``(B, 1, Q, K)`` mask, boolean or additive),
  or a dict of such masks keyed by attention type (``full_attention``, ``sliding_attention``); helpers apply one
  edit to every mask in the dict.
- **position ids**: ``(B, L)`` or multimodal-RoPE ``(k, B, L)`` (Qwen2-VL style); sequence is always the last axis.
- **hidden states**: ``(B, L, D)``, sequence on axis 1.
- **a block's width**: the tower's ``config.hidden_size`` (never guessed from the first norm found, which may be
  a per-head ``q_norm``).

Supported range: transformers 5.0 up to the newest release served (``make test-latest`` checks it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache

CACHE_NAMES = ("cache", "past_key_values", "past_key_value")
"""Names transformers has used for the KV cache argument, newest first."""


class ContractError(RuntimeError):
    """transformers passed something mmpt's hooks do not understand: raised instead of guessing."""


_SIGNATURES: dict[Any, tuple[inspect.Signature, list[str]]] = {}  # forward function -> signature, positional names


def _read_signature(module: nn.Module) -> tuple[inspect.Signature, list[str]]:
    """``inspect.signature(module.forward)`` and its positional parameter names, memoized per function: hooks run
    per layer and per decoding step, and reading a signature costs ~0.25 ms (5% of a SmolLM2 decoding step)."""
    forward = module.forward
    key = getattr(forward, "__func__", forward)
    entry = _SIGNATURES.get(key)
    if entry is None:
        signature = inspect.signature(forward)
        names = [p.name for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        entry = _SIGNATURES[key] = (signature, names)
    return entry


def _signature(module: nn.Module) -> inspect.Signature:
    return _read_signature(module)[0]


def _positional_names(module: nn.Module) -> list[str]:
    return _read_signature(module)[1]


def _library_cache_name() -> str:
    """The cache argument name of the installed transformers' decoder models."""
    from transformers.models.llama.modeling_llama import LlamaModel

    params = inspect.signature(LlamaModel.forward).parameters
    for name in CACHE_NAMES:
        if name in params:
            return name
    raise ContractError(
        f"transformers' LlamaModel.forward takes none of {', '.join(CACHE_NAMES)} as its KV cache argument; this "
        "transformers release is not supported by mmpt (supported: 5.0 to the newest tested, see README)"
    )


def cache_argument(module: nn.Module) -> str:
    """The name under which ``module.forward`` takes its KV cache (``cache`` or ``past_key_values``).

    A forward that names none but takes ``**kwargs`` (a wrapper such as mmpt-tiny's VLM) gets the installed
    transformers' convention.
    """
    params = _signature(module).parameters
    for name in CACHE_NAMES:
        if name in params:
            return name
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return _library_cache_name()
    raise ContractError(
        f"{type(module).__name__}.forward takes no KV cache argument (looked for {', '.join(CACHE_NAMES)}); "
        "this transformers release is not supported by mmpt (supported: 5.0 to the newest tested, see README)"
    )


def cache_kwargs(module: nn.Module, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` to pass a KV cache to ``module`` under the name its forward expects."""
    return {cache_argument(module): cache}


def cache_in(kwargs: dict[str, Any]) -> Any:
    """The KV cache among keyword arguments (either name), or None."""
    return next((kwargs[n] for n in CACHE_NAMES if kwargs.get(n) is not None), None)


class CallArguments:
    """Read and replace the arguments of a hooked forward call, whether passed by position or keyword.

    Generic ``get``/``set`` take a name; the cache, mask and positions have their own accessors, which know
    every name transformers uses for them.
    """

    def __init__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.module = module
        self.names = _positional_names(module)
        self.args, self.kwargs = list(args), dict(kwargs)

    def _has(self, name: str) -> bool:
        return name in self.kwargs or (name in self.names and self.names.index(name) < len(self.args))

    def get(self, name: str) -> Any:
        """The argument called ``name`` (None when not passed)."""
        if name in self.kwargs:
            return self.kwargs[name]
        if name in self.names and self.names.index(name) < len(self.args):
            return self.args[self.names.index(name)]
        return None

    def set(self, name: str, value: Any) -> None:
        """Replace (or add, as a keyword) the argument called ``name``."""
        if name in self.names and self.names.index(name) < len(self.args):
            self.args[self.names.index(name)] = value
        else:
            self.kwargs[name] = value

    def result(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` for a forward pre-hook to return."""
        return tuple(self.args), self.kwargs

    # --- the KV cache -------------------------------------------------------------------------------------
    def _cache_name(self) -> str | None:
        for name in CACHE_NAMES:
            if self._has(name) and self.get(name) is not None:
                return name
        return None

    def cache(self) -> Any:
        """The KV cache passed to this call, or None when there is none.

        Raises :class:`ContractError` when a ``Cache`` object is passed under a name mmpt does not know.
        """
        name = self._cache_name()
        if name is not None:
            return self.get(name)
        named = list(self.kwargs.items()) + list(zip(self.names, self.args, strict=False))
        for key, value in named:
            if isinstance(value, Cache):
                raise ContractError(
                    f"{type(self.module).__name__} received its KV cache as '{key}', an argument name mmpt does "
                    f"not know (known: {', '.join(CACHE_NAMES)}); this transformers release changed the call "
                    "convention. Install the locked versions (`make install`) or report it; mmpt refuses to "
                    "guess because a missed cache changes generations silently"
                )
        return None

    def set_cache(self, cache: Any) -> None:
        """Pass ``cache`` under the name this call (or else the module's signature) uses."""
        name = self._cache_name()
        if name is None:
            params = _signature(self.module).parameters
            name = next((n for n in CACHE_NAMES if n in params), None)
        if name is None:
            raise ContractError(f"{type(self.module).__name__}.forward takes no KV cache argument")
        self.set(name, cache)

    # --- masks, positions, hidden states --------------------------------------------------------------------
    def mask(self) -> torch.Tensor | dict[str, torch.Tensor] | None:
        """The attention mask: a tensor, a dict of masks by attention type, or None."""
        mask = self.get("attention_mask")
        if mask is None or isinstance(mask, torch.Tensor | dict):
            return mask
        raise ContractError(f"{type(self.module).__name__} received an attention mask of type {type(mask).__name__}")

    def positions(self) -> torch.Tensor | None:
        """``position_ids``: ``(B, L)`` or multimodal-RoPE ``(k, B, L)``."""
        return self.get("position_ids")

    def hidden(self) -> torch.Tensor:
        """``hidden_states`` of a block call, ``(B, L, D)``."""
        hidden = self.get("hidden_states")
        if hidden is None and self.args:
            hidden = self.args[0]
        if not isinstance(hidden, torch.Tensor):
            raise ContractError(f"{type(self.module).__name__} was called without hidden states mmpt can read")
        return hidden


def map_masks(
    mask: torch.Tensor | dict[str, torch.Tensor] | None, edit: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor | dict[str, torch.Tensor] | None:
    """Apply ``edit`` to a mask tensor, or to every tensor of a dict of masks (``None`` entries kept)."""
    if mask is None:
        return None
    if isinstance(mask, dict):
        return {k: (edit(v) if isinstance(v, torch.Tensor) else v) for k, v in mask.items()}
    return edit(mask)


def tower_width(tower_module: nn.Module, block: nn.Module) -> int:
    """Hidden size of a transformer tower's blocks.

    Read from the tower's config (``hidden_size``, ``d_model`` or ``embed_dim``) and checked against the block's
    norms: a config width that no ``LayerNorm``/``RMSNorm`` of the block has raises :class:`ContractError`. Without
    a config, the norm width that occurs most often in the block (a per-head ``q_norm`` is outnumbered by the
    hidden-width norms around attention and MLP).
    """
    widths: list[int] = []
    for module in block.modules():
        if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
            weight = getattr(module, "weight", None)
            if weight is not None and weight.ndim == 1:
                widths.append(weight.shape[0])
    config = getattr(tower_module, "config", None)
    # Qwen2-VL's vision config: embed_dim is the blocks' width, hidden_size the merger's output
    declared = [v for k in ("hidden_size", "d_model", "embed_dim")
                if isinstance(v := getattr(config, k, None), int) and v > 0]
    if declared:
        matching = [v for v in declared if not widths or v in widths]
        if not matching:
            raise ContractError(
                f"{type(tower_module).__name__}'s config says hidden size {declared[0]}, but no norm of its "
                f"{type(block).__name__} has that width (found {sorted(set(widths))}); the family's tower path "
                "may point at the wrong module"
            )
        return matching[0]
    if not widths:
        raise ContractError(f"cannot find the hidden width of {type(block).__name__}")
    return max(set(widths), key=widths.count)


TOKEN_SIDE_INPUTS: dict[str, int] = {
    "cross_attention_mask": -2,  # Mllama: (B, 1, L, image tokens) mask of its cross-attention layers
    "full_text_row_masked_out_mask": -2,  # Mllama: (B, 1, L, 1), rows that see no image at all
    "visual_pos_masks": 1,  # Qwen3-VL: (B, L) where DeepStack adds vision features to the LM's first layers
    "image_embeds_position_mask": 1,  # Kosmos-2: (B, L) the tokens its text decoder replaces by image features
    "per_layer_inputs": 1,  # Gemma 3n / 4: (B, L, layers, dim) per-layer vectors looked up from the token ids
}
"""Per-token arguments some LM backbones take besides the hidden states, mask and positions, with their sequence
axis. Tokens a method adds (prompts) get rows that see no image: a masked-out cross-attention row, a row marked
as masked out, no DeepStack feature, no image feature written, a zero per-layer input. Qwen3-VL's
``deepstack_visual_embeds`` hold one row per image token (not per token of the sequence) and stay as they are."""

SEQUENCE_ARGUMENTS = frozenset({"input_ids", "inputs_embeds", "hidden_states", "attention_mask", "position_ids",
                                "labels"})
"""Per-token arguments the prompt methods lengthen themselves."""

PER_IMAGE_PREFIXES = ("pixel_", "image_")
"""Arguments named so are per image, not per token (``pixel_values`` (B, 3, H, W) can have 3 = L by chance)."""


def _no_image_rows(name: str, value: torch.Tensor, n: int, axis: int) -> torch.Tensor:
    fill: Any = False if value.dtype == torch.bool else (
        torch.finfo(value.dtype).min if name == "cross_attention_mask" and value.is_floating_point() else 0)
    shape = list(value.shape)
    shape[axis] = n
    return torch.full(shape, fill, dtype=value.dtype, device=value.device)


def insert_token_inputs(call: CallArguments, n: int, length: int,
                        insert: Callable[[torch.Tensor, torch.Tensor, int, str], torch.Tensor]) -> None:
    """Give ``n`` added tokens their rows in every per-token side input of :data:`TOKEN_SIDE_INPUTS` that covers
    ``length`` tokens; ``insert(value, rows, axis, name)`` puts them where the method puts its tokens (in front,
    or after each row's padding). A side input of another length is a :class:`ContractError`, and so is any other
    tensor argument whose sequence axis has ``length`` entries (:func:`refuse_unknown_token_inputs`)."""
    for name, axis in TOKEN_SIDE_INPUTS.items():
        value = call.get(name)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or value.ndim < 2 or value.shape[axis] != length:
            raise ContractError(f"{type(call.module).__name__}: '{name}' should cover the {length} tokens on axis "
                                f"{axis}, got {tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
        call.set(name, insert(value, _no_image_rows(name, value, n, axis), axis, name))
    refuse_unknown_token_inputs(call, length)


def embeds_only_inputs(backbone: nn.Module, embeds: torch.Tensor) -> dict[str, torch.Tensor]:
    """The arguments to run ``backbone`` on embeddings that stand for no token id (prompts alone): ``inputs_embeds``,
    plus the zero rows of :data:`TOKEN_SIDE_INPUTS` a backbone otherwise derives from the ids (Gemma 3n / 4's
    ``per_layer_inputs``, which it would try to recover by inverting the embedding table)."""
    out = {"inputs_embeds": embeds}
    config = getattr(backbone, "config", None)
    width = getattr(config, "hidden_size_per_layer_input", 0)
    if width and "per_layer_inputs" in inspect.signature(backbone.forward).parameters:
        out["per_layer_inputs"] = embeds.new_zeros(*embeds.shape[:2], config.num_hidden_layers, width)
    return out


def refuse_unknown_token_inputs(call: CallArguments, length: int) -> None:
    """Raise :class:`ContractError` when ``call`` carries a tensor that looks per-token (its axis 1 has ``length``
    entries, or axis 2 behind a batch-sized axis 1) but is neither lengthened by the method nor listed in
    :data:`TOKEN_SIDE_INPUTS`: a method that added tokens would leave it misaligned (transformers then crashes
    with a shape error deep inside, or silently pairs the wrong tokens)."""
    names = [*call.kwargs, *call.names[: len(call.args)]]
    for name in names:
        value = call.get(name)
        if name in SEQUENCE_ARGUMENTS or name in TOKEN_SIDE_INPUTS or not isinstance(value, torch.Tensor) or (
                name.startswith(PER_IMAGE_PREFIXES)):
            continue
        if value.ndim >= 2 and value.shape[1] == length:
            raise ContractError(
                f"{type(call.module).__name__} takes '{name}' {tuple(value.shape)}, which looks per-token ({length} "
                "tokens on axis 1), and mmpt does not know how tokens added by a method should extend it; add it to "
                "mmpt.contract.TOKEN_SIDE_INPUTS with its sequence axis, or use prefix / lora, which add no tokens")


def is_sliding(attention: nn.Module) -> bool:
    """Whether an attention module uses a sliding window (``sliding_window`` set on the module, as Gemma 2/3
    and Mistral-style modules do, or its layer type in the config)."""
    if getattr(attention, "is_sliding", False) or getattr(attention, "sliding_window", None):
        return True
    layer_types = getattr(getattr(attention, "config", None), "layer_types", None)
    idx = getattr(attention, "layer_idx", None)
    return bool(layer_types and idx is not None and idx < len(layer_types) and layer_types[idx] == "sliding_attention")


def position_tail(positions: torch.Tensor) -> torch.Tensor:
    """The last position of each sequence, keeping leading axes: ``(..., B, 1)``."""
    return positions[..., -1:]
