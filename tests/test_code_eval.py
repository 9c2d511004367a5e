"""`distill eval` on the code tasks: the task's own prompt, pass@1/pass@k from the sandboxed tests, the verifier in
results.json. Canonical solutions graded through --completions score 100%, broken ones 0% (no model needed)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from distill.cli import main
from distill.config import EvalConfig, build_config
from distill.data.code_spec import parse_spec
from distill.eval.run import run
from distill.prompts import CODE_TEMPLATE, DEFAULT_TEMPLATE
from distill.tasks import get_task, load_task, prompt_template

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")


def block(code: str) -> str:
    return f"<think>\nI will write the function.\n</think>\n\n```python\n{code}\n```\n"


def broken(row: dict) -> str:
    """The canonical solution with its entry point replaced by one that returns None."""
    entry = parse_spec(row["answer"]).entry_point
    return f"{row['solution']}\n\n\ndef {entry}(*args, **kwargs):\n    return None\n"


def completions(path: Path, rows: list[dict], *makers) -> Path:
    """One sample per maker per task row: problem_id = the task's id, as a generate run of the task stores it."""
    lines = [json.dumps({"problem_id": r["id"], "sample_index": i, "completion": block(make(r))})
             for r in rows for i, make in enumerate(makers)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def eval_cfg(**kw) -> EvalConfig:
    return build_config(EvalConfig, {"workers": 2, **kw})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_code_tasks_ask_for_a_code_block_and_a_file_overrides(tmp_path):
    assert get_task("humaneval").prompt_template == get_task("mbpp").prompt_template == CODE_TEMPLATE
    assert prompt_template("humaneval") == CODE_TEMPLATE and "boxed" not in CODE_TEMPLATE
    assert prompt_template("aime24") == DEFAULT_TEMPLATE and get_task("aime24").prompt_template is None
    own = tmp_path / "mine.txt"
    own.write_text("Solve in Python: {problem}", encoding="utf-8")
    assert prompt_template("humaneval", str(own)) == "Solve in Python: {problem}"
    local = tmp_path / "humaneval"  # a folder that happens to share a task's name is data, not the task
    local.mkdir()
    assert prompt_template(str(local)) == DEFAULT_TEMPLATE
    assert prompt_template(str(local), code=True) == CODE_TEMPLATE  # a code dataset (--tests-key) gets the code prompt
    assert prompt_template("aime24", code=True) == DEFAULT_TEMPLATE  # a bundled task keeps its own


@pytest.mark.parametrize("maker,expected,step", [(lambda r: r["solution"], 100.0, 1), (broken, 0.0, 4)],
                         ids=["canonical-all-164", "broken-every-4th"])
def test_humaneval_completions_canonical_100_broken_0(tmp_path, maker, expected, step):
    rows = load_task("humaneval")[::step]
    out = tmp_path / "eval"
    results = run(eval_cfg(completions=str(completions(tmp_path / "c.jsonl", rows, maker)), task="humaneval",
                           out=str(out)))
    r = results["results"]["humaneval"]
    assert (r["pass@1"], r["problems"], r["samples"]) == (expected, len(rows), len(rows))
    assert r["verifier"] == "code" and r["verifier_version"].startswith("distill-code/1 python==")
    assert "cons@1" not in r  # majority vote is for math answers only
    task = results["provenance"]["tasks"]["humaneval"]
    assert task["verifier"] == "code" and task["sandbox"]["isolation"] in ("namespaces", "fallback")
    assert task["prompt_template_sha256"] == hashlib.sha256(CODE_TEMPLATE.encode()).hexdigest()
    samples = read_jsonl(out / "samples.jsonl")
    assert all(s["extracted_by"] == "code_block" and s["task"] == "humaneval" for s in samples)
    if expected == 0.0:
        assert set(r["reasons"]) <= {"wrong_output", "runtime_error"}


def test_mbpp_pass_at_k_over_a_canonical_and_a_broken_sample(tmp_path):
    rows = load_task("mbpp")[:40]
    path = completions(tmp_path / "mbpp_samples.jsonl", rows, lambda r: r["solution"], broken)
    r = run(eval_cfg(completions=str(path), task="mbpp", out=str(tmp_path / "o")))["results"]["mbpp"]
    assert (r["pass@1"], r["pass@2"], r["n"], r["problems"]) == (50.0, 100.0, 2, 40)


def test_cli_eval_completions_on_a_code_task(tmp_path):
    rows = load_task("humaneval")[:5]
    path = completions(tmp_path / "he.jsonl", rows, lambda r: r["solution"])
    assert main(["eval", "--completions", str(path), "--task", "humaneval", "--out", str(tmp_path / "o"),
                 "--workers", "2"]) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["results"]["humaneval"]["pass@1"] == 100.0 and results["results"]["humaneval"]["problems"] == 5


def test_eval_on_a_code_data_file_with_tests_key_grades_with_the_code_verifier(tmp_path):
    rows = [{"q": "Print the sum of the two integers on the input line.", "io": json.dumps(
        {"inputs": ["1 2\n"], "outputs": ["3\n"]}), "completion": block("print(sum(map(int, input().split())))")}]
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
    r = run(eval_cfg(completions=str(path), problem_key="q", tests_key="io", out=str(tmp_path / "o")))
    assert r["results"]["mine"]["pass@1"] == 100.0 and r["provenance"]["tasks"]["mine"]["verifier"] == "code"


@pytest.mark.slow
def test_tiny_model_generates_for_humaneval_and_mbpp_with_the_code_prompt(vllm_engine, tmp_path):
    out = tmp_path / "eval"
    cfg = eval_cfg(model="tiny", tasks="humaneval,mbpp", limit=2, n=2, max_tokens=16, out=str(out))
    results = run(cfg, engine=vllm_engine)
    for name in ("humaneval", "mbpp"):
        r = results["results"][name]
        assert (r["problems"], r["samples"], r["n"]) == (2, 4, 2)
        assert r["pass@1"] == 0.0 and "pass@2" in r and r["verifier"] == "code"  # a random model writes no code
        key = results["provenance"]["generate_manifests"][name]["resume_key"]
        assert key["prompt_template_sha256"] == hashlib.sha256(CODE_TEMPLATE.encode()).hexdigest()
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 8 and {s["reason"] for s in samples} <= {"code_missing", "compile_error",
                                                                     "runtime_error", "wrong_output"}
