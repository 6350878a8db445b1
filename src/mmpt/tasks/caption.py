"""Captioning: the COCO caption metrics and self-critical sequence training.

Scoring: :func:`caption_scores`, BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and optionally SPICE) through
pycocoevalcap's scorers after its PTB tokenizer (Java); CIDEr-D as returned (1.2 is the 120 papers print).
Predictions: beam search (``eval.num_beams``, default 5).

Self-critical sequence training (SCST, Rennie et al. 2017) with a CIDEr-D reward, as OFA uses for captions.

After cross-entropy training, the policy gradient of CIDEr-D is followed: for each image ``num_samples``
captions are sampled (multinomial, full vocabulary), each is rewarded with its CIDEr-D against the image's
references minus a baseline (the greedy caption's CIDEr-D, Rennie et al., or the mean of the image's other
samples, Luo 2020), and ``-(reward - baseline) * log p(caption)`` is minimized.

* :class:`CiderD`: CIDEr-D with document frequencies from a fixed corpus (the training references), as the
  SCST paper and OFA's ``CiderD(df="corpus")``: a caption's reward does not depend on the rest of the batch.
* :func:`scst_loss`: the loss of one batch and its statistics.
* :func:`group_by_image` and :class:`SCSTCollator`: one sample per image with all its references, and
  prompt-only batches that carry those references.
"""

from __future__ import annotations

import math
import re
import shutil
import warnings
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import precook
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice.spice import Spice
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from torch import nn

from mmpt.data import Sample
from mmpt.models.vlm import IGNORE_INDEX, VLMProcessor
from mmpt.tasks.common import open_images

_PUNCTUATION = re.compile(r"[^\w\s]")
Vector = tuple[list[dict[tuple[str, ...], float]], list[float], int]


def tokenize(text: str) -> str:
    """Lower-case, punctuation to spaces, whitespace collapsed: ``"A dog's toy."`` -> ``"a dog s toy"``.

    A fast stand-in for the PTB tokenizer (Java) that evaluation uses; scores can differ slightly from it.
    """
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


class CiderD:
    """CIDEr-D (coco-caption / pycocoevalcap's ``Cider``) with idf from a fixed reference corpus.

    n-grams 1..``n`` as tf-idf vectors (idf = log(corpus images) - log(max(1, df))), clipped cosine
    ``sum min(h, r) * r / (|h| |r|)``, Gaussian length penalty (``sigma``), averaged over n-gram orders and
    references, times 10. As pycocoevalcap, the length in the penalty counts bigrams (words - 1).

    Args:
        corpus: one reference list per image (e.g. every training image's captions); the document
            frequency of an n-gram is the number of images whose references contain it.
        n: largest n-gram order.
        sigma: standard deviation of the length penalty.
    """

    def __init__(self, corpus: Iterable[Sequence[str]], n: int = 4, sigma: float = 6.0) -> None:
        self.n, self.sigma = n, sigma
        self.document_frequency: dict[tuple[str, ...], float] = defaultdict(float)
        images = 0
        for refs in corpus:
            images += 1
            for ngram in {g for ref in refs for g in precook(tokenize(ref), n)}:
                self.document_frequency[ngram] += 1
        if images == 0:
            raise ValueError("CiderD needs a non-empty reference corpus")
        self.log_images = math.log(float(images))

    def vector(self, text: str) -> Vector:
        """tf-idf vectors per n-gram order, their norms, and the length (bigram count) of ``text``."""
        vec: list[dict[tuple[str, ...], float]] = [defaultdict(float) for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for ngram, tf in precook(tokenize(text), self.n).items():
            k = len(ngram) - 1
            df = self.document_frequency.get(ngram, 0.0)
            vec[k][ngram] = tf * (self.log_images - math.log(max(1.0, df)))
            norm[k] += vec[k][ngram] ** 2
            if k == 1:
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def similarity(self, hyp: Vector, ref: Vector) -> float:
        """Mean over n-gram orders of the clipped, length-penalized cosine of two vectors."""
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        penalty = math.exp(-((lh - lr) ** 2) / (2 * self.sigma**2))
        total = 0.0
        for k in range(self.n):
            val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
            if nh[k] != 0 and nr[k] != 0:
                val /= nh[k] * nr[k]
            total += val * penalty
        return total / self.n

    def scores(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """CIDEr-D of each hypothesis against its references (one list per hypothesis), shape (len,)."""
        if len(hypotheses) != len(references):
            raise ValueError(f"got {len(hypotheses)} hypotheses for {len(references)} reference lists")
        cache: dict[tuple[str, ...], list[Vector]] = {}
        out = np.zeros(len(hypotheses))
        for i, (hyp, refs) in enumerate(zip(hypotheses, references, strict=True)):
            if not refs:
                raise ValueError(f"hypothesis {i} has no reference")
            key = tuple(refs)
            if key not in cache:
                cache[key] = [self.vector(r) for r in refs]
            h = self.vector(hyp)
            out[i] = 10.0 * sum(self.similarity(h, r) for r in cache[key]) / len(refs)
        return out


def group_by_image(samples: Sequence[Sample]) -> list[Sample]:
    """One sample per ``image_id`` (the first one's image and prompt), ``answers`` = every reference of it.

    Per-caption training samples (Karpathy ``train``) become per-image ones, as SCST wants. Samples without
    an image id (``-1``) are kept as they are.
    """
    groups: dict[Any, list[Sample]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.image_id if s.image_id != -1 else ("#", i), []).append(s)
    return [replace(g[0], answers=tuple(dict.fromkeys(r for s in g for r in s.references)))
            for g in groups.values()]


class SCSTCollator:
    """Samples -> prompt-only batch (``input_ids``, ``attention_mask``, ``pixel_values``) + ``references``."""

    def __init__(self, processor: VLMProcessor, on_error: str = "raise", pool: Sequence[Sample] = ()) -> None:
        self.processor = processor
        self.on_error = on_error
        self.pool = pool

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        images, samples = open_images(samples, self.on_error, self.pool)
        batch: dict[str, Any] = self.processor(images, [s.prompt for s in samples])
        batch["references"] = [list(s.references) for s in samples]
        return batch


def trim_at_eos(ids: torch.Tensor, eos_token_id: int) -> list[list[int]]:
    """Generated rows cut after their first end-of-turn token (kept: it is trained as in cross-entropy)."""
    rows = []
    for row in ids.tolist():
        rows.append(row[: row.index(eos_token_id) + 1] if eos_token_id in row else row)
    return rows


def decode_captions(processor: VLMProcessor, ids: torch.Tensor) -> tuple[list[list[int]], list[str]]:
    """Generated ids -> (rows cut at their end-of-turn, stripped texts without special tokens)."""
    rows = trim_at_eos(ids, processor.tokenizer.eos_token_id)
    return rows, [t.strip() for t in processor.tokenizer.batch_decode(rows, skip_special_tokens=True)]


def append_continuations(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    continuations: Sequence[Sequence[int]],
    pad_token_id: int,
) -> dict[str, torch.Tensor]:
    """Teacher-forcing inputs: row ``i``'s prompt (its unpadded tokens) + ``continuations[i]``, left-padded.

    ``labels`` hold the continuation ids and ``-100`` elsewhere, as :class:`VLMProcessor` builds them.
    """
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]
    width = max(len(p) + len(c) for p, c in zip(rows, continuations, strict=True))
    out_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    out_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, cont) in enumerate(zip(rows, continuations, strict=True)):
        out_ids[i, width - len(prompt) - len(cont) :] = torch.tensor(prompt + list(cont), dtype=torch.long)
        out_mask[i, width - len(prompt) - len(cont) :] = 1
        labels[i, width - len(cont) :] = torch.tensor(list(cont), dtype=torch.long)
    device = input_ids.device
    return {"input_ids": out_ids.to(device), "attention_mask": out_mask.to(device),
            "labels": labels.to(device)}


def sequence_log_probs(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], pixel_values: torch.Tensor | None
) -> torch.Tensor:
    """Sum of the labelled tokens' log-probabilities per row (with gradients), shape (rows,).

    Labels sit at the right end of left-padded rows: only the last ``T + 1`` positions' logits are computed.
    """
    labels = inputs["labels"]
    span = int((labels != IGNORE_INDEX).sum(1).max())
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                pixel_values=pixel_values, use_cache=False, logits_to_keep=span + 1)
    logits = out.logits[:, -(span + 1) : -1].float()
    targets = labels[:, -span:]
    mask = targets != IGNORE_INDEX
    token_lp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_lp * mask).sum(1)


def scst_loss(
    model: nn.Module,
    processor: VLMProcessor,
    inputs: Mapping[str, torch.Tensor],
    references: Sequence[Sequence[str]],
    scorer: CiderD,
    num_samples: int = 5,
    max_new_tokens: int = 20,
    temperature: float = 1.0,
    baseline: Literal["greedy", "mean"] = "greedy",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The SCST loss of one batch: ``-mean over samples of (reward - baseline) * sum_t log p(token_t)``.

    Args:
        model: the model to train; a wrapped one (DDP, Accelerate) is fine: sampling uses its ``.module``,
            the teacher-forced pass goes through the wrapper (gradient synchronization).
        processor: the model's processor (pad and end-of-turn ids, decoding).
        inputs: the prompt-only batch (``processor(images, prompts)``, or :class:`SCSTCollator`), on the
            model's device; other keys (``references``, ``labels``) are ignored.
        references: each image's reference captions.
        scorer: the CIDEr-D reward (document frequencies of the training references).
        num_samples: captions sampled per image.
        max_new_tokens: longest sampled caption.
        temperature: sampling temperature (no top-k / top-p: the whole distribution).
        baseline: ``greedy`` (the greedy caption's reward, Rennie et al.) or ``mean`` (the mean reward of the
            image's other samples, Luo 2020; needs ``num_samples >= 2``).

    Returns:
        The loss (per-caption log-probabilities summed over tokens, averaged over captions, as OFA) and
        ``reward`` (mean CIDEr-D of the samples), ``baseline`` (mean baseline), ``length`` (mean sampled
        tokens, end-of-turn included).
    """
    if baseline not in ("greedy", "mean"):
        raise ValueError(f"baseline must be 'greedy' or 'mean', got {baseline!r}")
    if baseline == "mean" and num_samples < 2:
        raise ValueError("baseline='mean' needs num_samples >= 2")
    generator = getattr(model, "module", model)
    eos, pad = processor.tokenizer.eos_token_id, processor.pad_token_id
    k = num_samples
    ids, mask, pixels = inputs["input_ids"], inputs["attention_mask"], inputs.get("pixel_values")
    rep_ids, rep_mask = ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
    rep_pixels = None if pixels is None else pixels.repeat_interleave(k, 0)
    common = {"max_new_tokens": max_new_tokens, "pad_token_id": pad, "eos_token_id": eos}
    sampling = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": temperature}
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # sample without dropout; the teacher-forced pass below runs in the caller's modes
    try:
        with torch.no_grad():
            sampled = generator.generate(input_ids=rep_ids, attention_mask=rep_mask, pixel_values=rep_pixels,
                                         **sampling, **common)
            greedy = None
            if baseline == "greedy":
                greedy = generator.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                                            do_sample=False, num_beams=1, **common)
    finally:
        for module, mode in modes:
            module.train(mode)

    samples, texts = decode_captions(processor, sampled)
    rewards = scorer.scores(texts, [list(r) for r in references for _ in range(k)])
    if greedy is not None:
        greedy_texts = decode_captions(processor, greedy)[1]
        base = np.repeat(scorer.scores(greedy_texts, [list(r) for r in references]), k)
    else:
        per_image = rewards.reshape(-1, k)
        base = ((per_image.sum(1, keepdims=True) - per_image) / (k - 1)).reshape(-1)

    teacher = append_continuations(rep_ids, rep_mask, samples, pad)
    log_probs = sequence_log_probs(model, teacher, rep_pixels)
    advantage = torch.as_tensor(rewards - base, dtype=log_probs.dtype, device=log_probs.device)
    loss = -(advantage * log_probs).mean()
    stats = {"reward": float(rewards.mean()), "baseline": float(base.mean()),
             "length": float(np.mean([len(s) for s in samples]))}
    return loss, stats


JAVA_HINT = "caption metrics need Java (install with `sudo apt-get install -y default-jre-headless`)"

def _stop_meteor(meteor: Any) -> None:
    """End the METEOR Java process now (pycocoevalcap 1.2 only does it in ``__del__``, whenever GC runs)."""
    proc = getattr(meteor, "meteor_p", None)
    if proc is None:
        return
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    proc.kill()
    proc.wait()
    lock = getattr(meteor, "lock", None)
    if lock is not None and lock.locked():  # an error in compute_score leaves it held; __del__ would block
        lock.release()


def _tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """PTB-tokenize (lower-case, punctuation dropped) ``{id: [text, ...]}`` in one Java call."""
    # The tokenizer keeps one caption per line: any line break inside a caption (\r, \u2028 ...) would shift
    # every later caption onto the wrong id. Collapsing whitespace changes no token.
    cleaned = {key: [{"caption": " ".join(t.split())} for t in texts] for key, texts in captions.items()}
    tokens = PTBTokenizer().tokenize(cleaned)
    for key, texts in captions.items():
        if len(tokens.get(key, [])) != len(texts):
            raise RuntimeError(f"PTB tokenizer output does not line up with its input (id {key!r})")
    return {key: tokens[key] for key in captions}


def caption_scores(
    predictions: dict[str, str], references: dict[str, list[str]], spice: bool = False
) -> dict[str, float]:
    """COCO caption metrics of one caption per id against that id's reference captions.

    The pycocoevalcap scorers are called one by one, as ``COCOEvalCap.evaluate`` does (PTB tokenization of
    predictions and references first), without needing a COCO object:

    * ``bleu1`` .. ``bleu4``: corpus BLEU (clipped n-gram counts summed over ids, "closest" reference length
      for the brevity penalty), 0..1.
    * ``meteor``: METEOR 1.5 (Java subprocess, closed before returning), 0..1.
    * ``rouge_l``: ROUGE-L F-measure (beta = 1.2), mean over ids, 0..1.
    * ``cider``: pycocoevalcap's ``Cider`` is coco-caption's CIDEr-D: tf-idf n-gram (1..4) cosine with clipped
      counts and a Gaussian length penalty (sigma = 6), times 10, idf taken from the references of *these*
      ids. 1.2 here is the "120" of papers; one id alone always scores 0 (every idf is log(1) = 0).
    * ``spice`` (only with ``spice=True``, and only when it works): SPICE needs Stanford CoreNLP, which
      pycocoevalcap downloads on first use; when that (or SPICE itself) fails, a warning says why and the
      other metrics are returned without ``spice``.
    * ``n``: the number of ids.

    Args:
        predictions: ``{id: generated caption}``; an empty caption is allowed (it scores 0).
        references: ``{id: [reference caption, ...]}`` with the same ids, at least one reference each.
        spice: also compute SPICE.

    Raises:
        ValueError: the ids differ (the message names them) or an id has no reference.
        RuntimeError: Java is not installed.
    """
    missing_refs = sorted(map(str, predictions.keys() - references.keys()))
    missing_preds = sorted(map(str, references.keys() - predictions.keys()))
    if missing_refs or missing_preds:
        parts = []
        if missing_refs:
            parts.append(f"ids without references: {', '.join(missing_refs[:10])}")
        if missing_preds:
            parts.append(f"ids without a prediction: {', '.join(missing_preds[:10])}")
        raise ValueError("predictions and references must have the same ids; " + "; ".join(parts))
    empty = sorted(str(key) for key, refs in references.items() if not refs)
    if empty:
        raise ValueError(f"ids with an empty reference list: {', '.join(empty[:10])}")
    names = ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"]
    if not predictions:
        return {**{name: float("nan") for name in names}, "n": 0}
    if shutil.which("java") is None:
        raise RuntimeError(JAVA_HINT)

    ids = list(predictions)
    gts = _tokenize({key: references[key] for key in ids})
    res = _tokenize({key: [predictions[key]] for key in ids})

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"bleu{k + 1}": float(bleu[k]) for k in range(4)}
    meteor = Meteor()
    try:
        scores["meteor"] = float(meteor.compute_score(gts, res)[0])
    finally:
        _stop_meteor(meteor)
    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if any(ref for refs in gts.values() for ref in refs):
        scores["cider"] = float(Cider().compute_score(gts, res)[0])
    else:  # no reference n-gram at all: pycocoevalcap would fail on max() of an empty document frequency
        scores["cider"] = 0.0
    if spice:
        try:
            scores["spice"] = float(Spice().compute_score(gts, res)[0])
        except Exception as exc:  # no CoreNLP download, Java error, ...: report, keep the other metrics
            warnings.warn(
                "SPICE skipped: it needs Stanford CoreNLP (downloaded by pycocoevalcap on first use; "
                f"run once on a connected machine) — {exc!r}",
                stacklevel=2,
            )
    scores["n"] = len(ids)
    return scores


def score(samples: Sequence[Sample], predictions: Sequence[str], config: Any) -> dict[str, float]:
    """The COCO caption metrics of ``predictions`` against each sample's references."""
    ids = [str(i) for i in range(len(samples))]
    return caption_scores(dict(zip(ids, predictions, strict=True)),
                          {i: list(s.references) for i, s in zip(ids, samples, strict=True)}, spice=config.spice)
