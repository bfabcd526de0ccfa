"""Task metrics and statistics for kvserve-eval.

Standard library only. Two halves:

Task metrics (one prediction against its reference answers):
  * `normalize_answer`, `qa_f1`: LongBench's English QA F1 (SQuAD-style normalisation).
  * `rouge_l`: ROUGE-L F-measure on whitespace tokens (see its docstring for how it
    differs from the `rouge` package LongBench calls).
  * `classification_accuracy`, `retrieval_accuracy`, `count_accuracy`: LongBench's rules
    for trec, passage_retrieval_en and passage_count.
  * `exact_match`: passkey / needle-in-a-haystack answers.
  * `DATASET_METRIC`, `metric_for`, `score`: dataset name -> metric, and the score of
    one item (the maximum over its reference answers, as LongBench's scorer takes it).

Statistics over per-item scores:
  * `bootstrap_ci`: percentile bootstrap confidence interval of a mean.
  * `paired_bootstrap_test`: two-sided p-value for mean(a - b) != 0 on paired items.
  * `mcnemar_exact`: exact McNemar test for paired 0/1 outcomes.

All functions are pure; the resampling ones are deterministic for a given seed.
"""
import math
import random
import re
import string
from collections import Counter
from typing import Callable, Dict, Optional, Sequence, Tuple

# ---------------------------------------------------------------------------------------
# Answer normalisation and QA F1
# ---------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)  # ASCII punctuation only, as LongBench uses.
_ARTICLE_RE = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """LongBench's English answer normalisation.

    Steps, in this order: lower-case; delete every ASCII punctuation character (so
    "brown-fox" becomes "brownfox", not two words); replace the whole words a / an / the
    by a space; collapse runs of white space to single spaces and strip the ends.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLE_RE.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction_tokens: Sequence[str], reference_tokens: Sequence[str]) -> float:
    """Bag-of-tokens F1: overlap counts each token min(count in pred, count in ref) times."""
    overlap = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(reference_tokens)
    return 2.0 * precision * recall / (precision + recall)


def qa_f1(prediction: str, reference: str) -> float:
    """Token F1 between the normalised prediction and one normalised reference answer."""
    return token_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


# ---------------------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------------------


def lcs_length(x: Sequence[str], y: Sequence[str]) -> int:
    """Length of the longest common subsequence; O(len(x) * len(y)) time, O(min) memory."""
    if len(x) < len(y):
        x, y = y, x
    previous = [0] * (len(y) + 1)
    for token_x in x:
        current = [0] * (len(y) + 1)
        for j, token_y in enumerate(y, start=1):
            if token_x == token_y:
                current[j] = previous[j - 1] + 1
            else:
                current[j] = max(previous[j], current[j - 1])
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure with beta = 1 (the harmonic mean of LCS precision and recall).

    What is computed: both texts are lower-cased and split on white space (punctuation
    stays attached to its word, tokens keep their multiplicity); L = LCS length of the two
    token sequences; P = L / len(prediction tokens), R = L / len(reference tokens),
    F = 2PR / (P + R). An empty prediction or reference, or L = 0, scores 0.

    How it relates to LongBench, which calls `Rouge().get_scores(pred, ref)["rouge-l"]["f"]`
    from the `rouge` PyPI package (also beta = 1, also 0 for an empty prediction, where
    that package raises and LongBench catches it): the package does not lower-case; it
    splits each text into sentences at every "." and computes the summary-level union-LCS
    of Lin (2004) over those sentences; and by default it counts distinct words only (token
    sets) for the lengths and the union. For a single sentence without "." and without
    repeated words both give the same number; on multi-sentence summaries they differ,
    so scores from this function are comparable among our runs, not digit-for-digit with
    published LongBench summarisation numbers.
    """
    prediction_tokens = prediction.lower().split()
    reference_tokens = reference.lower().split()
    if not prediction_tokens or not reference_tokens:
        return 0.0
    common = lcs_length(prediction_tokens, reference_tokens)
    if common == 0:
        return 0.0
    precision = common / len(prediction_tokens)
    recall = common / len(reference_tokens)
    return 2.0 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------
# Classification, retrieval, counting, exact match
# ---------------------------------------------------------------------------------------


def classification_accuracy(prediction: str, reference: str,
                            all_classes: Sequence[str]) -> float:
    """LongBench's classification score (trec).

    The candidate classes are those whose name occurs (case-sensitive substring) in the
    prediction. A candidate that is a proper substring of the reference class is dropped
    (it matched only because the right name contains it). The score is 1 / (number of
    remaining candidates) when the reference is among them, else 0.

    Two deliberate deviations from LongBench's code, neither changing its intent: it
    deletes from the list it is iterating, which can skip the element after a deleted one,
    whereas here every candidate is checked; and its difflib fallback for "no candidate"
    is unreachable there (it compares a list with 0), so no candidate scores 0 here too.
    """
    if not all_classes:
        raise ValueError("classification_accuracy needs the list of class names")
    candidates = [name for name in all_classes if name in prediction]
    candidates = [name for name in candidates if name == reference or name not in reference]
    if reference in candidates:
        return 1.0 / len(candidates)
    return 0.0


_PARAGRAPH_RE = re.compile(r"Paragraph (\d+)")
_NUMBER_RE = re.compile(r"\d+")


def _fraction_equal(prediction: str, target: str) -> float:
    numbers = _NUMBER_RE.findall(prediction)
    if not numbers:
        return 0.0
    return sum(1 for number in numbers if number == target) / len(numbers)


def retrieval_accuracy(prediction: str, reference: str) -> float:
    """LongBench's passage_retrieval_en score.

    The reference is "Paragraph N" (a bare number "N" is accepted too). Every run of
    digits in the prediction is a guess; the score is the fraction of guesses equal to N
    (so "Paragraph 12" scores 1 against "Paragraph 12", "Paragraph 12 or 3" scores 0.5,
    and a prediction without digits scores 0).
    """
    match = _PARAGRAPH_RE.search(reference)
    if match:
        target = match.group(1)
    elif reference.strip().isdigit():
        target = reference.strip()
    else:
        raise ValueError(f"retrieval reference has no paragraph number: {reference!r}")
    return _fraction_equal(prediction, target)


def count_accuracy(prediction: str, reference: str) -> float:
    """LongBench's passage_count score: the fraction of numbers in the prediction equal to
    the reference count."""
    return _fraction_equal(prediction, str(reference).strip())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the prediction, leading white space stripped, starts with the reference
    (passkey / NIAH: the model may go on talking after the key); else 0.0."""
    if not reference:
        raise ValueError("exact_match needs a non-empty reference")
    return 1.0 if prediction.lstrip().startswith(reference) else 0.0


# ---------------------------------------------------------------------------------------
# Dataset -> metric
# ---------------------------------------------------------------------------------------

METRICS: Dict[str, Callable[..., float]] = {
    "qa_f1": qa_f1,
    "rouge_l": rouge_l,
    "classification": classification_accuracy,
    "retrieval": retrieval_accuracy,
    "count": count_accuracy,
    "exact_match": exact_match,
}

# LongBench's English datasets (the Chinese ones need jieba and the code ones fuzzywuzzy;
# they are left out on purpose) plus our synthetic tasks.
DATASET_METRIC: Dict[str, str] = {
    "narrativeqa": "qa_f1",
    "qasper": "qa_f1",
    "multifieldqa_en": "qa_f1",
    "hotpotqa": "qa_f1",
    "2wikimqa": "qa_f1",
    "musique": "qa_f1",
    "nq": "qa_f1",
    "triviaqa": "qa_f1",
    "gov_report": "rouge_l",
    "qmsum": "rouge_l",
    "multi_news": "rouge_l",
    "samsum": "rouge_l",
    "trec": "classification",
    "passage_retrieval_en": "retrieval",
    "passage_count": "count",
    "passkey": "exact_match",
    "niah": "exact_match",
}

# LongBench scores only the first line of the prediction for its few-shot datasets, whose
# models tend to continue the few-shot pattern after answering.
FIRST_LINE_DATASETS = frozenset({"trec", "triviaqa", "samsum"})


def _base_name(dataset: str) -> str:
    # LongBench-E files are named "<dataset>_e" and use the same metric.
    if dataset not in DATASET_METRIC and dataset.endswith("_e"):
        return dataset[:-2]
    return dataset


def metric_for(dataset: str) -> str:
    """Metric name (a key of METRICS) for a dataset; ValueError for an unknown dataset."""
    name = _base_name(dataset)
    if name not in DATASET_METRIC:
        raise ValueError(f"no metric for dataset {dataset!r}; known: {sorted(DATASET_METRIC)}")
    return DATASET_METRIC[name]


def score(dataset: str, prediction: str, answers, all_classes: Optional[Sequence[str]] = None
          ) -> float:
    """Score of one prediction in [0, 1]: the dataset's metric, maximised over the
    reference answers (a single string is one answer; no answers scores 0)."""
    metric_name = metric_for(dataset)
    if isinstance(answers, str):
        answers = [answers]
    if _base_name(dataset) in FIRST_LINE_DATASETS:
        prediction = prediction.lstrip("\n").split("\n")[0]
    function = METRICS[metric_name]
    best = 0.0
    for answer in answers:
        if metric_name == "classification":
            value = function(prediction, answer, all_classes or ())
        else:
            value = function(prediction, answer)
        best = max(best, value)
    return best


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    # Linear interpolation between order statistics (numpy's default "linear" method).
    position = q * (len(sorted_values) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(sorted_values) - 1)
    weight = position - lower
    return sorted_values[lower] * (1.0 - weight) + sorted_values[upper] * weight


def _resampled_means(values: Sequence[float], n_resamples: int, seed: int):
    rng = random.Random(seed)
    n = len(values)
    for _ in range(n_resamples):
        yield math.fsum(rng.choices(values, k=n)) / n


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> Tuple[float, float, float]:
    """(mean, low, high): the sample mean and its percentile-bootstrap interval.

    Draws `n_resamples` resamples of len(values) items with replacement, takes each
    resample's mean, and returns the (1 - confidence) / 2 and (1 + confidence) / 2
    quantiles of those means (linear interpolation). Deterministic for a seed. A constant
    sample (or a single item) gives low == mean == high.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError("n_resamples must be positive")
    mean = _mean(values)
    means = sorted(_resampled_means(values, n_resamples, seed))
    alpha = 1.0 - confidence
    low = _quantile(means, alpha / 2.0)
    high = _quantile(means, 1.0 - alpha / 2.0)
    # Rounding in the resample sums may put the mean a hair outside a degenerate interval.
    return mean, min(low, mean), max(high, mean)


def paired_bootstrap_test(a: Sequence[float], b: Sequence[float], n_resamples: int = 10000,
                          seed: int = 0) -> float:
    """Two-sided p-value for H0: mean(a - b) == 0, with a[i] and b[i] scored on item i.

    Bootstrap under the null: the differences d = a - b are shifted to mean zero, resampled
    with replacement, and p = (1 + #{|mean of resample| >= |observed mean|}) / (1 +
    n_resamples). The +1 keeps p above 0 (the smallest reportable p is 1 / (1 +
    n_resamples)). Identical lists give p = 1.
    """
    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("paired test needs at least one pair")
    differences = [float(x) - float(y) for x, y in zip(a, b)]
    observed = abs(_mean(differences))
    centered = [d - _mean(differences) for d in differences]
    tolerance = 1e-12 * max(1.0, observed)
    extreme = sum(1 for m in _resampled_means(centered, n_resamples, seed)
                  if abs(m) >= observed - tolerance)
    return (1 + extreme) / (1 + n_resamples)


def mcnemar_exact(a_correct: Sequence, b_correct: Sequence) -> float:
    """Exact two-sided McNemar p-value for paired 0/1 (or bool) outcomes.

    Only discordant pairs carry information: n01 = items a got right and b wrong, n10 =
    the reverse. Under H0 each discordant pair goes either way with probability 1/2, so
    p = min(1, 2 * P(X <= min(n01, n10))) with X ~ Binomial(n01 + n10, 1/2); p = 1 when
    there are no discordant pairs.
    """
    if len(a_correct) != len(b_correct):
        raise ValueError(f"McNemar needs equal lengths, got {len(a_correct)} and {len(b_correct)}")
    only_a = sum(1 for x, y in zip(a_correct, b_correct) if bool(x) and not bool(y))
    only_b = sum(1 for x, y in zip(a_correct, b_correct) if bool(y) and not bool(x))
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    # Integer numerator and denominator: exact for any n (2.0 ** n overflows past n = 1023).
    tail = sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)
    return min(1.0, 2.0 * tail)
