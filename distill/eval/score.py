"""Grading and scoring of one task's samples: the verifier's verdict per sample, then every metric."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from tqdm.auto import tqdm

from distill.data.record import Record
from distill.eval import metrics
from distill.verify import Verifier, make_verifier


def grade_records(records: list[Record], verifier: Verifier, desc: str, audit=None) -> list[dict]:
    """Record fields + extracted, correct, reason, graded by the task's verifier (the one definition of correct).
    `audit` (verify.math_audit.Audit, the verifier built with audit on): each verdict is compared there too."""
    verdicts = list(tqdm(verifier.verify_many(records), total=len(records), desc=f"grade {desc}", unit="sample"))
    if audit is not None:
        for r, v in zip(records, verdicts, strict=True):
            audit.add(r, v, task=desc)
    return [{**r.to_dict(), "task": desc, "extracted": v.extracted, "extracted_by": v.extracted_by,
             "correct": v.correct, "reason": v.reason} for r, v in zip(records, verdicts)]


def by_problem(samples: list[dict]) -> list[list[dict]]:
    """Samples grouped per problem (first-appearance order), each group in sample_index order."""
    groups: dict[str, list[dict]] = {}
    for s in samples:
        groups.setdefault(s["problem_id"], []).append(s)
    return [sorted(g, key=lambda s: s["sample_index"]) for g in groups.values()]


def equivalence_table(answers_per_problem: list[list[str]], grader) -> dict:
    """{(answer, representative): equivalent?} for exactly the comparisons `metrics.vote` makes.

    Greedy clustering runs in rounds over all problems at once: each round compares every problem's next distinct
    answer with that problem's current class representatives through the Grader (worker processes, hard timeout),
    so a pathological answer can't hang the vote and comparisons stay ~(distinct answers × classes).
    """
    table: dict[tuple[str, str], bool] = {}
    todo = [list(dict.fromkeys(a for a in answers if a)) for answers in answers_per_problem]
    reps: list[list[str]] = [[] for _ in todo]
    pos = [0] * len(todo)
    while True:
        active = [p for p, uniq in enumerate(todo) if pos[p] < len(uniq)]
        if not active:
            break
        pairs = [(p, todo[p][pos[p]], r) for p in active for r in reps[p]]
        verdicts = list(grader.grade_many(("\\boxed{" + a + "}", r) for _, a, r in pairs))
        joined = set()
        for (p, a, r), v in zip(pairs, verdicts):
            table[(a, r)] = v.correct
            if v.correct:
                joined.add(p)
        for p in active:
            if p not in joined:
                reps[p].append(todo[p][pos[p]])
            pos[p] += 1
    return table


def score_task(samples: list[dict], verifier: Verifier) -> dict[str, Any]:
    """Every metric of one task (fractions; report.py shows percent). cons@k (majority vote over equivalent answers)
    is defined for math answers only."""
    groups = by_problem(samples)
    correct = [[bool(s["correct"]) for s in g] for g in groups]
    ns = sorted({len(g) for g in groups})
    n_min = ns[0] if ns else 0
    answers = [[s["extracted"] or "" for s in g[:n_min]] for g in groups]
    votes = n_min and verifier.name == "math"
    table = equivalence_table(answers, verifier) if votes else {}
    reasons: dict[str, int] = defaultdict(int)
    extracted_by: dict[str, int] = defaultdict(int)
    for s in samples:
        reasons[s["reason"] or "correct"] += 1
        extracted_by[s["extracted_by"]] += 1
    return {
        "pass@1": metrics.pass_at_1(correct),
        "pass@k": {k: metrics.mean_pass_at_k(correct, k) for k in metrics.default_ks(n_min)} if n_min else {},
        "cons@k": {n_min: metrics.cons_at_k(answers, correct, n_min, lambda a, b: table.get((a, b), False))}
        if votes else {},
        "n": n_min if len(ns) == 1 else ns,
        "problems": len(groups),
        "samples": len(samples),
        "truncated": metrics.truncated_share([s["finish_reason"] for s in samples]),
        "tokens": metrics.length_stats([s["num_tokens"] for s in samples], [s["correct"] for s in samples]),
        "reasons": dict(sorted(reasons.items())),
        "extracted_by": dict(sorted(extracted_by.items())),
        "answer_type": getattr(verifier, "answer_type", None),
        "verifier": verifier.name,
        "verifier_version": verifier.version,
    }


def _options(answer_type: str, cfg: Any, audit: bool = False) -> SimpleNamespace:
    return SimpleNamespace(workers=cfg.workers, answer_timeout=cfg.answer_timeout, answer_type=answer_type,
                           answer_extraction=cfg.answer_extraction, audit=audit)


def grade_and_score(records: list[Record], task_name: str, verifier: str, answer_type: str, cfg: Any,
                    audit=None) -> tuple[list[dict], dict[str, Any]]:
    """Grade and score one task; with `audit` (a math task under --audit) its summary is the score's "audit"."""
    with make_verifier(verifier, _options(answer_type, cfg, audit is not None)) as v:
        samples = grade_records(records, v, task_name, audit)
        score = score_task(samples, v)
    if audit is not None:
        score["audit"] = audit.summary()
    return samples, score


def score_graded(samples: list[dict], verifier: str, answer_type: str, cfg: Any) -> dict[str, Any]:
    """The metrics of samples graded before (eval merge): the same score_task, the verifier only for cons@k."""
    with make_verifier(verifier, _options(answer_type, cfg)) as v:
        return score_task(samples, v)
