"""`--audit` (filter, eval): every math verdict beside plain math-verify's on the same record, and where they differ.

A keep rate or a score is only as good as its grader; the audit shows where distill's policy (verify/math.py) and
the grader most R1 recipes use disagree, so a user sees both before trusting either.

"Plain" is math-verify as open-r1's accuracy reward calls it, on the same text distill's extraction reads:
- the answer: `math_verify.parse(answer_part)`, default extraction configs (math-verify picks the last box, else a
  LaTeX or plain expression with or without an anchor), where answer_part is `prompts.answer_part(completion)`, the
  text after the last `</think>` (the whole completion without a think block, "" for an unclosed one);
- the gold: `math_verify.parse("\\boxed{" + gold + "}")`, so math-verify parses exactly the gold;
- `math_verify.verify(gold, answer)` with its defaults (6-place float rounding, strict, no set relations).
One change: math-verify's own timeouts (SIGALRM, `parsing_timeout` / `timeout_seconds`) are off, because the worker
pool (verify/math_pool.py) bounds both graders with its soft and hard timeouts and math-verify's alarm would cancel
the pool's. A record the pool had to kill gets the same timeout verdict from both, so it is never a disagreement.
"""

from __future__ import annotations

import importlib.metadata
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from math_verify import parse, verify

from distill import prompts
from distill.data.io import write_jsonl
from distill.verify import Verdict

AUDIT_FILE = "audit.jsonl"
PLAIN_VERSION = (f"math-verify=={importlib.metadata.version('math-verify')} plain: parse() and verify() defaults on "
                 f"the answer part, gold parsed as \\boxed{{gold}}, timeouts by distill's worker pool")
# Why a code verdict has nothing to compare with: filter's stats.json and eval's results.json say so.
NOT_FOR_CODE = "code is graded by running its tests; there is no second grader to compare (audit is math only)"
# Keep rows readable: what either grader extracted, cut to this many characters.
MAX_CHARS = 300


@lru_cache(maxsize=4096)  # many samples share one gold; sympy objects are immutable
def _gold(gold: str) -> tuple:
    return tuple(parse("\\boxed{" + gold + "}", parsing_timeout=None))


def plain_grade(completion: str, gold: str) -> Verdict:
    """Plain math-verify's verdict on one record (see the module docstring for what it is given)."""
    gold_parsed = _gold(gold if isinstance(gold, str) else "" if gold is None else str(gold))
    if not gold_parsed:
        return Verdict(False, "gold_unparseable", "")
    pred = parse(prompts.answer_part(completion), parsing_timeout=None)
    if not pred:
        return Verdict(False, "no_answer", "")
    extracted = str(pred[-1])[:MAX_CHARS]  # parse() gives [sympy object, the matched text]
    correct = verify(list(gold_parsed), pred, timeout_seconds=None)
    return Verdict(correct, "" if correct else "answer_wrong", extracted)


def category(ours: Verdict, plain: Verdict) -> str | None:
    """The disagreement's category, or None where the two graders agree."""
    if ours.correct == plain.correct:
        return None
    if plain.correct:
        return f"distill_rejects_mathverify_accepts:{ours.reason or 'answer_error'}"
    return "distill_accepts_mathverify_rejects"


class Audit:
    """Collects the disagreements of one stage's math verdicts (each carrying `Verdict.audit`) and counts them."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.audited = 0
        self.distill_correct = 0
        self.mathverify_correct = 0

    def add(self, record: Any, verdict: Verdict, **extra: Any) -> None:
        plain = verdict.audit
        if plain is None:  # a verifier that was not built with audit=True: a bug, not a verdict to guess
            raise RuntimeError(f"{record.id}: verdict without an audit verdict; build the verifier with audit on")
        self.audited += 1
        self.distill_correct += verdict.correct
        self.mathverify_correct += plain.correct
        cat = category(verdict, plain)
        if cat is None:
            return
        self.counts[cat] += 1
        self.rows.append({"id": record.id, "problem_id": record.problem_id, **extra, "gold": record.answer,
                          "category": cat, "distill_correct": verdict.correct, "distill_reason": verdict.reason,
                          "distill_extracted": verdict.extracted[:MAX_CHARS], "distill_extracted_by": verdict.extracted_by,
                          "mathverify_correct": plain.correct, "mathverify_reason": plain.reason,
                          "mathverify_extracted": plain.extracted})

    def describe(self) -> str:
        """One line for the console: how many records both graded and how the disagreements fall."""
        return f"{self.audited} graded by both, {len(self.rows)} disagree {dict(sorted(self.counts.items()))}"

    def summary(self) -> dict[str, Any]:
        """What stats.json / results.json hold: totals and the disagreements by category."""
        return {"grader": PLAIN_VERSION, "audited": self.audited, "agree": self.audited - len(self.rows),
                "disagree": len(self.rows), "distill_correct": self.distill_correct,
                "mathverify_correct": self.mathverify_correct, "categories": dict(sorted(self.counts.items())),
                "file": AUDIT_FILE}


def combine(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary from the summaries of parts of one run (eval merge's shards): counts and categories summed."""
    if any("applies" in s for s in summaries):  # a code task: not audited in any shard
        return summaries[0]
    out = {**summaries[0], "categories": Counter()}
    for key in ("audited", "agree", "disagree", "distill_correct", "mathverify_correct"):
        out[key] = sum(s[key] for s in summaries)
    for s in summaries:
        out["categories"].update(s["categories"])
    out["categories"] = dict(sorted(out["categories"].items()))
    return out


def write_rows(folder: str | Path, rows: list[dict[str, Any]]) -> Path:
    """FOLDER/audit.jsonl, atomically; written (empty) even when the graders agree on every record."""
    path = Path(folder) / AUDIT_FILE
    write_jsonl(path, rows)
    return path
