"""The one record that flows through every stage: one sample of one problem."""

from __future__ import annotations

import dataclasses
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
    answer: str  # gold answer, always a string ("025", "\\frac{1}{2}")
    completion: str = ""  # model output, <think> included
    finish_reason: str = ""  # "stop" | "length" | "" when unknown
    num_tokens: int = 0  # completion tokens
    sample_index: int = 0
    model: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def make_id(source: str, problem_id: str, sample_index: int) -> str:
        return f"{source}/{problem_id}/{sample_index}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any], where: str = "") -> Record:
        """Build a record from a stored row; `where` ("file:line") goes into error messages."""
        missing = [f for f in REQUIRED_FIELDS if row.get(f) is None]
        if missing:
            raise DistillError(
                f"{where or 'record'}: missing field(s) {', '.join(missing)}; "
                f"a record needs {', '.join(REQUIRED_FIELDS)} (columns present: {', '.join(sorted(row)) or 'none'})"
            )
        kwargs = {}
        for f in FIELDS:
            if f.name in row and row[f.name] is not None:
                kwargs[f.name] = row[f.name]
        meta = kwargs.get("meta", {})
        if isinstance(meta, str):  # CSV and some Parquet writers store meta as JSON text
            try:
                meta = json.loads(meta) if meta else {}
            except json.JSONDecodeError as e:
                raise DistillError(f"{where or 'record'}: field 'meta' is not valid JSON ({e.msg}); store an object") from None
        if not isinstance(meta, dict):
            raise DistillError(f"{where or 'record'}: field 'meta' must be an object, got {type(meta).__name__}")
        kwargs["meta"] = meta
        for name in ("id", "problem_id", "problem", "answer", "completion", "finish_reason", "model", "source"):
            if name in kwargs and not isinstance(kwargs[name], str):
                kwargs[name] = _as_str(kwargs[name])
        for name in ("num_tokens", "sample_index"):
            if name in kwargs:
                try:
                    kwargs[name] = int(kwargs[name])
                except (TypeError, ValueError):
                    raise DistillError(
                        f"{where or 'record'}: field '{name}' must be an integer, got {kwargs[name]!r}"
                    ) from None
        return cls(**kwargs)


def text_value(value: Any) -> str:
    """A stored scalar as text: None → "", and 27.0 means "27", not "27.0" (gold answers arrive as floats)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _as_str(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return text_value(value)


FIELDS = dataclasses.fields(Record)
FIELD_NAMES = tuple(f.name for f in FIELDS)
REQUIRED_FIELDS = ("id", "problem_id", "problem", "answer")
