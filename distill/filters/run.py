"""`distill filter`: records → the steps in order → kept/ and rejected/ Parquet, stats.json, the funnel.

Streaming: records are read lazily and flow through the steps one at a time (answer_correct grades one
chunk at a time); output Parquet files are written every `chunk_size` rows, so memory is flat in the number
of records. `select` needs every trace of a problem before it can choose, so the records that survive the
other steps go to a temporary Parquet folder with three integers each held in memory, and a second pass
routes them to kept/ or rejected/.

Transactional: everything is written into a staging folder beside OUT and swapped in at the end (two renames),
so a run that fails or is killed leaves the previous result — kept/, rejected/ and the stats.json that counts
them — untouched. A swap interrupted between its two renames is completed by the next run.
"""

from __future__ import annotations

import difflib
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from distill.config import FilterConfig, save_config
from distill.data.io import atomic_open, atomic_write_json
from distill.data.reader import data_options, read_samples
from distill.data.record import arrow_schema, parquet_row
from distill.errors import DistillError
from distill.filters import dataset, steps
from distill.prompts import sft_messages
from distill.verify import make_verifier

log = logging.getLogger(__name__)

# Every step, by name. Per-record filters and dedup/decontamination: name → how it is built from the config (a new
# step is its class plus one entry here); steps graded by a verifier (distill.verify): name → the verifier; `select`
# (the per-problem cap) is the sink's second pass.
FILTERS: dict[str, Callable[[FilterConfig, Any], Any]] = {
    "finished": lambda cfg, counter: steps.Finished(),
    "think_format": lambda cfg, counter: steps.ThinkFormat(),
    "length": lambda cfg, counter: steps.Length(cfg.min_tokens, cfg.max_tokens or None, counter),
    "repetition": lambda cfg, counter: steps.Repetition(cfg.repetition_ngram, cfg.repetition_max_repeats),
    "language": lambda cfg, counter: steps.Language(cfg.language, cfg.language_max_foreign),
    "dedup": lambda cfg, counter: dataset.Dedup(cfg.dedup_threshold),
    "decontaminate": lambda cfg, counter: dataset.Decontaminator(cfg.decontam_tasks, cfg.decontam_ngram,
                                                                cfg.decontam_min_overlap),
}
VERIFIED_STEPS = {"answer_correct": "math", "code_correct": "code"}
STEP_NAMES = (*VERIFIED_STEPS, *FILTERS, "select")
# Flush an output file at chunk_size rows or at this many text bytes, whichever comes first.
PART_BYTES = 128 << 20
# What a filter output folder holds; anything else in --out is the user's and is never moved or deleted.
OUTPUT_ENTRIES = {"kept", "rejected", "stats.json", "config.yaml", "hub", "publish", ".select_pending", "audit.jsonl"}

# ---------------------------------------------------------------- schema


def _schemas():
    import pyarrow as pa

    base = [("extracted", pa.string()), ("extracted_by", pa.string())]
    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    kept = arrow_schema(base + [("messages", pa.list_(message))])
    rejected = arrow_schema(base + [("step", pa.string()), ("reason", pa.string())])
    return kept, rejected


def _row(item: dataset.Item) -> dict[str, Any]:
    row = parquet_row(item.record)
    row["extracted"] = item.extracted
    row["extracted_by"] = item.extracted_by
    return row


class PartWriter:
    """Parquet parts `part-00000.parquet`, … in a fresh `folder`, each written atomically; an empty run still
    writes one empty part so readers see the schema."""

    def __init__(self, folder: Path, schema, rows_per_part: int):
        self.folder, self.schema, self.rows_per_part = folder, schema, rows_per_part
        folder.mkdir(parents=True, exist_ok=True)
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


# ---------------------------------------------------------------- the output folder, swapped in whole


def _staging(out: Path) -> tuple[Path, Path]:
    return out.parent / f".{out.name}.filter-new-{os.getpid()}", out.parent / f".{out.name}.filter-old-{os.getpid()}"


def recover(out: Path) -> None:
    """Finish or undo what an earlier, killed run left beside OUT: a swap cut between its renames is completed
    (the old result is moved back when the new one never arrived); unfinished staging folders are removed."""
    for old in sorted(out.parent.glob(f".{out.name}.filter-old-*")):
        if out.exists():
            shutil.rmtree(old)
        else:
            log.warning("%s: restoring the previous filter output from %s (an earlier run was interrupted)", out, old)
            old.rename(out)
    for new in out.parent.glob(f".{out.name}.filter-new-*"):
        shutil.rmtree(new)


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DistillError(f"--out {out}: is a file; pass a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_ENTRIES)
        if foreign:
            raise DistillError(f"--out {out}: holds files that are not a filter output ({', '.join(foreign[:5])}); "
                               f"pass an empty or new folder (filter replaces its output folder whole)")


def swap_in(new: Path, out: Path, old: Path) -> None:
    if out.exists():
        os.rename(out, old)
    os.rename(new, out)
    if old.exists():
        shutil.rmtree(old)


# ---------------------------------------------------------------- input


def iter_input_records(cfg: FilterConfig, stats: dict[str, int]) -> Iterator:
    """Records from a generate dir, a filter output (kept/), any records/columns file or Hub dataset, or a
    published format, through the one reader (data/reader.py)."""
    return read_samples(cfg.input, format=cfg.format, completion_key=cfg.completion_key,
                        skip_invalid=cfg.skip_invalid, stats=stats, **data_options(cfg))


# ---------------------------------------------------------------- pipeline


def check_steps(names: list[str]) -> list[str]:
    errors = []
    for name in names:
        if name not in STEP_NAMES:
            hint = difflib.get_close_matches(name, STEP_NAMES, n=1)
            errors.append(f"unknown step '{name}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
    if errors:
        raise DistillError("; ".join(errors) + f"; steps are {', '.join(STEP_NAMES)}")
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
    if cfg.audit and "answer_correct" not in names:
        raise DistillError(f"--audit compares answer_correct's math grading with plain math-verify, and --steps "
                           f"({','.join(names)}) has no answer_correct" + (" (code_correct runs tests; there is no "
                           "second grader to compare)" if "code_correct" in names else "") +
                           "; add answer_correct to --steps or drop --audit")
    if cfg.audit and "code_correct" in names:
        from distill.verify.math_audit import NOT_FOR_CODE

        log.warning("--audit: %s; only answer_correct is audited", NOT_FOR_CODE)
    if cfg.chunk_size < 1:
        raise DistillError(f"--chunk-size must be >= 1, got {cfg.chunk_size}")
    out = Path(cfg.out)
    src = Path(cfg.input)
    if src.is_dir() and (out.resolve() == src.resolve() or src.resolve() in out.resolve().parents):
        raise DistillError(f"--out {out} is inside INPUT {src}: the output would be read back as input; "
                           f"choose an --out outside it")
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    check_out(out)
    new, old = _staging(out)
    new.mkdir()
    try:
        stats = _run(cfg, names, new, start)
        swap_in(new, out, old)
    finally:
        if new.exists():
            shutil.rmtree(new, ignore_errors=True)
    log.info("funnel:\n%s", funnel_table(stats))
    log.info("filter: %d in, %d kept, %d rejected, %d invalid in %.1fs → %s", stats["input"], stats["kept"],
             stats["rejected"], stats["invalid"], stats["wall_time_s"], out)
    return stats


def _run(cfg: FilterConfig, names: list[str], out: Path, start: float) -> dict[str, Any]:
    """The steps, written into `out` (the staging folder)."""
    save_config(cfg, out)
    log.info("filter %s → %s: steps %s", cfg.input, cfg.out, ",".join(names))

    needs_length = "length" in names or ("select" in names and cfg.select_strategy == "shortest")
    counter = steps.TokenCounter(cfg.tokenizer) if needs_length else None
    built = {name: FILTERS[name](cfg, counter) for name in names if name in FILTERS}  # bad settings fail now
    plan = dataset.SelectPlan(cfg.select_k, cfg.select_strategy, cfg.seed) if "select" in names else None

    read_stats: dict[str, int] = {}
    n_input = 0

    def items() -> Iterator[dataset.Item]:
        nonlocal n_input
        for record in tqdm(iter_input_records(cfg, read_stats), desc="filter", unit="rec", mininterval=2):
            n_input += 1
            yield dataset.Item(record)

    verifiers = []
    versions: dict[str, str] = {}
    audit = None
    if cfg.audit:  # imported here: math-verify (sympy) loads only for a run that audits or grades math
        from distill.verify.math_audit import AUDIT_FILE, NOT_FOR_CODE, Audit, write_rows

        audit = Audit()
    stream: Iterable[dataset.Item] = items()
    try:
        for name in names:
            if name in VERIFIED_STEPS:
                verifiers.append(make_verifier(VERIFIED_STEPS[name], cfg))
                versions[name] = verifiers[-1].version
                stream = dataset.verified(stream, verifiers[-1], name, cfg.chunk_size,
                                          audit if name == "answer_correct" else None)
            elif name in built:
                stream = _per_record(stream, built[name])
        tallies = _sink(stream, out, cfg, plan, counter)
    finally:
        for verifier in verifiers:
            verifier.close()

    if n_input == 0:
        what = f"all {read_stats['invalid']} rows were invalid" if read_stats.get("invalid") else "it is empty"
        raise DistillError(f"{cfg.input}: no records to filter ({what}); check the input path")
    stats = _stats(cfg, names, n_input, tallies, read_stats, built, time.time() - start, versions)
    if audit is not None:
        write_rows(out, audit.rows)
        stats["audit"] = {**audit.summary(), **({"not_applicable": {"code_correct": NOT_FOR_CODE}}
                                                 if "code_correct" in names else {})}
        log.info("audit: %s → %s", audit.describe(), cfg.out + "/" + AUDIT_FILE)
    atomic_write_json(out / "stats.json", stats)
    return stats


def _sink(stream: Iterable[dataset.Item], out: Path, cfg: FilterConfig, plan: dataset.SelectPlan | None,
          counter: steps.TokenCounter | None) -> Counter:
    kept_schema, rejected_schema = _schemas()
    kept = PartWriter(out / "kept", kept_schema, cfg.chunk_size)
    rejected = PartWriter(out / "rejected", rejected_schema, cfg.chunk_size)
    pending_dir = out / ".select_pending"
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
           built: dict[str, Any], wall: float, versions: dict[str, str] | None = None) -> dict[str, Any]:
    from distill.verify.math import GRADER_VERSION

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
        "null_completions": read_stats.get("null_completions", 0),
        "steps": rows,
        "decontamination": dict(decon.hits) if decon is not None else {},
        "grader_version": GRADER_VERSION if "answer_correct" in names else None,
        "verifier_versions": versions or {},  # per verified step (answer_correct, code_correct)
        "audit": None,  # with --audit: where plain math-verify disagrees with answer_correct (verify/math_audit.py)
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
