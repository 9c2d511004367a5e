"""`--audit` on filter and eval: each math verdict beside plain math-verify's; disagreements by category on file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.cli import main
from distill.config import EvalConfig, FilterConfig, build_config
from distill.errors import DistillError
from distill.eval.run import run as eval_run
from distill.filters.run import run as filter_run
from distill.verify import Verdict
from distill.verify.math_audit import category, plain_grade


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def think(answer: str) -> str:
    return f"<think>\nWork it out.\n</think>\n{answer}"


# (problem id, gold, completion, the audit category or None where both graders agree)
CASES = [
    ("hedged", "5", think("\\boxed{5\\text{ or more}}"), "distill_rejects_mathverify_accepts:answer_hedged"),
    ("unit", "5.4 \\text{ cents}", think("\\boxed{5.4 \\text{ dollars}}"),
     "distill_rejects_mathverify_accepts:answer_unit_mismatch"),
    ("merged", "58,500", think("So \\boxed{58} and \\boxed{500}."), "distill_rejects_mathverify_accepts:answer_multiple"),
    ("approx", "\\frac{1}{3}", think("\\boxed{0.333333}"), "distill_rejects_mathverify_accepts:answer_approximate"),
    ("unboxed", "42", think("The answer is 42."), "distill_rejects_mathverify_accepts:no_answer"),  # filter: boxed only
    ("identity", "\\frac{e^{2x}-1}{e^{2x}+1}", think("\\boxed{\\tanh x}"), "distill_accepts_mathverify_rejects"),
    ("symbols", "E_{1},E_{2}", think("\\boxed{E_1,E_2}"), "distill_accepts_mathverify_rejects"),
    ("right", "42", think("\\boxed{42}"), None),
    ("wrong", "42", think("\\boxed{41}"), None),
]


def records(cases=CASES) -> list[dict]:
    return [{"id": f"toy/{pid}/0", "problem_id": pid, "problem": f"Problem {pid}?", "answer": gold,
             "completion": completion, "finish_reason": "stop", "sample_index": 0, "source": "toy"}
            for pid, gold, completion, _ in cases]


def test_category_names_the_side_and_distills_reason():
    right, wrong = Verdict(True, "", "5"), Verdict(False, "answer_hedged", "5")
    assert category(right, right) is None and category(wrong, wrong) is None
    assert category(wrong, right) == "distill_rejects_mathverify_accepts:answer_hedged"
    assert category(right, wrong) == "distill_accepts_mathverify_rejects"


def test_plain_is_math_verify_on_the_answer_part():
    # A box written while thinking is not the answer; math-verify sees only the text after </think>.
    assert not plain_grade("<think>\n\\boxed{7}\n</think>\nNo idea.", "7").correct
    assert plain_grade("<think>\nhm\n</think>\nThe answer is $7$.", "7").correct
    assert not plain_grade("<think>\nunclosed \\boxed{7}", "7").correct  # cut off mid-thought: no answer part
    assert plain_grade("<think>x</think>\\boxed{5\\text{ or more}}", "5").correct  # the leniency the audit shows


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit_filter")
    rows = records() + [{**records()[-2], "id": "toy/nothink/0", "problem_id": "nothink", "completion": "\\boxed{42}"}]
    data = write_jsonl(tmp / "records.jsonl", rows)
    out = tmp / "out"
    stats = filter_run(build_config(FilterConfig, {"input": str(data), "out": str(out), "workers": 2, "audit": True,
                                                   "steps": ["think_format", "answer_correct"]}))
    return stats, out


def test_filter_audit_rows_have_the_right_categories(filtered):
    _, out = filtered
    rows = read_jsonl(out / "audit.jsonl")
    expected = {f"toy/{pid}/0": cat for pid, _, _, cat in CASES if cat}
    assert {r["id"]: r["category"] for r in rows} == expected
    hedged = next(r for r in rows if r["problem_id"] == "hedged")
    assert hedged == {**hedged, "gold": "5", "distill_correct": False, "distill_reason": "answer_hedged",
                      "mathverify_correct": True, "mathverify_reason": ""}
    assert next(r for r in rows if r["problem_id"] == "identity")["distill_extracted"] == "\\tanh x"


def test_filter_stats_count_the_categories(filtered):
    stats, out = filtered
    audit = stats["audit"]
    assert json.loads((out / "stats.json").read_text())["audit"] == audit
    assert audit["audited"] == len(CASES)  # the record think_format dropped never reached the grader
    assert audit["disagree"] == 7 and audit["agree"] == 2
    assert audit["categories"] == {"distill_accepts_mathverify_rejects": 2,
                                   "distill_rejects_mathverify_accepts:answer_approximate": 1,
                                   "distill_rejects_mathverify_accepts:answer_hedged": 1,
                                   "distill_rejects_mathverify_accepts:answer_multiple": 1,
                                   "distill_rejects_mathverify_accepts:answer_unit_mismatch": 1,
                                   "distill_rejects_mathverify_accepts:no_answer": 1}
    assert audit["distill_correct"] == 3 and audit["mathverify_correct"] == 6
    assert "math-verify==" in audit["grader"]
    # The audit changes nothing that is kept: the same records as distill's verdicts alone.
    assert stats["kept"] == 3


def test_filter_without_audit_writes_none(tmp_path):
    data = write_jsonl(tmp_path / "r.jsonl", records(CASES[:1]))
    stats = filter_run(build_config(FilterConfig, {"input": str(data), "out": str(tmp_path / "o"), "workers": 1,
                                                   "steps": ["answer_correct"]}))
    assert stats["audit"] is None and not (tmp_path / "o" / "audit.jsonl").exists()


def test_filter_audit_misuse_is_one_line(tmp_path, capsys):
    data = write_jsonl(tmp_path / "r.jsonl", records(CASES[:1]))
    with pytest.raises(DistillError, match="--steps .*has no answer_correct.*add answer_correct"):
        filter_run(build_config(FilterConfig, {"input": str(data), "out": str(tmp_path / "o"), "audit": True,
                                               "steps": ["think_format"]}))
    assert main(["filter", str(data), "--out", str(tmp_path / "o"), "--steps", "code_correct", "--audit"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --audit") and "code_correct runs tests" in err and "\n" not in err


def test_eval_audit_regrades_completions_against_the_task(tmp_path):
    """MATH-500 golds (a unit, a merged pair, a fraction), completions regraded with --task, eval's chain extraction."""
    ids = {"unit": "test/prealgebra/1044.json", "merged": "test/counting_and_probability/737.json",
           "approx": "test/counting_and_probability/430.json"}
    rows = [{"problem_id": ids[pid], "completion": completion, "sample_index": i}
            for pid, _, completion, _ in CASES if pid in ids for i in range(2)]
    rows += [{"problem_id": ids["approx"], "completion": think("\\boxed{\\dfrac{1}{3}}"), "sample_index": 2},
             {"problem_id": ids["unit"], "completion": think("The answer is $5.4$ cents."), "sample_index": 2}]
    data = write_jsonl(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "out"
    assert main(["eval", "--completions", str(data), "--task", "math500", "--out", str(out), "--workers", "2",
                 "--audit"]) == 0
    results = json.loads((out / "results.json").read_text())
    audit = results["results"]["math500"]["audit"]
    assert audit["audited"] == 8 and audit["disagree"] == 6
    assert audit["categories"] == {"distill_rejects_mathverify_accepts:answer_approximate": 2,
                                   "distill_rejects_mathverify_accepts:answer_multiple": 2,
                                   "distill_rejects_mathverify_accepts:answer_unit_mismatch": 2}
    audit_rows = read_jsonl(out / "audit.jsonl")
    assert len(audit_rows) == 6 and {r["task"] for r in audit_rows} == {"math500"}
    assert {r["gold"] for r in audit_rows} == {"5.4 \\text{ cents}", "58,500", "\\frac{1}{3}"}
    assert all(r["id"].startswith("samples/test/") for r in audit_rows)
    from distill.data.io import iter_rows

    assert {w.split(":")[0] for w, _ in iter_rows(out)} == {str(out / "samples.jsonl")}  # audit rows are not samples
    # A rerun without --audit removes the file that no longer describes its samples.
    assert main(["eval", "--completions", str(data), "--task", "math500", "--out", str(out), "--workers", "1"]) == 0
    assert not (out / "audit.jsonl").exists()
    assert "audit" not in json.loads((out / "results.json").read_text())["results"]["math500"]


def test_eval_audit_of_code_only_is_one_line_and_mixed_is_noted(tmp_path):
    data = write_jsonl(tmp_path / "c.jsonl", [{"problem": "add", "answer": "x", "completion": "```python\npass\n```"}])
    with pytest.raises(DistillError, match="graded by the code verifier; code is graded by running its tests"):
        eval_run(build_config(EvalConfig, {"completions": str(data), "verifier": "code", "out": str(tmp_path / "o"),
                                           "audit": True}))
    from distill.eval.run import EvalTask, _grade_task

    cfg = build_config(EvalConfig, {"out": str(tmp_path / "o"), "audit": True, "workers": 1})
    _, score = _grade_task([], EvalTask("humaneval", "humaneval", True, "auto", "code"), cfg, [])
    assert score["audit"] == {"applies": False, "why": "code is graded by running its tests; there is no second "
                                                       "grader to compare (audit is math only)"}


def test_eval_merge_sums_the_shards_audits(tmp_path):
    rows = [{"problem_id": pid, "answer": gold, "problem": f"Problem {pid}?", "completion": completion}
            for pid, gold, completion, _ in CASES]
    data = write_jsonl(tmp_path / "toy.jsonl", rows)
    single = eval_run(build_config(EvalConfig, {"completions": str(data), "out": str(tmp_path / "one"), "workers": 2,
                                                "audit": True, "answer_extraction": "boxed"}))
    for i in range(2):
        eval_run(build_config(EvalConfig, {"completions": str(data), "out": str(tmp_path / "sharded"), "workers": 2,
                                           "audit": True, "answer_extraction": "boxed", "shard": f"{i}/2"}))
    shard_rows = [read_jsonl(tmp_path / "sharded" / f"shard-{i}-of-2" / "audit.jsonl") for i in range(2)]
    assert all(shard_rows) and sum(map(len, shard_rows)) == 7  # the split put disagreements in both shards
    from distill.eval.merge import merge

    merged = merge([str(tmp_path / "sharded")])
    assert merged["results"]["toy"]["audit"] == single["results"]["toy"]["audit"]
    assert single["results"]["toy"]["audit"]["disagree"] == 7
    assert read_jsonl(tmp_path / "sharded" / "audit.jsonl") == read_jsonl(tmp_path / "one" / "audit.jsonl")


def test_pool_audits_only_when_asked_and_a_timeout_is_never_a_disagreement():
    from distill.verify.math_pool import MathGrader

    slow = think("\\boxed{2^{2^{2^{2^{2^{20}}}}}}")  # sympy runs past the timeout on it, in either grader
    items = [(think("\\boxed{5\\text{ or more}}"), "5"), (slow, "5")]
    with MathGrader(workers=1, timeout=1.0, audit=True) as grader:
        hedge, timed_out = grader.grade_many(items, audit=True)
        plain = list(grader.grade_many(items[:1]))  # cons@k's clustering calls grade_many without it
    assert (hedge.correct, hedge.reason, hedge.audit.correct) == (False, "answer_hedged", True)
    assert (timed_out.reason, timed_out.audit.reason) == ("answer_timeout", "answer_timeout")
    assert category(timed_out, timed_out.audit) is None
    assert plain[0].audit is None
