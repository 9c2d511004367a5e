"""Code datasets in: tests in a column (APPS/TACO input_output, open-r1 verification_info, OpenThoughts test_cases,
LiveCodeBench public/private tests) become the gold spec through the reader, bad rows name file:line and the column,
and `distill filter --steps finished,think_format,code_correct` runs end to end on a fixture of each format."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from distill.cli import main
from distill.config import FilterConfig, build_config
from distill.data.code_spec import parse_spec
from distill.data.code_tests import detect_tests_format, spec_of_tests
from distill.data.reader import read_problems, read_samples
from distill.errors import DistillError
from distill.filters.run import run

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

CODE = Path(__file__).parent / "fixtures" / "datasets" / "code"
STEPS = ["finished", "think_format", "code_correct"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read(folder: Path) -> list[dict]:
    return [row for part in sorted(folder.glob("part-*.parquet")) for row in pq.read_table(part).to_pylist()]


def line(row: dict) -> int:
    """The 0-based input line an output row came from (the reader keeps `file:line` in meta.row)."""
    return int(json.loads(row["meta"])["row"].rsplit(":", 1)[1]) - 1


# --- the reader ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,key,kwargs,types", [
    ("apps", "input_output", {}, ["stdin"] * 3 + ["functional"] * 3 + ["stdin"] * 3),
    ("open_r1", "verification_info", {}, ["stdin"] * 3 + ["functional"] * 2),
    ("openthoughts", "test_cases", {}, ["stdin", "stdin", "functional"]),
    ("livecodebench", "public_test_cases", {"problem_key": "question_content"}, ["stdin", "stdin"]),
])
def test_the_reader_puts_each_rows_tests_in_its_answer(name, key, kwargs, types):
    records = list(read_samples(CODE / f"{name}.jsonl", tests_key=key, **kwargs))
    specs = [parse_spec(r.answer) for r in records]
    assert [s.type for s in specs] == types
    assert all(r.answer_from == "" for r in records)  # the tests are the dataset's own gold
    if name == "livecodebench":
        assert [s.total for s in specs] == [3, 3]  # the public case + the two compressed private ones


def test_formats_are_detected_from_the_column_name_or_content():
    row = {"input_output": "{}", "verification_info": "{}", "test_list": ["assert f() == 1"],
           "test_cases": json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]}),
           "tests": {"type": "stdin", "cases": [{"input": "", "output": "1"}]},
           "other": json.dumps({"language": "python", "test_cases": []}),
           "test": "def check(candidate): pass", "prompt": "def f():\n", "entry_point": "f"}
    detected = {k: detect_tests_format(row, k) for k in ("input_output", "verification_info", "test_list",
                                                         "test_cases", "tests", "other", "test")}
    assert detected == {"input_output": "apps", "verification_info": "open_r1", "test_list": "mbpp",
                        "test_cases": "apps", "tests": "spec", "other": "open_r1", "test": "humaneval"}
    with pytest.raises(DistillError, match="--tests-format"):
        detect_tests_format({"t": "assert x"}, "t")
    spec = spec_of_tests({"t": json.dumps({"inputs": ["2\n"], "outputs": ["4\n"]})}, "t", "apps")
    assert json.loads(spec) == {"type": "stdin", "cases": [{"input": "2\n", "output": "4\n"}]}


BAD_ROWS = [
    ("mismatched", {"input_output": json.dumps({"inputs": ["1\n", "2\n"], "outputs": ["1\n"]})},
     "field 'input_output': code test spec: input_output has 2 inputs and 1 outputs"),
    ("not json", {"input_output": "{inputs: 1"}, "field 'input_output': code test spec: input_output is not valid"),
    ("empty", {"input_output": ""}, "field 'input_output': is empty"),
    ("missing", {}, "no column 'input_output'"),
]


@pytest.mark.parametrize("name,extra,message", BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_a_bad_row_fails_with_its_file_line_and_field(tmp_path, name, extra, message):
    good = {"problem": "p", "completion": "c", "input_output": json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]})}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, {"problem": "q", "completion": "c", **extra}])
    with pytest.raises(DistillError) as err:
        list(read_samples(path, tests_key="input_output"))
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)
    stats: dict = {}
    kept = list(read_samples(path, tests_key="input_output", skip_invalid=True, stats=stats))
    assert len(kept) == 1 and stats["invalid"] == 1


def test_generate_and_eval_read_code_problems_with_their_tests():
    problems = read_problems(CODE / "apps.jsonl", tests_key="input_output")
    assert len(problems) == 3  # nine samples of three problems
    assert [parse_spec(p.answer).type for p in problems] == ["stdin", "functional", "stdin"]
    with pytest.raises(DistillError, match="apps.jsonl:1: no column 'tests'"):
        read_problems(CODE / "apps.jsonl", tests_key="tests")


def test_openthoughts_metadata_rows_are_detected_and_mixed_domains_can_be_skipped(tmp_path):
    (code, *_) = list(read_samples(CODE / "openthoughts.jsonl", tests_key="test_cases"))
    assert code.meta["format"] == "openthoughts" and code.meta["domain"] == "code" and code.meta["origin"] == "taco"
    assert code.completion.startswith("<think>\nLoop from 1 to n") and "</think>\n\n```python\nn = int" in \
        code.completion
    math = {"problem": "What is $1+1$?", "deepseek_reasoning": "One and one.", "deepseek_solution": "$\\boxed{2}$",
            "ground_truth_solution": "It is $\\boxed{2}$.", "domain": "math", "source": "numina_math",
            "test_cases": None, "starter_code": None}
    rows = [json.loads(line) for line in (CODE / "openthoughts.jsonl").read_text().splitlines()]
    path = write_jsonl(tmp_path / "mixed.jsonl", [math, *rows])
    (plain,) = [r for r in read_samples(path) if r.meta["domain"] == "math"]
    assert (plain.answer, plain.answer_from) == ("2", "solution_boxed")
    with pytest.raises(DistillError, match="mixed.jsonl:1: field 'test_cases': is empty"):
        list(read_samples(path, tests_key="test_cases"))
    stats: dict = {}
    assert len(list(read_samples(path, tests_key="test_cases", skip_invalid=True, stats=stats))) == 3
    assert stats["invalid"] == 1


# --- distill filter, end to end ---------------------------------------------------------------------------

FILTER_CASES = {
    # fixture: (reader options, {sample id: (step, reason)} for rejected samples; the rest are kept)
    "apps": ({"tests_key": "input_output"}, 9, {
        1: ("code_correct", "wrong_output"), 2: ("code_correct", "code_missing"),
        5: ("code_correct", "runtime_error"), 7: ("code_correct", "compile_error"), 8: ("finished", "truncated")}),
    "open_r1": ({"tests_key": "verification_info"}, 5, {
        1: ("code_correct", "wrong_output"), 2: ("think_format", "format_unclosed_think"),
        4: ("code_correct", "compile_error")}),
    "openthoughts": ({"tests_key": "test_cases"}, 3, {1: ("code_correct", "wrong_output")}),
    "livecodebench": ({"tests_key": "public_test_cases", "problem_key": "question_content"}, 2,
                      {1: ("code_correct", "wrong_output")}),
}


@pytest.mark.parametrize("name", FILTER_CASES)
def test_filter_code_correct_end_to_end(name, tmp_path):
    options, n, rejected_rows = FILTER_CASES[name]
    out = tmp_path / "out"
    cfg = build_config(FilterConfig, {"input": str(CODE / f"{name}.jsonl"), "out": str(out), "steps": STEPS,
                                      "workers": 2, **options})
    stats = run(cfg)
    kept, rejected = _read(out / "kept"), _read(out / "rejected")
    assert (stats["input"], stats["kept"], stats["rejected"]) == (n, n - len(rejected_rows), len(rejected_rows))
    assert {line(r): (r["step"], r["reason"]) for r in rejected} == rejected_rows
    assert sorted(map(line, kept)) == sorted(set(range(n)) - set(rejected_rows))
    assert [s["name"] for s in stats["steps"]] == STEPS
    code_step = stats["steps"][2]
    want = sorted(reason for step, reason in rejected_rows.values() if step == "code_correct")
    assert sorted(r for r, k in code_step["reasons"].items() for _ in range(k)) == want
    assert stats["verifier_versions"]["code_correct"].startswith("distill-code/1 python==")
    for r in kept:  # the graded code is kept with the trace, and the tests travel in the answer
        assert r["extracted_by"] == "code_block" and r["extracted"] in r["completion"]
        assert parse_spec(r["answer"]).total >= 1
        assert r["messages"][-1]["content"] == r["completion"]
    missing = [r for r in rejected if r["reason"] == "code_missing"]
    assert all(r["extracted"] == "" and r["extracted_by"] == "none" for r in missing)


def test_cli_filter_with_tests_key(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["filter", str(CODE / "apps.jsonl"), "--out", str(out), "--steps", ",".join(STEPS),
                 "--tests-key", "input_output", "--workers", "2"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == 4 and stats["steps"][2]["reasons"] == {
        "code_missing": 1, "compile_error": 1, "runtime_error": 1, "wrong_output": 1}
    assert main(["filter", str(CODE / "apps.jsonl"), "--out", str(tmp_path / "x"), "--steps", ",".join(STEPS),
                 "--tests-key", "input_output", "--tests-format", "humaneval"]) == 1
    assert "field 'input_output'" in capsys.readouterr().err


def test_code_correct_without_tests_says_how_to_give_them(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", [{"problem": "1+1?", "answer": "2", "completion": "<think>\nx\n"
                                                  "</think>\n```python\nprint(2)\n```"}])
    cfg = build_config(FilterConfig, {"input": str(path), "out": str(tmp_path / "o"), "steps": STEPS, "workers": 1})
    with pytest.raises(DistillError, match=r"math.jsonl:1: field 'answer': code test spec: .*--tests-key"):
        run(cfg)
    assert not (tmp_path / "o").exists()  # transactional: nothing half-written
