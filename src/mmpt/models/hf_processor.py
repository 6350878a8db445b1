"""``HFProcessor``: mmpt's processor interface on top of a Hugging Face processor (``AutoProcessor`` output).

mmpt's pipelines call ``processor(images, prompts, answers=None, contexts=None)`` and expect a left-padded batch
with ``labels`` on the answer tokens (see :class:`~mmpt.models.vlm.VLMProcessor`). Families differ in how a
prompt becomes text and where labels come from; each family picks a :class:`Strategy`:

- ``llava``, ``llava_next``, ``internvl``, ``idefics3`` (chat): the processor's chat template renders
  ``[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]`` (+ earlier turns);
  every assistant answer is labelled with its end-of-turn token (the tokenizer's eos is inserted after an answer
  when the template ends the turn without a special token, as LLaVA-1.5's template does). Without a chat template
  LLaVA falls back to ``"USER: <image>\\n{prompt} ASSISTANT:"``, answers written ``" {answer}</s>"``. The image
  placeholder expands in the processor: LLaVA-NeXT's into as many tokens as the image's AnyRes tiles give (the batch
  carries ``image_sizes``), InternVL's ``<IMG_CONTEXT>`` into ``<img>`` + context tokens per tile + ``</img>``.
- ``llava_onevision`` (chat): as above, but each turn is rendered on its own (user turn + generation prompt) and its
  answer written right after the generation prompt, closed as the template closes an assistant turn. Its template
  opens an assistant turn with ``"<|im_start|>assistant "`` + newline in the history but ``"<|im_start|>assistant"``
  + newline as the generation prompt; answers are trained after the generation prompt, which is what generation
  continues.
- ``gemma3``, ``qwen2_vl``, ``qwen2_5_vl``, ``mllama`` (chat): as ``llava``. Gemma 3's ``<start_of_image>``
  expands to ``\\n\\n<start_of_image>`` + image tokens + ``<end_of_image>\\n\\n`` (``token_type_ids`` mark the
  image tokens); Qwen2-VL's ``<|image_pad|>`` into one token per merged patch group (``pixel_values`` are packed
  patches of all images, ``image_grid_thw`` gives each image's grid, ``mm_token_type_ids`` the image tokens);
  Mllama's ``<|image|>`` stays one token and its batch carries tiles (``aspect_ratio_ids``/``_mask``) and the
  ``cross_attention_mask`` (text from the image token on reads the image). Gemma 3's and Mllama's processors take
  one list of images per sample (:attr:`Strategy.nested_images`). Qwen2-VL batches carry no ``position_ids``: the
  model computes its multimodal (3-D) RoPE positions from the tokens and the attention mask itself.
- ``blip2``: ``"Question: {prompt} Answer:"`` (BLIP-2's VQA prompt), answer ``" {answer}"`` + eos.
- ``blip`` (captioning decoder): ``bos + prompt`` (a caption prefix, may be empty), answer ``" {answer}"`` + sep.
  BLIP's ``generate`` drops the last input token and uses absolute positions, so its prompts end with sep and
  left padding shifts positions of shorter prompts (a limitation of the HF model).
- ``git``: as BLIP without the sep suffix, ``[CLS] + prompt`` + ``" {answer}"`` + sep (GIT's captioning and VQA
  format: generation continues the prompt). The image tokens are prepended inside the model, not written in the
  text; GIT's logits therefore cover image tokens + text (the text's are the last ``input_ids.shape[1]``).
- ``paligemma``, ``paligemma2``: ``"<image>" + prompt`` with the answer as the processor's ``suffix``; the
  processor makes ``token_type_ids`` and ``labels`` itself. Prompts are passed as given (PaliGemma's own ones look
  like ``"answer en {question}"``). Real PaliGemma 2 checkpoints have model type ``paligemma`` and get that
  family; ``paligemma2`` (the Gemma 2 test family) shares its strategy.
- ``florence2`` (encoder-decoder): the processor encodes the prompt (task tokens such as ``<CAPTION>`` expand to
  Florence-2's task prompts); ``labels`` are the decoder targets ``<s> answer </s>`` (right-padded with -100) as
  in Florence-2's fine-tuning; the model shifts them right itself. Its encoder inputs are RIGHT-padded: BART's
  learned absolute positions would shift under left padding (outputs would depend on the batch), and an
  encoder-decoder generates from the decoder, so left padding buys nothing (``padding_side`` tells).

Labels of decoder-only families are aligned with ``input_ids`` (the model shifts them). Only chat families accept
``contexts`` (multi-turn); the image goes into the first user turn.

Besides the interface, ``generation_kwargs`` gives ``model.generate`` its pad/eos ids (eos includes a chat
template's end-of-turn token; empty for BLIP, whose ``generate`` sets them itself), ``generated_tokens`` cuts the
prompt from ``generate`` output, and ``is_encoder_decoder`` tells how ``labels`` align with the logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

IGNORE_INDEX = -100
Turn = tuple[str, str | None]
Render = Callable[[Any, Sequence[Turn], bool, bool], str]
"""(hf processor, turns, with_image, add_generation_prompt) -> conversation text; ``<image>`` unexpanded."""
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "labels")


def render_chat(proc: Any, turns: Sequence[Turn], with_image: bool, add_generation_prompt: bool) -> str:
    """The processor's chat template applied to ``turns`` (the image in the first user turn)."""
    messages: list[dict[str, Any]] = []
    for i, (user, answer) in enumerate(turns):
        content: list[dict[str, str]] = [{"type": "image"}] if with_image and i == 0 else []
        messages.append({"role": "user", "content": [*content, {"type": "text", "text": user}]})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return proc.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


def render_chat_per_turn(proc: Any, turns: Sequence[Turn], with_image: bool, add_generation_prompt: bool) -> str:
    """The chat template applied one turn at a time: each user turn with its generation prompt, then the answer
    and what the template writes after an answer (its end-of-turn), so that answers follow the generation prompt
    exactly even where the template renders an assistant turn in the history differently (LLaVA-OneVision)."""
    text = ""
    for i, (user, answer) in enumerate(turns):
        first = with_image and i == 0
        text += render_chat(proc, [(user, None)], first, True)
        if answer is None:
            continue
        full = render_chat(proc, [(user, answer)], first, False)
        if answer not in full:
            raise ValueError(f"{type(proc).__name__}'s chat template does not write assistant answers as given")
        text += answer + full[full.rindex(answer) + len(answer) :]
    return text


def render_llava_plain(proc: Any, turns: Sequence[Turn], with_image: bool, add_generation_prompt: bool) -> str:
    """LLaVA-1.5's conversation format for processors without a chat template:
    ``"USER: <image>\\n{prompt} ASSISTANT: {answer}</s>"``, turns concatenated."""
    text = ""
    for i, (user, answer) in enumerate(turns):
        image = f"{proc.image_token}\n" if with_image and i == 0 else ""
        text += f"USER: {image}{user} ASSISTANT:"
        if answer is not None:
            text += f" {answer}{proc.tokenizer.eos_token}"
    return text


def render_no_template(proc: Any, turns: Sequence[Turn], with_image: bool, add_generation_prompt: bool) -> str:
    """Stands in for the chat template of a chat family's processor that has none: raises."""
    raise ValueError(f"{type(proc).__name__} has no chat template; save the checkpoint's chat_template.jinja "
                     "with it (mmpt has a fallback prompt format only for LLaVA)")


def render_blip2(proc: Any, turns: Sequence[Turn], with_image: bool, add_generation_prompt: bool) -> str:
    """BLIP-2's VQA prompt ``"Question: {prompt} Answer:"`` (+ ``" {answer}"``); image tokens come from the
    processor."""
    (user, answer), = turns
    return f"Question: {user} Answer:" + ("" if answer is None else f" {answer}")


def render_blip(proc: Any, turns: Sequence[Turn], with_image: bool, add_generation_prompt: bool) -> str:
    """BLIP's and GIT's text decoder input: the bos (BLIP's ``[DEC]``, else ``[CLS]``) + caption prefix or question
    (+ ``" {answer}"``)."""
    (user, answer), = turns
    tok = proc.tokenizer
    return f"{tok.bos_token or tok.cls_token}{user}" + ("" if answer is None else f" {answer}")


def end_token(tokenizer: Any) -> str:
    """The token that closes an answer: eos, else sep (BERT tokenizers)."""
    token = tokenizer.eos_token or tokenizer.sep_token
    if not token:
        raise ValueError("the tokenizer has neither an eos nor a sep token to end answers with")
    return str(token)


def special_tokens(tokenizer: Any) -> tuple[str, ...]:
    """The tokenizer's special tokens: the named ones and every added token flagged special (Gemma 3's
    ``<end_of_turn>`` and Llama 3's ``<|eot_id|>`` are only the latter)."""
    names = {str(t) for t in tokenizer.all_special_tokens}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    names |= {str(t.content) for t in added.values() if getattr(t, "special", False)}
    return tuple(sorted(n for n in names if n))


def conversation(
    render: Render, proc: Any, turns: Sequence[Turn], with_image: bool
) -> tuple[str, list[tuple[int, int]]]:
    """The text of a conversation and the character spans of its answers (each closed by an end token).

    The text is rendered turn by turn: each assistant answer is what the rendering with the answer adds to the
    rendering with the generation prompt, trailing whitespace cut, an end token appended when the answer does
    not end with a special token. The final answer's trailing whitespace is dropped (the sequence ends there).
    """
    tok = proc.tokenizer
    specials = special_tokens(tok)
    text, rendered, spans = "", "", []
    for i, (user, answer) in enumerate(turns):
        prompt = render(proc, [*turns[:i], (user, None)], with_image, True)
        if not prompt.startswith(rendered):
            raise ValueError("the chat template does not render a conversation turn by turn (an earlier turn "
                             "changes when one is added); give one turn per sample (no contexts)")
        text += prompt[len(rendered) :]
        if answer is None:
            break
        full = render(proc, [*turns[:i], (user, answer)], with_image, False)
        if not full.startswith(prompt):
            raise ValueError("the chat template's rendering of an answer does not extend its generation prompt; "
                             "cannot tell which tokens the answer adds")
        added = full[len(prompt) :]
        core = added.rstrip()
        if not core.endswith(specials):
            core += end_token(tok)
        spans.append((len(text), len(text) + len(core)))
        text += core + (added[len(added.rstrip()) :] if i < len(turns) - 1 else "")
        rendered = full
    return text, spans


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def label_text(tokenizer: Any, text: str, spans: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` (no added special tokens) and labels: the tokens each answer span adds to the text
    before it (compared on token ids), ``-100`` elsewhere."""

    def encode(s: str) -> list[int]:
        return list(tokenizer(s, add_special_tokens=False)["input_ids"])

    ids = encode(text)
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        before, upto = encode(text[:start]), encode(text[:end])
        if ids[: len(upto)] != upto:
            raise ValueError("the tokenizer merges tokens across the end of an answer; cannot label it")
        k = _common_prefix(before, upto)
        labels[k : len(upto)] = upto[k:]
    return ids, labels


def left_align(batch: dict[str, torch.Tensor], pad_token_id: int) -> None:
    """Move the padding of every token-aligned tensor to the left, in place (BLIP-2's processor pads the text
    between its image tokens and the prompt)."""
    mask = batch["attention_mask"].bool()
    width = mask.shape[1]
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        if bool(mask[i, width - n :].all()):
            continue
        for key in TEXT_KEYS:
            value = batch.get(key)
            if value is None or value.shape != mask.shape:
                continue
            fill = pad_token_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
            row = value[i][mask[i]]
            value[i] = fill
            value[i, width - n :] = row


def right_align_labels(batch: dict[str, torch.Tensor], rows: Sequence[tuple[list[int], list[int]]]) -> torch.Tensor:
    """Labels for a left-padded batch from per-sample (text ids, labels): both end at the right edge (image
    placeholders only expand earlier). Checks that the labelled tokens are the batch's tokens there."""
    input_ids = batch["input_ids"]
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    width = input_ids.shape[1]
    for i, (ids, row) in enumerate(rows):
        n = len(ids)
        got = input_ids[i, width - n :].tolist() if n <= width else []
        if len(got) != n or any(lab != IGNORE_INDEX and g != lab for g, lab in zip(got, row, strict=True)):
            raise ValueError("the processor's tokens do not end with the answer tokens (does its tokenizer append "
                             "special tokens?); cannot place labels")
        labels[i, width - n :] = torch.tensor(row, dtype=torch.long)
    return labels


@dataclass(frozen=True)
class Strategy:
    """How one family turns (images, prompts, answers, contexts) into a batch.

    Attributes:
        encode: ``(processor, images, prompts, answers, contexts) -> batch``.
        answer: ``(processor, answer) -> token ids`` the answer (with its end token) adds after the generation
            prompt, or decoder targets for encoder-decoder models; raises NotImplementedError where impossible.
        render: conversation text of decoder-only families (:func:`encode_decoder_only`).
        multi_turn: whether ``contexts`` are supported.
        is_encoder_decoder: labels are decoder targets (not aligned with ``input_ids``).
        add_special_tokens: passed to the tokenizer; None: unless the text already starts with bos.
        generation_suffix: tokenizer attribute naming a token appended to prompts without answers (BLIP: sep).
        padding_side: ``left`` (decoder-only: the same batch serves training and generation) or ``right``.
        continue_with: submodule that continues a sequence from its KV cache without image inputs, where the
            whole model cannot (BLIP-2's forward always encodes pixels); empty: the whole model.
        first_position: batches carry ``position_ids`` counted from each row's first real token, starting at
            this number, as ``generate()`` counts them (PaliGemma from 1); None: no ``position_ids``. Without them
            HF forwards count from the left edge, padding included, so with prefixes or input prompts a sample's
            training loss would depend on its batch's padding and differ from what generation sees. They are
            for forward passes: drop them before ``generate()``, which counts positions itself (and PaliGemma's
            adds 1 to positions it is given).
        nested_images: the HF processor takes one list of images per sample (Gemma 3, Mllama read a flat list as
            all images of one sample).
        drop: keys of the HF processor's output the model does not take (GIT: its BERT tokenizer's
            ``token_type_ids``).
    """

    encode: Callable[..., dict[str, torch.Tensor]]
    answer: Callable[[Any, str], list[int]]
    render: Render | None = None
    multi_turn: bool = False
    is_encoder_decoder: bool = False
    add_special_tokens: bool | None = None
    generation_suffix: str = ""
    padding_side: str = "left"
    continue_with: str = ""
    first_position: int | None = None
    nested_images: bool = False
    drop: tuple[str, ...] = ()


ImageList = Sequence[Image.Image | np.ndarray] | None
Contexts = Sequence[Sequence[tuple[str, str]]] | None


def _hf_call(hp: HFProcessor, images: ImageList, texts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
    pixels: list[Any] | None = None
    if images is not None:
        pixels = [[image] for image in images] if hp.strategy.nested_images else list(images)
    out = hp.hf(images=pixels, text=texts, return_tensors="pt", padding=True, padding_side=hp.padding_side,
                **kwargs)
    batch = {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and k not in hp.strategy.drop}
    if hp.padding_side == "left":
        left_align(batch, hp.pad_token_id)
    return batch


def encode_decoder_only(
    hp: HFProcessor, images: ImageList, prompts: Sequence[str], answers: Sequence[str] | None, contexts: Contexts
) -> dict[str, torch.Tensor]:
    """Render each conversation, run the HF processor on the batch, and place labels on the answer tokens."""
    strategy, tok = hp.strategy, hp.tokenizer
    render = strategy.render
    if render is None:
        raise TypeError("encode_decoder_only needs a strategy with a render function")
    texts, rows = [], []
    for i, prompt in enumerate(prompts):
        turns: list[Turn] = [*(contexts[i] if contexts else ()), (prompt, answers[i] if answers else None)]
        text, spans = conversation(render, hp.hf, turns, images is not None)
        if answers is None and strategy.generation_suffix:
            text += str(getattr(tok, strategy.generation_suffix))
        texts.append(text)
        rows.append(label_text(tok, text, spans))
    add_special = strategy.add_special_tokens
    if add_special is None:
        add_special = not (tok.bos_token and all(t.startswith(str(tok.bos_token)) for t in texts))
    batch = _hf_call(hp, images, texts, add_special_tokens=add_special)
    batch.pop("labels", None)
    if answers is not None:
        batch["labels"] = right_align_labels(batch, rows)
    return batch


def encode_paligemma(
    hp: HFProcessor, images: ImageList, prompts: Sequence[str], answers: Sequence[str] | None, contexts: Contexts
) -> dict[str, torch.Tensor]:
    """PaliGemma: ``"<image>" + prompt`` and the answer as ``suffix`` (its processor labels suffix + eos)."""
    texts = [f"{hp.hf.image_token}{p}" for p in prompts]
    suffix = list(answers) if answers is not None else None
    batch = _hf_call(hp, images, texts, suffix=suffix)
    if answers is None:
        batch.pop("labels", None)
    return batch


def encode_florence2(
    hp: HFProcessor, images: ImageList, prompts: Sequence[str], answers: Sequence[str] | None, contexts: Contexts
) -> dict[str, torch.Tensor]:
    """Florence-2: the processor encodes image + prompt; labels are ``<s> answer </s>`` decoder targets."""
    batch = _hf_call(hp, images, list(prompts))
    if answers is not None:
        rows = [answer_florence2(hp, a) for a in answers]
        labels = torch.full((len(rows), max(len(r) for r in rows)), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(rows):
            labels[i, : len(row)] = torch.tensor(row)
        batch["labels"] = labels
    return batch


def answer_decoder_only(hp: HFProcessor, answer: str) -> list[int]:
    """The tokens an answer adds after the generation prompt (its end token included), as labelled in training."""
    if hp.strategy.render is None or hp.strategy.generation_suffix:
        raise NotImplementedError(f"family '{hp.family}' generates from a prompt that training does not use "
                                  "(its generation prompt ends with a suffix); answers cannot be tokenized alone")
    text, spans = conversation(hp.strategy.render, hp.hf, [("?", answer)], False)
    ids, labels = label_text(hp.tokenizer, text, spans)
    first = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
    if ids[:first] != list(hp.tokenizer(text[: spans[-1][0]], add_special_tokens=False)["input_ids"]):
        raise NotImplementedError(f"the tokenizer merges the end of the generation prompt with the answer "
                                  f"{answer!r}; answers cannot be tokenized alone")
    return labels[first:]


def answer_paligemma(hp: HFProcessor, answer: str) -> list[int]:
    """PaliGemma's suffix tokens: the answer + eos encoded as the processor's second text (token type 1)."""
    tok = hp.tokenizer
    out = tok(["?"], text_pair=[answer + str(tok.eos_token)], return_token_type_ids=True)
    return [t for t, kind in zip(out["input_ids"][0], out["token_type_ids"][0], strict=True) if kind == 1]


def answer_florence2(hp: HFProcessor, answer: str) -> list[int]:
    """Florence-2's decoder targets ``<s> answer </s>``."""
    tok = hp.tokenizer
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return bos + list(tok(answer, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]


STRATEGIES: dict[str, Strategy] = {
    "llava": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True, first_position=0),
    "idefics3": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True, first_position=0),
    "llava_next": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True, first_position=0),
    "llava_onevision": Strategy(encode_decoder_only, answer_decoder_only, render_chat_per_turn, multi_turn=True,
                                first_position=0),
    "internvl": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True, first_position=0),
    "blip2": Strategy(encode_decoder_only, answer_decoder_only, render_blip2, continue_with="language_model",
                      first_position=0),
    "blip": Strategy(encode_decoder_only, answer_decoder_only, render_blip, add_special_tokens=False,
                     generation_suffix="sep_token"),
    "gemma3": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True, first_position=0,
                       nested_images=True),
    "qwen2_vl": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True),
    "qwen2_5_vl": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True),
    "mllama": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True, first_position=0,
                       nested_images=True),
    "git": Strategy(encode_decoder_only, answer_decoder_only, render_blip, add_special_tokens=False,
                    first_position=0, drop=("token_type_ids",)),
    "paligemma": Strategy(encode_paligemma, answer_paligemma, first_position=1),
    "paligemma2": Strategy(encode_paligemma, answer_paligemma, first_position=1),
    "florence2": Strategy(encode_florence2, answer_florence2, is_encoder_decoder=True, padding_side="right"),
    "lfm2_vl": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True, first_position=0),
    "mistral3": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True, first_position=0),
    "qwen3_vl": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True),
    "gemma4": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True, first_position=0,
                       nested_images=True),
    "qwen3_5": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True),
    "glm4v": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True),
    "idefics2": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True, first_position=0),
    "aya_vision": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True, first_position=0),
    "janus": Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True, first_position=0),
    "instructblip": Strategy(encode_decoder_only, answer_decoder_only, render_blip2, first_position=0),
}


def positions_from_mask(attention_mask: torch.Tensor, first: int | None) -> torch.Tensor | None:
    """Positions of a left-padded batch counted from each row's first real token, starting at ``first`` (None:
    none, the model counts them itself)."""
    if first is None:
        return None
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + first


def chat_strategy(model_config: Any) -> Strategy:
    """The strategy of a family derived from its structure (:mod:`mmpt.models.derive`): a decoder-only chat model
    whose processor renders the chat template; positions from 0, unless its LM uses multimodal RoPE (Qwen-style
    ``mrope_section``), whose 3-D positions only the model itself computes."""
    text = getattr(model_config, "text_config", None) or model_config
    rope = {**(getattr(text, "rope_scaling", None) or {}), **(getattr(text, "rope_parameters", None) or {})}
    return Strategy(encode_decoder_only, answer_decoder_only, render_chat, multi_turn=True,
                    first_position=None if "mrope_section" in rope else 0)


class HFProcessor:
    """mmpt's processor interface over a Hugging Face processor, for the family ``family``.

    Args:
        processor: a ``ProcessorMixin`` (``AutoProcessor.from_pretrained`` output) with a tokenizer.
        family: the mmpt family name (``loaded.family.name``): a key of :data:`STRATEGIES`.

    The tokenizer is switched to the family's padding side (left but for Florence-2) and gets ``pad = eos`` when
    it has no pad token. A chat family's processor without a chat template raises when called (LLaVA falls back
    to its plain format).
    """

    def __init__(self, processor: Any, family: str, strategy: Strategy | None = None) -> None:
        if strategy is None and family not in STRATEGIES:
            raise ValueError(f"HFProcessor does not know family '{family}'; known: {', '.join(sorted(STRATEGIES))}; "
                             "or pass a strategy (derived families get chat_strategy())")
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None:
            raise TypeError(f"{type(processor).__name__} has no tokenizer; HFProcessor wraps a full HF processor")
        strategy = strategy or STRATEGIES[family]
        if strategy.render in (render_chat, render_chat_per_turn) and not getattr(processor, "chat_template", None):
            fallback = render_llava_plain if family == "llava" else render_no_template
            strategy = replace(strategy, render=fallback)
        self.hf = processor
        self.family = family
        self.strategy = strategy
        self.tokenizer = tokenizer
        tokenizer.padding_side = strategy.padding_side
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_token_id: int = int(tokenizer.pad_token_id)

    @property
    def padding_side(self) -> str:
        """``left`` (decoder-only families) or ``right`` (Florence-2's encoder inputs)."""
        return self.strategy.padding_side

    @property
    def is_encoder_decoder(self) -> bool:
        """Whether ``labels`` are decoder targets (Florence-2) rather than aligned with ``input_ids``."""
        return self.strategy.is_encoder_decoder

    def __call__(
        self,
        images: ImageList,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        contexts: Contexts = None,
    ) -> dict[str, torch.Tensor]:
        """A padded batch (see :attr:`padding_side`): ``input_ids``, ``attention_mask``, the pixel inputs and, with
        ``answers``, ``labels`` (answer tokens + end token, -100 elsewhere). ``contexts`` holds each sample's
        earlier (user, assistant) turns."""
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; give one image per prompt")
        if answers is not None and len(answers) != len(prompts):
            raise ValueError(f"got {len(answers)} answers for {len(prompts)} prompts")
        if contexts is not None and len(contexts) != len(prompts):
            raise ValueError(f"got {len(contexts)} contexts for {len(prompts)} prompts")
        if contexts is not None and any(contexts) and not self.strategy.multi_turn:
            raise ValueError(f"family '{self.family}' has no multi-turn format; contexts work with "
                             f"{', '.join(k for k, s in STRATEGIES.items() if s.multi_turn)}")
        batch = self.strategy.encode(self, images, prompts, answers, contexts)
        positions = self.position_ids(batch["attention_mask"])
        if positions is not None:
            batch["position_ids"] = positions
        return batch

    def position_ids(self, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """Positions of a left-padded batch as ``generate()`` counts them (from each row's first real token), or
        None for families whose forward needs none (see :attr:`Strategy.first_position`)."""
        return positions_from_mask(attention_mask, self.strategy.first_position)

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of ``answer`` with its end token, as they follow the generation prompt (decoder-only) or as
        decoder targets (encoder-decoder); what candidate ranking scores. NotImplementedError for BLIP."""
        return self.strategy.answer(self, answer)

    @property
    def continue_with(self) -> str:
        """Path of the submodule that continues from a KV cache without pixels (``""``: the whole model)."""
        return self.strategy.continue_with

    @property
    def end_token_ids(self) -> list[int]:
        """Ids that end an answer: the tokenizer's eos and, for chat families, the end-of-turn token the labels
        use (e.g. SmolVLM's ``<end_of_utterance>``)."""
        ids = [] if self.tokenizer.eos_token_id is None else [int(self.tokenizer.eos_token_id)]
        if self.strategy.render is not None:
            try:
                text, spans = conversation(self.strategy.render, self.hf, [("?", "ok")], False)
                end = label_text(self.tokenizer, text, spans)[1][-1]
            except (ValueError, IndexError):  # no usable template: eos only
                return ids
            ids += [] if end in ids else [end]
        return ids

    @property
    def generation_kwargs(self) -> dict[str, Any]:
        """``pad_token_id`` and ``eos_token_id`` (:attr:`end_token_ids`) for ``model.generate``; empty for BLIP,
        whose ``generate`` sets both itself (passing them again is a TypeError)."""
        if self.family == "blip":
            return {}
        return {"pad_token_id": self.pad_token_id, "eos_token_id": self.end_token_ids}

    def generated_tokens(self, ids: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The new tokens of ``model.generate`` output: decoder-only HF models return prompt + continuation
        (BLIP: the prompt without its last token, its first token set to bos), encoder-decoder models only the
        decoder sequence."""
        if self.is_encoder_decoder:
            return ids
        n = input_ids.shape[1] - (1 if self.family == "blip" else 0)
        first = 1 if self.family == "blip" else 0
        if ids.shape[1] >= n and torch.equal(ids[:, first:n], input_ids[:, first:n].to(ids.device)):
            return ids[:, n:]
        return ids

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        """Decode generated ids to stripped strings (special tokens dropped)."""
        return [s.strip() for s in self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)]
