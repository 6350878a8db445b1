"""Visual question answering: VQAv2 accuracy, the answer head, and all-candidate answer ranking.

Scoring: exact-match ``accuracy`` (per kind), and the official VQAv2 ``vqa_accuracy`` when samples carry several
answers (:func:`vqa_scores`, as GT-Vision-Lab/VQA's ``vqaEval.py``). Predictions: the ``answer_head`` method's
class (:func:`classify`), a ranked candidate, or generated text.

All-candidate answer ranking (OFA's VQA evaluation): score every answer of a fixed list, keep the most likely.

A candidate's score is the summed log-probability of its tokens and its end-of-answer token given the sample's
prompt, so "yes" and "yes it is" are told apart. Two ways to compute it, equal up to float rounding:

- **prompt reuse** (default where the processor can tokenize an answer on its own, ``processor.answer_ids``):
  the image and prompt go through the model once per sample; every candidate then continues from that state —
  a decoder-only model's KV cache copied to a batch of candidates, an encoder-decoder's encoder output reused
  by the decoder. The candidate list is tokenized once. Cost per sample: one prompt forward + the candidates'
  few tokens, so VQAv2's 3,129 answers stay affordable.
- **full forward** (``reuse_prompt=False``, and the fallback for processors without ``answer_ids``, e.g. BLIP):
  one forward pass of image + prompt + answer per (sample, candidate) pair, as training sees them.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mmpt.contract import cache_kwargs
from mmpt.data import Sample
from mmpt.tasks.common import _in_batches, accuracy, open_image
from mmpt.tasks.objectives import keeps_logits, label_tail, one_logit

Autocast = Callable[[], AbstractContextManager[Any]]

# Families whose scores were checked against a forward pass per candidate and did not match: refused rather
# than ranked wrongly.
UNRANKED_FAMILIES = {
    "qwen2_vl": "continuing its KV cache needs the image grid's 3-D RoPE state",
    "qwen2_5_vl": "continuing its KV cache needs the image grid's 3-D RoPE state",
    "mllama": "continuing its KV cache needs the cross-attention mask of the image",
    "git": "its logits also cover the image tokens it prepends internally",
}


def can_reuse_prompt(processor: Any) -> bool:
    """Whether ``processor`` tokenizes answers on their own (``answer_ids``), which prompt reuse needs."""
    try:
        processor.answer_ids("yes")
    except (AttributeError, NotImplementedError):
        return False
    return True


@torch.no_grad()
def candidate_scores(
    model: nn.Module,
    processor: Any,
    samples: Sequence[Sample],
    candidates: Sequence[str],
    batch_size: int = 16,
    autocast: Autocast = contextlib.nullcontext,
    progress: bool = True,
    reuse_prompt: bool | None = None,
    candidate_batch_size: int = 128,
) -> torch.Tensor:
    """Log-likelihood of every candidate for every sample, shape ``(len(samples), len(candidates))``.

    Args:
        batch_size: (sample, candidate) pairs per full forward pass (without prompt reuse).
        candidate_batch_size: candidates continued from the prompt at once (with prompt reuse). Each holds a
            copy of the prompt's KV cache, so chunks are also kept within 40% of the free GPU memory (2 GiB on
            CPU).
        reuse_prompt: compute the prompt once per sample (see the module docstring); ``None`` picks it whenever
            the processor supports it.
    """
    if not candidates:
        raise ValueError("ranking needs at least one candidate answer (eval.candidates)")
    family = getattr(processor, "family", "")
    if family in UNRANKED_FAMILIES:
        raise ValueError(f"candidate ranking is not supported for {family} models yet: "
                         f"{UNRANKED_FAMILIES[family]}; leave eval.candidates empty to answer by generation")
    device = next(model.parameters()).device
    answers = None
    if reuse_prompt is not False:
        try:
            answers = _answer_tensors(processor, candidates, device)
        except (AttributeError, NotImplementedError) as exc:
            if reuse_prompt:
                raise ValueError(f"{type(processor).__name__} cannot tokenize answers on their own ({exc}); "
                                 "rank with reuse_prompt=False") from None
    was_training = model.training
    model.eval()
    rows: list[torch.Tensor] = []
    bar = tqdm(total=len(samples), desc="rank", unit="sample", disable=not progress, leave=False)
    try:
        for sample in samples:
            if answers is None:
                rows.append(_full_forward_scores(model, processor, sample, candidates, batch_size, autocast, device))
            else:
                rows.append(_reuse_scores(model, processor, sample, answers, candidate_batch_size, autocast, device))
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return torch.stack(rows) if rows else torch.empty(0, len(candidates))


def rank_candidates(
    model: nn.Module,
    processor: Any,
    samples: Sequence[Sample],
    candidates: Sequence[str],
    batch_size: int = 16,
    autocast: Autocast = contextlib.nullcontext,
    progress: bool = True,
    reuse_prompt: bool | None = None,
    candidate_batch_size: int = 128,
) -> list[str]:
    """For each sample, the candidate answer with the highest log-likelihood (see :func:`candidate_scores`)."""
    scores = candidate_scores(model, processor, samples, candidates, batch_size, autocast, progress, reuse_prompt,
                              candidate_batch_size)
    return [candidates[i] for i in scores.argmax(-1).tolist()]


def top_k(scores: torch.Tensor, candidates: Sequence[str], k: int = 5) -> list[list[str]]:
    """The ``k`` most likely candidates of each sample, best first, from :func:`candidate_scores`' matrix."""
    if not 1 <= k <= len(candidates):
        raise ValueError(f"top-k needs 1 <= k <= {len(candidates)} candidates, got k={k}")
    return [[candidates[i] for i in row] for row in scores.topk(k, dim=-1).indices.tolist()]


def _prompt_batch(processor: Any, sample: Sample, device: torch.device) -> dict[str, torch.Tensor]:
    contexts = [sample.context] if sample.context else None
    batch = processor([open_image(sample.image, sample)], [sample.prompt], None, contexts)
    return {k: v.to(device) for k, v in batch.items()}


def _answer_tensors(processor: Any, candidates: Sequence[str], device: torch.device) -> torch.Tensor:
    """The candidates' token ids (answer + end token), right-padded with -1."""
    rows = [list(processor.answer_ids(c)) for c in candidates]
    ids = torch.full((len(rows), max(len(r) for r in rows)), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids.to(device)


def _reuse_scores(
    model: nn.Module,
    processor: Any,
    sample: Sample,
    answers: torch.Tensor,
    batch_size: int,
    autocast: Autocast,
    device: torch.device,
) -> torch.Tensor:
    prompt = _prompt_batch(processor, sample, device)
    valid = answers >= 0
    pad = int(getattr(processor, "pad_token_id", 0) or 0)
    ids = answers.masked_fill(~valid, pad)
    scores: list[torch.Tensor] = []
    if getattr(processor, "is_encoder_decoder", False):
        from transformers.modeling_outputs import BaseModelOutput

        with autocast():  # the encoder runs once; the decoder reads its output for every candidate
            encoded = model(**prompt, labels=answers[:1].clamp(min=0)).encoder_last_hidden_state
        for start in range(0, len(ids), batch_size):
            chunk, ok = ids[start : start + batch_size], valid[start : start + batch_size]
            n = chunk.shape[0]
            with autocast():
                logits = model(encoder_outputs=BaseModelOutput(last_hidden_state=encoded.expand(n, -1, -1)),
                               attention_mask=prompt["attention_mask"].expand(n, -1),
                               labels=chunk.masked_fill(~ok, -100), use_cache=False).logits
            scores.append(_picked(logits, chunk, ok))
        return torch.cat(scores).cpu()
    from transformers import DynamicCache

    cache = DynamicCache()
    with autocast():  # image + prompt once; the cache then serves every candidate
        first = model(**prompt, **cache_kwargs(model, cache), use_cache=True, **one_logit(model)).logits[:, -1:]
    first_logp = torch.log_softmax(first.float(), dim=-1)[0, 0]
    text_model = model.get_submodule(getattr(processor, "continue_with", ""))
    mask = prompt["attention_mask"]
    # every candidate of a chunk holds its own copy of the prompt's cache: keep the copies within memory
    batch_size = min(batch_size, max(1, int(_memory_budget(device) / max(_cache_bytes(cache), 1))))
    for start in range(0, len(ids), batch_size):
        chunk, ok = ids[start : start + batch_size], valid[start : start + batch_size]
        n = chunk.shape[0]
        score = first_logp[chunk[:, 0]]
        if chunk.shape[1] > 1:  # later tokens: feed all but the last, read the predictions of the next
            grown = copy.deepcopy(cache)
            grown.batch_repeat_interleave(n)
            extra: dict[str, torch.Tensor] = {}
            if "position_ids" in prompt:  # continue the prompt's positions (HF would count from the cache)
                steps = torch.arange(1, chunk.shape[1], device=device)
                extra["position_ids"] = (prompt["position_ids"][:, -1:] + steps).expand(n, -1)
            with autocast():
                logits = text_model(input_ids=chunk[:, :-1], **cache_kwargs(text_model, grown), use_cache=True,
                                    attention_mask=torch.cat([mask.expand(n, -1), ok[:, :-1].to(mask.dtype)], 1),
                                    **extra).logits
            score = score + _picked(logits, chunk[:, 1:], ok[:, 1:])
        scores.append(score)
    return torch.cat(scores).cpu()


def _cache_bytes(cache: Any) -> int:
    """Bytes of the keys and values a KV cache holds."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def _memory_budget(device: torch.device) -> float:
    """Bytes the copies of a prompt cache may take: 40% of the free GPU memory, 2 GiB on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.4 * free
    return float(2 << 30)


def _picked(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of ``target`` tokens (where ``valid``) under ``logits`` aligned with them."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * valid).sum(-1)


def _full_forward_scores(
    model: nn.Module,
    processor: Any,
    sample: Sample,
    candidates: Sequence[str],
    batch_size: int,
    autocast: Autocast,
    device: torch.device,
) -> torch.Tensor:
    image = open_image(sample.image, sample)
    scores: list[torch.Tensor] = []
    for start in range(0, len(candidates), batch_size):
        chunk = list(candidates[start : start + batch_size])
        contexts = [sample.context] * len(chunk) if sample.context else None
        batch = processor([image] * len(chunk), [sample.prompt] * len(chunk), chunk, contexts)
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        if getattr(processor, "is_encoder_decoder", False):  # decoder logits line up with the labels
            with autocast():
                logits = model(**batch, labels=labels, use_cache=False).logits
        else:  # causal LM: position t predicts token t + 1; the head runs from the first answer token's predictor
            keep = label_tail(labels) if keeps_logits(model) else labels.shape[1]
            with autocast():
                logits = model(**batch, use_cache=False, **({"logits_to_keep": keep} if keep < labels.shape[1]
                                                            else {})).logits[:, -keep:-1]
            labels = labels[:, labels.shape[1] - keep + 1 :]
            # only the final answer counts (earlier assistant turns of a conversation are labelled too)
            positions = torch.arange(labels.shape[1], device=labels.device)
            last_unlabelled = torch.where(labels < 0, positions, -1).amax(-1, keepdim=True)
            labels = labels.masked_fill(positions <= last_unlabelled, -100)
        ok = labels >= 0
        scores.append(_picked(logits, labels.clamp(min=0), ok).cpu())
    return torch.cat(scores)


@torch.no_grad()
def classify(
    model: nn.Module,
    processor: Any,
    samples: Sequence[Sample],
    head: Any,
    batch_size: int = 16,
    autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    progress: bool = True,
) -> list[str]:
    """The ``answer_head`` method's answer (argmax over its answer list) for each sample."""
    out: list[str] = []
    for batch in _in_batches(model, processor, samples, batch_size, "classify", progress):
        with autocast():
            model(**batch, use_cache=False, **one_logit(model))  # the head pools hidden states: one logit is enough
            logits = head.logits()
        out.extend(head.answers[i] for i in logits.argmax(-1).tolist())
    return out


# ------------------------------------------------------------------------------------------------- VQAv2
# Tables of vqaEval.py (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation). Keys with capitals ("Im")
# never match after lower-casing; they are kept as in the original.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
# "(?!<=\d)" is a lookahead in the original (a typo for a lookbehind): any "." not followed by a digit goes.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# The original calls periodStrip.sub("", text, re.UNICODE): the flag lands in ``count`` (32 replacements).
_PERIOD_COUNT = int(re.UNICODE)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    out = text
    digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        # Tested on the input text, not on ``out``, as the original does.
        touches_space = p + " " in text or " " + p in text
        out = out.replace(p, "" if touches_space or digit_comma else " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)


def _process_digit_article(text: str) -> str:
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """The official VQAv2 answer processing: ``"Two dogs."`` -> ``"2 dogs"``.

    Line breaks/tabs become spaces and the ends are stripped; then ``processPunctuation`` (each of
    ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a space in the text, or when the
    text holds a digit-comma-digit such as ``1,000``, and replaced by a space otherwise; every ``.`` not
    followed by a digit is deleted); then ``processDigitArticle`` (lower-case, number words ``none``/``zero``
    .. ``ten`` to digits, articles a/an/the dropped, apostrophe-less contractions such as ``dont`` ->
    ``don't`` restored). Note :func:`vqa_accuracy` applies it only when the references disagree.
    """
    return _process_digit_article(_process_punctuation(_clean(text)))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction against the human answers (usually 10), in 0..1.

    As ``vqaEval.py``: for each answer, the subset of the *other* answers gives ``min(1, matches / 3)``; the
    accuracy is the mean over those leave-one-out subsets (3 of 10 matching -> 0.9, 1 -> 0.3, 4+ -> 1.0).
    The same definition is used for any number of answers; with a single answer it is exact match.

    Quirk kept from the official code: answers and prediction only get ``\\n``/``\\t`` replaced and ends
    stripped; the full :func:`normalize_vqa_answer` processing is applied (to both) only when the answers are
    not all identical. So with ten identical answers ``"2"``, the prediction ``"two"`` scores 0. (This is the
    current vqaEval.py; older revisions, still copied by some toolkits, always processed the prediction and
    applied only the punctuation step to disagreeing answers.)
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    gts = [_clean(answer) for answer in answers]
    pred = _clean(prediction)
    if len(set(gts)) > 1:
        gts = [_process_digit_article(_process_punctuation(answer)) for answer in gts]
        pred = _process_digit_article(_process_punctuation(pred))
    if len(gts) == 1:
        return float(pred == gts[0])
    matches = sum(answer == pred for answer in gts)
    return sum(min(1.0, (matches - (answer == pred)) / 3) for answer in gts) / len(gts)


def vqa_scores(
    predictions: Sequence[str], answers: Sequence[Sequence[str]], kinds: Sequence[str] | None = None
) -> dict[str, float]:
    """Mean :func:`vqa_accuracy` (0..1, not x100) as ``vqa_accuracy``, per kind as ``vqa_accuracy/<kind>``
    (e.g. the VQAv2 answer types yes/no, number, other), and ``n``."""
    if len(predictions) != len(answers) or (kinds is not None and len(kinds) != len(predictions)):
        raise ValueError("predictions, answers (and kinds) must have the same length")
    if not predictions:
        return {"vqa_accuracy": float("nan"), "n": 0}
    accs = [vqa_accuracy(pred, refs) for pred, refs in zip(predictions, answers, strict=True)]
    out: dict[str, float] = {"vqa_accuracy": sum(accs) / len(accs)}
    if kinds is not None:
        per_kind: dict[str, list[float]] = defaultdict(list)
        for kind, acc in zip(kinds, accs, strict=True):
            per_kind[kind].append(acc)
        for kind in sorted(per_kind):
            out[f"vqa_accuracy/{kind}"] = sum(per_kind[kind]) / len(per_kind[kind])
    out["n"] = len(accs)
    return out


def score(samples: Sequence[Sample], predictions: Sequence[str], config: Any) -> dict[str, float]:
    """Exact-match accuracy (overall and per kind) and, with several answers per sample, VQAv2 accuracy."""
    metrics = accuracy(samples, predictions)
    if any(len(s.answers) > 1 for s in samples):
        metrics.update(vqa_scores(predictions, [s.references for s in samples], [s.kind for s in samples]))
    return metrics
