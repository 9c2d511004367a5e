"""Published code datasets' tests → the canonical spec JSON (data/code_spec.py), one converter per format.

Formats (`tests_format`, or detected from the column's name, else from its content):

- `spec`           our own spec JSON (data/code_spec.py), e.g. a bundled code task's `answer`.
- `apps`           APPS / TACO `input_output`, and the OpenThoughts-114k `metadata` subset's `test_cases` (the same
                   shape): {"inputs": [...], "outputs": [...], "fn_name"?: name}; with `fn_name` the tests are calls.
- `open_r1`        open-r1 `verification_info`: {"language": "python", "test_cases": [{"input", "output", "type"}]}.
- `livecodebench`  LiveCodeBench `public_test_cases` + `private_test_cases` (JSON, or LCB's compressed pickle of
                   plain data only) and `metadata.func_name`.
- `humaneval`      openai/human-eval rows: `prompt`, `test` (check(candidate)), `entry_point`.
- `mbpp`           MBPP rows: `test_list` asserts, `test_imports`.
"""

from __future__ import annotations

import ast
import base64
import binascii
import builtins
import io
import json
import pickle
import warnings
import zlib
from typing import Any

from distill.data.code_spec import SPEC_TYPES, bad_spec, dump_spec, parse_spec
from distill.errors import DistillError

TESTS_FORMATS = ("auto", "spec", "apps", "open_r1", "livecodebench", "humaneval", "mbpp")
# A column name that says its format; other columns are recognised by their content.
COLUMN_FORMATS = {"input_output": "apps", "verification_info": "open_r1", "public_test_cases": "livecodebench",
                  "private_test_cases": "livecodebench", "test_list": "mbpp"}


def spec_of_tests(row: dict[str, Any], column: str, fmt: str = "auto") -> str:
    """The spec JSON of one row's tests in `column`; a DistillError says what is wrong (the reader adds where)."""
    if fmt not in TESTS_FORMATS:
        raise DistillError(f"unknown tests format {fmt!r}; choose one of {', '.join(TESTS_FORMATS)}")
    value = row.get(column)
    if value is None or (isinstance(value, (str, list, dict)) and not value):
        raise DistillError("is empty: this row has no tests (only rows with tests can be verified)")
    if fmt == "auto":
        fmt = detect_tests_format(row, column)
    if fmt == "spec":
        parse_spec(value if isinstance(value, dict) else str(value))
        return value if isinstance(value, str) else dump_spec(value)
    if fmt == "apps":
        return from_apps(value)
    if fmt == "open_r1":
        return from_open_r1(value)
    if fmt == "livecodebench":
        return from_livecodebench(row)
    if fmt == "humaneval":
        return from_humaneval(row)
    return from_mbpp(row)


def detect_tests_format(row: dict[str, Any], column: str) -> str:
    """The column's format from its name (COLUMN_FORMATS), else from the shape of its value."""
    if column in COLUMN_FORMATS:
        return COLUMN_FORMATS[column]
    if column == "test" and {"prompt", "entry_point"} <= set(row):
        return "humaneval"
    value = row[column]
    try:
        value = json.loads(value) if isinstance(value, (str, bytes)) else value
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        if value.get("type") in SPEC_TYPES:
            return "spec"
        if "inputs" in value and "outputs" in value:
            return "apps"
        if "test_cases" in value:
            return "open_r1"
    raise DistillError(f"cannot tell the tests' format from the column or its content; pass --tests-format "
                       f"({', '.join(f for f in TESTS_FORMATS if f != 'auto')})")


# --- converters (each returns spec JSON text) -----------------------------------------------------


def _as_json(value: Any, what: str) -> Any:
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise bad_spec(f"{what} is not valid JSON ({e.msg})") from None
    return value


def _text(value: Any) -> str:
    """APPS/TACO store a stdin input or output as a string or as a list of lines."""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value) + "\n"
    if not isinstance(value, str):
        raise bad_spec(f"expected text or a list of lines, got {type(value).__name__}")
    return value


def from_apps(input_output: str | dict, timeout_s: float | None = None) -> str:
    """APPS / TACO `input_output`: {"inputs": [...], "outputs": [...], "fn_name"?: name}. With `fn_name`
    the tests are calls (inputs = argument lists, outputs usually wrapped in a list: APPS's unwrap rule)."""
    io_ = _as_json(input_output, "input_output")
    if not isinstance(io_, dict) or not all(isinstance(io_.get(k), list) for k in ("inputs", "outputs")):
        raise bad_spec("input_output must have 'inputs' and 'outputs' lists")
    if len(io_["inputs"]) != len(io_["outputs"]) or not io_["inputs"]:
        raise bad_spec(f"input_output has {len(io_['inputs'])} inputs and {len(io_['outputs'])} outputs")
    extra = {"timeout_s": timeout_s} if timeout_s else {}
    fn = io_.get("fn_name")
    if fn:
        cases = [{"args": a if isinstance(a, list) else [a], "expected": o, "unwrap": True}
                 for a, o in zip(io_["inputs"], io_["outputs"])]
        return dump_spec({"type": "functional", "entry_point": fn, "cases": cases, **extra})
    cases = [{"input": _text(a), "output": _text(o)} for a, o in zip(io_["inputs"], io_["outputs"])]
    return dump_spec({"type": "stdin", "cases": cases, **extra})


def from_open_r1(verification_info: str | dict) -> str:
    """open-r1 `verification_info`: {"language": "python", "test_cases": [{"input", "output", "type"}]},
    type "stdin_stdout" (or "function_call" with "fn_name", input = the argument list as JSON)."""
    info = _as_json(verification_info, "verification_info")
    if not isinstance(info, dict) or not isinstance(info.get("test_cases"), list) or not info["test_cases"]:
        raise bad_spec("verification_info must have a non-empty 'test_cases' list")
    language = str(info.get("language", "python")).lower()
    if language not in ("python", "python3", "py"):
        raise bad_spec(f"only Python is verified, this problem is {info.get('language')!r}")
    cases = info["test_cases"]
    kinds = {tc.get("type", "stdin_stdout") for tc in cases if isinstance(tc, dict)}
    if len(kinds) != 1 or not all(isinstance(tc, dict) for tc in cases):
        raise bad_spec(f"test_cases must be objects of one type, got {sorted(map(str, kinds))}")
    kind = kinds.pop()
    if kind == "stdin_stdout":
        return dump_spec({"type": "stdin", "cases": [{"input": _text(tc["input"]), "output": _text(tc["output"])}
                                                     for tc in cases]})
    if kind == "function_call":
        names = {tc.get("fn_name") for tc in cases}
        if len(names) != 1 or not next(iter(names)):
            raise bad_spec("function_call test cases need one 'fn_name'")
        calls = [{"args": _as_json(tc["input"], "input"), "expected": _as_json(tc["output"], "output"),
                  "unwrap": True} for tc in cases]
        return dump_spec({"type": "functional", "entry_point": names.pop(), "cases": calls})
    raise bad_spec(f"unknown open-r1 test case type {kind!r}; expected stdin_stdout or function_call")


class _NoGlobals(pickle.Unpickler):
    """Unpickles plain data only (str, list, dict, numbers): any class or function reference is refused,
    so a crafted file cannot run code (LiveCodeBench ships its private tests pickled)."""

    def find_class(self, module, name):
        raise bad_spec(f"private_test_cases pickle references {module}.{name}; refusing to unpickle code")


def _lcb_cases(value: Any, what: str) -> list:
    if isinstance(value, list):
        return value
    if not isinstance(value, str) or not value.strip():
        return []
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:  # LiveCodeBench's release files: base64(zlib(pickle(json text)))
        raw = zlib.decompress(base64.b64decode(value, validate=False))
        decoded = _NoGlobals(io.BytesIO(raw)).load()
    except (binascii.Error, zlib.error, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise bad_spec(f"{what} is neither JSON nor LiveCodeBench's compressed form ({type(e).__name__})") from None
    return json.loads(decoded) if isinstance(decoded, (str, bytes)) else decoded


def from_livecodebench(row: dict) -> str:
    """LiveCodeBench-like rows: `public_test_cases` and `private_test_cases` (JSON lists of
    {"input", "output", "testtype": "stdin" | "functional"}, or LCB's compressed form), `metadata`
    ({"func_name"} for functional). Functional inputs are one JSON value per line (the arguments)."""
    cases = [*_lcb_cases(row.get("public_test_cases"), "public_test_cases"),
             *_lcb_cases(row.get("private_test_cases"), "private_test_cases")]
    if not cases:
        raise bad_spec("the row has no public_test_cases or private_test_cases")
    if not all(isinstance(c, dict) and {"input", "output"} <= set(c) for c in cases):
        raise bad_spec("every test case needs 'input' and 'output'")
    kinds = {c.get("testtype", "stdin") for c in cases}
    if len(kinds) != 1:
        raise bad_spec(f"test cases mix testtypes {sorted(kinds)}")
    kind = kinds.pop()
    if kind == "stdin":
        return dump_spec({"type": "stdin", "cases": [{"input": c["input"], "output": c["output"]} for c in cases]})
    if kind != "functional":
        raise bad_spec(f"unknown testtype {kind!r}; expected stdin or functional")
    meta = _as_json(row.get("metadata") or "{}", "metadata")
    name = meta.get("func_name") if isinstance(meta, dict) else None
    if not name:
        raise bad_spec("functional test cases need metadata.func_name")
    calls = []
    for i, c in enumerate(cases):
        try:
            args = [json.loads(line) for line in c["input"].split("\n") if line.strip()]
            expected = json.loads(c["output"])
        except (json.JSONDecodeError, AttributeError):
            raise bad_spec(f"functional case {i}: input lines and output must be JSON values") from None
        calls.append({"args": args, "expected": expected})
    return dump_spec({"type": "functional", "entry_point": name, "cases": calls})


def from_humaneval(row: dict) -> str:
    """HumanEval (openai/human-eval): `test` defines check(candidate); the model completes `prompt`."""
    for key in ("prompt", "test", "entry_point"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise bad_spec(f"HumanEval row needs a non-empty {key!r}")
    return dump_spec({"type": "functional", "entry_point": row["entry_point"], "prompt": row["prompt"],
                      "test": row["test"]})


def humaneval_solution(row: dict) -> str:
    """The canonical solution as a whole program: the prompt followed by its completion (the body)."""
    return row["prompt"] + row["canonical_solution"]


def mbpp_entry_point(test: str, code: str = "") -> str:
    """The function an MBPP test calls: the first called name that the solution defines (else not a builtin)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        try:
            body = ast.parse(code).body if code else []
            tree = ast.parse(test)
        except SyntaxError as e:
            raise bad_spec(f"MBPP test or code does not parse ({e.msg})") from None
    defined = {n.name for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    called = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    for pool in ([c for c in called if c in defined], [c for c in called if not hasattr(builtins, c)]):
        if pool:
            return pool[0]
    raise bad_spec(f"cannot tell which function the MBPP test calls: {test[:80]!r}")


def from_mbpp(row: dict) -> str:
    """MBPP (google-research; the sanitized split too): `test_list` asserts, `test_imports` run before them."""
    tests, imports = _as_json(row.get("test_list"), "test_list"), row.get("test_imports") or []
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise bad_spec("MBPP row needs a non-empty 'test_list' of assert strings")
    spec = {"type": "functional", "entry_point": mbpp_entry_point(tests[0], row.get("code", "")), "cases": tests}
    if imports:
        spec["setup"] = "\n".join(imports)
    return dump_spec(spec)
