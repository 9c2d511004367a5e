"""`distill filter`: records → the steps in order → kept/ and rejected/ Parquet, stats.json, the funnel.

Streaming: records are read lazily and flow through the steps one at a time (answer_correct grades one
chunk at a time); output Parquet files are written atomically every `chunk_size` rows, so memory is flat
in the number of records. `select` needs every trace of a problem before it can choose, so the records
that survive the other steps go to a temporary Parquet folder with three integers each held in memory,
and a second pass routes them to kept/ or rejected/.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from distill.config import FilterConfig, save_config
from distill.data.io import atomic_open, atomic_write_json, iter_rows, require_columns
from distill.data.record import REQUIRED_FIELDS, Record
from distill.errors import DistillError
from distill.filters import dataset, steps
from distill.prompts import sft_messages

log = logging.getLogger(__name__)

STEPS = ("finished", "think_format", "answer_correct", "length", "repetition", "language", "dedup",
         "decontaminate", "select")
# Flush an output file at chunk_size rows or at this many text bytes, whichever comes first.
PART_BYTES = 128 << 20

# ---------------------------------------------------------------- schema


def _schemas():
    import pyarrow as pa

    base = [("id", pa.string()), ("problem_id", pa.string()), ("problem", pa.string()), ("answer", pa.string()),
            ("completion", pa.string()), ("finish_reason", pa.string()), ("num_tokens", pa.int64()),
            ("sample_index", pa.int64()), ("model", pa.string()), ("source", pa.string()),
            ("meta", pa.string()),  # provenance as JSON text: heterogeneous dicts survive the columnar schema
            ("extracted", pa.string()), ("extracted_by", pa.string())]
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    kept = pa.schema(base + [("messages", pa.list_(message))])
    rejected = pa.schema(base + [("step", pa.string()), ("reason", pa.string())])
    return kept, rejected


def _row(item: dataset.Item) -> dict[str, Any]:
    row = item.record.to_dict()
    row["meta"] = json.dumps(row["meta"], ensure_ascii=False, default=str)
    row["extracted"] = item.extracted
    row["extracted_by"] = item.extracted_by
    return row


class PartWriter:
    """Parquet parts `part-00000.parquet`, … in `folder`, each written atomically; an empty run still
    writes one empty part so readers see the schema."""

    def __init__(self, folder: Path, schema, rows_per_part: int):
        self.folder, self.schema, self.rows_per_part = folder, schema, rows_per_part
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("part-*.parquet"):  # a previous run's parts would mix with this run's
            old.unlink()
        self.buf: list[dict[str, Any]] = []
        self.bytes = 0
        self.parts = 0
        self.rows = 0

    def add(self, row: dict[str, Any]) -> None:
        self.buf.append(row)
        self.bytes += len(row["completion"]) + len(row["problem"])
        if len(self.buf) >= self.rows_per_part or self.bytes >= PART_BYTES:
            self.flush()

    def flush(self, force: bool = False) -> None:
        if not self.buf and not force:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self.buf, schema=self.schema)
        with atomic_open(self.folder / f"part-{self.parts:05d}.parquet", "wb") as f:
            pq.write_table(table, f)
        self.parts += 1
        self.rows += len(self.buf)
        self.buf, self.bytes = [], 0

    def close(self) -> None:
        self.flush(force=self.parts == 0)


# ---------------------------------------------------------------- input


def iter_input_records(cfg: FilterConfig, stats: dict[str, int]) -> Iterator[Record]:
    """Records from a generate dir / records file (as stored), a published format (distill.data.adapters,
    when --format is set or the columns say so), or any dataset via the column mapping."""
    if cfg.format:
        yield from _adapter_records(cfg, stats, cfg.format)
        return
    rows = iter_rows(cfg.input, cfg.split, cfg.subset, cfg.revision, cfg.skip_invalid, stats)
    first = next(rows, None)
    if first is None:
        return
    where, row = first
    mapped = {"problem_key": cfg.problem_key, "answer_key": cfg.answer_key, "completion_key": cfg.completion_key}
    if cfg.id_key:
        mapped["id_key"] = cfg.id_key
    as_records = (set(REQUIRED_FIELDS) | {"completion"}) <= set(row) and (
        cfg.problem_key, cfg.answer_key, cfg.completion_key, cfg.id_key) == ("problem", "answer", "completion", None)
    if not as_records and not set(mapped.values()) <= set(row):
        fmt = _detect_format(set(map(str, row)))
        if fmt is not None:
            del rows
            yield from _adapter_records(cfg, stats, fmt)
            return
        require_columns(where, row, mapped)  # raises: names the option to change and the columns present
    source = Path(str(cfg.input).rstrip("/")).stem or "data"
    per_problem: Counter = Counter()
    for where, row in _chain(first, rows):
        try:
            if as_records:
                if "completion" not in row:
                    require_columns(where, row, {"completion_key": "completion"})
                yield Record.from_dict(row, where)
            else:
                yield _mapped_record(cfg, where, row, source, per_problem)
        except DistillError as e:
            if not cfg.skip_invalid:
                raise
            log.warning("%s (skipped)", e)
            stats["invalid"] = stats.get("invalid", 0) + 1


def _chain(first, rest) -> Iterator[tuple[str, dict[str, Any]]]:
    yield first
    yield from rest


def _mapped_record(cfg: FilterConfig, where: str, row: dict[str, Any], source: str, per_problem: Counter) -> Record:
    columns = {"problem_key": cfg.problem_key, "answer_key": cfg.answer_key, "completion_key": cfg.completion_key}
    require_columns(where, row, columns)
    problem = row[cfg.problem_key]
    if not isinstance(problem, str) or not problem.strip():
        raise DistillError(f"{where}: field '{cfg.problem_key}' is empty; every record needs a problem")
    if cfg.id_key:
        require_columns(where, row, {"id_key": cfg.id_key})
        pid = str(row[cfg.id_key])
    else:  # samples of one problem must share a problem_id for dedup/select: derive it from the text
        pid = hashlib.sha1(problem.encode("utf-8", "replace")).hexdigest()[:12]
    index = per_problem[pid]
    per_problem[pid] += 1
    return Record.from_dict({
        "id": Record.make_id(source, pid, index), "problem_id": pid, "problem": problem,
        "answer": row[cfg.answer_key], "completion": row[cfg.completion_key] or "",
        "finish_reason": row.get("finish_reason") or "", "num_tokens": row.get("num_tokens") or 0,
        "sample_index": index, "model": row.get("model") or "", "source": source,
        "meta": {"row": where},
    }, where)


def _detect_format(columns: set[str]) -> str | None:
    try:
        from distill.data.adapters import detect_format
    except ImportError:  # adapters not installed in this build: fall back to the column mapping's error
        return None
    try:
        return detect_format(columns)
    except DistillError:
        return None


def _adapter_records(cfg: FilterConfig, stats: dict[str, int], fmt: str) -> Iterator[Record]:
    try:
        from distill.data.adapters import iter_format_records
    except ImportError:
        raise DistillError(f"--format {fmt}: published-format adapters are not available in this build; "
                           f"convert the data to records or use --problem-key/--answer-key/--completion-key") from None
    yield from iter_format_records(cfg.input, format=fmt, split=cfg.split, subset=cfg.subset, revision=cfg.revision,
                                   skip_invalid=cfg.skip_invalid, stats=stats)


# ---------------------------------------------------------------- pipeline


def check_steps(names: list[str]) -> list[str]:
    errors = []
    for name in names:
        if name not in STEPS:
            hint = difflib.get_close_matches(name, STEPS, n=1)
            errors.append(f"unknown step '{name}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
    if errors:
        raise DistillError("; ".join(errors) + f"; steps are {', '.join(STEPS)}")
    if len(set(names)) != len(names):
        raise DistillError(f"--steps lists a step twice ({','.join(names)}); list each once")
    if "select" in names and names[-1] != "select":
        raise DistillError("--steps: 'select' must be the last step (it caps what every other step kept)")
    return names


def _per_record(items: Iterable[dataset.Item], filt) -> Iterator[dataset.Item]:
    for x in items:
        if x.alive:
            reason = filt.check(x.record)
            if reason is not None:
                x.drop(filt.name, reason)
        yield x


def run(cfg: FilterConfig) -> dict[str, Any]:
    """Run the filter stage; returns the stats written to OUT/stats.json."""
    start = time.time()
    names = check_steps(list(cfg.steps))
    if cfg.chunk_size < 1:
        raise DistillError(f"--chunk-size must be >= 1, got {cfg.chunk_size}")
    out = Path(cfg.out)
    src = Path(cfg.input)
    if src.is_dir() and (out.resolve() == src.resolve() or src.resolve() in out.resolve().parents):
        raise DistillError(f"--out {out} is inside INPUT {src}: the output would be read back as input; "
                           f"choose an --out outside it")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    log.info("filter %s → %s: steps %s", cfg.input, out, ",".join(names))

    needs_length = "length" in names or ("select" in names and cfg.select_strategy == "shortest")
    counter = steps.TokenCounter(cfg.tokenizer) if needs_length else None
    filters = {
        "finished": lambda: steps.Finished(),
        "think_format": lambda: steps.ThinkFormat(),
        "length": lambda: steps.Length(cfg.min_tokens, cfg.max_tokens or None, counter),
        "repetition": lambda: steps.Repetition(cfg.repetition_ngram, cfg.repetition_max_repeats),
        "language": lambda: steps.Language(cfg.language, cfg.language_max_foreign),
        "dedup": lambda: dataset.Dedup(cfg.dedup_threshold),
        "decontaminate": lambda: dataset.Decontaminator(cfg.decontam_tasks, cfg.decontam_ngram,
                                                         cfg.decontam_min_overlap),
    }
    built = {name: filters[name]() for name in names if name in filters}  # bad settings fail before reading
    plan = dataset.SelectPlan(cfg.select_k, cfg.select_strategy, cfg.seed) if "select" in names else None

    read_stats: dict[str, int] = {}
    n_input = 0

    def items() -> Iterator[dataset.Item]:
        nonlocal n_input
        for record in tqdm(iter_input_records(cfg, read_stats), desc="filter", unit="rec", mininterval=2):
            n_input += 1
            yield dataset.Item(record)

    grader = None
    stream: Iterable[dataset.Item] = items()
    try:
        for name in names:
            if name == "answer_correct":
                from distill.filters.answer import Grader

                grader = Grader(workers=cfg.workers, timeout=cfg.answer_timeout, answer_type=cfg.answer_type,
                                extraction=cfg.answer_extraction)
                stream = dataset.answer_correct(stream, grader, cfg.chunk_size)
            elif name in built:
                stream = _per_record(stream, built[name])
        tallies = _sink(stream, out, cfg, plan, counter)
    finally:
        if grader is not None:
            grader.close()

    if n_input == 0 and not read_stats.get("invalid"):
        log.warning("%s: no records read", cfg.input)
    stats = _stats(cfg, names, n_input, tallies, read_stats, built, time.time() - start)
    atomic_write_json(out / "stats.json", stats)
    log.info("funnel:\n%s", funnel_table(stats))
    log.info("filter: %d in, %d kept, %d rejected, %d invalid in %.1fs → %s", stats["input"], stats["kept"],
             stats["rejected"], stats["invalid"], stats["wall_time_s"], out)
    return stats


def _sink(stream: Iterable[dataset.Item], out: Path, cfg: FilterConfig, plan: dataset.SelectPlan | None,
          counter: steps.TokenCounter | None) -> Counter:
    kept_schema, rejected_schema = _schemas()
    kept = PartWriter(out / "kept", kept_schema, cfg.chunk_size)
    rejected = PartWriter(out / "rejected", rejected_schema, cfg.chunk_size)
    pending_dir = out / ".select_pending"
    if pending_dir.exists():
        shutil.rmtree(pending_dir)
    pending = PartWriter(pending_dir, kept_schema, cfg.chunk_size) if plan else None
    tallies: Counter = Counter()
    for item in stream:
        row = _row(item)
        if item.extracted_by is not None:
            tallies[("answer_extraction", item.extracted_by)] += 1
        if item.alive:
            row["messages"] = sft_messages(item.record.problem, item.record.completion)
            if plan is not None:
                plan.add(item.record, counter(item.record) if counter else 0)
                pending.add(row)
            else:
                kept.add(row)
        else:
            tallies[(item.step, item.reason)] += 1
            rejected.add({**row, "step": item.step, "reason": item.reason})
    if plan is not None:
        pending.close()
        _select_pass(pending_dir, plan, kept, rejected, tallies)
        shutil.rmtree(pending_dir)
    kept.close()
    rejected.close()
    return tallies


def _select_pass(pending_dir: Path, plan: dataset.SelectPlan, kept: PartWriter, rejected: PartWriter,
                 tallies: Counter) -> None:
    import pyarrow.parquet as pq

    mask = plan.winners()
    i = 0
    for part in tqdm(sorted(pending_dir.glob("part-*.parquet")), desc="select", unit="part"):
        for batch in pq.ParquetFile(part).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                if mask[i]:
                    kept.add(row)
                else:
                    row.pop("messages")
                    tallies[("select", "select_over_k")] += 1
                    rejected.add({**row, "step": "select", "reason": "select_over_k"})
                i += 1
    if i != len(mask):
        raise RuntimeError(f"select: {i} pending rows but {len(mask)} planned")


# ---------------------------------------------------------------- stats and funnel


def _stats(cfg: FilterConfig, names: list[str], n_input: int, tallies: Counter, read_stats: dict[str, int],
           built: dict[str, Any], wall: float) -> dict[str, Any]:
    from distill.filters.answer import GRADER_VERSION

    rows, alive = [], n_input
    for name in names:
        reasons = {reason: n for (step, reason), n in sorted(tallies.items()) if step == name}
        dropped = sum(reasons.values())
        rows.append({"name": name, "in": alive, "out": alive - dropped, "reasons": reasons})
        alive -= dropped
    decon = built.get("decontaminate")
    return {
        "input": n_input,
        "kept": alive,
        "rejected": n_input - alive,
        "invalid": read_stats.get("invalid", 0),
        "steps": rows,
        "decontamination": dict(decon.hits) if decon is not None else {},
        "grader_version": GRADER_VERSION if "answer_correct" in names else None,
        # the extraction policy in force and how often each of its rules found the answer
        "answer_extraction": {"policy": cfg.answer_extraction, "extracted_by": {
            rule: n for (step, rule), n in sorted(tallies.items()) if step == "answer_extraction"}}
        if "answer_correct" in names else None,
        "source": str(cfg.input),
        "wall_time_s": round(wall, 3),
        "records_per_s": round(n_input / wall, 1) if wall > 0 else None,
    }


def funnel_table(stats: dict[str, Any]) -> str:
    """step | in | out | dropped by reason, one line per step."""
    header = ("step", "in", "out", "dropped by reason")
    lines = [header] + [(s["name"], str(s["in"]), str(s["out"]),
                         ", ".join(f"{r} {n}" for r, n in s["reasons"].items()) or "-") for s in stats["steps"]]
    lines.append(("kept", str(stats["input"]), str(stats["kept"]),
                  f"invalid input lines {stats['invalid']}" if stats["invalid"] else ""))
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}} | {b:>{widths[1]}} | {c:>{widths[2]}} | {d}".rstrip() for a, b, c, d in lines)
