"""The one reader: every input a stage accepts → Problems or Records, with one id rule and one source rule.

Inputs: a JSONL/JSON/Parquet/CSV file, a folder of such files (a `distill generate` output, shard folders included),
a `distill filter` output (its kept/ records only: never rejected/ or hub/), a bundled task name, or a Hub dataset
id (--split/--subset/--revision). Samples arrive as distill records, as any columns named by --problem-key,
--answer-key and --completion-key, or in a published format (data/adapters.py: detected from the columns, or
--format). Code datasets name the column holding their tests with --tests-key (and --tests-format, else detected):
the tests, converted to the spec JSON of data/code_spec.py (data/code_tests.py), become each row's gold `answer`;
a row whose tests cannot be read fails with its file:line and the column.

The id rule (problem_id), the same in generate, filter, sft, eval and grpo:
  1. a bundled task's own ids;  2. the column named by --id-key;  3. a record's stored problem_id (or the
  dataset's own id column, for published formats);  4. otherwise the problem text: `record.content_id` (12 hex
  digits of its sha1) — stable across runs and stages, shared by every sample of the problem.
sample_index: stored, else the order of the problem's rows. id: stored for records, else <source>/<problem_id>/<i>.

The source rule: --source where a stage offers it; else a record's stored source; else the input's name (the task
name, the file's stem, the folder's name — a filter output's, not "kept" — or the Hub id's last part).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.data.io import iter_rows, require_columns
from distill.data.record import REQUIRED_FIELDS, Record, content_id, meta_value, text_field
from distill.errors import DistillError

log = logging.getLogger(__name__)

DEFAULT_KEYS = {"problem_key": "problem", "answer_key": "answer", "completion_key": "completion", "id_key": None}
# Record fields a row may carry besides the mapped ones; copied as they are.
_PASSTHROUGH = ("finish_reason", "num_tokens", "max_tokens", "model", "answer_from", "meta")


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str


def data_options(cfg: Any) -> dict[str, Any]:
    """The reader options of a stage config (config.DataSourceMixin), as keywords."""
    keys = ("problem_key", "answer_key", "id_key", "tests_key", "tests_format", "split", "subset", "revision")
    return {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}


def resolve_input(source: str | Path) -> str:
    """A filter output means its kept/ records (rejected/ and hub/ sit beside them)."""
    kept = Path(source) / "kept"
    return str(kept) if kept.is_dir() else str(source)


def source_name(source: str | Path, override: str | None = None) -> str:
    """The record-id prefix (module doc: the source rule)."""
    name = override
    if not name:
        text = str(source).rstrip("/")
        path = Path(text)
        name = path.stem if path.is_file() else (path.name or text.rsplit("/", 1)[-1])
        if name == "kept" and path.parent.name:
            name = path.parent.name
    if not name or "/" in name:
        raise DistillError(f"--source {name!r}: must be a non-empty name without '/' (it prefixes record ids)")
    return name


def _is_task(source: str | Path) -> bool:
    from distill.tasks import TASKS

    return str(source) in TASKS and not Path(source).exists()


def rows(source: str | Path, split: str = "train", subset: str | None = None, revision: str | None = None,
         skip_invalid: bool = False, stats: dict[str, int] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) of any input: a bundled task's rows, else data/io.iter_rows (files, folders, Hub ids)."""
    if _is_task(source):
        from distill.tasks import load_task

        for i, row in enumerate(load_task(str(source))):
            yield f"task {source}:row {i}", row
    else:
        yield from iter_rows(source, split, subset, revision, skip_invalid, stats)


def answer_from_tests(row: dict[str, Any], where: str, tests_key: str, tests_format: str = "auto") -> str:
    """A row's tests (column `tests_key`) as spec JSON, the gold of a code problem; errors name the row and column."""
    from distill.data.code_tests import spec_of_tests

    require_columns(where, row, {"tests_key": tests_key})
    try:
        return spec_of_tests(row, tests_key, tests_format)
    except DistillError as e:
        raise DistillError(f"{where}: field '{tests_key}': {e}") from None


def read_problems(source: str | Path, problem_key: str = "problem", answer_key: str = "answer",
                  id_key: str | None = None, split: str = "train", subset: str | None = None,
                  revision: str | None = None, limit: int | None = None, tests_key: str | None = None,
                  tests_format: str = "auto") -> list[Problem]:
    """The problems of a dataset, unique by id (module doc: the id rule). A problem given twice without ids is kept
    once, with a warning naming both rows; two rows with one --id-key value are an error. With `tests_key` the
    gold is the row's tests (module doc)."""
    if _is_task(source):
        id_key = id_key or "id"
    out: list[Problem] = []
    seen: dict[str, str] = {}
    duplicates = 0
    columns = {"problem_key": problem_key} if tests_key else {"problem_key": problem_key, "answer_key": answer_key}
    if id_key:
        columns["id_key"] = id_key
    for where, row in rows(resolve_input(source), split, subset, revision):
        if limit is not None and len(out) >= limit:
            break
        require_columns(where, row, columns)
        problem = text_field(row[problem_key], problem_key, where)
        if not problem.strip():
            raise DistillError(f"{where}: field '{problem_key}' is empty; every problem needs text")
        if tests_key:
            answer = answer_from_tests(row, where, tests_key, tests_format)
        else:
            answer = text_field(row[answer_key], answer_key, where) if row[answer_key] is not None else ""
        pid = text_field(row[id_key], id_key, where) if id_key else content_id(problem)
        if pid in seen:
            if id_key:
                raise DistillError(f"{where}: duplicate id '{pid}' (first at {seen[pid]}); ids in --id-key must be "
                                   f"unique")
            duplicates += 1
            log.warning("%s: the same problem as %s; generating it once", where, seen[pid])
            continue
        seen[pid] = where
        out.append(Problem(pid, problem, answer))
    if not out:
        raise DistillError(f"{source}: no problems found; the dataset is empty")
    if duplicates:
        log.warning("%s: %d repeated problems read once (give rows distinct ids with --id-key to keep them)",
                    source, duplicates)
    return out


def read_samples(source: str | Path, format: str | None = None, problem_key: str = "problem",
                 answer_key: str | None = "answer", completion_key: str = "completion", id_key: str | None = None,
                 split: str = "train", subset: str | None = None, revision: str | None = None,
                 skip_invalid: bool = False, stats: dict[str, int] | None = None,
                 name: str | None = None, problem_optional: bool = False, tests_key: str | None = None,
                 tests_format: str = "auto") -> Iterator[Record]:
    """Records from any sample input (module doc). `answer_key=None`: the gold comes from elsewhere (eval --task),
    rows need no answer column; `problem_optional`: rows that carry a problem_id need no problem text either;
    `tests_key`: the gold is the row's tests, as spec JSON (module doc), in every format.
    Malformed rows raise with their file:line, or with skip_invalid are counted in stats["invalid"] and logged.
    Two rows with the same record id are an error."""
    from distill.data.adapters import check_format, detect_format, iter_adapted

    stats = {} if stats is None else stats
    tests = (tests_key, tests_format) if tests_key else None
    if tests:
        answer_key = None  # the tests are the gold
    path = resolve_input(source)
    if path != str(source):
        log.info("%s: a filter output; reading its kept/ records", source)
    src = source_name(path, name)
    found = rows(path, split, subset, revision, skip_invalid, stats)
    first = next(found, None)
    if first is None:
        return
    keys = {"problem_key": problem_key, "answer_key": answer_key, "completion_key": completion_key, "id_key": id_key}
    custom = {k: v for k, v in keys.items() if v != DEFAULT_KEYS[k] and v is not None}
    columns = set(map(str, first[1]))
    wanted = {v for k, v in keys.items() if v is not None and k != "id_key"}
    fmt = check_format(format) if format else None
    if fmt is None and not custom and not wanted <= columns and not (set(REQUIRED_FIELDS) | {"completion"}) <= columns:
        fmt = _detect(detect_format, columns)
    if fmt is not None and fmt != "records":
        log.info("%s: %s format '%s'", path, "reading" if format else "detected", fmt)
        gold = (lambda row, where: answer_from_tests(row, where, *tests)) if tests else None
        yield from _unique(iter_adapted(_chain(first, found), fmt, src, path, split, subset, revision, skip_invalid,
                                        stats, gold), stats)
        return
    mapped = {k: v for k, v in keys.items() if v is not None}
    if problem_optional and (keys["id_key"] or "problem_id") in columns:
        keys = {**keys, "problem_key": keys["problem_key"] if keys["problem_key"] in columns else None}
        mapped = {k: v for k, v in keys.items() if v is not None}
    missing = [(k, v) for k, v in mapped.items() if v not in columns]
    if missing:
        from distill.data.adapters import FORMATS

        option, column = missing[0]
        raise DistillError(f"{first[0]}: no column '{column}' (columns: {', '.join(sorted(columns)) or 'none'}); pass "
                           f"--{option.replace('_', '-')} with one of them, or --format with the dataset's format "
                           f"({', '.join(FORMATS)})")
    counter: Counter = Counter()

    def records() -> Iterator[Record]:
        for where, row in _chain(first, found):
            try:
                yield _record(row, where, src, keys, counter, stats, tests)
            except DistillError as e:
                if not skip_invalid:
                    raise
                log.warning("%s (skipped)", e)
                stats["invalid"] = stats.get("invalid", 0) + 1

    yield from _unique(records(), stats)


def _detect(detect_format, columns: set[str]) -> str | None:
    try:
        return detect_format(columns)
    except DistillError:
        return None  # not a published format either: the column check names what is missing


def _chain(first, rest) -> Iterator[tuple[str, dict[str, Any]]]:
    yield first
    yield from rest


def _record(row: dict[str, Any], where: str, source: str, keys: dict[str, str | None], counter: Counter,
            stats: dict[str, int], tests: tuple[str, str] | None = None) -> Record:
    """One row → a Record by the id and source rules (module doc)."""
    mapped = {k: v for k, v in keys.items() if v is not None}
    require_columns(where, row, mapped)
    problem = ""
    if keys["problem_key"] is not None:
        value = row[keys["problem_key"]]
        problem = text_field(value, keys["problem_key"], where) if value is not None else ""
        if not problem.strip():
            raise DistillError(f"{where}: field '{keys['problem_key']}' is empty; every sample needs its problem")
    answer = ""
    if tests is not None:
        answer = answer_from_tests(row, where, *tests)
    elif keys["answer_key"] is not None:
        value = row[keys["answer_key"]]
        answer = text_field(value, keys["answer_key"], where) if value is not None else ""
    value = row[keys["completion_key"]]
    if value is None:
        stats["null_completions"] = stats.get("null_completions", 0) + 1
    completion = text_field(value, keys["completion_key"], where) if value is not None else ""
    stored = keys["id_key"] is None and row.get("problem_id") is not None
    if not problem and not (stored or keys["id_key"]):
        raise DistillError(f"{where}: no problem text and no problem_id; each sample needs the problem it answers")
    if keys["id_key"]:
        pid = text_field(row[keys["id_key"]], keys["id_key"], where)
    elif stored:
        pid = text_field(row["problem_id"], "problem_id", where)
    else:
        pid = content_id(problem)
    if row.get("sample_index") is not None:
        index = Record.from_dict({"id": "-", "problem_id": "-", "problem": "-", "answer": "-",
                                  "sample_index": row["sample_index"]}, where).sample_index
    else:
        index = counter[pid]
    counter[pid] += 1
    src = text_field(row["source"], "source", where) if stored and row.get("source") else source
    rid = text_field(row["id"], "id", where) if stored and row.get("id") is not None else Record.make_id(src, pid,
                                                                                                         index)
    extra = {k: row[k] for k in _PASSTHROUGH if row.get(k) is not None}
    if "meta" in extra:
        extra["meta"] = meta_value(extra["meta"], where)
    if not stored:
        extra["meta"] = {**extra.get("meta", {}), "row": where}
    return Record.from_dict({**extra, "id": rid, "problem_id": pid, "problem": problem, "answer": answer,
                             "completion": completion, "sample_index": index, "source": src}, where)


def _unique(records: Iterator[Record], stats: dict[str, int]) -> Iterator[Record]:
    """Two samples with one id would be counted twice by every per-problem step: refuse them (8 bytes per id)."""
    seen: set[bytes] = set()
    for r in records:
        key = hashlib.blake2b(r.id.encode("utf-8", "replace"), digest_size=8).digest()
        if key in seen:
            raise DistillError(f"{r.meta.get('row', r.id)}: sample id {r.id!r} appears twice; give each sample of a "
                               f"problem its own sample_index (or drop the repeated row)")
        seen.add(key)
        yield r
