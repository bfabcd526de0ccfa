"""Tests of bench/kvserve_eval/metrics.py against hand-computed cases."""
import math
import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from kvserve_eval import metrics as m  # noqa: E402


# --- normalisation ------------------------------------------------------------------------

@pytest.mark.parametrize("raw, normalised", [
    ("The Eiffel Tower", "eiffel tower"),              # case + leading article
    ("An apple a day", "apple day"),                   # 'an' and 'a' are whole words only
    ("theatre anthem", "theatre anthem"),              # articles inside words stay
    ("Paris, France!", "paris france"),                # punctuation deleted
    ("brown-fox", "brownfox"),                         # deleted, not replaced by a space
    ("  many   spaces\t\nhere ", "many spaces here"),  # white space collapsed and stripped
    ("the-end", "theend"),                             # punctuation goes before articles
    ("A.", ""),                                        # "a." -> "a" -> article -> empty
])
def test_normalize_answer(raw, normalised):
    assert m.normalize_answer(raw) == normalised


# --- QA F1 --------------------------------------------------------------------------------

def test_qa_f1_partial_overlap():
    # pred -> [eiffel, tower, in, paris] (4), ref -> [paris] (1); overlap 1
    # P = 1/4, R = 1/1, F1 = 2 * 1/4 * 1 / (1/4 + 1) = 0.5 / 1.25 = 0.4
    assert m.qa_f1("The Eiffel Tower, in Paris.", "Paris") == pytest.approx(0.4)


def test_qa_f1_order_does_not_matter():
    # pred [john, smith, and, mary] (4), ref [mary, smith] (2); overlap 2
    # P = 2/4, R = 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert m.qa_f1("John Smith and Mary", "Mary Smith") == pytest.approx(2 / 3)


def test_qa_f1_repeated_tokens_count_once_per_reference_occurrence():
    # pred [yes, yes, no] (3), ref [yes] (1); overlap min(2, 1) = 1
    # P = 1/3, R = 1, F1 = (2/3) / (4/3) = 0.5
    assert m.qa_f1("yes yes no", "yes") == pytest.approx(0.5)


def test_qa_f1_exact_and_disjoint_and_empty():
    assert m.qa_f1("the Answer.", "answer") == 1.0
    assert m.qa_f1("cat", "dog") == 0.0
    assert m.qa_f1("", "dog") == 0.0
    assert m.qa_f1("The.", "dog") == 0.0  # normalises to nothing


def test_score_takes_max_over_answers():
    # vs "Paris": 0.4 (above); vs "Eiffel Tower": pred 4 tokens, ref 2, overlap 2,
    # P = 1/2, R = 1, F1 = 2/3. The max is 2/3.
    pred = "The Eiffel Tower, in Paris."
    assert m.score("multifieldqa_en", pred, ["Paris", "Eiffel Tower"]) == pytest.approx(2 / 3)
    assert m.score("hotpotqa", pred, "Paris") == pytest.approx(0.4)  # one string = one answer
    assert m.score("hotpotqa", "", ["Paris", "London"]) == 0.0
    assert m.score("hotpotqa", pred, []) == 0.0


# --- ROUGE-L ------------------------------------------------------------------------------

def test_lcs_length():
    assert m.lcs_length("a b c d e".split(), "a c e".split()) == 3
    assert m.lcs_length("x y".split(), "y x".split()) == 1
    assert m.lcs_length([], ["a"]) == 0


def test_rouge_l_two_sentences_by_hand():
    # pred: the cat was found under the bed   (7 tokens after lower-casing)
    # ref:  the cat was under the bed         (6 tokens)
    # LCS = "the cat was under the bed" = 6
    # P = 6/7, R = 6/6, F = 2 * (6/7) * 1 / (6/7 + 1) = (12/7) / (13/7) = 12/13
    pred = "The cat was found under the bed"
    ref = "the cat was under the bed"
    assert m.lcs_length(pred.lower().split(), ref.split()) == 6
    assert m.rouge_l(pred, ref) == pytest.approx(12 / 13)


def test_rouge_l_order_matters():
    # pred: police arrested the man (4), ref: the man arrested police (4)
    # LCS length 2: "the man" (no 3-token common subsequence: 'police' precedes 'arrested'
    # in pred but follows it in ref, and both precede/follow 'the man' in opposite orders)
    # P = R = 2/4, F = 0.5
    assert m.rouge_l("police arrested the man", "the man arrested police") == pytest.approx(0.5)


def test_rouge_l_edges():
    assert m.rouge_l("", "a reference") == 0.0
    assert m.rouge_l("a prediction", "") == 0.0
    assert m.rouge_l("abc", "xyz") == 0.0
    assert m.rouge_l("Same Words", "same words") == 1.0
    assert m.score("gov_report", "The cat was found under the bed",
                   ["unrelated", "the cat was under the bed"]) == pytest.approx(12 / 13)


# --- classification, retrieval, count, exact match -----------------------------------------

TREC_CLASSES = ["Description", "Entity", "Abbreviation", "Expression abbreviated",
                "Human", "Location", "Other location", "Number"]


def test_classification_one_class_present():
    assert m.classification_accuracy("Type: Location", "Location", TREC_CLASSES) == 1.0
    assert m.classification_accuracy("Type: Human", "Location", TREC_CLASSES) == 0.0
    assert m.classification_accuracy("no idea", "Location", TREC_CLASSES) == 0.0


def test_classification_two_classes_present_splits_the_credit():
    # "Human" and "Number" both occur; the right one is among them: 1 / 2.
    assert m.classification_accuracy("Human or Number", "Number", TREC_CLASSES) == 0.5
    # Both occur but the reference is "Location": 0.
    assert m.classification_accuracy("Human or Number", "Location", TREC_CLASSES) == 0.0


def test_classification_substring_of_reference_is_not_a_rival():
    # Matching is case-sensitive, so use names where one contains the other exactly.
    classes = ["Location", "Other Location"]
    # Both names occur in the prediction, but "Location" is a proper substring of the
    # reference "Other Location", so it is dropped: one candidate left, score 1.
    assert m.classification_accuracy("Other Location", "Other Location", classes) == 1.0
    # With reference "Location" nothing is dropped: two candidates, score 1/2.
    assert m.classification_accuracy("Other Location", "Location", classes) == 0.5


def test_classification_through_score_uses_first_line():
    pred = "\nNumber\nType: Human"
    assert m.score("trec", pred, ["Number"], all_classes=TREC_CLASSES) == 1.0


def test_retrieval_accuracy():
    assert m.retrieval_accuracy("Paragraph 12", "Paragraph 12") == 1.0
    assert m.retrieval_accuracy("The answer is paragraph 12.", "Paragraph 12") == 1.0
    assert m.retrieval_accuracy("Paragraph 2", "Paragraph 12") == 0.0    # 2 != 12
    assert m.retrieval_accuracy("Paragraph 12 or 3", "Paragraph 12") == 0.5  # 1 of 2 numbers
    assert m.retrieval_accuracy("I do not know", "Paragraph 12") == 0.0
    assert m.retrieval_accuracy("12", "12") == 1.0
    with pytest.raises(ValueError):
        m.retrieval_accuracy("12", "no number")
    assert m.score("passage_retrieval_en", "Paragraph 7", ["Paragraph 7"]) == 1.0


def test_count_accuracy():
    assert m.count_accuracy("There are 5 unique paragraphs", "5") == 1.0
    assert m.count_accuracy("5 or 6", "5") == 0.5


def test_exact_match():
    assert m.exact_match("  48213 is the pass key.", "48213") == 1.0
    assert m.exact_match("\n48213", "48213") == 1.0
    assert m.exact_match("The pass key is 48213", "48213") == 0.0  # must start with it
    assert m.exact_match("4821", "48213") == 0.0
    assert m.score("passkey", " 48213", ["99999", "48213"]) == 1.0


def test_dataset_metric_mapping():
    for name in ["narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique"]:
        assert m.metric_for(name) == "qa_f1"
    for name in ["gov_report", "qmsum", "multi_news"]:
        assert m.metric_for(name) == "rouge_l"
    assert m.metric_for("trec") == "classification"
    assert m.metric_for("passage_retrieval_en") == "retrieval"
    assert m.metric_for("hotpotqa_e") == "qa_f1"  # LongBench-E file name
    assert set(m.DATASET_METRIC.values()) <= set(m.METRICS)
    with pytest.raises(ValueError):
        m.metric_for("no_such_dataset")
    with pytest.raises(ValueError):
        m.score("no_such_dataset", "x", ["x"])


# --- bootstrap confidence interval ---------------------------------------------------------

def test_bootstrap_ci_contains_mean_and_is_deterministic():
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]  # mean 0.7
    mean, low, high = m.bootstrap_ci(values, seed=3)
    assert mean == pytest.approx(0.7)
    assert 0.0 <= low < mean < high <= 1.0
    assert m.bootstrap_ci(values, seed=3) == (mean, low, high)
    # 0/1 data puts the quantiles on a coarse grid; continuous data shows the seed is used.
    continuous = [i * 0.37 % 1.0 for i in range(25)]
    assert m.bootstrap_ci(continuous, seed=3) == m.bootstrap_ci(continuous, seed=3)
    assert m.bootstrap_ci(continuous, seed=3) != m.bootstrap_ci(continuous, seed=4)


def test_bootstrap_ci_shrinks_with_more_data():
    rng = random.Random(7)
    small = [rng.random() for _ in range(20)]
    large = small * 25  # same distribution, 25 times the items
    _, lo_s, hi_s = m.bootstrap_ci(small)
    _, lo_l, hi_l = m.bootstrap_ci(large)
    # Width scales like 1/sqrt(n): about 1/5 here; allow generous slack.
    assert (hi_l - lo_l) < 0.5 * (hi_s - lo_s)


def test_bootstrap_ci_constant_sample_has_zero_width():
    assert m.bootstrap_ci([0.25] * 30) == (0.25, 0.25, 0.25)
    assert m.bootstrap_ci([1.0]) == (1.0, 1.0, 1.0)


def test_bootstrap_ci_wider_for_higher_confidence():
    values = [i % 7 / 6 for i in range(40)]
    _, lo90, hi90 = m.bootstrap_ci(values, confidence=0.90)
    _, lo99, hi99 = m.bootstrap_ci(values, confidence=0.99)
    assert lo99 <= lo90 and hi90 <= hi99


def test_bootstrap_ci_rejects_bad_input():
    with pytest.raises(ValueError):
        m.bootstrap_ci([])
    with pytest.raises(ValueError):
        m.bootstrap_ci([1.0], confidence=1.0)


# --- paired bootstrap test -----------------------------------------------------------------

def test_paired_test_identical_lists_give_p_one():
    a = [0.1, 0.5, 0.9, 0.3]
    assert m.paired_bootstrap_test(a, list(a), n_resamples=500) == 1.0


def test_paired_test_large_consistent_difference_gives_small_p():
    rng = random.Random(1)
    b = [rng.random() * 0.5 for _ in range(40)]
    a = [x + 0.3 + 0.05 * rng.random() for x in b]  # a beats b on every item
    p = m.paired_bootstrap_test(a, b, n_resamples=2000, seed=0)
    assert p == pytest.approx(1 / 2001)  # no null resample reaches the observed mean
    assert m.paired_bootstrap_test(a, b, n_resamples=2000, seed=0) == p  # deterministic
    # Two-sided: swapping the roles gives the same p.
    assert m.paired_bootstrap_test(b, a, n_resamples=2000, seed=0) == p


def test_paired_test_noise_gives_large_p():
    rng = random.Random(2)
    a = [rng.random() for _ in range(50)]
    b = [x + rng.choice([-0.1, 0.1]) for x in a]
    # Symmetric noise around zero: mean difference is small relative to its spread.
    diffs = [x - y for x, y in zip(a, b)]
    assert abs(sum(diffs) / len(diffs)) < 0.05
    assert m.paired_bootstrap_test(a, b, n_resamples=2000) > 0.05


def test_paired_test_rejects_unequal_lengths():
    with pytest.raises(ValueError):
        m.paired_bootstrap_test([1.0], [1.0, 2.0])


# --- McNemar -------------------------------------------------------------------------------

def test_mcnemar_hand_computed_table():
    # Table: both right 3, only a right 5, only b right 1, both wrong 1.
    a = [1] * 3 + [1] * 5 + [0] * 1 + [0]
    b = [1] * 3 + [0] * 5 + [1] * 1 + [0]
    # Discordant n = 6, k = min(5, 1) = 1:
    # P(X <= 1) = (C(6,0) + C(6,1)) / 2^6 = 7/64; p = 2 * 7/64 = 14/64 = 0.21875
    assert m.mcnemar_exact(a, b) == pytest.approx(0.21875)
    assert m.mcnemar_exact(b, a) == pytest.approx(0.21875)


def test_mcnemar_one_sided_table_and_edges():
    # Only a right on 5 items, no other discordance: p = 2 * (1/2)^5 = 0.0625
    a = [True] * 5 + [True, False]
    b = [False] * 5 + [True, False]
    assert m.mcnemar_exact(a, b) == pytest.approx(0.0625)
    # Balanced discordance (2 vs 2): 2 * P(X <= 2 | n=4) = 2 * 11/16 > 1, capped at 1.
    assert m.mcnemar_exact([1, 1, 0, 0], [0, 0, 1, 1]) == 1.0
    # No discordant pairs.
    assert m.mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0
    # Large n does not overflow: 1100 items only a got right.
    assert m.mcnemar_exact([1] * 1100, [0] * 1100) == pytest.approx(2 * 0.5 ** 1100, abs=0)
    with pytest.raises(ValueError):
        m.mcnemar_exact([1], [1, 0])
