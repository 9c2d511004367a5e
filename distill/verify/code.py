"""The code verifier: the final Python block after `</think>`, run against the problem's tests in the sandbox.

Test spec: a record's gold `answer` holds the tests as JSON text, in one of two shapes.

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
LeetCode style) and compares the return value, made JSON-like (tuples become lists), with `expected`;
with `"unwrap": true` a return equal to `expected[0]` also passes (APPS's rule for call-based tests).
`test` is one more case: code run once, which is followed by `check(entry_point)` when it defines a
`check` function and never calls it (HumanEval). At least one of `cases` / `test` is required.
`prompt` (HumanEval) is the code the model was asked to complete: when the extracted code does not itself
define `entry_point`, it is taken to be the body and the program is `prompt + code`; otherwise the
prompt's import lines are put in front of it (models drop `from typing import List`).
`timeout_s` (optional, both shapes) replaces `Limits.timeout_s` for this problem.

A completion is correct only if every case passes; `pass_fraction` = passed / total is the RL reward.
A wrong completion's reason is the first failing case's: `wrong_output`, `runtime_error`, `timeout`,
`memory` or `sandbox_error` (our side failed), or `compile_error` (the code does not compile; nothing
runs) / `code_missing` (no Python block in the answer). Converters from public formats are below.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import io
import json
import keyword
import logging
import os
import pickle
import re
import warnings
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from distill.errors import DistillError
from distill.prompts import answer_part
from distill.verify.sandbox import Case, CaseResult, Limits, run_cases

logger = logging.getLogger(__name__)

REASONS = ("code_missing", "compile_error", "runtime_error", "wrong_output", "timeout", "memory", "sandbox_error")
SPEC_TYPES = ("stdin", "functional")

# Sandbox status -> verdict reason, for a case that did not pass.
_REASON_OF = {
    "assertion_failed": "wrong_output", "output_limit": "wrong_output", "runtime_error": "runtime_error",
    "timeout": "timeout", "memory": "memory", "compile_error": "compile_error", "sandbox_error": "sandbox_error",
}


@dataclass(frozen=True)
class CodeVerdict:
    correct: bool
    reason: str  # "" when correct; else one of REASONS
    extracted: str  # the code that ran ("" when none was found)
    passed: int  # test cases passed
    total: int  # test cases in the spec
    pass_fraction: float  # passed / total: the RL reward
    detail: str = ""  # one line about the first failing case (the exception, the limit, the differing line)


# --- extraction -----------------------------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]{0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*?)[ \t]*$")
PYTHON_TAGS = ("", "python", "py", "python3", "py3")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, code) of every closed fenced block, in order; the tag is lower-cased, "" when absent."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, tag = m.group("fence"), (m.group("info").split() or [""])[0].lower()
        close = re.compile(r"^[ \t]{0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}[ \t]*$")
        for j in range(i + 1, len(lines)):
            if close.match(lines[j]):
                blocks.append((tag, "\n".join(lines[i + 1:j])))
                i = j + 1
                break
        else:
            return blocks  # an unclosed fence runs to the end: a truncated answer, not code
    return blocks


def extract_code(completion: str) -> str | None:
    """The last ```python (or untagged) block of the answer part (after the last `</think>`; nothing when a
    `<think>` never closes), or None. Blocks tagged with another language (```text, ```bash) are skipped."""
    blocks = [code for tag, code in code_blocks(answer_part(completion)) if tag in PYTHON_TAGS]
    if not blocks or not blocks[-1].strip():
        return None
    return blocks[-1] + "\n"


# --- the spec -------------------------------------------------------------------------------------

_KEYS = {
    "stdin": {"type", "cases", "timeout_s"},
    "functional": {"type", "cases", "test", "setup", "entry_point", "prompt", "timeout_s"},
}


@dataclass(frozen=True)
class Spec:
    """A parsed, checked test spec (see the module docstring)."""

    type: str
    cases: tuple[Case, ...]
    expected: tuple[str, ...]  # stdin: the normalised expected outputs; functional: ()
    entry_point: str = ""
    prompt: str = ""
    timeout_s: float | None = None

    @property
    def total(self) -> int:
        return len(self.cases)


def _bad(why: str) -> DistillError:
    return DistillError(f"code test spec: {why}")


def parse_spec(spec: str | dict) -> Spec:
    """Check a spec (JSON text or its dict) and build its cases; a DistillError names what is wrong."""
    if isinstance(spec, dict):
        return _parse(spec)
    if not isinstance(spec, str):
        raise _bad(f"expected JSON text, got {type(spec).__name__}")
    return _parse_text(spec)


@lru_cache(maxsize=4096)  # many samples share one problem's tests
def _parse_text(text: str) -> Spec:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    return _parse(spec)


def _parse(spec: Any) -> Spec:
    if not isinstance(spec, dict):
        raise _bad(f"must be a JSON object, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in SPEC_TYPES:
        raise _bad(f"'type' must be one of {', '.join(SPEC_TYPES)}, got {kind!r}")
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        raise _bad(f"unknown key(s) {', '.join(map(repr, unknown))} for type {kind!r}; "
                   f"allowed: {', '.join(sorted(_KEYS[kind]))}")
    timeout = spec.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise _bad(f"'timeout_s' must be a positive number, got {timeout!r}")
    return _parse_stdin(spec, timeout) if kind == "stdin" else _parse_functional(spec, timeout)


def _parse_stdin(spec: dict, timeout) -> Spec:
    cases = spec.get("cases")
    if not isinstance(cases, list) or not cases:
        raise _bad("'cases' must be a non-empty list of {\"input\": ..., \"output\": ...}")
    inputs, outputs = [], []
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or set(case) != {"input", "output"}:
            raise _bad(f"stdin case {i} must be an object with exactly 'input' and 'output'")
        if not isinstance(case["input"], str) or not isinstance(case["output"], str):
            raise _bad(f"stdin case {i}: 'input' and 'output' must be strings")
        inputs.append(Case(stdin=case["input"]))
        outputs.append(normalise_output(case["output"]))
    return Spec("stdin", tuple(inputs), tuple(outputs), timeout_s=timeout)


def _parse_functional(spec: dict, timeout) -> Spec:
    entry, setup, prompt = spec.get("entry_point", ""), spec.get("setup", ""), spec.get("prompt", "")
    for key, value in (("entry_point", entry), ("setup", setup), ("prompt", prompt)):
        if not isinstance(value, str):
            raise _bad(f"'{key}' must be a string, got {type(value).__name__}")
    if entry and (not entry.isidentifier() or keyword.iskeyword(entry)):
        raise _bad(f"'entry_point' must be a Python name, got {entry!r}")
    if prompt and not entry:
        raise _bad("'prompt' needs 'entry_point' (to tell a whole function from a body)")
    cases, test = spec.get("cases", []), spec.get("test")
    if not isinstance(cases, list) or (test is None and not cases):
        raise _bad("functional specs need 'cases' (a non-empty list) or 'test'")
    snippets = []
    for i, case in enumerate(cases):
        if isinstance(case, str):
            snippets.append(case)
        elif isinstance(case, dict):
            snippets.append(_call_snippet(case, entry, i))
        else:
            raise _bad(f"functional case {i} must be Python code (a string) or {{\"args\": ..., \"expected\": ...}}")
    if test is not None:
        if not isinstance(test, str) or not test.strip():
            raise _bad("'test' must be non-empty Python code")
        if re.search(r"^def\s+check\s*\(", test, re.M) and not re.search(r"^check\s*\(", test, re.M):
            if not entry:
                raise _bad("'test' defines check(candidate) but the spec has no 'entry_point' to pass it")
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
            raise _bad(f"test case {i} does not compile ({type(e).__name__}: {e})") from None
        built.append(Case(then=source))
    return Spec("functional", tuple(built), (), entry_point=entry, prompt=prompt, timeout_s=timeout)


# A call-based case: JSON values travel as JSON text, so any args survive; tuples in the return value
# compare equal to JSON lists. Names are mangled so they cannot collide with the solution's.
_CALL = '''\
def __distill_case(name, args, expected, unwrap):
    import json
    ns = globals()
    target = ns.get(name)
    if not callable(target):
        if "Solution" not in ns:
            raise NameError(f"the solution defines no function {{name}}")
        target = getattr(ns["Solution"](), name)
    got = target(*args)
    try:
        got = json.loads(json.dumps(got))
    except (TypeError, ValueError):
        pass
    ok = got == expected or (unwrap and isinstance(expected, list) and len(expected) == 1 and got == expected[0])
    assert ok, f"returned {{got!r:.200}}, expected {{expected!r:.200}}"
__distill_case({name!r}, __import__("json").loads({args!r}), __import__("json").loads({expected!r}), {unwrap!r})
'''


def _call_snippet(case: dict, entry: str, i: int) -> str:
    if not entry:
        raise _bad(f"functional case {i} is a call ({{\"args\", \"expected\"}}) but the spec has no 'entry_point'")
    extra = sorted(set(case) - {"args", "expected", "unwrap"})
    if extra or "args" not in case or "expected" not in case:
        raise _bad(f"functional case {i} must have 'args' and 'expected' (and optionally 'unwrap'); "
                   f"got {', '.join(sorted(case)) or 'nothing'}")
    if not isinstance(case["args"], list):
        raise _bad(f"functional case {i}: 'args' must be a list of positional arguments")
    unwrap = case.get("unwrap", False)
    if not isinstance(unwrap, bool):
        raise _bad(f"functional case {i}: 'unwrap' must be true or false")
    try:
        args, expected = json.dumps(case["args"]), json.dumps(case["expected"])
    except (TypeError, ValueError) as e:
        raise _bad(f"functional case {i}: args/expected are not JSON values ({e})") from None
    return _CALL.format(name=entry, args=args, expected=expected, unwrap=unwrap)


def normalise_output(text: str) -> str:
    """Stdout as compared: "\\r\\n" -> "\\n", each line's trailing whitespace dropped, trailing blank lines gone."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).rstrip("\n")


# --- verification ---------------------------------------------------------------------------------

_IMPORT_LINE = re.compile(r"^(?:import|from)\s+\S.*$", re.M)


def _defines(code: str, name: str) -> bool:
    pattern = rf"^(?:async\s+def|def|class)\s+{re.escape(name)}\b|^{re.escape(name)}\s*="
    return re.search(pattern, code, re.M) is not None


def program_for(spec: Spec, code: str) -> str:
    """The program that runs: the extracted code, completed by the spec's prompt where it is only a body."""
    if not spec.prompt:
        return code
    if _defines(code, spec.entry_point):
        imports = "\n".join(_IMPORT_LINE.findall(spec.prompt))
        return (imports + "\n\n" if imports else "") + code
    return spec.prompt + code


def _first_difference(got: str, want: str) -> str:
    g, w = got.split("\n"), want.split("\n")
    for k in range(max(len(g), len(w))):
        a, b = (g[k] if k < len(g) else "<missing>"), (w[k] if k < len(w) else "<missing>")
        if a != b:
            return f"line {k + 1}: got {a[:80]!r}, expected {b[:80]!r}"
    return ""


def verdict_from_results(spec: Spec, code: str, results: list[CaseResult]) -> CodeVerdict:
    """Fold the sandbox's per-case results into one verdict (exposed for callers that run cases themselves)."""
    passed, reason, detail = 0, "", ""
    for i, r in enumerate(results):
        ok = r.status == "ok"
        why = ""
        if ok and spec.type == "stdin":
            got = normalise_output(r.stdout)
            ok = got == spec.expected[i]
            why = "" if ok else f"case {i}: {_first_difference(got, spec.expected[i])}"
        if ok:
            passed += 1
        elif not reason:
            reason = "wrong_output" if r.status == "ok" else _REASON_OF.get(r.status, "sandbox_error")
            detail = why or f"case {i}: {r.detail or r.status}"
    total = spec.total
    correct = passed == total and total > 0
    return CodeVerdict(correct, "" if correct else reason or "sandbox_error", code, passed, total,
                       passed / total if total else 0.0, "" if correct else detail)


def verify_code(completion: str, spec: str | dict | Spec, limits: Limits = Limits(),
                isolation: str = "auto") -> CodeVerdict:
    """Verify one completion against its test spec (one sandboxed process for all its cases)."""
    parsed = spec if isinstance(spec, Spec) else parse_spec(spec)
    code = extract_code(completion)
    if code is None:
        return CodeVerdict(False, "code_missing", "", 0, parsed.total, 0.0, "no ```python block after </think>")
    if parsed.timeout_s is not None:
        limits = replace(limits, timeout_s=float(parsed.timeout_s))
    results = run_cases(program_for(parsed, code), parsed.cases, limits, isolation)
    return verdict_from_results(parsed, code, results)


def verify(record, limits: Limits = Limits()) -> CodeVerdict:
    """The verifier seam: a record's completion against its gold `answer` (a test spec)."""
    return verify_code(record.completion, record.answer, limits)


class CodeVerifier:
    """Verify many (completion, spec) pairs in parallel, one sandboxed process per problem per worker thread.

    The threads only wait on their child processes, so `workers` = cores keeps every core busy.
    Use as a context manager, or call `close()`.
    """

    def __init__(self, workers: int | None = None, limits: Limits = Limits(), isolation: str = "auto"):
        if workers is not None and workers < 1:
            raise DistillError(f"code verifier workers must be >= 1, got {workers}")
        self.workers = workers or os.cpu_count() or 1
        self.limits, self.isolation = limits, isolation
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="code-verify")

    def verify(self, completion: str, spec: str | dict | Spec) -> CodeVerdict:
        return verify_code(completion, spec, self.limits, self.isolation)

    def verify_many(self, items: Iterable[tuple[str, str | dict | Spec]]) -> Iterator[CodeVerdict]:
        """Verdicts in input order; at most 4 problems per worker in flight. A bad spec raises DistillError
        (naming what is wrong) when its item is reached; the caller knows which row that is."""
        window: list = []
        for completion, spec in items:
            parsed = spec if isinstance(spec, Spec) else parse_spec(spec)
            window.append(self._pool.submit(verify_code, completion, parsed, self.limits, self.isolation))
            if len(window) >= 4 * self.workers:
                yield window.pop(0).result()
        while window:
            yield window.pop(0).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> CodeVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- converters from public formats (each returns spec JSON text) --------------------------------


def _dump(spec: dict) -> str:
    text = json.dumps(spec, ensure_ascii=False)
    _parse_text(text)  # a converter never hands out a spec the verifier would refuse
    return text


def _as_json(value: Any, what: str) -> Any:
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise _bad(f"{what} is not valid JSON ({e.msg})") from None
    return value


def _text(value: Any) -> str:
    """APPS/TACO store a stdin input or output as a string or as a list of lines."""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value) + "\n"
    if not isinstance(value, str):
        raise _bad(f"expected text or a list of lines, got {type(value).__name__}")
    return value


def from_apps(input_output: str | dict, timeout_s: float | None = None) -> str:
    """APPS / TACO `input_output`: {"inputs": [...], "outputs": [...], "fn_name"?: name}. With `fn_name`
    the tests are calls (inputs = argument lists, outputs usually wrapped in a list: APPS's unwrap rule)."""
    io_ = _as_json(input_output, "input_output")
    if not isinstance(io_, dict) or not all(isinstance(io_.get(k), list) for k in ("inputs", "outputs")):
        raise _bad("input_output must have 'inputs' and 'outputs' lists")
    if len(io_["inputs"]) != len(io_["outputs"]) or not io_["inputs"]:
        raise _bad(f"input_output has {len(io_['inputs'])} inputs and {len(io_['outputs'])} outputs")
    extra = {"timeout_s": timeout_s} if timeout_s else {}
    fn = io_.get("fn_name")
    if fn:
        cases = [{"args": a if isinstance(a, list) else [a], "expected": o, "unwrap": True}
                 for a, o in zip(io_["inputs"], io_["outputs"])]
        return _dump({"type": "functional", "entry_point": fn, "cases": cases, **extra})
    cases = [{"input": _text(a), "output": _text(o)} for a, o in zip(io_["inputs"], io_["outputs"])]
    return _dump({"type": "stdin", "cases": cases, **extra})


def from_open_r1(verification_info: str | dict) -> str:
    """open-r1 `verification_info`: {"language": "python", "test_cases": [{"input", "output", "type"}]},
    type "stdin_stdout" (or "function_call" with "fn_name", input = the argument list as JSON)."""
    info = _as_json(verification_info, "verification_info")
    if not isinstance(info, dict) or not isinstance(info.get("test_cases"), list) or not info["test_cases"]:
        raise _bad("verification_info must have a non-empty 'test_cases' list")
    language = str(info.get("language", "python")).lower()
    if language not in ("python", "python3", "py"):
        raise _bad(f"only Python is verified, this problem is {info.get('language')!r}")
    kinds = {tc.get("type", "stdin_stdout") for tc in info["test_cases"] if isinstance(tc, dict)}
    if len(kinds) != 1 or len([tc for tc in info["test_cases"] if isinstance(tc, dict)]) != len(info["test_cases"]):
        raise _bad(f"test_cases must be objects of one type, got {sorted(map(str, kinds))}")
    kind = kinds.pop()
    if kind == "stdin_stdout":
        return _dump({"type": "stdin", "cases": [{"input": _text(tc["input"]), "output": _text(tc["output"])}
                                                 for tc in info["test_cases"]]})
    if kind == "function_call":
        names = {tc.get("fn_name") for tc in info["test_cases"]}
        if len(names) != 1 or not next(iter(names)):
            raise _bad("function_call test cases need one 'fn_name'")
        cases = [{"args": _as_json(tc["input"], "input"), "expected": _as_json(tc["output"], "output"),
                  "unwrap": True} for tc in info["test_cases"]]
        return _dump({"type": "functional", "entry_point": names.pop(), "cases": cases})
    raise _bad(f"unknown open-r1 test case type {kind!r}; expected stdin_stdout or function_call")


class _NoGlobals(pickle.Unpickler):
    """Unpickles plain data only (str, list, dict, numbers): any class or function reference is refused,
    so a crafted file cannot run code (LiveCodeBench ships its private tests pickled)."""

    def find_class(self, module, name):
        raise _bad(f"private_test_cases pickle references {module}.{name}; refusing to unpickle code")


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
        raise _bad(f"{what} is neither JSON nor LiveCodeBench's compressed form ({type(e).__name__})") from None
    return json.loads(decoded) if isinstance(decoded, (str, bytes)) else decoded


def from_livecodebench(row: dict) -> str:
    """LiveCodeBench-like rows: `public_test_cases` and `private_test_cases` (JSON lists of
    {"input", "output", "testtype": "stdin" | "functional"}, or LCB's compressed form), `metadata`
    ({"func_name"} for functional). Functional inputs are one JSON value per line (the arguments)."""
    cases = [*_lcb_cases(row.get("public_test_cases"), "public_test_cases"),
             *_lcb_cases(row.get("private_test_cases"), "private_test_cases")]
    if not cases:
        raise _bad("the row has no public_test_cases or private_test_cases")
    if not all(isinstance(c, dict) and {"input", "output"} <= set(c) for c in cases):
        raise _bad("every test case needs 'input' and 'output'")
    kinds = {c.get("testtype", "stdin") for c in cases}
    if len(kinds) != 1:
        raise _bad(f"test cases mix testtypes {sorted(kinds)}")
    kind = kinds.pop()
    if kind == "stdin":
        return _dump({"type": "stdin", "cases": [{"input": c["input"], "output": c["output"]} for c in cases]})
    if kind != "functional":
        raise _bad(f"unknown testtype {kind!r}; expected stdin or functional")
    meta = _as_json(row.get("metadata") or "{}", "metadata")
    name = meta.get("func_name") if isinstance(meta, dict) else None
    if not name:
        raise _bad("functional test cases need metadata.func_name")
    calls = []
    for i, c in enumerate(cases):
        try:
            args = [json.loads(line) for line in c["input"].split("\n") if line.strip()]
            expected = json.loads(c["output"])
        except (json.JSONDecodeError, AttributeError):
            raise _bad(f"functional case {i}: input lines and output must be JSON values") from None
        calls.append({"args": args, "expected": expected})
    return _dump({"type": "functional", "entry_point": name, "cases": calls})


def from_humaneval(row: dict) -> str:
    """HumanEval (openai/human-eval): `test` defines check(candidate); the model completes `prompt`."""
    for key in ("prompt", "test", "entry_point"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise _bad(f"HumanEval row needs a non-empty {key!r}")
    return _dump({"type": "functional", "entry_point": row["entry_point"], "prompt": row["prompt"],
                  "test": row["test"]})


def humaneval_solution(row: dict) -> str:
    """The canonical solution as a whole program: the prompt followed by its completion (the body)."""
    return row["prompt"] + row["canonical_solution"]


def mbpp_entry_point(test: str, code: str = "") -> str:
    """The function an MBPP test calls: the first called name that the solution defines (else not a builtin)."""
    import ast

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        body = ast.parse(code).body if code else []
        tree = ast.parse(test)
    defined = {n.name for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    called = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    for pool in ([c for c in called if c in defined], [c for c in called if not hasattr(builtins, c)]):
        if pool:
            return pool[0]
    raise _bad(f"cannot tell which function the MBPP test calls: {test[:80]!r}")


def from_mbpp(row: dict) -> str:
    """MBPP (google-research; the sanitized split too): `test_list` asserts, `test_imports` run before them."""
    tests, imports = row.get("test_list"), row.get("test_imports") or []
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise _bad("MBPP row needs a non-empty 'test_list' of assert strings")
    spec = {"type": "functional", "entry_point": mbpp_entry_point(tests[0], row.get("code", "")), "cases": tests}
    if imports:
        spec["setup"] = "\n".join(imports)
    return _dump(spec)
