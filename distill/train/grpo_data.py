"""GRPO's prompt data: problems with gold answers through the one reader, the difficulty selection by measured pass
rate, the chat template, and the prompts rendered exactly as `distill generate` / `distill eval` render them.

Difficulty selection (open-r1, DeepScaleR): a `distill eval` run of the model on the training problems gives each
problem a pass rate (its share of correct samples in samples.jsonl); only problems whose rate lies in [lo, hi] are
kept, since a problem every completion solves, or none does, gives a group with zero advantage. A problem eval never
saw cannot be placed: it is dropped and counted (fail closed), matched by problem_id, else by its text's content id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.data.io import iter_rows
from distill.data.reader import Problem, data_options, read_problems
from distill.data.record import content_id
from distill.errors import DistillError
from distill.prompts import generation_prompt, load_template
from distill.tasks import TASKS
from distill.templates import TemplateChoice, adopt_template, choose_template, inference_template

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"  # what `distill eval` writes per sample (eval/run.py)


@dataclass(frozen=True)
class Grading:
    """How completions of this data are graded: the verifier's name and the math answer type."""

    verifier: str
    answer_type: str
    task: str | None  # the bundled task's name, when the data is one


def grading(cfg: Any) -> Grading:
    """--verifier / --answer-type, with `task` resolved the way eval resolves it (the task's own; math/auto for
    data files)."""
    task = TASKS.get(cfg.data) if cfg.data in TASKS and not Path(cfg.data).exists() else None
    verifier = cfg.verifier if cfg.verifier != "task" else (task.verifier if task else "math")
    answer_type = cfg.answer_type if cfg.answer_type != "task" else (task.answer_type if task else "auto")
    if verifier == "code":
        answer_type = "code"
    return Grading(verifier, answer_type, task.name if task else None)


def pass_rates(source: str | Path) -> dict[str, tuple[int, int]]:
    """(correct, samples) per problem of a `distill eval` output (its samples.jsonl), keyed by problem_id and by the
    content id of the problem text."""
    path = Path(source)
    if path.is_dir():
        path = path / SAMPLES_FILE
    if not path.is_file():
        raise DistillError(f"--pass-rate-from {source}: no {SAMPLES_FILE}; pass a `distill eval --out` folder of the "
                           f"model on these problems")
    counts: dict[str, list[int]] = {}
    for where, row in iter_rows(path):
        if "problem_id" not in row or "correct" not in row:
            raise DistillError(f"{where}: needs 'problem_id' and 'correct' (a `distill eval` samples.jsonl)")
        keys = {str(row["problem_id"])}
        if row.get("problem"):
            keys.add(content_id(str(row["problem"])))
        for key in keys:
            c = counts.setdefault(key, [0, 0])
            c[0] += bool(row["correct"])
            c[1] += 1
    return {k: (c, n) for k, (c, n) in counts.items()}


def select_by_pass_rate(problems: list[Problem], rates: dict[str, tuple[int, int]], lo: float, hi: float
                        ) -> tuple[list[Problem], dict[str, Any]]:
    """Problems whose measured pass rate is in [lo, hi], and the counts of what was dropped and why."""
    kept, dropped = [], {"too_easy": 0, "too_hard": 0, "unmeasured": 0}
    for p in problems:
        measured = rates.get(p.id) or rates.get(content_id(p.problem))
        if measured is None:
            dropped["unmeasured"] += 1
            continue
        rate = measured[0] / measured[1]
        if rate < lo:
            dropped["too_hard"] += 1
        elif rate > hi:
            dropped["too_easy"] += 1
        else:
            kept.append(p)
    return kept, {"range": [lo, hi], "read": len(problems), "kept": len(kept), "dropped": dropped}


def load_problems(cfg: Any) -> tuple[list[Problem], dict[str, Any]]:
    """The training problems (reader → difficulty selection → limit) and a summary for stats.json."""
    bundled = cfg.data in TASKS and not Path(cfg.data).exists()
    problems = read_problems(cfg.data, **({} if bundled else data_options(cfg)))
    empty = [p.id for p in problems if not p.answer.strip()]
    if empty:
        raise DistillError(f"{cfg.data}: {len(empty)} problems have no gold answer (first: id {empty[0]}); GRPO's "
                           f"reward needs one for every problem: fill them in, drop those rows or set --answer-key")
    summary: dict[str, Any] = {"read": len(problems)}
    if cfg.pass_rate_from:
        problems, summary["difficulty"] = select_by_pass_rate(problems, pass_rates(cfg.pass_rate_from),
                                                              cfg.pass_rate_min, cfg.pass_rate_max)
        d = summary["difficulty"]
        log.info("difficulty selection: %d of %d problems have a pass rate in [%g, %g] (%s)", d["kept"], d["read"],
                 cfg.pass_rate_min, cfg.pass_rate_max, ", ".join(f"{k} {v}" for k, v in d["dropped"].items()))
        if not problems:
            raise DistillError(f"--pass-rate-from {cfg.pass_rate_from}: no problem has a pass rate in "
                               f"[{cfg.pass_rate_min}, {cfg.pass_rate_max}] ({d['dropped']}); widen the range or eval "
                               f"the model on these problems")
    if cfg.limit is not None:
        problems = problems[:cfg.limit]
    summary["trained_on"] = len(problems)
    return problems, summary


def template_for(tokenizer, mode: str) -> TemplateChoice:
    """auto: the template eval renders this model with (its own, minus an injected system prompt); a base model
    without one gets its family's training template (R1-Zero). Anything else: sft's choice rules."""
    if mode == "auto" and isinstance(tokenizer.chat_template, str) and tokenizer.chat_template:
        return inference_template(tokenizer)
    return choose_template(tokenizer, mode)


def prepare_tokenizer(tokenizer, mode: str) -> tuple[TemplateChoice, str]:
    """Set the chat template prompts are rendered with (saved with the trained model, so eval renders the same) and
    make the end-of-turn token the EOS, so rollouts stop where an assistant turn ends. Returns (choice, eot)."""
    choice = template_for(tokenizer, mode)
    eot, _ = adopt_template(tokenizer, choice, "rollouts stop where the assistant turn ends")
    return choice, eot


def prompt_rows(problems: list[Problem], tokenizer, prompt_template: str | None, think_prefill: str
                ) -> list[dict[str, Any]]:
    """One row per problem: the prompt text (chat template + R1 user turn + '<think>\\n' prefill, as generate renders
    it) and the columns the rewards read. TRL tokenises plain-text prompts with special tokens, so a BOS the template
    already wrote is taken off the text (else Llama prompts would start with two)."""
    template = load_template(prompt_template)
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    rows = []
    for p in problems:
        text, prefilled = generation_prompt(tokenizer, p.problem, template, think_prefill)
        if adds_bos and text.startswith(bos):
            text = text[len(bos):]
        rows.append({"prompt": text, "problem_id": p.id, "problem": p.problem, "answer": p.answer,
                     "prefilled": prefilled})
    return rows
