"""Verifiers by name: the one definition of "correct" per domain, shared by filter, eval and RL rewards.

A verifier is built once for a run by `make_verifier(name, options)` (worker processes, timeouts) and grades many
records: `verify_many(records) -> Iterator[Verdict]`, in input order. `verify(record)` grades one record in this
process. An RL reward is `Verdict.reward` (`rewards(verifier, records)`), never a second definition of correct.

- `math` (verify/math.py): the final answer after `</think>` against the gold answer; Math-Verify equivalence.
- `code` (verify/code.py): the final code block against the record's tests (its `answer`: a JSON test spec,
  data/code_spec.py), run in a sandbox (verify/sandbox.py); `score` is the share of tests passed.

A new verifier is one module with a class having `verify_many` and `close`, plus its entry in VERIFIERS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from distill.errors import DistillError


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str  # "" when correct; else a stable reason code of the verifier
    extracted: str  # what was graded: the extracted answer, the code ("" when none)
    extracted_by: str = "none"  # the extraction rule that found it (math: verify.math_extract.RULES)
    score: float | None = None  # partial credit where the verifier defines it (code: the share of tests passed)
    detail: str = ""  # one line on why, where the verifier says more than the reason (code: the first failing case)
    audit: Verdict | None = None  # math with audit on: plain math-verify's verdict on the same record (math_audit.py)

    @property
    def reward(self) -> float:
        """1/0 for a verdict, or the partial credit where defined: what an RL reward takes from it."""
        return float(self.score) if self.score is not None else float(self.correct)


class Verifier(Protocol):
    name: str
    version: str

    def verify_many(self, records: Iterable[Any]) -> Iterator[Verdict]: ...

    def close(self) -> None: ...


def _math(options: Any) -> Verifier:
    from distill.verify.math_pool import MathGrader

    return MathGrader(workers=getattr(options, "workers", None), timeout=getattr(options, "answer_timeout", 5.0),
                      answer_type=getattr(options, "answer_type", "auto"),
                      extraction=getattr(options, "answer_extraction", "boxed"),
                      audit=bool(getattr(options, "audit", False)))


def _code(options: Any) -> Verifier:
    from distill.verify.code import CodeVerifier

    # Per-case limits are the sandbox's defaults (verify/sandbox.py Limits), a problem's own `timeout_s` aside.
    return CodeVerifier(workers=getattr(options, "workers", None))


VERIFIERS: dict[str, Callable[[Any], Verifier]] = {"math": _math, "code": _code}


def make_verifier(name: str, options: Any = None) -> Verifier:
    """The verifier `name`, configured from the stage options it knows (workers, answer_timeout, answer_type,
    answer_extraction, audit); a context manager."""
    if name not in VERIFIERS:
        raise DistillError(f"unknown verifier {name!r}; choose one of {', '.join(VERIFIERS)}")
    return VERIFIERS[name](options)


def rewards(verifier: Verifier, records: Iterable[Any]) -> list[float]:
    """RL rewards for records (completion + gold `answer`), in order: each verdict's `reward` (math: 1/0; code: the
    share of tests passed). Build the verifier once per run with make_verifier and reuse it for every batch."""
    return [v.reward for v in verifier.verify_many(records)]


def verify(record: Any, name: str = "math", options: Any = None) -> Verdict:
    """One record's verdict (in a worker process with the verifier's timeouts)."""
    with make_verifier(name, options) as verifier:
        return next(iter(verifier.verify_many([record])))
