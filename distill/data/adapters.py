"""Published reasoning datasets in: detect the schema, map each row to Records (one per sample), no glue.

Formats (name: the datasets it covers → how a row becomes Records):

- `records`  distill's own rows (filter/generate output) → `Record.from_dict`.
- `openr1`   open-r1/OpenR1-Math-220k → one Record per entry of `generations`; `finish_reasons[i]` is the
             finish_reason; `correctness_math_verify[i]`, `correctness_llama[i]`, `is_reasoning_complete[i]`
             go to meta; gold = `answer`; problem_id = `uuid`.
- `s1k`      simplescaling/s1K-1.1 → completion `<think>\\n{deepseek_thinking_trajectory}\\n</think>\\n\\n
             {deepseek_attempt}` (s1K 1.0: `thinking_trajectories[0]` / `attempt`, Gemini). Gold = the last
             \\boxed{} of `solution` when it has one, else the `solution` text as is (meta.answer_from says which).
- `limo`     GAIR/LIMO → completion = `solution` verbatim, gold = `answer`. Not wrapped in <think>: LIMO
             solutions are one long response with their own final \\boxed{}; inventing a </think> boundary
             would misplace where reasoning ends, and appending `\\boxed{answer}` would make every sample
             pass the answer check whatever its reasoning says. meta.has_think records whether it has one.
- `sharegpt` Bespoke-Stratos-17k, OpenThoughts-114k, Sky-T1_data_17k → `conversations[{from, value}]`;
             `<|begin_of_thought|>…<|end_of_thought|>` becomes `<think>\\n…\\n</think>\\n\\n` and the
             `<|begin_of_solution|>…<|end_of_solution|>` text follows it. These sets carry NO gold answer:
             answer = the solution's last \\boxed{} (or ""), meta.gold_answer=False. The `system` prompt is
             dropped (the R1 protocol has none), and so is the "Return your final response within \\boxed{}. "
             prefix these sets put before each problem (prompts.py adds our own instruction).
- `openthoughts` the OpenThoughts-114k `metadata` subset → completion `<think>\\n{deepseek_reasoning}\\n</think>\\n\\n
             {deepseek_solution}`; `domain` and `source` (as origin) go to meta. Gold: math rows the last \\boxed{}
             of `ground_truth_solution`; code rows have none of their own: their tests are in `test_cases`
             (read them with --tests-key test_cases, data/code_tests.py), answer "" otherwise.
- `numina`   AI-MO/NuminaMath-CoT → completion = `solution` (no <think>, meta.has_think=False); gold = the
             `answer` column when present, else the last \\boxed{} of the solution.
- `messages` any chat set with `messages[{role, content}]` → problem = the last user turn followed by an
             assistant turn, completion = that assistant turn; gold = `answer` column, else the boxed answer.

With --tests-key (code datasets) every format's gold is replaced by the row's tests as spec JSON (the reader passes
`gold` to iter_adapted).

Ids follow the reader's rules (data/reader.py): problem_id = the dataset's id column (`uuid`, `id`) or the problem
text's content id; source = the file/folder stem or the Hub id's last part. Where the gold does not come from a gold
column, `answer_from` says where it was taken from (`solution_boxed`, `solution_text`, `completion_boxed`, `none`).
Provenance (format, dataset, split, subset, revision, row) goes to meta.
"""

from __future__ import annotations

import difflib
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from distill.data.record import Record, content_id, text_value
from distill.errors import DistillError
from distill.prompts import THINK_CLOSE, THINK_OPEN, last_boxed, r1_completion

log = logging.getLogger(__name__)

R1_TEACHER = "deepseek-ai/DeepSeek-R1"
# The Bespoke-Stratos / OpenThoughts user turn starts with this instruction; ours is added by prompts.py.
SHAREGPT_PREFIX = "Return your final response within \\boxed{}. "
USER_ROLES, ASSISTANT_ROLES = ("user", "human"), ("assistant", "gpt")

Adapter = Callable[[dict[str, Any], str, str, str, dict[str, Any]], list[Record]]


# ---------------------------------------------------------------- helpers


def _field(row: dict[str, Any], column: str, where: str, fmt: str) -> Any:
    if column not in row:
        columns = ", ".join(sorted(map(str, row)))
        raise DistillError(f"{where}: format '{fmt}' needs column '{column}' (columns: {columns}); "
                           f"pass --format with the dataset's format")
    return row[column]


def _str_field(row: dict[str, Any], column: str, where: str, fmt: str) -> str:
    value = _field(row, column, where, fmt)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise DistillError(f"{where}: column '{column}' must be text, got {type(value).__name__}")
    return text_value(value)


def _list_field(row: dict[str, Any], column: str, where: str, fmt: str, optional: bool = False) -> list:
    value = row.get(column) if optional else _field(row, column, where, fmt)
    if value is None and optional:
        return []
    if not isinstance(value, (list, tuple)):
        raise DistillError(f"{where}: column '{column}' must be a list, got {type(value).__name__}")
    return list(value)


def _at(values: list, i: int) -> Any:
    return values[i] if i < len(values) else None


def _boxed(text: str) -> str:
    """The last \\boxed{} of a text (R1 rule: after </think> when there is one), "" when there is none."""
    return last_boxed(text) or ""


def _think(thought: str, answer: str) -> str:
    return r1_completion(thought, answer.strip())


def _pid(row: dict[str, Any], column: str, problem: str) -> str:
    """The dataset's own id column when it has one, else the problem's content id (the reader's id rule)."""
    return text_value(row.get(column)) or content_id(problem)


def _record(source: str, problem_id: str, sample_index: int, problem: str, answer: str, completion: str,
            meta: dict[str, Any], where: str, finish_reason: str = "", model: str = "",
            answer_from: str = "") -> Record:
    if not problem.strip():
        raise DistillError(f"{where}: the problem text is empty; every sample needs a problem")
    return Record(id=Record.make_id(source, problem_id, sample_index), problem_id=problem_id, problem=problem,
                  answer=answer, completion=completion, finish_reason=finish_reason, sample_index=sample_index,
                  model=model, source=source, answer_from=answer_from,
                  meta={**meta, "has_think": THINK_CLOSE in completion})


# ---------------------------------------------------------------- adapters: (row, where, source, index, meta)


def _records(row, where, source, index, meta) -> list[Record]:
    return [Record.from_dict(row, where)]


def _openr1(row, where, source, index, meta) -> list[Record]:
    problem = _str_field(row, "problem", where, "openr1")
    answer = _str_field(row, "answer", where, "openr1")
    generations = _list_field(row, "generations", where, "openr1")
    finish = _list_field(row, "finish_reasons", where, "openr1", optional=True)
    verify = _list_field(row, "correctness_math_verify", where, "openr1", optional=True)
    llama = _list_field(row, "correctness_llama", where, "openr1", optional=True)
    complete = _list_field(row, "is_reasoning_complete", where, "openr1", optional=True)
    pid = _pid(row, "uuid", problem)
    shared = {**meta, **{k: row[k] for k in ("problem_type", "question_type") if row.get(k) is not None}}
    if row.get("source") is not None:
        shared["origin"] = row["source"]  # OpenR1's own `source` column (e.g. "olympiads"), not our source name
    out = []
    for i, gen in enumerate(generations):
        if not isinstance(gen, str):
            raise DistillError(f"{where}: generations[{i}] must be text, got {type(gen).__name__}")
        # OpenR1 generations open with "<think>"; some mirrors strip it while keeping "</think>".
        completion = gen if gen.lstrip().startswith(THINK_OPEN) or THINK_CLOSE not in gen else f"{THINK_OPEN}\n{gen}"
        out.append(_record(source, pid, i, problem, answer, completion,
                           {**shared, "correctness_math_verify": _at(verify, i), "correctness_llama": _at(llama, i),
                            "is_reasoning_complete": _at(complete, i)},
                           where, finish_reason=text_value(_at(finish, i)), model=R1_TEACHER))
    return out


def _s1k(row, where, source, index, meta) -> list[Record]:
    problem = _str_field(row, "question", where, "s1k")
    solution = _str_field(row, "solution", where, "s1k")
    if "deepseek_thinking_trajectory" in row or "thinking_trajectories" not in row:  # s1K-1.1
        thought = _str_field(row, "deepseek_thinking_trajectory", where, "s1k")
        attempt = _str_field(row, "deepseek_attempt", where, "s1k")
        model = R1_TEACHER
    else:  # s1K 1.0: Gemini Flash Thinking traces
        trajectories = _list_field(row, "thinking_trajectories", where, "s1k")
        thought, attempt = text_value(trajectories[0] if trajectories else ""), _str_field(row, "attempt", where, "s1k")
        model = "gemini-2.0-flash-thinking-exp"
    gold = _boxed(solution)
    extra = {k: row[k] for k in ("cot_type", "source_type") if row.get(k) is not None}
    # s1K's `solution` is a worked solution for most rows: its box is the gold; without one the text stays.
    return [_record(source, content_id(problem), 0, problem, gold or solution.strip(), _think(thought, attempt),
                    {**meta, **extra}, where, model=model,
                    answer_from="solution_boxed" if gold else "solution_text")]


def _limo(row, where, source, index, meta) -> list[Record]:
    problem = _str_field(row, "question", where, "limo")
    solution = _str_field(row, "solution", where, "limo")
    answer = _str_field(row, "answer", where, "limo")
    return [_record(source, content_id(problem), 0, problem, answer, solution, meta, where)]


def _split_markers(text: str) -> str:
    """`<|begin_of_thought|>…<|end_of_thought|> <|begin_of_solution|>…<|end_of_solution|>` → R1 format."""
    b_t, e_t, b_s, e_s = ("<|begin_of_thought|>", "<|end_of_thought|>", "<|begin_of_solution|>", "<|end_of_solution|>")
    if b_t not in text:
        return text
    after = text.split(b_t, 1)[1]
    if e_t not in after:  # the thought never closed: keep it unclosed so the filter sees a truncated sample
        return f"{THINK_OPEN}\n{after.strip()}"
    thought, rest = after.split(e_t, 1)
    solution = rest.split(b_s, 1)[1] if b_s in rest else rest
    solution = solution.split(e_s, 1)[0]
    return _think(thought, solution)


def _turn_pair(turns: list, where: str, column: str, role_key: str, text_key: str) -> tuple[str, str]:
    """(last user turn followed by an assistant turn, that assistant turn)."""
    for i in range(len(turns) - 2, -1, -1):
        a, b = turns[i], turns[i + 1]
        if not isinstance(a, dict) or not isinstance(b, dict):
            raise DistillError(f"{where}: column '{column}' must be a list of {{{role_key}, {text_key}}} objects")
        if a.get(role_key) in USER_ROLES and b.get(role_key) in ASSISTANT_ROLES:
            return text_value(a.get(text_key)), text_value(b.get(text_key))
    roles = [t.get(role_key) if isinstance(t, dict) else type(t).__name__ for t in turns]
    raise DistillError(f"{where}: column '{column}' has no user turn followed by an assistant turn (roles: {roles})")


def _sharegpt(row, where, source, index, meta) -> list[Record]:
    turns = _list_field(row, "conversations", where, "sharegpt")
    problem, reply = _turn_pair(turns, where, "conversations", "from", "value")
    problem = problem.removeprefix(SHAREGPT_PREFIX)
    completion = _split_markers(reply)
    answer = _boxed(completion)
    return [_record(source, content_id(problem), 0, problem, answer, completion, meta, where,
                    answer_from="completion_boxed" if answer else "none")]


def _openthoughts(row, where, source, index, meta) -> list[Record]:
    problem = _str_field(row, "problem", where, "openthoughts")
    thought = _str_field(row, "deepseek_reasoning", where, "openthoughts")
    attempt = _str_field(row, "deepseek_solution", where, "openthoughts")
    domain = text_value(row.get("domain"))
    gold = "" if domain == "code" else _boxed(text_value(row.get("ground_truth_solution")))
    extra = {"domain": domain} if domain else {}
    if row.get("source") is not None:
        extra["origin"] = row["source"]  # OpenThoughts' own `source` column (e.g. "apps"), not our source name
    return [_record(source, content_id(problem), 0, problem, gold, _think(thought, attempt), {**meta, **extra}, where,
                    model=R1_TEACHER, answer_from="solution_boxed" if gold else "none")]


def _numina(row, where, source, index, meta) -> list[Record]:
    problem = _str_field(row, "problem", where, "numina")
    solution = _str_field(row, "solution", where, "numina")
    given = text_value(row.get("answer")).strip()
    answer = given or _boxed(solution)
    extra = {}
    if row.get("source") is not None:
        extra["origin"] = row["source"]  # NuminaMath's own `source` column (e.g. "olympiads")
    return [_record(source, content_id(problem), 0, problem, answer, solution, {**meta, **extra}, where,
                    answer_from="" if given else "solution_boxed" if answer else "none")]


def _messages(row, where, source, index, meta) -> list[Record]:
    turns = _list_field(row, "messages", where, "messages")
    problem, completion = _turn_pair(turns, where, "messages", "role", "content")
    given = text_value(row.get("answer")).strip()
    answer = given or _boxed(completion)
    return [_record(source, _pid(row, "id", problem), 0, problem, answer, completion, meta, where,
                    answer_from="" if given else "completion_boxed" if answer else "none")]


FORMATS: dict[str, Adapter] = {
    "records": _records,
    "openr1": _openr1,
    "s1k": _s1k,
    "limo": _limo,
    "sharegpt": _sharegpt,
    "openthoughts": _openthoughts,
    "numina": _numina,
    "messages": _messages,
}

# Most specific first: OpenR1, NuminaMath and our own filter output also carry a `messages` column.
_SIGNATURES: tuple[tuple[str, frozenset[str]], ...] = (
    ("records", frozenset({"id", "problem_id", "problem", "answer"})),
    ("openr1", frozenset({"problem", "answer", "generations"})),
    ("s1k", frozenset({"question", "solution", "deepseek_thinking_trajectory", "deepseek_attempt"})),
    ("s1k", frozenset({"question", "solution", "thinking_trajectories", "attempt"})),
    ("sharegpt", frozenset({"conversations"})),
    ("openthoughts", frozenset({"problem", "deepseek_reasoning", "deepseek_solution"})),
    ("limo", frozenset({"question", "solution", "answer"})),
    ("numina", frozenset({"problem", "solution"})),
    ("messages", frozenset({"messages"})),
)


def detect_format(columns: set[str]) -> str:
    """The format whose columns the dataset has; a one-line error naming the columns seen otherwise."""
    for name, needed in _SIGNATURES:
        if needed <= columns:
            return name
    raise DistillError(f"cannot tell the dataset format from its columns ({', '.join(sorted(columns)) or 'none'}); "
                       f"known formats: {', '.join(FORMATS)}; pass --format NAME or rename the columns")


def check_format(name: str) -> str:
    if name not in FORMATS:
        close = difflib.get_close_matches(name, FORMATS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise DistillError(f"unknown format '{name}'{hint}; choose one of {', '.join(FORMATS)}")
    return name


def iter_adapted(rows: Iterator[tuple[str, dict[str, Any]]], fmt: str, source: str, dataset: str | Path,
                 split: str, subset: str | None, revision: str | None, skip_invalid: bool,
                 stats: dict[str, int], gold: Callable[[dict[str, Any], str], str] | None = None) -> Iterator[Record]:
    """Rows of a published dataset in format `fmt` → Records (called by data/reader.py, which picks the format).
    `gold(row, where)`, when given, replaces every record's answer (the reader's --tests-key).
    Malformed rows raise with their file:line, or with skip_invalid are counted in stats["invalid"] and logged."""
    adapter = FORMATS[fmt]
    per_problem: Counter = Counter()  # one-sample-per-row formats: a problem's rows are its samples 0, 1, ...
    base: dict[str, Any] = {"format": fmt, "dataset": str(dataset)}
    if not Path(str(dataset)).exists():  # a Hub id: the split/subset/revision are part of where the data came from
        base.update({"split": split, "subset": subset, "revision": revision})
    for index, (where, row) in enumerate(rows):
        try:
            records = adapter(row, where, source, index, {**base, "row": where})
            if gold is not None:
                answer = gold(row, where)
                for r in records:
                    r.answer, r.answer_from = answer, ""
        except DistillError as e:
            if not skip_invalid:
                raise
            log.warning("%s (skipped)", e)
            stats["invalid"] = stats.get("invalid", 0) + 1
            continue
        for r in records:
            if fmt != "openr1":  # OpenR1 rows hold all of a problem's generations, indexed already
                r.sample_index = per_problem[r.problem_id]
                r.id = Record.make_id(source, r.problem_id, r.sample_index)
                per_problem[r.problem_id] += 1
            yield r
