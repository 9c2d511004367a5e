"""Readers (local JSONL/Parquet/CSV, dataset folders, bundled tasks, Hub ids) and atomic writers."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from distill.data.record import FIELD_NAMES, Record, arrow_schema
from distill.errors import DistillError

log = logging.getLogger(__name__)

ROW_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# JSON files our stages write beside their rows (audit.jsonl: --audit's disagreements, verify/math_audit.py).
NOT_ROWS = ("manifest.json", "stats.json", "results.json", "preflight.json", "audit.jsonl")

# ---------------------------------------------------------------- atomic writers


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Files get the mode the user's umask gives (mkstemp's temp files are 0600): read once, at import.
FILE_MODE = 0o666 & ~_umask()


def apply_umask(folder: str | Path) -> None:
    """Give files another library saved as 0600 (its own temp-file-and-rename) the mode the umask gives."""
    for p in Path(folder).rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o777 == 0o600 and FILE_MODE != 0o600:
            p.chmod(FILE_MODE)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8"):
    """Write to a temp file beside `path`, fsync, then rename: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any] | Record]) -> int:
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(_as_row(row), ensure_ascii=False) + "\n")
            n += 1
    return n


def write_parquet(path: str | Path, rows: Iterable[dict[str, Any] | Record]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # `meta` is free-form provenance: stored as JSON text so heterogeneous dicts survive the columnar schema.
    table_rows = [{**r, "meta": json.dumps(r["meta"], ensure_ascii=False)} if isinstance(r.get("meta"), dict) else r
                  for r in map(_as_row, rows)]
    records = bool(table_rows) and set(table_rows[0]) == set(FIELD_NAMES)  # Records keep their own column types
    table = pa.Table.from_pylist(table_rows, schema=arrow_schema() if records else None)
    with atomic_open(path, "wb") as f:
        pq.write_table(table, f)
    return len(table_rows)


def write_records(path: str | Path, rows: Iterable[dict[str, Any] | Record]) -> int:
    suffix = Path(path).suffix
    if suffix == ".jsonl":
        return write_jsonl(path, rows)
    if suffix == ".parquet":
        return write_parquet(path, rows)
    raise DistillError(f"{path}: cannot write '{suffix}' files; use .jsonl or .parquet")


def _as_row(row: dict[str, Any] | Record) -> dict[str, Any]:
    return row.to_dict() if isinstance(row, Record) else row


# ---------------------------------------------------------------- readers


def iter_rows(source: str | Path, split: str = "train", subset: str | None = None, revision: str | None = None,
              skip_invalid: bool = False, stats: dict[str, int] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where, row) with `where` = "file:line" (or "file:row N"), for error messages that point at the row.

    `source` is a file, a folder of row files (e.g. a generate output), or a Hub dataset id (bundled task names
    are the reader's: data/reader.py).
    Malformed rows raise, or with skip_invalid are counted in stats["invalid"] and logged.
    """
    path = Path(source)
    if path.is_file():
        yield from _iter_file(path, skip_invalid, stats)
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in ROW_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts)
                       and p.name not in NOT_ROWS)
        if files:
            for f in files:
                yield from _iter_file(f, skip_invalid, stats)
        else:
            yield from _iter_hub(str(source), split, subset, revision)
    elif path.suffix in ROW_SUFFIXES or str(source).startswith((".", "/", "~")):
        raise DistillError(f"{source}: file not found; check the path")
    else:
        yield from _iter_hub(str(source), split, subset, revision)


def _iter_file(path: Path, skip_invalid: bool, stats: dict[str, int] | None) -> Iterator[tuple[str, dict[str, Any]]]:
    if path.suffix == ".parquet":
        yield from _iter_parquet(path)
    elif path.suffix == ".csv":
        yield from _iter_csv(path)
    elif path.suffix == ".json" and _looks_like_json_array(path):
        yield from _iter_json_array(path)
    elif path.suffix in (".jsonl", ".json"):
        yield from _iter_jsonl(path, skip_invalid, stats)
    else:
        raise DistillError(f"{path}: unsupported file type '{path.suffix}'; use .jsonl, .json, .parquet or .csv")


def _invalid(where: str, why: str, skip_invalid: bool, stats: dict[str, int] | None) -> None:
    if not skip_invalid:
        raise DistillError(f"{where}: {why}; fix the line or pass --skip-invalid to count and skip such lines")
    log.warning("%s: %s (skipped)", where, why)
    if stats is not None:
        stats["invalid"] = stats.get("invalid", 0) + 1


def _iter_jsonl(path: Path, skip_invalid: bool, stats: dict[str, int] | None) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                _invalid(where, f"not UTF-8 (byte {e.start})", skip_invalid, stats)
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                _invalid(where, f"not valid JSON ({e.msg} at column {e.colno})", skip_invalid, stats)
                continue
            if not isinstance(row, dict):
                _invalid(where, f"expected a JSON object, got {type(row).__name__}", skip_invalid, stats)
                continue
            yield where, row


def _looks_like_json_array(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[")


def _iter_json_array(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DistillError(f"{path}: not a valid JSON array ({e}); fix the file or convert it to JSONL") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DistillError(f"{path}:row {i}: expected a JSON object, got {type(row).__name__}")
        yield f"{path}:row {i}", row


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file; all mean the same to the user
        raise DistillError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    i = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"{path}:row {i}", row
            i += 1


def _iter_csv(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    # utf-8-sig: a byte-order mark (Excel writes one) must not become part of the first column's name.
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def _iter_hub(name: str, split: str, subset: str | None, revision: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, name=subset, split=split, revision=revision)
    except Exception as e:  # datasets raises many types (network, missing split, bad config); one line for all
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DistillError(f"dataset {name}: could not load split '{split}' ({type(e).__name__}: {msg}); "
                           f"check the path or Hub id, --split and --subset") from None
    for i, row in enumerate(ds):
        yield f"{name}[{split}]:row {i}", row


def require_columns(where: str, row: dict[str, Any], columns: dict[str, str]) -> None:
    """columns: {option name: column}. Raise naming the option to change and the columns that exist."""
    for option, column in columns.items():
        if column not in row:
            raise DistillError(
                f"{where}: no column '{column}' (columns: {', '.join(map(str, row)) or 'none'}); "
                f"pass --{option.replace('_', '-')} with one of them"
            )


def read_records(source: str | Path, split: str = "train", subset: str | None = None, revision: str | None = None,
                 skip_invalid: bool = False, stats: dict[str, int] | None = None) -> Iterator[Record]:
    """distill's own record files as stored (generate chunks, eval samples); stages read inputs with data/reader.py."""
    for where, row in iter_rows(source, split, subset, revision, skip_invalid, stats):
        yield Record.from_dict(row, where)
