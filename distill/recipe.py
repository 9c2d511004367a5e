"""Recipes and flags into configs: typed fields with one line of help, YAML recipes, CLI overrides, every error at
once with "did you mean", and the resolved config saved beside a stage's outputs. The stage configs: config.py."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from distill.errors import DistillError


def opt(default: Any, help: str, **extra: Any) -> Any:
    """A config field: typed by its annotation, defaulted, with one line of help."""
    meta = {"help": help, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def coerce(cls: type, name: str, value: Any) -> Any:
    """Convert a recipe/CLI value to the field's type, or raise ValueError saying what was expected."""
    tp, optional = base_type(field_type(cls, name))
    if value is None:
        if optional:
            return None
        raise ValueError("must not be empty")
    origin = typing.get_origin(tp)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise ValueError("expected a list or a comma-separated string")
        return [str(v) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError("expected a mapping")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ValueError("expected true or false")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected a string, got a {type(value).__name__}")
        return str(value)
    raise TypeError(f"unsupported config type {tp!r}")


def read_recipe(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise DistillError(f"recipe {p}: file not found; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise DistillError(f"recipe {where}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DistillError(f"recipe {p}: expected a mapping of option: value, got a {type(data).__name__}")
    return data


def build_config(cls: type, recipe: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                 origin: str = "recipe") -> Any:
    """Defaults < recipe < overrides (CLI flags). Every problem is reported at once, in one line."""
    known = fields_of(cls)
    values: dict[str, Any] = {}
    errors: list[str] = []
    for layer_name, layer in ((origin, recipe or {}), ("flag", overrides or {})):
        for key, value in layer.items():
            name = str(key).replace("-", "_")
            if name not in known:
                hint = difflib.get_close_matches(name, known, n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                errors.append(f"{layer_name}: unknown option '{key}'{suggestion}")
                continue
            try:
                value = coerce(cls, name, value)
            except ValueError as e:
                errors.append(f"{layer_name}: option '{key}': {e}")
                continue
            choices = known[name].metadata.get("choices")
            if choices and value is not None and value not in choices:
                errors.append(f"{layer_name}: option '{key}': {value!r} is not one of {', '.join(choices)}")
                continue
            values[name] = value
    for name, f in known.items():
        if f.metadata.get("required") and not values.get(name):
            flag = name.upper() if f.metadata.get("positional") else "--" + name.replace("_", "-")
            errors.append(f"missing required option '{name}' (pass {flag} or set it in the recipe)")
    if errors:
        raise DistillError("; ".join(errors))
    return cls(**values)


def load_config(cls: type, config_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Any:
    recipe = read_recipe(config_path) if config_path else {}
    return build_config(cls, recipe, overrides, origin=f"recipe {config_path}" if config_path else "recipe")


def config_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config beside the outputs (atomically) so a run can be repeated exactly; credentials in
    URLs (--base-url http://user:pass@host) are replaced by *** (the key itself is never a config value)."""
    from distill.data.io import atomic_write_text
    from distill.redact import redact_url

    values = {k: redact_url(v) if isinstance(v, str) else v for k, v in config_dict(cfg).items()}
    text = yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
    return atomic_write_text(Path(out_dir) / name, text)
