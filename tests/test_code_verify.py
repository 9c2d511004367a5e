"""The code verifier: extraction, the test spec, every reason code, the pass fraction, the public-format
converters, the bundled HumanEval/MBPP tasks (canonical solutions pass, broken ones fail), parallel order, the
verifier protocol (make_verifier("code"), Verdict, rewards)."""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from distill.data.code_spec import normalise_output, parse_spec
from distill.data.code_tests import (from_apps, from_humaneval, from_livecodebench, from_mbpp, from_open_r1,
                                     humaneval_solution)
from distill.data.record import Record
from distill.errors import DistillError
from distill.verify import Verdict, make_verifier, rewards
from distill.verify import calibrate
from distill.verify import code as vc
from distill.verify import sandbox_host
from distill.verify.code import CodeVerifier, extract_code, verify_code
from distill.verify.sandbox import Limits, sandbox_info

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

TASKS = Path(vc.__file__).resolve().parents[1] / "tasks"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external"
FAST = Limits(timeout_s=0.5, total_timeout_s=20)


def block(code: str, tag: str = "python") -> str:
    return f"<think>\nLet me write it.\n</think>\nHere:\n```{tag}\n{code}\n```\n"


ADD_STDIN = json.dumps({"type": "stdin", "cases": [
    {"input": "1 2\n", "output": "3\n"}, {"input": "10 20\n", "output": "30\n"},
    {"input": "-1 1\n", "output": "0\n"}, {"input": "5 5\n", "output": "10\n"},
]})
ADD_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)"
ONE_CASE = json.dumps({"type": "stdin", "cases": [{"input": "", "output": "1"}]})


# --- extraction -----------------------------------------------------------------------------------

EXTRACTION = [
    ("plain python block", block("print(1)"), "print(1)\n"),
    ("untagged block", block("print(2)", tag=""), "print(2)\n"),
    ("py tag", block("print(3)", tag="py"), "print(3)\n"),
    ("the last of several", block("print(1)") + "\nBetter:\n```python\nprint(4)\n```", "print(4)\n"),
    ("another language is skipped", block("print(5)") + "\n```text\nsample output\n```", "print(5)\n"),
    ("code while thinking does not count", "<think>\n```python\nprint(6)\n```\n</think>\nNo code.", None),
    ("unclosed think means no answer", "<think>\n```python\nprint(7)\n```\n", None),
    ("no think block: the whole text", "```python\nprint(8)\n```", "print(8)\n"),
    ("after the last </think>", "<think>a</think>```python\nx=1\n```<think>b</think>\n```python\nprint(9)\n```",
     "print(9)\n"),
    ("unclosed fence is a truncated answer", "</think>\n```python\nprint(10)\n", None),
    ("tilde fence", "</think>\n~~~python\nprint(11)\n~~~", "print(11)\n"),
    ("four backticks hold three", "</think>\n````python\ns = '''\n```\n'''\nprint(12)\n````",
     "s = '''\n```\n'''\nprint(12)\n"),
    ("empty block", "</think>\n```python\n\n```", None),
    ("no block at all", "</think>\nThe answer is 42.", None),
]


@pytest.mark.parametrize("name,completion,expected", EXTRACTION, ids=[e[0] for e in EXTRACTION])
def test_extract_code(name, completion, expected):
    assert extract_code(completion) == expected


def test_output_normalisation():
    assert normalise_output("3  \r\n4\t\n\n\n") == "3\n4"
    assert normalise_output(" 3") != normalise_output("3")  # leading whitespace counts


# --- reasons and the pass fraction ----------------------------------------------------------------


def test_correct_stdin_program():
    v = verify_code(block(ADD_PROGRAM), ADD_STDIN)
    assert isinstance(v, Verdict)
    assert (v.correct, v.reason, v.score, v.reward, v.extracted_by) == (True, "", 1.0, 1.0, "code_block")
    assert v.extracted == ADD_PROGRAM + "\n"


def test_trailing_whitespace_and_crlf_are_forgiven():
    program = "a, b = map(int, input().split())\nprint(a + b, end='   \\r\\n\\n\\n')"
    assert verify_code(block(program), ADD_STDIN).correct


def test_pass_fraction_counts_each_case():
    program = "a, b = map(int, input().split())\nprint(a + b if a != 5 else 0)"
    v = verify_code(block(program), ADD_STDIN)
    assert (v.correct, v.reason, v.score, v.reward) == (False, "wrong_output", 0.75, 0.75)
    assert v.detail.startswith("3/4 passed") and "case 3" in v.detail and "expected '10'" in v.detail


REASON_CASES = [
    ("code_missing", "I would use a loop.", ADD_STDIN),
    ("compile_error", block("print(1"), ADD_STDIN),
    ("runtime_error", block("raise ValueError('boom')"), ADD_STDIN),
    ("wrong_output", block("print(3)"), ADD_STDIN),
    ("timeout", block("while True:\n    pass"), ONE_CASE),
    ("memory", block("x = bytearray(64 << 30)"), ONE_CASE),
    ("wrong_output", block("def f(x):\n    return x"),
     json.dumps({"type": "functional", "cases": ["assert f(1) == 2"]})),
    ("runtime_error", block("def f(x):\n    return x"), json.dumps({"type": "functional", "cases": ["g(1)"]})),
]


@pytest.mark.parametrize("reason,completion,spec", REASON_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(REASON_CASES)])
def test_every_reason_code(reason, completion, spec):
    v = verify_code(completion, spec, FAST)
    assert not v.correct and v.reason == reason and v.reason in vc.REASONS
    if reason == "code_missing":
        assert (v.extracted, v.extracted_by, v.score) == ("", "none", 0.0)
    else:
        assert v.extracted and v.extracted_by == "code_block"
    if reason == "compile_error":
        assert v.score == 0.0 and "SyntaxError" in v.detail


def test_sandbox_error_when_our_side_fails(monkeypatch):
    monkeypatch.setattr(sandbox_host, "_CHILD", "/nonexistent/child.py")
    monkeypatch.setattr(sandbox_host, "_ZYGOTE", sandbox_host._Zygote())  # a fresh launcher, which cannot start
    v = verify_code(block(ADD_PROGRAM), ADD_STDIN, FAST, isolation="fallback")
    assert (v.correct, v.reason) == (False, "sandbox_error")


def busy_for(cpu_s: float) -> str:
    """A correct stdin program that needs `cpu_s` CPU seconds (whatever the CPU's speed) and prints done."""
    return f"import time\nt = time.process_time()\nwhile time.process_time() - t < {cpu_s}:\n    pass\nprint('done')"


DONE = json.dumps({"type": "stdin", "cases": [{"input": "", "output": "done"}], "timeout_s": 1})


def test_spec_timeout_overrides_the_limits():
    spec = json.dumps({"type": "stdin", "cases": [{"input": "", "output": "done"}], "timeout_s": 0.5})
    v = verify_code(block(busy_for(1.5)), spec, Limits(timeout_s=10, speed_factor=1.0))
    assert v.reason == "timeout"
    assert verify_code(block(busy_for(1.5)), spec.replace("0.5", "3"), Limits(timeout_s=0.5, speed_factor=1.0)).correct


# --- limits that scale with the machine ------------------------------------------------------------


def test_a_correct_slow_program_passes_when_the_machine_is_slower(monkeypatch):
    # A program that needs 1.5 CPU s against a 1 s limit is what a correct answer looks like on a CPU slower than
    # the reference machine. The speed factor stretches the limit: doubled, the program passes, and an infinite
    # loop still times out, with the limit in force in its detail.
    monkeypatch.setenv(calibrate.ENV, "1")
    v = verify_code(block(busy_for(1.5)), DONE)
    assert (v.correct, v.reason) == (False, "timeout") and "hit the CPU time limit (1 s)" in v.detail
    monkeypatch.setenv(calibrate.ENV, "2")
    assert verify_code(block(busy_for(1.5)), DONE).correct
    with CodeVerifier(workers=1) as verifier:  # the path filter, eval and grpo take
        slow, loop = list(verifier.grade_many([(block(busy_for(1.5)), DONE), (block("while True:\n    pass"), DONE)]))
    assert slow.correct
    assert (loop.correct, loop.reason) == (False, "timeout")
    assert "hit the CPU time limit (2 s = 1 s x speed factor 2)" in loop.detail
    assert sandbox_info()["calibration"]["factor"] == 2.0


def test_the_calibration_is_measured_once_cached_and_never_below_one(monkeypatch, tmp_path):
    monkeypatch.delenv(calibrate.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def slow_machine():
        calls.append(1)
        return 2.5 * calibrate.REFERENCE_S

    monkeypatch.setattr(calibrate, "measure", slow_machine)
    monkeypatch.setattr(calibrate, "_cached", None)
    info = calibrate.calibration()
    assert info["factor"] == 2.5 and info["source"].startswith("measured") and calls == [1]
    cache = tmp_path / "distill" / "sandbox" / "calibration.json"
    assert list(json.loads(cache.read_text()).values())[0]["measured_s"] == 2.5 * calibrate.REFERENCE_S
    monkeypatch.setattr(calibrate, "_cached", None)  # a new process: read from the cache, not measured again
    assert calibrate.calibration()["source"].startswith("cached") and calls == [1]
    assert Limits(timeout_s=4, total_timeout_s=60).in_force() == Limits(10.0, total_timeout_s=150.0,
                                                                        speed_factor=2.5)
    monkeypatch.setattr(calibrate, "measure", lambda: calibrate.REFERENCE_S / 3)  # a faster machine
    monkeypatch.setattr(calibrate, "_cached", None)
    cache.unlink()
    assert calibrate.speed_factor() == 1.0  # limits are never tighter than on the reference machine


def test_the_real_measurement_runs_the_sandbox_interpreter():
    # CPU seconds on a VM vary with the host's load (1.7x seen between two runs here), so nothing asserts closeness
    # to the reference: the factor is a floor-at-1 stretch, and bundled limits leave a 3x margin on top of it.
    assert 0.01 < calibrate.measure() < 30


@pytest.mark.parametrize("raw", ["0.5", "fast", "nan", "inf"])
def test_a_bad_speed_factor_is_one_line(monkeypatch, raw):
    monkeypatch.setenv(calibrate.ENV, raw)
    with pytest.raises(DistillError, match="DISTILL_SANDBOX_SPEED_FACTOR=.*>= 1"):
        calibrate.speed_factor()
    with pytest.raises(DistillError, match="speed_factor"):
        Limits(speed_factor=0.5)


def test_bundled_limits_leave_three_times_each_canonical_solutions_cost():
    costs = json.loads((TASKS / "code_costs.json").read_text())
    for name in ("humaneval", "mbpp"):
        for r in load_code_task(name):
            limit = parse_spec(r["answer"]).timeout_s or Limits().timeout_s
            assert limit >= 3 * costs[name][r["id"]], (name, r["id"])
    (slow,) = [r for r in load_code_task("mbpp") if r["id"] == "123"]  # 3.2 s: timed out at 4 s on a slow CPU
    assert parse_spec(slow["answer"]).timeout_s == 10


@pytest.mark.slow
def test_mbpp_123_canonical_passes_on_a_cpu_twice_as_slow(monkeypatch):
    # Its canonical solution takes ~3 CPU s here; on a machine twice as slow it needs ~6 s of its 10 s x 2 limit.
    monkeypatch.setenv(calibrate.ENV, "2")
    (r,) = [r for r in load_code_task("mbpp") if r["id"] == "123"]
    assert verify_code(block(r["solution"]), r["answer"]).correct


def test_one_process_per_problem_not_per_case(monkeypatch):
    calls = []
    real = vc.run_cases
    monkeypatch.setattr(vc, "run_cases", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    verify_code(block(ADD_PROGRAM), ADD_STDIN)
    assert calls == [4]


# --- functional specs -------------------------------------------------------------------------------

PROMPT = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n'
HE_SPEC = json.dumps({"type": "functional", "entry_point": "total", "prompt": PROMPT,
                      "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n"
                              "    assert candidate([]) == 0\n"})


def test_humaneval_style_body_only_and_whole_function():
    assert verify_code(block("    return sum(xs)"), HE_SPEC).correct  # the body: appended to the prompt
    whole = "def total(xs: List[int]) -> int:\n    return sum(xs)"  # List needs the prompt's import
    assert verify_code(block(whole), HE_SPEC).correct
    assert verify_code(block("    return len(xs)"), HE_SPEC).reason == "wrong_output"


def test_call_cases_and_leetcode_solution_class():
    spec = json.dumps({"type": "functional", "entry_point": "twice", "cases": [
        {"args": [2], "expected": 4}, {"args": [[1]], "expected": [1, 1]},
        {"args": [3], "expected": [6], "unwrap": True},
    ]})
    assert verify_code(block("def twice(x):\n    return x * 2"), spec).correct
    leetcode = "class Solution:\n    def twice(self, x):\n        return x * 2"
    assert verify_code(block(leetcode), spec).correct
    v = verify_code(block("def twice(x):\n    return tuple([x]) * 2 if isinstance(x, list) else x * 3"), spec)
    assert (v.score, v.reason) == (0.0, "wrong_output")


def test_an_object_that_equals_anything_does_not_pass_a_call_case():
    spec = json.dumps({"type": "functional", "entry_point": "f", "cases": [{"args": [1], "expected": 2}]})
    always = "class Yes:\n    def __eq__(self, other):\n        return True\n\ndef f(x):\n    return Yes()"
    v = verify_code(block(always), spec)
    assert (v.correct, v.reason) == (False, "wrong_output") and "not a JSON value" in v.detail
    assert verify_code(block("def f(x):\n    return (x + 1,)"), spec.replace("2}", "[2]}")).correct  # tuples: lists


BAD_SPECS = [
    ("not json", "{'type': 'stdin'}", "not valid JSON"),
    ("not an object", "[1, 2]", "JSON object"),
    ("unknown type", '{"type": "unit"}', "'type' must be one of"),
    ("unknown key", '{"type": "stdin", "cases": [{"input": "", "output": ""}], "tests": []}', "unknown key"),
    ("no cases", '{"type": "stdin", "cases": []}', "non-empty list"),
    ("case keys", '{"type": "stdin", "cases": [{"in": "", "out": ""}]}', "exactly 'input' and 'output'"),
    ("bad timeout", '{"type": "stdin", "cases": [{"input": "", "output": ""}], "timeout_s": -1}', "timeout_s"),
    ("call without entry point", '{"type": "functional", "cases": [{"args": [], "expected": 1}]}', "entry_point"),
    ("test does not compile", '{"type": "functional", "cases": ["assert ("]}', "does not compile"),
    ("functional without tests", '{"type": "functional", "entry_point": "f"}', "'cases'"),
    ("bad entry point", '{"type": "functional", "entry_point": "not a name", "cases": ["pass"]}', "Python name"),
]


@pytest.mark.parametrize("name,spec,message", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_invalid_spec_names_what_is_wrong(name, spec, message):
    with pytest.raises(DistillError, match="code test spec") as err:
        parse_spec(spec)
    assert message in str(err.value)


# --- converters ---------------------------------------------------------------------------------------


def test_from_apps_stdin_and_call_based():
    spec = from_apps(json.dumps({"inputs": ["1 2\n", ["3 4"]], "outputs": ["3\n", ["7"]]}))
    assert json.loads(spec)["cases"][1] == {"input": "3 4\n", "output": "7\n"}
    assert verify_code(block(ADD_PROGRAM), spec).correct
    calls = from_apps({"inputs": [[1, 2], [5, 5]], "outputs": [[3], [10]], "fn_name": "add"})
    assert verify_code(block("def add(a, b):\n    return a + b"), calls).correct
    assert verify_code(block("def add(a, b):\n    return a - b"), calls).reason == "wrong_output"
    with pytest.raises(DistillError, match="inputs"):
        from_apps({"inputs": ["1"], "outputs": []})


def test_from_open_r1():
    info = {"language": "python", "test_cases": [
        {"fn_name": None, "input": "2 3\n", "output": "5\n", "type": "stdin_stdout"}]}
    assert verify_code(block(ADD_PROGRAM), from_open_r1(json.dumps(info))).correct
    calls = {"language": "python", "test_cases": [
        {"fn_name": "add", "input": "[2, 3]", "output": "[5]", "type": "function_call"}]}
    assert verify_code(block("def add(a, b):\n    return a + b"), from_open_r1(calls)).correct
    with pytest.raises(DistillError, match="only Python"):
        from_open_r1({"language": "cpp", "test_cases": info["test_cases"]})


def _lcb_compress(cases: list) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


def test_from_livecodebench_stdin_with_compressed_private_tests():
    row = {"public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
           "private_test_cases": _lcb_compress([{"input": "4 4\n", "output": "8\n", "testtype": "stdin"}]),
           "metadata": "{}"}
    spec = from_livecodebench(row)
    assert len(json.loads(spec)["cases"]) == 2
    assert verify_code(block(ADD_PROGRAM), spec).correct


def test_from_livecodebench_functional():
    row = {"public_test_cases": json.dumps([
        {"input": "[1, 2, 3]\n2", "output": "[3, 4, 5]", "testtype": "functional"}]),
        "private_test_cases": "", "metadata": json.dumps({"func_name": "addAll"})}
    solution = ("from typing import List\nclass Solution:\n"
                "    def addAll(self, xs: List[int], k: int) -> List[int]:\n        return [x + k for x in xs]")
    assert verify_code(block(solution), from_livecodebench(row)).correct


def test_livecodebench_pickles_that_reference_code_are_refused():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    row = {"public_test_cases": "[]", "private_test_cases": evil}
    with pytest.raises(DistillError, match="refusing to unpickle"):
        from_livecodebench(row)


def test_from_humaneval_and_mbpp_fixtures():
    he = {"task_id": "X/0", "prompt": PROMPT, "entry_point": "total", "canonical_solution": "    return sum(xs)\n",
          "test": "def check(candidate):\n    assert candidate([3]) == 3\n"}
    assert verify_code(block(humaneval_solution(he)), from_humaneval(he)).correct
    mbpp = {"code": "import math\ndef root(x):\n    return math.isqrt(x)", "test_imports": ["import math"],
            "test_list": ["assert root(9) == 3", "assert root(10) == math.isqrt(10)"]}
    spec = from_mbpp(mbpp)
    assert json.loads(spec)["entry_point"] == "root" and json.loads(spec)["setup"] == "import math"
    assert verify_code(block(mbpp["code"]), spec).correct
    v = verify_code(block("def root(x):\n    return 3 if x == 9 else 0"), spec)
    assert (v.score, v.reason) == (0.5, "wrong_output")


# --- the bundled tasks --------------------------------------------------------------------------------


def load_code_task(name: str) -> list[dict]:
    spec = yaml.safe_load((TASKS / f"{name}.yaml").read_text(encoding="utf-8"))
    data = (TASKS / spec["data"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == spec["sha256"]
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert len(rows) == spec["rows"]
    return rows


@pytest.mark.parametrize("name,rows", [("humaneval", 164), ("mbpp", 427)])
def test_code_task_files(name, rows):
    spec = yaml.safe_load((TASKS / f"{name}.yaml").read_text(encoding="utf-8"))
    assert (spec["rows"], spec["answer_type"], spec["verifier"]) == (rows, "code", "code")
    assert len(spec["source"]["commit"]) == 40 and len(spec["source"]["sha256"]) == 64
    data = load_code_task(name)
    assert len({r["id"] for r in data}) == rows
    for r in data:
        assert set(r) == {"id", "problem", "answer", "solution"}
        assert parse_spec(r["answer"]).total >= 1
    if name == "humaneval" and SHARED.is_dir():
        assert spec["source"]["licence_text"] == (SHARED / "code/human-eval/LICENSE").read_text(encoding="utf-8")


def test_build_code_is_reproducible(tmp_path):
    if not (SHARED / "code").is_dir():
        pytest.skip("../shared/data/external is absent")
    from distill.tasks.build_code import main

    main(["--shared", str(SHARED), "--out", str(tmp_path)])
    for name in ("humaneval.jsonl", "humaneval.yaml", "mbpp.jsonl", "mbpp.yaml"):
        assert (tmp_path / name).read_bytes() == (TASKS / name).read_bytes(), name


def broken(solution: str, entry_point: str) -> str:
    """The canonical solution with its entry point replaced by one that returns None."""
    return f"{solution}\n\n\ndef {entry_point}(*args, **kwargs):\n    return None\n"


def canonical_and_broken(step: int) -> list[tuple[str, str, str, bool]]:
    """(task/id, completion, spec, should pass) for every `step`-th row of both tasks."""
    items = []
    for name in ("humaneval", "mbpp"):
        for r in load_code_task(name)[::step]:
            entry = parse_spec(r["answer"]).entry_point
            items.append((f"{name}/{r['id']}", block(r["solution"]), r["answer"], True))
            items.append((f"{name}/{r['id']}", block(broken(r["solution"], entry)), r["answer"], False))
    return items


def check_canonical_and_broken(items) -> None:
    with CodeVerifier() as verifier:
        verdicts = list(verifier.grade_many((c, s) for _, c, s, _ in items))
    wrong = [(key, v.reason, v.detail) for (key, _, _, ok), v in zip(items, verdicts) if v.correct != ok]
    assert wrong == []
    assert all(v.reason in ("wrong_output", "runtime_error") for (_, _, _, ok), v in zip(items, verdicts) if not ok)


def test_every_canonical_solution_passes_and_every_broken_one_fails():
    # 1182 sandboxed runs, all cores: ~15-25 s on 2 busy cores
    check_canonical_and_broken(canonical_and_broken(step=1))


def test_off_by_one_fails():
    (r,) = [r for r in load_code_task("humaneval") if r["id"] == "HumanEval/0"]
    off = r["solution"].replace("distance < threshold", "distance <= threshold + 1")
    assert verify_code(block(off), r["answer"]).reason == "wrong_output"


# --- parallel -------------------------------------------------------------------------------------------


def test_verify_many_keeps_input_order_in_parallel():
    items = []
    for i in range(12):
        spec = json.dumps({"type": "stdin", "cases": [{"input": "", "output": str(i)}]})
        # early items are slow, late ones fast, half are wrong: order must still be the input's
        program = f"import time\ntime.sleep({0.3 if i < 4 else 0})\nprint({i if i % 2 == 0 else -1})"
        items.append((block(program), spec))
    with CodeVerifier(workers=4) as verifier:
        verdicts = list(verifier.grade_many(items))
    assert [v.correct for v in verdicts] == [i % 2 == 0 for i in range(12)]
    assert [v.extracted.splitlines()[-1] for v in verdicts] == [
        f"print({i if i % 2 == 0 else -1})" for i in range(12)]


def record(i: int, completion: str, answer: str) -> Record:
    return Record(id=f"t/p{i}/0", problem_id=f"p{i}", problem="Add two numbers.", answer=answer,
                  completion=completion, meta={"row": f"data.jsonl:{i + 1}"})


def test_verify_many_raises_on_a_bad_spec_naming_the_row():
    records = [record(0, block(ADD_PROGRAM), ADD_STDIN), record(1, block(ADD_PROGRAM), "42")]
    with CodeVerifier(workers=2) as verifier, pytest.raises(DistillError, match="code test spec") as err:
        list(verifier.verify_many(records))
    assert str(err.value).startswith("data.jsonl:2: field 'answer'") and "--tests-key" in str(err.value)
    with pytest.raises(DistillError, match="workers"):
        CodeVerifier(workers=0)


def test_the_verifier_seam_grades_records_and_gives_the_rl_reward():
    """What filter, eval and an RL reward call: make_verifier("code", options).verify_many(records)."""
    half = "a, b = map(int, input().split())\nprint(a + b + (a < 2))"
    records = [record(0, block(ADD_PROGRAM), ADD_STDIN), record(1, block(half), ADD_STDIN),
               record(2, "<think>\nhmm</think>\nNo code.", ADD_STDIN)]
    with make_verifier("code", SimpleNamespace(workers=2)) as verifier:
        assert verifier.name == "code" and verifier.version.startswith(vc.VERSION + " python==")
        verdicts = list(verifier.verify_many(records))
        assert rewards(verifier, records) == [1.0, 0.5, 0.0]
    assert [(v.correct, v.reason, v.score) for v in verdicts] == [
        (True, "", 1.0), (False, "wrong_output", 0.5), (False, "code_missing", 0.0)]
    assert [v.extracted_by for v in verdicts] == ["code_block", "code_block", "none"]
