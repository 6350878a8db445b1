"""Benchmark metrics with the official definitions: COCO captions, VQAv2 accuracy, box IoU, MME.

* :func:`caption_scores`: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and optionally SPICE) through pycocoevalcap's
  scorers, after its PTB tokenizer (Java).
* :func:`vqa_accuracy` / :func:`vqa_scores`: VQAv2 accuracy as GT-Vision-Lab/VQA's ``vqaEval.py`` does.
* :func:`box_iou` / :func:`grounding_scores`: referring-expression Acc@0.5 and mean IoU.
* :func:`mme_scores`: MME accuracy, accuracy+ and score per subtask, as MME's ``eval_tool/calculation.py``.

Scores are fractions in 0..1 (CIDEr-D as returned: 1.2 is the 120 papers print; MME scores in points).
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice.spice import Spice
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

Box = tuple[float, float, float, float]

JAVA_HINT = "caption metrics need Java (install with `sudo apt-get install -y default-jre-headless`)"

# ----------------------------------------------------------------------------------------------- captions


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


# ------------------------------------------------------------------------------------------------- boxes


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` pixel boxes, in 0..1.

    Continuous coordinates: area = (x2 - x1) * (y2 - y1), no "+1" pixel convention; a box with x2 <= x1 or
    y2 <= y1 has area 0. RefCOCO-style evaluation (OFA, ...) counts a prediction as a hit when IoU >= 0.5.
    """
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def grounding_scores(predicted: Sequence[Box | None], gold: Sequence[Box]) -> dict[str, float]:
    """Referring-expression metrics: ``acc@0.5`` (fraction with IoU >= 0.5), ``miou`` (mean IoU), ``n``, and
    ``unparsed`` (how many predictions are None, i.e. text that :func:`~mmpt.data.sample.text_to_box` could
    not read; they count as misses with IoU 0)."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted boxes for {len(gold)} gold boxes")
    if not gold:
        return {"acc@0.5": float("nan"), "miou": float("nan"), "n": 0, "unparsed": 0}
    ious = [0.0 if p is None else box_iou(p, g) for p, g in zip(predicted, gold, strict=True)]
    return {
        "acc@0.5": sum(iou >= 0.5 for iou in ious) / len(ious),
        "miou": sum(ious) / len(ious),
        "n": len(ious),
        "unparsed": sum(p is None for p in predicted),
    }


# --------------------------------------------------------------------------------------------------- MME
MME_PERCEPTION = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
)  # fmt: skip
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def parse_mme_answer(text: str) -> str:
    """MME's ``parse_pred_ans``: ``"yes"``, ``"no"`` or ``"other"`` from a generated answer.

    Lower-cased (and stripped, which the official script does not do); exactly "yes"/"no" is taken as is,
    else "yes" within the first 4 characters gives yes, else "no" within them gives no ("Yes, there is" ->
    yes; also "not sure" -> no, as officially), else other.
    """
    text = text.lower().strip()
    if text in ("yes", "no"):
        return text
    if "yes" in text[:4]:
        return "yes"
    if "no" in text[:4]:
        return "no"
    return "other"


def mme_scores(records: Sequence[tuple[str, str, str, str]]) -> dict[str, float]:
    """MME metrics from ``(subtask, image_id, prediction, answer)`` records, answers "yes"/"no".

    Per subtask, as MME's ``calculation.py``: ``mme/<subtask>/acc`` is the fraction of questions answered
    right (prediction parsed by :func:`parse_mme_answer`, "other" is wrong), ``mme/<subtask>/acc_plus`` the
    fraction of images whose questions (two per image in MME) are all right, and ``mme/<subtask>/score`` =
    100 * acc + 100 * acc_plus (out of 200). Totals: ``mme/acc`` and ``mme/acc_plus`` over all questions and
    images, ``mme/score`` the sum of subtask scores; ``mme/perception`` (out of 2000) and ``mme/cognition``
    (out of 800), MME's reported sums, when any of their official subtasks is present; ``n`` questions.
    """
    if not records:
        return {"mme/acc": float("nan"), "mme/acc_plus": float("nan"), "mme/score": 0.0, "n": 0}
    images: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for subtask, image_id, prediction, answer in records:
        gold = answer.strip().lower()
        if gold not in ("yes", "no"):
            raise ValueError(f"MME answers are yes/no; got {answer!r} (subtask {subtask}, image {image_id})")
        images[subtask][image_id].append(parse_mme_answer(prediction) == gold)
    out: dict[str, float] = {}
    right = questions = all_right = image_count = 0
    for subtask in sorted(images):
        per_image = images[subtask].values()
        s_right = sum(sum(hits) for hits in per_image)
        s_questions = sum(len(hits) for hits in per_image)
        s_all_right = sum(all(hits) for hits in per_image)
        acc, acc_plus = s_right / s_questions, s_all_right / len(per_image)
        out[f"mme/{subtask}/acc"] = acc
        out[f"mme/{subtask}/acc_plus"] = acc_plus
        out[f"mme/{subtask}/score"] = 100 * acc + 100 * acc_plus
        right, questions = right + s_right, questions + s_questions
        all_right, image_count = all_right + s_all_right, image_count + len(per_image)
    out["mme/acc"] = right / questions
    out["mme/acc_plus"] = all_right / image_count
    out["mme/score"] = sum(out[f"mme/{subtask}/score"] for subtask in images)
    for name, group in (("perception", MME_PERCEPTION), ("cognition", MME_COGNITION)):
        present = [subtask for subtask in images if subtask in group]
        if present:
            out[f"mme/{name}"] = sum(out[f"mme/{subtask}/score"] for subtask in present)
    out["n"] = questions
    return out
