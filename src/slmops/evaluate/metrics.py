"""Text-quality metrics: exact match, token F1, ROUGE-L, BLEU and label accuracy, as small pure functions.

Every function compares one prediction with one reference and returns a float in [0, 1] (BLEU's
corpus score is also in [0, 1], not sacreBLEU's 0–100). Definitions follow the usual references so
numbers are comparable with published ones:

* :func:`exact_match` and :func:`token_f1` — SQuAD v1.1: lower-case, drop punctuation and the
  articles a/an/the, collapse whitespace; F1 over the bag of remaining tokens.
* :func:`rouge_l` — ROUGE-L F-measure (β = 1) over the longest common subsequence of tokens, with the
  ``rouge-score`` package's tokenisation (lower-case, runs of ``[a-z0-9]``).
* :func:`corpus_bleu` / :func:`sentence_bleu` — BLEU-4 with sacreBLEU's ``13a`` tokenisation and
  ``exp`` smoothing (sentence BLEU uses the effective order, as sacreBLEU does).
* :func:`accuracy` — the prediction equals the record's label after :func:`normalize_label`.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")
_13A = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: harmonic mean of token precision and recall after normalisation."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_tokens(text: str) -> list[str]:
    """``rouge-score``'s default tokens: lower-cased runs of letters and digits."""
    return _ROUGE_TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences (O(len(a)·len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: 2PR/(P+R) with P = LCS/len(prediction), R = LCS/len(reference)."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def tokenize_13a(text: str) -> list[str]:
    """sacreBLEU's default ``13a`` tokenisation (mteval-v13a): punctuation split off, except inside numbers."""
    line = text.rstrip().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A:
        line = pattern.sub(repl, line)
    return line.split()


@dataclass
class BleuStats:
    """BLEU's sufficient statistics: clipped n-gram matches and totals, hypothesis and reference lengths."""

    correct: list[int]
    total: list[int]
    sys_len: int = 0
    ref_len: int = 0

    def __add__(self, other: BleuStats) -> BleuStats:
        return BleuStats(
            [a + b for a, b in zip(self.correct, other.correct, strict=True)],
            [a + b for a, b in zip(self.total, other.total, strict=True)],
            self.sys_len + other.sys_len,
            self.ref_len + other.ref_len,
        )


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu_stats(prediction: str, reference: str, max_order: int = 4) -> BleuStats:
    """The statistics of one segment pair (one reference)."""
    hyp, ref = tokenize_13a(prediction), tokenize_13a(reference)
    correct, total = [], []
    for n in range(1, max_order + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        correct.append(sum((h & r).values()))
        total.append(max(len(hyp) - n + 1, 0))
    return BleuStats(correct, total, len(hyp), len(ref))


def bleu_from_stats(stats: BleuStats, *, effective_order: bool = False) -> float:
    """BLEU in [0, 1] from statistics: brevity penalty × geometric mean of precisions, ``exp`` smoothing."""
    if stats.sys_len == 0 or not any(stats.correct):
        return 0.0
    bp = 1.0 if stats.sys_len >= stats.ref_len else math.exp(1 - stats.ref_len / stats.sys_len)
    max_order = len(stats.correct)
    precisions = [0.0] * max_order
    eff_order, smooth = max_order, 1.0
    for n in range(max_order):
        if stats.total[n] == 0:
            break
        if effective_order:
            eff_order = n + 1
        if stats.correct[n] == 0:
            smooth *= 2
            precisions[n] = 1.0 / (smooth * stats.total[n])
        else:
            precisions[n] = stats.correct[n] / stats.total[n]
    logs = [math.log(p) if p > 0 else -9999999999.0 for p in precisions[:eff_order]]
    return bp * math.exp(sum(logs) / eff_order)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], max_order: int = 4) -> float:
    """Corpus BLEU (statistics summed over all segments, then one score), as sacreBLEU's ``corpus_score``."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    stats = BleuStats([0] * max_order, [0] * max_order)
    for p, r in zip(predictions, references, strict=True):
        stats = stats + bleu_stats(p, r, max_order)
    return bleu_from_stats(stats)


def sentence_bleu(prediction: str, reference: str, max_order: int = 4) -> float:
    """Smoothed BLEU of one segment (effective order), for per-example logs; aggregate with :func:`corpus_bleu`."""
    return bleu_from_stats(bleu_stats(prediction, reference, max_order), effective_order=True)


def normalize_label(value: object) -> str:
    """A label or answer as a comparable string: lower-case, trimmed of spaces, quotes and final punctuation."""
    text = str(value).strip().lower()
    text = text.strip("\"'`").strip()
    return text.rstrip(".!?;:").strip()


def accuracy(prediction: str, label: object) -> float:
    """1.0 when the prediction names the label (after :func:`normalize_label`), else 0.0."""
    return float(normalize_label(prediction) == normalize_label(label))


def mean(values: Sequence[float]) -> float | None:
    """The mean of ``values``; None for an empty sequence (no example could be scored)."""
    return sum(values) / len(values) if values else None
