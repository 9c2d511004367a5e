"""Benchmark metrics as pure functions: pass@1 ± 95% CI, unbiased pass@k, cons@k, truncation and length stats.

Inputs are per-problem lists of sample verdicts (in sample_index order). Accuracies are fractions in [0, 1];
`distill.eval.report` turns them into percent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct out of n samples (Chen et al. 2021, "Codex" paper).

    1 - C(n-c, k) / C(n, k), in the product form 1 - prod_{i=n-c+1..n} (1 - k/i): no huge binomials, no overflow.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_1(correct_per_problem: Sequence[Sequence[bool]]) -> dict:
    """pass@1 = the mean over problems of each problem's mean accuracy over its n samples, with a 95% CI.

    CI: normal approximation over the per-problem means, mean ± 1.96 · sd(p_i) / sqrt(P) (sd with ddof=1).
    It counts both sources of noise, which samples a problem drew and which problems the set holds, so a
    30-problem set reports the ±9 points it really has. With fewer than 2 problems the CI is None.
    """
    per_problem = _per_problem_means(correct_per_problem)
    if not per_problem.size:
        return {"mean": None, "ci95": None, "ci_halfwidth": None, "std_err": None}
    mean = float(per_problem.mean())
    if per_problem.size < 2:
        return {"mean": mean, "ci95": None, "ci_halfwidth": None, "std_err": None}
    std_err = float(per_problem.std(ddof=1) / math.sqrt(per_problem.size))
    half = Z95 * std_err
    return {"mean": mean, "ci95": [max(0.0, mean - half), min(1.0, mean + half)], "ci_halfwidth": half,
            "std_err": std_err}


def _per_problem_means(correct_per_problem: Sequence[Sequence[bool]]) -> np.ndarray:
    return np.array([np.mean(np.asarray(c, dtype=float)) for c in correct_per_problem if len(c)], dtype=float)


def mean_pass_at_k(correct_per_problem: Sequence[Sequence[bool]], k: int) -> float | None:
    """pass@k averaged over problems; None when some problem has fewer than k samples."""
    if not correct_per_problem or any(len(c) < k for c in correct_per_problem):
        return None
    return float(np.mean([pass_at_k(len(c), int(sum(map(bool, c))), k) for c in correct_per_problem]))


def default_ks(n: int) -> list[int]:
    """1, 2, 4, … up to n, and n itself."""
    ks = [1]
    while ks[-1] * 2 <= n:
        ks.append(ks[-1] * 2)
    if ks[-1] != n and n >= 1:
        ks.append(n)
    return ks


def vote(answers: Sequence[str], equivalent: Callable[[str, str], bool]) -> int | None:
    """Majority vote over equivalence classes of extracted answers; the index of the winning class's first sample.

    Empty answers ("" = nothing extracted) do not vote. Answers are clustered greedily in sample order: an answer
    joins the first class whose representative (its earliest member) it is equivalent to. The largest class wins;
    a tie goes to the class whose first member came earliest, so the vote is deterministic. None when no answer.
    """
    reps: list[int] = []  # sample index of each class's representative
    sizes: list[int] = []
    for i, a in enumerate(answers):
        if not a:
            continue
        for j, r in enumerate(reps):
            if a == answers[r] or equivalent(a, answers[r]):
                sizes[j] += 1
                break
        else:
            reps.append(i)
            sizes.append(1)
    if not reps:
        return None
    best = max(range(len(reps)), key=lambda j: (sizes[j], -reps[j]))
    return reps[best]


def cons_at_k(answers_per_problem: Sequence[Sequence[str]], correct_per_problem: Sequence[Sequence[bool]], k: int,
              equivalent: Callable[[str, str], bool]) -> float | None:
    """cons@k (maj@k): the share of problems whose majority answer over the first k samples is correct.

    The winning class is correct when its representative sample was graded correct against the gold.
    A problem with no extracted answer counts as wrong. None when some problem has fewer than k samples.
    """
    if not answers_per_problem or any(len(a) < k for a in answers_per_problem):
        return None
    hits = 0
    for answers, correct in zip(answers_per_problem, correct_per_problem):
        winner = vote(list(answers[:k]), equivalent)
        hits += winner is not None and bool(correct[winner])
    return hits / len(answers_per_problem)


def truncated_share(finish_reasons: Sequence[str]) -> float | None:
    """The share of samples cut off by the token limit (finish_reason == "length")."""
    if not finish_reasons:
        return None
    return sum(r == "length" for r in finish_reasons) / len(finish_reasons)


def length_stats(num_tokens: Sequence[int], correct: Sequence[bool]) -> dict:
    """Mean/median output tokens overall, of correct and of wrong samples.

    A count of 0 means "unknown" (completions graded from a file without token counts) and is left out;
    `known` says how many samples had a count.
    """
    def summary(values: list[int]) -> dict:
        if not values:
            return {"mean": None, "median": None, "count": 0}
        return {"mean": float(np.mean(values)), "median": float(np.median(values)), "count": len(values)}

    pairs = [(int(t), bool(c)) for t, c in zip(num_tokens, correct) if t and t > 0]
    return {"all": summary([t for t, _ in pairs]), "correct": summary([t for t, c in pairs if c]),
            "wrong": summary([t for t, c in pairs if not c]), "known": len(pairs)}
