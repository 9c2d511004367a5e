"""GRPO rewards in TRL's reward-function shape, each a thin wrapper around a definition that lives elsewhere:

- correctness: the verifier's verdict (`make_verifier(...).verify_many`, `Verdict.reward`: 1/0, or the code pass
  fraction). Failing closed is the verifier's: a timeout, a crash or an unparseable answer is a verdict of 0 with a
  reason, and every reason is counted (`Rewards.verdicts`).
- format: 1 when filter's `think_format` step keeps the completion (one closed, non-empty <think>, then an answer).
- language: R1's language-consistency reward, the share of the completion's words in the expected script (filter's
  `language` step: the problem's script, or --language), 1 for a completion with no prose.
- length: DAPO's soft overlong punishment, 0 up to `max_completion_length - overlong_buffer` tokens, then falling
  linearly to -1 at the limit; a truncated completion (no end-of-turn token) scores -1.

TRL calls each function with the prompts, the decoded completions, their token ids and the dataset's columns
(problem_id, problem, answer, prefilled), and weighs them by `reward_weights`. The correctness wrapper also logs,
per batch, the group statistics GRPO lives on: pass rate, the share of groups where every or no completion was
correct (zero advantage: nothing to learn from them), and the share of verdicts that failed closed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from distill.data.record import Record
from distill.errors import DistillError
from distill.filters.steps import Language, ThinkFormat, dominant_script, script_counts
from distill.prompts import with_think_prefix
from distill.verify import Verifier

log = logging.getLogger(__name__)

REWARDS = ("correctness", "format", "language", "length")
# Verdict reasons that mean "the grader could not decide" rather than "the answer is wrong".
FAILED_CLOSED = ("answer_timeout", "answer_error", "gold_unparseable", "sandbox_error")


def records_of(completions: list[str], problem_id: list[str], problem: list[str], answer: list[str],
               prefilled: list[bool], completion_ids: list[list[int]] | None = None,
               eos_ids: frozenset[int] = frozenset()) -> list[Record]:
    """The completions of one TRL batch as Records: the whole completion (with the '<think>\\n' the prompt
    prefilled), its gold answer, its length and whether it ended (finish_reason "stop") or was cut off ("length")."""
    out = []
    for i, text in enumerate(completions):
        ids = completion_ids[i] if completion_ids is not None else []
        finished = bool(ids) and ids[-1] in eos_ids
        out.append(Record(id=f"grpo/{problem_id[i]}/{i}", problem_id=str(problem_id[i]), problem=problem[i],
                          answer=answer[i], completion=with_think_prefix(text, bool(prefilled[i])),
                          finish_reason="stop" if finished or completion_ids is None else "length",
                          num_tokens=len(ids), sample_index=i))
    return out


def overlong_penalty(num_tokens: int, truncated: bool, max_tokens: int, buffer: int) -> float:
    """DAPO's soft overlong punishment, in [-1, 0]."""
    if truncated:
        return -1.0
    start = max_tokens - buffer
    if num_tokens <= start:
        return 0.0
    return max(-1.0, (start - num_tokens) / buffer)


def language_share(record: Record, language: Language) -> float:
    """The share of the completion's words/characters in the expected script (1.0 when it has no prose)."""
    counts = script_counts(record.completion)
    total = sum(counts.values())
    if not total:
        return 1.0
    expected = language.expected(record) or dominant_script(counts)
    return counts.get(expected, 0) / total


def group_stats(records: list[Record], correct: list[bool]) -> dict[str, float]:
    """Pass rate and the share of all-correct / all-wrong groups (a group: the completions of one problem)."""
    groups: dict[str, list[bool]] = {}
    for r, ok in zip(records, correct):
        groups.setdefault(r.problem_id, []).append(ok)
    n = len(groups) or 1
    return {"pass_rate": sum(correct) / max(1, len(correct)),
            "groups_all_correct": sum(all(g) for g in groups.values()) / n,
            "groups_all_wrong": sum(not any(g) for g in groups.values()) / n}


class Rewards:
    """The reward functions of one run, over one verifier (built once: worker processes, timeouts).

    `functions()` returns the functions with a non-zero weight and their weights, in REWARDS order; the names TRL
    logs them under (rewards/<name>/mean) are the REWARDS names."""

    def __init__(self, verifier: Verifier, weights: dict[str, float], max_completion_length: int,
                 overlong_buffer: int, eos_ids: list[int], language: str = "auto"):
        unknown = set(weights) - set(REWARDS)
        if unknown:
            raise ValueError(f"unknown rewards {sorted(unknown)}")
        self.verifier, self.weights = verifier, {k: float(weights.get(k, 0.0)) for k in REWARDS}
        self.max_tokens, self.buffer = max_completion_length, overlong_buffer
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.format_check = ThinkFormat()
        self.language_check = Language(language)
        self.verdicts: Counter[str] = Counter()  # every correctness verdict of the run, by reason ("correct" if none)
        self.last_batch: dict[str, float] = {}

    def check(self, problem_id: str, problem: str, answer: str) -> None:
        """Fail before training, not at step 1, when the verifier does not grade records into verdicts with a reward
        (an empty completion: graded without running anything)."""
        if self.weights["correctness"] == 0:
            return
        probe = records_of([""], [problem_id], [problem], [answer], [False])
        try:
            verdict = next(iter(self.verifier.verify_many(probe)))
            float(verdict.reward)
        except (TypeError, AttributeError, ValueError, StopIteration) as e:
            raise DistillError(f"verifier {getattr(self.verifier, 'name', '?')}: does not grade records into verdicts "
                               f"with a reward ({type(e).__name__}: {e}); the correctness reward needs "
                               f"verify_many(records) -> Verdict (distill/verify/__init__.py)") from None

    def functions(self) -> tuple[list[Callable[..., list[float]]], list[float]]:
        names = [n for n in REWARDS if self.weights[n] != 0.0]
        return [getattr(self, n) for n in names], [self.weights[n] for n in names]

    def _records(self, completions, completion_ids, kw) -> list[Record]:
        return records_of(completions, kw["problem_id"], kw["problem"], kw["answer"], kw["prefilled"],
                          completion_ids, self.eos_ids)

    def correctness(self, prompts, completions, completion_ids=None, **kw: Any) -> list[float]:
        records = self._records(completions, completion_ids, kw)
        verdicts = list(self.verifier.verify_many(records))
        if len(verdicts) != len(records):
            raise RuntimeError(f"verifier returned {len(verdicts)} verdicts for {len(records)} completions")
        self.verdicts.update(v.reason or "correct" for v in verdicts)
        stats = group_stats(records, [v.correct for v in verdicts])
        stats["failed_closed"] = sum(v.reason in FAILED_CLOSED for v in verdicts) / max(1, len(verdicts))
        self.last_batch = stats
        log_metric = kw.get("log_metric")
        if log_metric is not None:
            for name, value in stats.items():
                log_metric(f"correctness/{name}", value)
        return [v.reward for v in verdicts]

    def format(self, prompts, completions, completion_ids=None, **kw: Any) -> list[float]:
        return [float(self.format_check.check(r) is None) for r in self._records(completions, completion_ids, kw)]

    def language(self, prompts, completions, completion_ids=None, **kw: Any) -> list[float]:
        return [language_share(r, self.language_check) for r in self._records(completions, completion_ids, kw)]

    def length(self, prompts, completions, completion_ids=None, **kw: Any) -> list[float]:
        return [overlong_penalty(r.num_tokens, r.finish_reason == "length", self.max_tokens, self.buffer)
                for r in self._records(completions, completion_ids, kw)]
