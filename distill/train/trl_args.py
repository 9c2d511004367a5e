"""The `trl:` pass-through of every trainer stage (sft, kd, grpo): checked against the TRL config class's own fields
and their types before any work, all errors at once, with a "did you mean"."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from distill.errors import DistillError


def validate_trl(trl: dict[str, Any], config_cls: type, owned: dict[str, str], fixed: dict[str, str] | None = None,
                 stage: str = "") -> dict[str, Any]:
    """`owned`: TRL field → the distill option that sets it (set it there); `fixed`: TRL field → why `distill STAGE`
    sets it itself (remove it)."""
    fixed = fixed or {}
    known = {f.name for f in dataclasses.fields(config_cls) if f.init}
    hints = typing.get_type_hints(config_cls)
    name = config_cls.__name__
    errors = []
    for key, value in trl.items():
        if key in owned:
            errors.append(f"trl: '{key}' is the distill option '{owned[key]}'; set `{owned[key]}:` at the top level")
        elif key in fixed:
            errors.append(f"trl: '{key}' is set by distill {stage} ({fixed[key]}); remove it")
        elif key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            errors.append(f"trl: unknown {name} field '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        elif not fits(value, hints.get(key)):
            errors.append(f"trl: '{key}' must be {type_name(hints[key])}, got {type(value).__name__} {value!r:.40}")
    if errors:
        raise DistillError("; ".join(errors))
    return dict(trl)


def fits(value: Any, tp: Any) -> bool:
    """Whether a recipe value can be a field of type `tp` (plain types and unions of them; others pass)."""
    if tp is None or tp is Any:
        return True
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    for option in options:
        base = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return True
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if base in (bool, str, list, dict) and isinstance(value, base):
            return True
        if base not in (type(None), float, int, bool, str, list, dict):
            return True  # an enum or class TRL converts itself
    return False


def type_name(tp: Any) -> str:
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return " or ".join(getattr(typing.get_origin(o) or o, "__name__", str(o)) for o in options)
