"""The one record that flows through every stage: one sample of one problem."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from distill.errors import DistillError


@dataclass
class Record:
    """One teacher/student sample. Stages fill fields in; nothing reshapes it.

    A field another stage reads in code is a top-level field; `meta` is provenance only.
    """

    id: str  # stable: <source>/<problem_id>/<sample_index>
    problem_id: str
    problem: str
    answer: str  # gold: a math answer ("025", "\\frac{1}{2}") or, for code, the JSON test spec (verify/code.py)
    completion: str = ""  # model output, <think> included
    finish_reason: str = ""  # "stop" | "length" | "" when unknown
    num_tokens: int = 0  # completion tokens
    sample_index: int = 0
    model: str = ""
    source: str = ""
    max_tokens: int = 0  # the sample's token budget after clamping to the context (0: unknown)
    answer_from: str = ""  # "" when `answer` is the dataset's gold; else where it was taken from (adapters)
    meta: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def make_id(source: str, problem_id: str, sample_index: int) -> str:
        return f"{source}/{problem_id}/{sample_index}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any], where: str = "") -> Record:
        """Build a record from a stored row; `where` ("file:line") goes into error messages."""
        where = where or "record"
        missing = [f for f in REQUIRED_FIELDS if f not in row]
        if missing:
            raise DistillError(
                f"{where}: missing field(s) {', '.join(missing)}; "
                f"a record needs {', '.join(REQUIRED_FIELDS)} (columns present: {', '.join(sorted(row)) or 'none'})"
            )
        null = [f for f in REQUIRED_FIELDS if row[f] is None]
        if null:
            raise DistillError(f"{where}: field(s) {', '.join(null)} present but null; give every record a value "
                               f"(or drop the row)")
        kwargs: dict[str, Any] = {}
        for name in FIELD_NAMES:
            if name in row and row[name] is not None:
                kwargs[name] = row[name]
        kwargs["meta"] = meta_value(kwargs.get("meta", {}), where)
        for name in TEXT_FIELDS:
            if name in kwargs:
                kwargs[name] = text_field(kwargs[name], name, where)
        for name in INT_FIELDS:
            if name in kwargs:
                value = kwargs[name]
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise DistillError(f"{where}: field '{name}' must be an integer, got {type(value).__name__}")
                try:
                    kwargs[name] = int(value)
                except (TypeError, ValueError):
                    raise DistillError(f"{where}: field '{name}' must be an integer, got {value!r}") from None
        return cls(**kwargs)


def text_value(value: Any) -> str:
    """A stored scalar as text: None → "", and 27.0 means "27", not "27.0" (gold answers arrive as floats)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def text_field(value: Any, name: str, where: str) -> str:
    """A text column's value: text or a number (a numeric gold answer, an integer id). A list, mapping or bytes is a
    wrong column, never stringified (a list becoming "[1, 2, 3]" would be graded as a wrong answer)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return text_value(value)
    raise DistillError(f"{where}: column '{name}' must hold text, got {type(value).__name__} ({str(value)[:40]!r}); "
                       f"store it as a string column, or point the matching --*-key option at a text column")


def meta_value(meta: Any, where: str) -> dict[str, Any]:
    if isinstance(meta, str):  # CSV and our Parquet store meta as JSON text
        try:
            meta = json.loads(meta) if meta else {}
        except json.JSONDecodeError as e:
            raise DistillError(f"{where}: field 'meta' is not valid JSON ({e.msg}); store an object") from None
    if not isinstance(meta, dict):
        raise DistillError(f"{where}: field 'meta' must be an object, got {type(meta).__name__}")
    return meta


def content_id(problem: str) -> str:
    """The problem_id of a problem given without one: stable from its text, the same in every stage and run."""
    return hashlib.sha1(problem.encode("utf-8", "replace")).hexdigest()[:12]


def arrow_schema(extra: list[tuple[str, Any]] = ()):
    """The Record's Parquet schema (meta as JSON text, so heterogeneous dicts survive), plus extra columns."""
    import pyarrow as pa

    types = {str: pa.string(), int: pa.int64()}
    fields = [(f.name, pa.string() if f.name == "meta" else types[_TYPES[f.name]]) for f in FIELDS]
    return pa.schema(fields + list(extra))


def parquet_row(record: Record) -> dict[str, Any]:
    row = record.to_dict()
    row["meta"] = json.dumps(row["meta"], ensure_ascii=False, default=str)
    return row


FIELDS = dataclasses.fields(Record)
FIELD_NAMES = tuple(f.name for f in FIELDS)
_TYPES = {f.name: (int if f.type in ("int", int) else str) for f in FIELDS}
TEXT_FIELDS = tuple(n for n in FIELD_NAMES if _TYPES[n] is str and n != "meta")
INT_FIELDS = tuple(n for n in FIELD_NAMES if _TYPES[n] is int)
REQUIRED_FIELDS = ("id", "problem_id", "problem", "answer")
