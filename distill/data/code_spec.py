"""The code test spec: the JSON a code problem's gold `answer` holds, parsed and checked (one definition).

    {"type": "stdin", "cases": [{"input": "1 2\\n", "output": "3\\n"}, ...], "timeout_s": 4}

The program reads `input` on its standard input; a case passes when the program ends normally (exit
status 0, `sys.exit(0)` included) and its standard output equals `output` after normalising both: "\\r\\n"
becomes "\\n", trailing whitespace is dropped from every line, and trailing blank lines are ignored.
Leading and inner whitespace count, numbers are compared as text (no float tolerance).

    {"type": "functional", "entry_point": "add", "setup": "import math",
     "cases": ["assert add(1, 2) == 3", {"args": [1, 2], "expected": 3}],
     "test": "def check(candidate): ...", "prompt": "def add(a, b):\\n    \\"\\"\\"...\\"\\"\\"\\n", "timeout_s": 4}

Each case runs in a fresh process: the solution, then `setup` (test imports), then the case, all in one
namespace. A string case is Python code that must run to its end (an `AssertionError` is a wrong answer,
any other exception a runtime error, and `sys.exit()` before the end fails the case). A case object calls
`entry_point(*args)` (or `Solution().entry_point(*args)` when the solution defines no such function,
LeetCode style) and compares the return value, made JSON data (tuples become lists; a value JSON cannot hold, such
as an object of the program's own class that claims to equal anything, fails the case), with `expected`;
with `"unwrap": true` a return equal to `expected[0]` also passes (APPS's rule for call-based tests).
`test` is one more case: code run once, which is followed by `check(entry_point)` when it defines a
`check` function and never calls it (HumanEval). At least one of `cases` / `test` is required.
`prompt` (HumanEval) is the code the model was asked to complete: when the extracted code does not itself
define `entry_point`, it is taken to be the body and the program is `prompt + code`; otherwise the
prompt's import lines are put in front of it (models drop `from typing import List`).
`timeout_s` (optional, both shapes) replaces the sandbox's per-case CPU limit (DEFAULT_TIMEOUT_S) for this problem.

Published datasets' tests become this JSON in data/code_tests.py; verify/code.py runs it.
"""

from __future__ import annotations

import json
import keyword
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from distill.errors import DistillError

# CPU seconds per test case on the reference machine when a spec sets no `timeout_s` (verify/sandbox.py Limits).
DEFAULT_TIMEOUT_S = 4.0

SPEC_TYPES = ("stdin", "functional")
_KEYS = {
    "stdin": {"type", "cases", "timeout_s"},
    "functional": {"type", "cases", "test", "setup", "entry_point", "prompt", "timeout_s"},
}


class SpecCase(NamedTuple):
    """One test case as the sandbox runs it: `stdin` for the program, then `then` (test code) in its namespace."""

    stdin: str = ""
    then: str | None = None


@dataclass(frozen=True)
class Spec:
    """A parsed, checked test spec (see the module docstring)."""

    type: str
    cases: tuple[SpecCase, ...]
    expected: tuple[str, ...]  # stdin: the normalised expected outputs; functional: ()
    entry_point: str = ""
    prompt: str = ""
    timeout_s: float | None = None

    @property
    def total(self) -> int:
        return len(self.cases)


def bad_spec(why: str) -> DistillError:
    return DistillError(f"code test spec: {why}")


def parse_spec(spec: str | dict) -> Spec:
    """Check a spec (JSON text or its dict) and build its cases; a DistillError names what is wrong."""
    if isinstance(spec, dict):
        return _parse(spec)
    if not isinstance(spec, str):
        raise bad_spec(f"expected JSON text, got {type(spec).__name__}")
    return _parse_text(spec)


def dump_spec(spec: dict) -> str:
    """The spec as JSON text, checked: nothing hands out a spec the verifier would refuse."""
    text = json.dumps(spec, ensure_ascii=False)
    _parse_text(text)
    return text


def normalise_output(text: str) -> str:
    """Stdout as compared: "\\r\\n" -> "\\n", each line's trailing whitespace dropped, trailing blank lines gone."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).rstrip("\n")


@lru_cache(maxsize=4096)  # many samples share one problem's tests
def _parse_text(text: str) -> Spec:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad_spec(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    return _parse(spec)


def _parse(spec: Any) -> Spec:
    if not isinstance(spec, dict):
        raise bad_spec(f"must be a JSON object, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in SPEC_TYPES:
        raise bad_spec(f"'type' must be one of {', '.join(SPEC_TYPES)}, got {kind!r}")
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        raise bad_spec(f"unknown key(s) {', '.join(map(repr, unknown))} for type {kind!r}; "
                       f"allowed: {', '.join(sorted(_KEYS[kind]))}")
    timeout = spec.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise bad_spec(f"'timeout_s' must be a positive number, got {timeout!r}")
    return _parse_stdin(spec, timeout) if kind == "stdin" else _parse_functional(spec, timeout)


def _parse_stdin(spec: dict, timeout) -> Spec:
    cases = spec.get("cases")
    if not isinstance(cases, list) or not cases:
        raise bad_spec("'cases' must be a non-empty list of {\"input\": ..., \"output\": ...}")
    inputs, outputs = [], []
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or set(case) != {"input", "output"}:
            raise bad_spec(f"stdin case {i} must be an object with exactly 'input' and 'output'")
        if not isinstance(case["input"], str) or not isinstance(case["output"], str):
            raise bad_spec(f"stdin case {i}: 'input' and 'output' must be strings")
        inputs.append(SpecCase(stdin=case["input"]))
        outputs.append(normalise_output(case["output"]))
    return Spec("stdin", tuple(inputs), tuple(outputs), timeout_s=timeout)


def _parse_functional(spec: dict, timeout) -> Spec:
    entry, setup, prompt = spec.get("entry_point", ""), spec.get("setup", ""), spec.get("prompt", "")
    for key, value in (("entry_point", entry), ("setup", setup), ("prompt", prompt)):
        if not isinstance(value, str):
            raise bad_spec(f"'{key}' must be a string, got {type(value).__name__}")
    if entry and (not entry.isidentifier() or keyword.iskeyword(entry)):
        raise bad_spec(f"'entry_point' must be a Python name, got {entry!r}")
    if prompt and not entry:
        raise bad_spec("'prompt' needs 'entry_point' (to tell a whole function from a body)")
    cases, test = spec.get("cases", []), spec.get("test")
    if not isinstance(cases, list) or (test is None and not cases):
        raise bad_spec("functional specs need 'cases' (a non-empty list) or 'test'")
    snippets = []
    for i, case in enumerate(cases):
        if isinstance(case, str):
            snippets.append(case)
        elif isinstance(case, dict):
            snippets.append(_call_snippet(case, entry, i))
        else:
            raise bad_spec(f"functional case {i} must be Python code (a string) or "
                           f"{{\"args\": ..., \"expected\": ...}}")
    if test is not None:
        if not isinstance(test, str) or not test.strip():
            raise bad_spec("'test' must be non-empty Python code")
        if re.search(r"^def\s+check\s*\(", test, re.M) and not re.search(r"^check\s*\(", test, re.M):
            if not entry:
                raise bad_spec("'test' defines check(candidate) but the spec has no 'entry_point' to pass it")
            test += f"\n\ncheck({entry})\n"
        snippets.append(test)
    built = []
    for i, snippet in enumerate(snippets):
        source = (setup + "\n" if setup else "") + snippet
        try:  # the tests are the gold's: they must compile, or the spec is broken
            with warnings.catch_warnings():  # their style ("\." in a plain string) is not ours to warn about
                warnings.simplefilter("ignore", SyntaxWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                compile(source, f"<test case {i}>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as e:
            raise bad_spec(f"test case {i} does not compile ({type(e).__name__}: {e})") from None
        built.append(SpecCase(then=source))
    return Spec("functional", tuple(built), (), entry_point=entry, prompt=prompt, timeout_s=timeout)


# A call-based case: JSON values travel as JSON text, so any args survive; tuples in the return value
# compare equal to JSON lists. It runs in the test process, where `{name}` is the program's function (or
# `Solution().{name}`) reached through the sandbox's proxy, so `got` is plain data already or a stand-in that JSON
# cannot hold. Names are mangled so they cannot collide with the solution's.
_CALL = '''\
def __distill_case(target, args, expected, unwrap):
    import json
    got = target(*args)
    try:  # plain data only: an object of the program's own class could claim to equal anything
        got = json.loads(json.dumps(got))
    except (TypeError, ValueError):
        raise AssertionError(f"returned a {{getattr(got, 'type_name', type(got).__name__)}}, not a JSON value") from None
    ok = got == expected or (unwrap and isinstance(expected, list) and len(expected) == 1 and got == expected[0])
    assert ok, f"returned {{got!r:.200}}, expected {{expected!r:.200}}"
__distill_case({name}, __import__("json").loads({args!r}), __import__("json").loads({expected!r}), {unwrap!r})
'''


def _call_snippet(case: dict, entry: str, i: int) -> str:
    if not entry:
        raise bad_spec(f"functional case {i} is a call ({{\"args\", \"expected\"}}) but the spec has no "
                       f"'entry_point'")
    extra = sorted(set(case) - {"args", "expected", "unwrap"})
    if extra or "args" not in case or "expected" not in case:
        raise bad_spec(f"functional case {i} must have 'args' and 'expected' (and optionally 'unwrap'); "
                       f"got {', '.join(sorted(case)) or 'nothing'}")
    if not isinstance(case["args"], list):
        raise bad_spec(f"functional case {i}: 'args' must be a list of positional arguments")
    unwrap = case.get("unwrap", False)
    if not isinstance(unwrap, bool):
        raise bad_spec(f"functional case {i}: 'unwrap' must be true or false")
    try:
        args, expected = json.dumps(case["args"]), json.dumps(case["expected"])
    except (TypeError, ValueError) as e:
        raise bad_spec(f"functional case {i}: args/expected are not JSON values ({e})") from None
    return _CALL.format(name=entry, args=args, expected=expected, unwrap=unwrap)
