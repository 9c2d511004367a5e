"""Eval metrics against hand-computed values and brute force: pass@1 ± CI, pass@k, cons@k, length stats."""

from __future__ import annotations

import itertools
import math

import pytest

from distill.eval import metrics
from distill.verify.math import grade


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """The definition: the share of k-subsets of the n samples holding at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (4, 1, 1), (4, 1, 2), (5, 2, 3), (8, 3, 4), (10, 0, 5),
                                   (10, 9, 2), (12, 5, 6), (6, 6, 6), (7, 2, 7)])
def test_pass_at_k_equals_brute_force_enumeration(n, c, k):
    assert metrics.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    # C(1024, 512) overflows a float; the product form does not.
    value = metrics.pass_at_k(1024, 3, 512)
    assert value == pytest.approx(1 - (512 * 511 * 510) / (1024 * 1023 * 1022), rel=1e-12)
    assert metrics.pass_at_k(200, 1, 1) == pytest.approx(1 / 200)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        metrics.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        metrics.pass_at_k(4, 1, 5)


def test_pass_at_1_is_mean_of_per_problem_means_with_normal_ci():
    correct = [[True, True, False, False], [True, True, True, False], [True, False, False, False],
               [False, True, False, True]]
    out = metrics.pass_at_1(correct)
    assert out["mean"] == pytest.approx(0.5)  # (0.5 + 0.75 + 0.25 + 0.5) / 4
    sd = math.sqrt((0 + 0.25**2 + 0.25**2 + 0) / 3)  # per-problem means, ddof=1
    half = 1.959963984540054 * sd / math.sqrt(4)
    assert half == pytest.approx(0.2000, abs=1e-4)
    assert out["ci_halfwidth"] == pytest.approx(half)
    assert out["ci95"] == pytest.approx([0.5 - half, 0.5 + half])


def test_pass_at_1_uneven_samples_weight_problems_equally_and_ci_clips():
    out = metrics.pass_at_1([[True], [False, False, False, True]])
    assert out["mean"] == pytest.approx((1 + 0.25) / 2)
    assert out["ci95"][1] == 1.0 and out["ci95"][0] >= 0.0
    single = metrics.pass_at_1([[True, False]])
    assert single["mean"] == 0.5 and single["ci95"] is None
    assert metrics.pass_at_1([])["mean"] is None


def test_mean_pass_at_k_and_default_ks():
    correct = [[True, False, False, False], [False] * 4]
    assert metrics.mean_pass_at_k(correct, 2) == pytest.approx((0.5 + 0) / 2)  # 1 - C(3,2)/C(4,2) = 0.5
    assert metrics.mean_pass_at_k(correct, 5) is None
    assert metrics.default_ks(16) == [1, 2, 4, 8, 16]
    assert metrics.default_ks(6) == [1, 2, 4, 6]
    assert metrics.default_ks(1) == [1]


def equivalent(a: str, b: str) -> bool:
    """Equivalence the way eval decides it: grade one extracted answer against the other as gold."""
    return grade("\\boxed{" + a + "}", b, "auto").correct


def test_cons_at_k_votes_equivalent_but_differently_written_answers_together():
    # \frac{1}{2} and 0.5 and 1/2 are one class of 3; "3" has 2 votes on its own: the class of 1/2 wins.
    answers = [["3", "\\frac{1}{2}", "3", "0.5", "1/2", ""]]
    gold = "\\frac12"
    correct = [[grade("\\boxed{" + a + "}", gold).correct if a else False for a in answers[0]]]
    assert correct == [[False, True, False, True, True, False]]
    assert metrics.vote(answers[0], equivalent) == 1
    assert metrics.cons_at_k(answers, correct, 6, equivalent) == 1.0
    # Over the first 3 samples "3" has the majority: wrong.
    assert metrics.cons_at_k(answers, correct, 3, equivalent) == 0.0


def test_vote_ties_go_to_the_earliest_class_and_empty_answers_do_not_vote():
    same = lambda a, b: a == b  # noqa: E731
    assert metrics.vote(["7", "5", "5", "7"], same) == 0
    assert metrics.vote(["", "5", "", "7", "7"], same) == 3
    assert metrics.vote(["", ""], same) is None
    answers, correct = [["", ""], ["2", "2"]], [[False, False], [True, True]]
    assert metrics.cons_at_k(answers, correct, 2, same) == 0.5


def test_truncated_share_and_length_stats():
    assert metrics.truncated_share(["stop", "length", "length", "stop"]) == 0.5
    assert metrics.truncated_share([]) is None
    stats = metrics.length_stats([10, 20, 30, 0], [True, False, False, True])
    assert stats["known"] == 3
    assert stats["all"] == {"mean": 20.0, "median": 20.0, "count": 3}
    assert stats["correct"] == {"mean": 10.0, "median": 10.0, "count": 1}
    assert stats["wrong"] == {"mean": 25.0, "median": 25.0, "count": 2}
    assert metrics.length_stats([0], [True])["all"]["mean"] is None
