"""The `code` verifier: the final Python block after `</think>`, run against the problem's tests in the sandbox.

A record's gold `answer` holds its tests as spec JSON (data/code_spec.py; published formats are converted by
data/code_tests.py when read). A completion is correct only if every case passes; `Verdict.score` = passed /
total is the RL reward (`Verdict.reward`). A wrong completion's reason is the first failing case's:
`wrong_output`, `runtime_error`, `timeout`, `memory` or `sandbox_error` (our side failed), or `compile_error`
(the code does not compile; nothing runs) / `code_missing` (no Python block in the answer).
"""

from __future__ import annotations

import logging
import os
import platform
import re
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from distill.data.code_spec import Spec, normalise_output, parse_spec
from distill.errors import DistillError
from distill.prompts import answer_part
from distill.verify import Verdict
from distill.verify.sandbox import Case, CaseResult, Limits, run_cases, sandbox_info

logger = logging.getLogger(__name__)

REASONS = ("code_missing", "compile_error", "runtime_error", "wrong_output", "timeout", "memory", "sandbox_error")
VERSION = "distill-code/1"

# Sandbox status -> verdict reason, for a case that did not pass.
_REASON_OF = {
    "assertion_failed": "wrong_output", "output_limit": "wrong_output", "runtime_error": "runtime_error",
    "timeout": "timeout", "memory": "memory", "compile_error": "compile_error", "sandbox_error": "sandbox_error",
}


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


def verdict_from_results(spec: Spec, code: str, results: list[CaseResult]) -> Verdict:
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
    return Verdict(correct, "" if correct else reason or "sandbox_error", code, "code_block",
                   passed / total if total else 0.0, "" if correct else f"{passed}/{total} passed; {detail}")


def verify_code(completion: str, spec: str | dict | Spec, limits: Limits = Limits(),
                isolation: str = "auto") -> Verdict:
    """Verify one completion against its test spec (one sandboxed process for all its cases)."""
    parsed = spec if isinstance(spec, Spec) else parse_spec(spec)
    code = extract_code(completion)
    if code is None:
        return Verdict(False, "code_missing", "", "none", 0.0, "no ```python block after </think>")
    return verdict_from_results(parsed, code, run_spec(parsed, code, limits, isolation))


def run_spec(spec: Spec, code: str, limits: Limits = Limits(), isolation: str = "auto") -> list[CaseResult]:
    """Every case of `spec` against `code` in one sandboxed run (the spec's own `timeout_s` replacing the limit)."""
    if spec.timeout_s is not None:
        limits = replace(limits, timeout_s=float(spec.timeout_s))
    cases = [Case(stdin=c.stdin, then=c.then) for c in spec.cases]
    return run_cases(program_for(spec, code), cases, limits, isolation, spec.entry_point, spec.prompt)


def _where(record: Any) -> str:
    meta = getattr(record, "meta", None) or {}
    return str(meta.get("row") or getattr(record, "id", "a record"))


class CodeVerifier:
    """The `code` verifier: many records (their completion against the spec in their `answer`) in parallel, one
    sandboxed process per problem per worker thread. The threads only wait on their child processes, so
    `workers` = cores keeps every core busy. Use as a context manager, or call `close()`.
    """

    name = "code"

    def __init__(self, workers: int | None = None, limits: Limits = Limits(), isolation: str = "auto"):
        if workers is not None and workers < 1:
            raise DistillError(f"code verifier workers must be >= 1, got {workers}")
        self.workers = workers or os.cpu_count() or 1
        self.limits, self.isolation = limits, isolation
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="code-verify")

    @property
    def version(self) -> str:
        """What decides a verdict: this verifier, the interpreter the programs run on, the isolation in force."""
        return f"{VERSION} python=={platform.python_version()} sandbox={sandbox_info(self.isolation)['isolation']}"

    def verify_many(self, records: Iterable[Any]) -> Iterator[Verdict]:
        """Verdicts for records, in input order. A record whose `answer` is not a test spec raises a DistillError
        naming its row: the tests are the dataset's, so a broken one is a setup mistake, not a wrong answer."""
        def pairs():
            for r in records:
                try:
                    spec = parse_spec(r.answer)
                except DistillError as e:
                    raise DistillError(f"{_where(r)}: field 'answer': {e}; code datasets need their tests there "
                                       f"(read them with --tests-key COLUMN)") from None
                yield r.completion, spec

        return self.grade_many(pairs())

    def grade_many(self, items: Iterable[tuple[str, str | dict | Spec]]) -> Iterator[Verdict]:
        """Verdicts for (completion, spec) pairs, in input order; at most 4 problems per worker in flight. A bad
        spec raises DistillError (naming what is wrong) when its item is reached."""
        window: deque = deque()
        for completion, spec in items:
            parsed = spec if isinstance(spec, Spec) else parse_spec(spec)
            window.append(self._pool.submit(verify_code, completion, parsed, self.limits, self.isolation))
            if len(window) >= 4 * self.workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> CodeVerifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
