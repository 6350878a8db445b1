"""A LLaVA-style vision-language model assembled from plain modules, and its processor.

``VisionLanguageModel`` composes a vision tower, a projector (the "interaction layer") and a Hugging Face causal
LM. It does not subclass any HF model: the LM is used as-is and images enter as input embeddings at the
positions of a placeholder token, so tuning methods can hook into the LM exactly as they would for any HF model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from mmpt.contract import cache_in

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"


class Projector(nn.Module):
    """Two-layer MLP with GELU mapping vision features to LM embeddings (LLaVA-1.5's ``mlp2x_gelu``)."""

    def __init__(self, vision_dim: int, text_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, text_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(text_dim, text_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(features)))


class VisionLanguageModel(nn.Module):
    """Vision tower -> projector -> causal LM.

    Args:
        vision: maps ``pixel_values`` (B, 3, H, W) to features (B, N, vision_dim).
        projector: maps (B, N, vision_dim) to (B, N, text_dim).
        language_model: a Hugging Face ``*ForCausalLM`` model.
        image_token_id: placeholder id whose positions receive the N image embeddings.
        num_image_tokens: N, the number of visual tokens per image.
    """

    def __init__(
        self,
        vision: nn.Module,
        projector: nn.Module,
        language_model: nn.Module,
        image_token_id: int,
        num_image_tokens: int,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.language_model = language_model
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens

    @property
    def config(self) -> Any:
        """The language model's config (what generation and attention dispatch read)."""
        return self.language_model.config

    def get_input_embeddings(self) -> nn.Module:
        """The LM's token embedding layer."""
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        """The LM's output layer."""
        return self.language_model.get_output_embeddings()

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Visual tokens in the LM embedding space, shape (B, N, text_dim)."""
        return self.projector(self.vision(pixel_values))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the image placeholders replaced by visual tokens."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is None:
            return embeds
        image_embeds = self.encode_images(pixel_values).to(embeds.dtype)
        mask = input_ids == self.image_token_id
        expected = image_embeds.shape[0] * image_embeds.shape[1]
        if int(mask.sum()) != expected:
            raise ValueError(
                f"input_ids hold {int(mask.sum())} image placeholder tokens but the images give {expected} "
                "visual tokens; build inputs with the model's processor"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), image_embeds.reshape(-1, embeds.shape[-1]))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the LM on text + image embeddings; returns the LM's output (``loss`` set when ``labels`` given)."""
        embeds = self.embed(input_ids, pixel_values)
        if attention_mask is not None and kwargs.get("position_ids") is None and cache_in(kwargs) is None:
            # count positions from the first real token, as generate() does, so left padding does not shift them
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generate continuations with the LM's ``generate()``; returns only the new token ids."""
        embeds = self.embed(input_ids, pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        return self.language_model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs
        )


@dataclass
class ImageTransform:
    """Resize to a square and normalize: ``(pixel / 255 - mean) / std`` per channel."""

    size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        image = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std


class VLMProcessor:
    """Turns (image, prompt[, answer]) into model inputs with the LM's chat template.

    The user turn is ``<image>\\n{prompt}``; ``<image>`` expands to ``num_image_tokens`` placeholder ids. Batches
    are left-padded so the same tensors serve training and generation. With answers, ``labels`` hold the
    answer tokens and the end-of-turn token; everything else is ``-100``.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_transform: ImageTransform,
        image_token_id: int,
        num_image_tokens: int,
        system_prompt: str | None = "You are a helpful assistant that answers questions about images.",
    ) -> None:
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self.system_prompt = system_prompt
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.end_of_turn = tokenizer.eos_token

    def prompt_ids(self, prompt: str, with_image: bool = True) -> list[int]:
        """Token ids of the chat up to the assistant's turn, image placeholders expanded."""
        ids, _ = self.conversation_ids(prompt, None, (), with_image)
        return ids

    def _chat_text(self, turns: Sequence[tuple[str, str | None]], with_image: bool) -> str:
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        for i, (user, assistant) in enumerate(turns):
            content = f"{IMAGE_PLACEHOLDER}\n{user}" if with_image and i == 0 else user
            messages.append({"role": "user", "content": content})
            if assistant is not None:
                messages.append({"role": "assistant", "content": assistant})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _text_ids(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if i > 0:
                ids.extend([self.image_token_id] * self.num_image_tokens)
            ids.extend(self.tokenizer(piece, add_special_tokens=False)["input_ids"])
        return ids

    def conversation_ids(
        self,
        prompt: str,
        answer: str | None,
        context: Sequence[tuple[str, str]] = (),
        with_image: bool = True,
    ) -> tuple[list[int], list[int]]:
        """Ids and labels of a conversation: earlier ``context`` turns, then ``prompt`` (and ``answer``).

        Every assistant answer (context turns and the final one) is labelled with its end-of-turn token; the
        rest is ``-100``. The image goes into the first user turn.
        """
        ids: list[int] = []
        labels: list[int] = []
        done = ""  # the chat text covered by ids so far
        turns: list[tuple[str, str | None]] = []
        for user, assistant in [*context, (prompt, answer)]:
            turns.append((user, None))
            text = self._chat_text(turns, with_image)
            if not text.startswith(done):
                raise ValueError("the tokenizer's chat template does not render conversations turn by turn; "
                                 "give one turn per sample (no context)")
            piece = self._text_ids(text[len(done):])
            ids += piece
            labels += [IGNORE_INDEX] * len(piece)
            done = text
            if assistant is None:
                break
            answer_piece = self.answer_ids(assistant)
            ids += answer_piece
            labels += answer_piece
            done += assistant + self.end_of_turn
            turns[-1] = (user, assistant)
        return ids, labels

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of an assistant answer followed by the end-of-turn token."""
        return self.tokenizer(answer + self.end_of_turn, add_special_tokens=False)["input_ids"]

    def __call__(
        self,
        images: Sequence[Image.Image | np.ndarray | torch.Tensor] | None,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        contexts: Sequence[Sequence[tuple[str, str]]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Build a left-padded batch: ``input_ids``, ``attention_mask``, ``pixel_values`` and maybe ``labels``.

        ``images`` may hold PIL images, uint8 arrays, or already-transformed (3, H, W) tensors. ``contexts``
        holds each sample's earlier (user, assistant) turns (multi-turn conversations).
        """
        if images is not None and len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; give one image per prompt")
        if answers is not None and len(answers) != len(prompts):
            raise ValueError(f"got {len(answers)} answers for {len(prompts)} prompts")
        rows, label_rows = [], []
        for i, prompt in enumerate(prompts):
            context = contexts[i] if contexts is not None else ()
            ids, labels = self.conversation_ids(
                prompt, answers[i] if answers is not None else None, context, with_image=images is not None
            )
            rows.append(ids)
            label_rows.append(labels)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, labels) in enumerate(zip(rows, label_rows, strict=True)):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            attention_mask[i, width - len(ids) :] = 1
            labels_t[i, width - len(ids) :] = torch.tensor(labels)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if images is not None:
            batch["pixel_values"] = torch.stack(
                [im if isinstance(im, torch.Tensor) else self.image_transform(im) for im in images]
            )
        if answers is not None:
            batch["labels"] = labels_t
        return batch

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        """Decode generated ids to stripped strings (special tokens dropped)."""
        return [s.strip() for s in self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)]
