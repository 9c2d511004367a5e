"""The one definition of "correct": extraction policy, tricky pairs, must-fail pairs, reason codes, and a Grader
no input can hang."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import re
import signal
import time

import pytest

from distill.config import EvalConfig, FilterConfig, build_config
from distill.data.io import write_jsonl
from distill.errors import DistillError
from distill.prompts import answer_part
from distill.verify import Verdict
from distill.verify import math as answer
from distill.verify import math_pool
from distill.verify.math import GRADER_VERSION, REASONS, extract, grade
from distill.verify.math_extract import extract_answer
from distill.verify.math_pool import MathGrader as Grader
from distill.verify.math_rules import REASONS as POLICY_REASONS


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("<think>draft</think>The answer", "The answer"),
        ("<think>a</think>b</think>c", "c"),  # the last </think> ends the thinking
        ("no think block at all", "no think block at all"),
        ("</think>", ""),
        ("<think>cut off mid-thought \\boxed{3}", ""),  # unclosed think: nothing is an answer yet
    ],
)
def test_answer_part(completion, expected):
    assert answer_part(completion) == expected


B, C = "boxed", "chain"  # the two extraction policies

EXTRACTION = [
    # (completion, extraction, expected answer, rule that found it)
    # One box, the R1 rule:
    ("so \\boxed{4}.", B, "4", "boxed"),
    ("\\fbox{7}", B, "7", "boxed"),
    ("\\boxed {\\frac{1}{2}}", B, "\\frac{1}{2}", "boxed"),  # balanced braces
    ("\\boxed{\\{1,2\\}}", B, "\\{1,2\\}", "boxed"),  # \{ \} are literal braces
    ("$\\boxed 5$", B, "5", "boxed"),
    ("<think>\\boxed{3}</think>So \\boxed{4}", B, "4", "boxed"),  # after </think> wins
    ("<think>\\boxed{3}</think>", C, None, "none"),  # nothing after think
    ("<think>\\boxed{3}</think>I am not sure.", C, None, "none"),
    ("<think>cut off \\boxed{3}", C, None, "none"),  # unclosed think: nothing counts, not even under chain
    ("\\boxed{1} and finally \\boxed{\\frac{1}{", C, None, "none"),  # the last box is broken: no answer, not the draft
    ("\\boxed{}", C, None, "none"),
    ("\\boxed{} so \\boxed{6}", B, "6", "boxed"),  # an empty box earlier is no obstacle
    ("\\boxed{\\boxed{6}}", B, "\\boxed{6}", "boxed"),  # a box inside a box is its content, not a second answer
    (r"\boxed{185\}", B, "185", "boxed"),  # a stray backslash before the closing brace, not a literal \}
    (r"\boxed{185\\}", B, "185", "boxed"),  # a trailing LaTeX line break
    # Several boxes: one answer when they share the final paragraph (or only "and"/"," joins them) ...
    (r"The solutions are \boxed{(2, 2)} and \boxed{(6, 2)}.", B, "(2, 2), (6, 2)", "boxes"),
    (r"\boxed{1},\boxed{2},\boxed{3}", B, "1, 2, 3", "boxes"),
    (r"\boxed{1} then \boxed{2}", B, "1, 2", "boxes"),
    ("\\[\n\\boxed{2}\n\\]\n\nand\n\n\\[\n\\boxed{3}\n\\]", B, "2, 3", "boxes"),
    (r"So \(\boxed{6}\). \[\boxed{6}\]", B, "6", "boxed"),  # the same answer twice is one answer
    (r"\boxed{\frac{1}{2}} = \boxed{\dfrac{1}{2}}", B, "\\dfrac{1}{2}", "boxed"),  # the same after normalisation
    # ... and the last box alone when the earlier ones are intermediate results in earlier paragraphs.
    ("First $a = \\boxed{3}$.\n\nSo the sum is $\\boxed{7}$.", B, "7", "boxed"),
    ("$\\boxed{3}$.\n\n$\\boxed{7}$", B, "7", "boxed"),  # a paragraph break and nothing joining them
    ("\\boxed{1} then\n\nmore work, \\boxed{2}", B, "2", "boxed"),
    # A final-answer phrase after the last box that names another answer: chain takes it, boxed has none.
    ("We found \\boxed{255} pairs.\n\nThe final answer is $10,455$", C, "10,455", "phrase"),
    ("We found \\boxed{255} pairs.\n\nThe final answer is $10,455$", B, None, "none"),
    ("\\boxed{10455}. The final answer is 10,455.", B, "10455", "boxed"),  # a restatement keeps the box
    ("\\boxed{5}\n\nI hope the answer is correct.", B, "5", "boxed"),  # "answer is correct" names no answer
    ("The final answer is \\boxed{5}. I hope it is correct.", B, "5", "boxed"),
    # Phrases (chain only):
    ("The final answer is $\\frac{3}{4}$. I hope it is correct.", C, "\\frac{3}{4}", "phrase"),
    ("The final answer is $\\frac{3}{4}$. I hope it is correct.", B, None, "none"),
    ("Final Answer: The final answer is 12. I hope it is correct.", C, "12", "phrase"),
    ("**Final Answer:** 3.5", C, "3.5", "phrase"),
    ("The answer is 18.", C, "18", "phrase"),
    ("Answer: x = 2", C, "x = 2", "phrase"),
    ("... so 72 in all.\n#### 72", C, "72", "phrase"),
    ("She has 9 eggs left.\nA: 1,234", C, "1,234", "phrase"),
    # Sentence answers: the math span or number the sentence names, not the sentence.
    ("Final Answer: The largest $n$ is 34.", C, "34", "phrase"),
    ("The answer is 5 dollars.", C, "5", "phrase"),
    ("So the answer is: there are $12$ ways.", C, "12", "phrase"),
    ("The answer is eighteen.", C, None, "none"),  # no math in it: no answer, not "eighteen"
    # The last math span or number of the final line (chain only):
    ("To answer this, we compute 5 + 5 = 10.", C, "10", "last_math"),  # "answer" without "is"/":" is no phrase
    ("We get 42.", C, "42", "last_math"),
    ("We get 42.", B, None, "none"),
    ("Adding up:\n$3 + 4 = 7$, so $x = 7$", C, "x = 7", "last_math"),
    ("The area is\n\\[\n\\frac{1}{2}\n\\]", C, "\\frac{1}{2}", "last_math"),  # a display ending on the final line
    ("It is 42.\nI hope it is correct.", C, None, "none"),  # only the final line counts
    ("", C, None, "none"),
]


@pytest.mark.parametrize("completion,extraction,expected,rule", EXTRACTION)
def test_extract(completion, extraction, expected, rule):
    assert extract(completion, extraction) == (expected, rule)
    assert extract_answer(completion, extraction) == expected


def test_extract_answer_defaults_to_boxed():
    assert extract_answer("The answer is 18.") is None
    assert extract_answer("The answer is \\boxed{18}.") == "18"


# Wrong answers that look right to a grader that cuts a gold at "=" or reads a relation as its right side.
# Each must be graded wrong, under either extraction and every answer type that accepts the gold.
MUST_FAIL = [
    # (completion, gold)
    (r"\boxed{1}", "2x + z = 1"),  # a plane is not its constant term
    (r"\boxed{0}", "a^2 + b = 0"),
    (r"\boxed{25}", "x^2+y^2=25"),  # a circle is not its radius squared
    (r"\boxed{1}", r"2x - 3y + z = 1"),
    (r"\boxed{x >= 1}", "x <= 1"),  # ASCII relations are relations
    (r"\boxed{x \ge 1}", r"x \le 1"),
    (r"\boxed{x > 1}", "x < 1"),
    (r"\boxed{x != 1}", "1"),  # "x is not 1" is not 1
    (r"\boxed{x \neq 1}", "1"),
    (r"\boxed{x \le 1}", "1"),
    (r"\boxed{2x + z = 1}", "1"),  # Math-Verify would compare 1 with the right side
    (r"\boxed{x^2 + y^2 = 25}", "25"),
    (r"\boxed{AB = 5}", "5"),  # a two-letter left side is not stripped (deliberately not accepted)
    (r"\boxed{x^2+y^2=5}", "x^2+y^2=25"),
    (r"\boxed{2x + z = 2}", "2x + z = 1"),
    (r"\boxed{12:30}", "12:00"),  # times compare as times, never as 12/0 == 12/0
    (r"\boxed{3:00}", "12:00"),
    (r"\boxed{12}", "12:00"),
    (r"\boxed{4:30 \text{ a.m.}}", "4:30 p.m."),
    (r"\boxed{1 2}", "12"),  # a space is a thousands separator only in groups of three
    (r"\boxed{1, 2}", "12"),
    (r"\boxed{3, 7}", "7"),  # several boxes, or a list, are not their last element
    (r"We get \boxed{3} and \boxed{7}.", "7"),
    (r"\boxed{(2, 2)} and \boxed{(6, 3)}", "(2, 2), (6, 2)"),
    (r"\boxed{E_{1},E_{3}}", "E_{1},E_{2}"),
    (r"\boxed{\frac{3}{4}}", r"\frac{3m}{4}"),
    (r"\boxed{0.2}", "2e-1"),  # a gold "2e-1" is 2e - 1: scientific notation is read in answers only
    (r"\boxed{\sinh x}", r"\cosh x"),
    (r"\boxed{[1, 2]}", r"1 \le x \le 2"),  # no set-vs-relation comparison (Math-Verify's default)
]


# "Wrong": answer_wrong or the policy rule that rejected it (math_rules.POLICY), never a failure to decide.
WRONG = ("answer_wrong", *POLICY_REASONS)


@pytest.mark.parametrize("extraction", [B, C])
@pytest.mark.parametrize("completion,gold", MUST_FAIL)
def test_must_fail(completion, gold, extraction):
    for answer_type in ("auto", "integer", "number", "expression"):
        verdict = grade(completion, gold, answer_type, extraction)
        assert not verdict.correct, (answer_type, verdict)
        assert verdict.reason in ("gold_unparseable", *WRONG), (answer_type, verdict)
    assert grade(completion, gold, "auto", extraction).reason in WRONG


TRICKY = [
    # (completion, gold, answer_type, correct, reason), extraction "boxed"
    ("\\boxed{025}", "25", "integer", True, ""),
    ("\\boxed{25}", "025", "integer", True, ""),
    ("\\boxed{25.0}", "25", "integer", True, ""),
    ("\\boxed{\\textbf{(073)}}", "73", "integer", True, ""),  # AoPS style
    ("\\boxed{25.0}", "25", "auto", True, ""),
    ("\\boxed{25.5}", "25", "integer", False, "answer_wrong"),  # a non-integer is never an AIME answer
    ("\\boxed{2^5}", "32", "integer", True, ""),  # a non-literal goes through Math-Verify
    ("\\boxed{\\frac{1}{2}}", "0.5", "auto", True, ""),
    ("\\boxed{\\dfrac12}", "\\frac{1}{2}", "auto", True, ""),
    ("\\boxed{\\dfrac12}", "\\frac{1}{2}", "expression", True, ""),
    ("\\boxed{[2,5)}", "[2,5)", "auto", True, ""),
    ("\\boxed{(2,5]}", "[2,5)", "auto", False, "answer_wrong"),  # open/closed ends matter
    ("\\boxed{\\{2,1\\}}", "\\{1,2\\}", "auto", True, ""),  # sets are unordered
    ("\\boxed{(-\\infty, 3)}", "(-\\infty,3)", "expression", True, ""),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", "auto", True, ""),
    ("<think>\\boxed{3}</think>\\boxed{4}", "4", "auto", True, ""),
    ("<think>\\boxed{3}</think>\\boxed{4}", "3", "auto", False, "answer_wrong"),
    ("<think>\\boxed{3}</think>", "3", "auto", False, "no_answer"),
    ("<think>\\boxed{3}", "3", "auto", False, "no_answer"),  # truncated inside the thinking
    # Wrong answers that naive graders (substring, digits-only, float-rounding) accept:
    ("\\boxed{2}", "12", "auto", False, "answer_wrong"),
    ("\\boxed{12}", "1.2", "auto", False, "answer_wrong"),
    ("\\boxed{12}", "1.2", "number", False, "answer_wrong"),
    ("\\boxed{0.5}", "50", "auto", False, "answer_wrong"),
    ("\\boxed{1.0000001}", "1", "integer", False, "answer_wrong"),
    ("\\boxed{1.0000001}", "1", "number", False, "answer_approximate"),
    ("\\boxed{5 \\text{ and } 7}", "5", "auto", False, "answer_wrong"),
    ("\\boxed{3.14}", "\\pi", "auto", False, "answer_wrong"),
    # Equations as equations, inequalities as relations; a left side goes only when it is one symbol or f(x):
    ("\\boxed{x=3}", "3", "auto", True, ""),
    ("\\boxed{x = 3}", "3", "integer", True, ""),
    ("\\boxed{k = 5}", "5", "auto", True, ""),
    ("\\boxed{a_1 = 5}", "5", "auto", True, ""),
    ("\\boxed{\\theta = \\frac{\\pi}{2}}", "\\frac{\\pi}{2}", "auto", True, ""),
    ("\\boxed{f(x) = 3x + 1}", "3x+1", "auto", True, ""),
    ("\\boxed{3}", "x = 3", "auto", True, ""),
    ("\\boxed{y = 2x + 3}", "2x + 3", "auto", True, ""),
    ("\\boxed{4x + 2z = 2}", "2x + z = 1", "auto", True, ""),  # a scaled but equal equation
    ("\\boxed{z = 1 - 2x}", "2x + z = 1", "auto", True, ""),  # solved for z: still the same plane
    ("\\boxed{y = -\\frac{1}{2}x + \\frac{3}{4}}", "2x + 4y - 3 = 0", "auto", True, ""),
    ("\\boxed{y^2 + x^2 - 25 = 0}", "x^2+y^2=25", "expression", True, ""),
    ("\\boxed{-x \\ge -1}", "x \\le 1", "auto", True, ""),
    ("\\boxed{-x >= -1}", "x <= 1", "auto", True, ""),
    ("\\boxed{1 \\ge x}", "x \\le 1", "auto", True, ""),
    ("\\boxed{x \\ne 1}", "x != 1", "auto", True, ""),
    # Several boxes are graded together, as a set or tuple; so is a gold written as boxes:
    ("\\boxed{(2, 2)} and \\boxed{(6, 2)}", "(2, 2), (6, 2)", "auto", True, ""),
    ("\\boxed{(6, 2)} and \\boxed{(2, 2)}", "(2, 2), (6, 2)", "auto", True, ""),
    ("\\boxed{1},\\boxed{2},\\boxed{3}", "\\{1,2,3\\}", "auto", True, ""),
    ("\\boxed{1}, \\boxed{2}", "\\boxed{2}, \\boxed{1}", "auto", True, ""),
    ("\\boxed{4}", "\\boxed{4}", "integer", True, ""),
    ("First \\boxed{3}.\n\nThe answer is \\boxed{7}.", "7", "integer", True, ""),  # last-box rule
    ("\\boxed{3} and \\boxed{7}", "7", "integer", False, "answer_multiple"),
    # Numbers as people write them:
    ("\\boxed{1,000}", "1000", "number", True, ""),
    ("\\boxed{1{,}000}", "1000", "number", True, ""),
    ("\\boxed{10000}", "10,\\!000", "auto", True, ""),
    ("\\boxed{1 000}", "1000", "auto", True, ""),  # space as a thousands separator
    ("\\boxed{1\\,000}", "1000", "integer", True, ""),  # thin space
    ("\\boxed{1\u2009000\u2009000}", "1000000", "number", True, ""),  # unicode thin space
    ("\\boxed{\\$18.00}", "18", "number", True, ""),
    ("\\boxed{50\\%}", "50", "auto", True, ""),
    ("\\boxed{27}", "27.0", "number", True, ""),  # AMC golds are floats
    ("\\boxed{5\\text{ cm}}", "5", "number", True, ""),
    ("\\boxed{12 \\text{ cm}^2}", "12", "auto", True, ""),  # units in \text{...}, with a power
    ("\\boxed{15\\mbox{ square units}}", "15", "integer", True, ""),
    ("\\boxed{125\\textnormal{ miles}}", "125", "auto", True, ""),
    ("\\boxed{12^{\\mathrm{th}}}", "12", "auto", True, ""),  # ordinal suffixes
    ("\\boxed{12^{th}}", "12", "integer", True, ""),
    ("\\boxed{21\\text{st}}", "21", "number", True, ""),
    ("\\boxed{3rd}", "3", "auto", True, ""),
    ("\\boxed{1e-5}", "0.00001", "auto", True, ""),  # scientific notation
    ("\\boxed{2.5E3}", "2500", "number", True, ""),
    ("\\boxed{1e-5}", "0.0001", "auto", False, "answer_wrong"),
    ("\\boxed{\\frac{1}{\\mathrm{e}}}", "e^{-1}", "auto", True, ""),  # \mathrm{e} is Euler's number
    ("\\boxed{\\mathrm{e}^2}", "e^2", "expression", True, ""),
    ("\\boxed{12:00}", "12:00", "auto", True, ""),  # a time, not 12/0
    ("\\boxed{9:05}", "09:05", "auto", True, ""),
    ("\\boxed{4:30 \\text{ p.m.}}", "4:30 p.m.", "auto", True, ""),
    ("\\boxed{185\\}", "185", "integer", True, ""),  # a trailing backslash
    ("\\boxed{\\frac{3}{4}m}", "\\frac{3m}{4}", "auto", True, ""),  # a factor after a fraction, not a unit
    ("\\boxed{\\frac{2}{3}s}", "\\frac{2s}{3}", "expression", True, ""),
    ("\\boxed{E_{1},E_{2}}", "E_{1},E_{2}", "auto", True, ""),  # symbols Math-Verify can't parse
    ("\\boxed{E_2, E_1}", "E_{1},E_{2}", "auto", True, ""),
    ("\\boxed{\\frac{e^{2x}-1}{e^{2x}+1}}", "\\tanh x", "auto", True, ""),  # equal through an identity
    ("\\boxed{\\frac{e^x - e^{-x}}{2}}", "\\sinh(x)", "expression", True, ""),
    ("\\boxed{\\cosh^2 x}", "1 + \\sinh^2 x", "auto", True, ""),
    ("\\boxed{1,2}", "12", "number", False, "answer_multiple"),  # not a thousands grouping
    # Fail closed:
    ("I think it is 4", "4", "auto", False, "no_answer"),
    ("\\boxed{4}", "4:30p..", "expression", False, "gold_unparseable"),
    ("\\boxed{4}", "", "auto", False, "gold_unparseable"),
    ("\\boxed{4}", "x^2", "integer", False, "gold_unparseable"),
    ("\\boxed{4}", "four", "number", False, "gold_unparseable"),
    ("\\boxed{4}", "\\frac{\\sqrt{}}{", "auto", False, "gold_unparseable"),
    ("\\boxed{" + "1+" * 600 + "1}", "601", "auto", False, "answer_wrong"),  # over MAX_ANSWER_CHARS
    ("\\boxed{\\frac{1}{", "1", "auto", False, "no_answer"),
    ("\\boxed{\udcff}", "1", "auto", False, "answer_wrong"),
    ("\\boxed{1\x002}", "12", "auto", False, "answer_wrong"),
]


@pytest.mark.parametrize("completion,gold,answer_type,correct,reason", TRICKY)
def test_grade_tricky_pairs(completion, gold, answer_type, correct, reason):
    verdict = grade(completion, gold, answer_type)
    assert (verdict.correct, verdict.reason) == (correct, reason), verdict
    assert verdict.reason in ("",) + REASONS


CHAIN = [
    # (completion, gold, answer_type, correct, extracted_by): answers without a box, graded under "chain"
    ("Final Answer: The largest $n$ is 34.", "34", "integer", True, "phrase"),
    ("We found \\boxed{255} pairs.\n\nThe final answer is $10,455$", "10455", "integer", True, "phrase"),
    ("We found \\boxed{255} pairs.\n\nThe final answer is $10,455$", "255", "integer", False, "phrase"),
    ("#### 1,234", "1234", "number", True, "phrase"),
    ("A: 72", "72", "number", True, "phrase"),
    ("The answer is 5 dollars.", "5", "number", True, "phrase"),
    ("So $x = \\frac{1}{2}$", "0.5", "auto", True, "last_math"),
    ("I think it is 4", "4", "auto", True, "last_math"),
    ("I think it is 4", "5", "auto", False, "last_math"),
    ("The answer is eighteen.", "18", "number", False, "none"),
]


@pytest.mark.parametrize("completion,gold,answer_type,correct,rule", CHAIN)
def test_chain_grades_answers_without_a_box(completion, gold, answer_type, correct, rule):
    verdict = grade(completion, gold, answer_type, "chain")
    assert (verdict.correct, verdict.extracted_by) == (correct, rule), verdict
    if rule != "boxed":  # the filter's default wants the box
        assert grade(completion, gold, answer_type, "boxed") == Verdict(False, "no_answer", "", "none")


def test_identical_after_normalisation_needs_no_parsing(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("parsed")

    monkeypatch.setattr(answer, "parse", boom)
    assert grade("\\boxed{12:00}", "12:00").correct
    assert grade("\\boxed{\\dfrac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}").correct
    assert grade("\\boxed{x = \\left( 1, 2 \\right)}", "(1,2)").correct
    assert grade("\\boxed{E_1}", "E_{1}").correct
    assert grade("\\boxed{2^5}", "32") == Verdict(False, "answer_error", "2^5", "boxed")  # this one needs parsing


def test_verdict_carries_extracted_answer_and_rule():
    assert grade("\\boxed{025}", "25", "integer") == Verdict(True, "", "025", "boxed")
    assert grade("\\boxed{1} and \\boxed{2}", "1, 2") == Verdict(True, "", "1, 2", "boxes")
    assert grade("The answer is 25.", "25", extraction="chain") == Verdict(True, "", "25", "phrase")
    assert grade("so 25", "25", extraction="chain") == Verdict(True, "", "25", "last_math")
    assert grade("nothing", "25") == Verdict(False, "no_answer", "", "none")
    assert set(answer.RULES) == {"boxed", "boxes", "phrase", "last_math", "none"}


def test_exception_inside_grader_is_answer_error(monkeypatch):
    def boom(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(answer, "verify", boom)
    assert grade("\\boxed{\\sqrt{4}}", "2") == Verdict(False, "answer_error", "\\sqrt{4}", "boxed")


def test_grade_works_outside_the_main_thread():
    # Math-Verify's own timeout uses signal.alarm and raises off the main thread; ours must not.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        verdict = pool.submit(grade, "\\boxed{\\frac{\\sqrt{8}}{2}}", "\\sqrt{2}", "expression").result()
    assert verdict.correct


def test_unknown_answer_type_or_extraction_is_a_user_error():
    with pytest.raises(DistillError, match="answer_type"):
        grade("\\boxed{1}", "1", "float")
    with pytest.raises(DistillError, match="answer_type"):
        Grader(workers=1, answer_type="float")
    with pytest.raises(DistillError, match="extraction 'last'; choose one of boxed, chain"):
        grade("\\boxed{1}", "1", extraction="last")
    with pytest.raises(DistillError, match="extraction"):
        Grader(workers=1, extraction="last")


def test_reasons_and_version():
    assert set(REASONS) == {"answer_wrong", "no_answer", "gold_unparseable", "answer_timeout", "answer_error",
                            "answer_hedged", "answer_extra_text", "answer_unit_mismatch", "answer_lhs_mismatch",
                            "answer_multiple", "answer_approximate", "answer_form_mismatch", "answer_conflict"}
    assert re.fullmatch(r"distill-answer/\d+ math-verify==\S+", GRADER_VERSION)


# --- the policy reaches the stages ------------------------------------------------------------

POLICY_ROWS = [  # (answer part, the rule that finds its answer under "chain")
    ("\\boxed{5}", "boxed"), ("The answer is 5.", "phrase"), ("so 5", "last_math"), ("I can't tell.", "none")]


def _policy_records(path):
    rows = [{"id": f"toy/p/{i}", "problem_id": "p", "problem": "What is two plus three?", "answer": "5",
             "completion": f"<think>\nadd\n</think>\n{c}", "finish_reason": "stop", "num_tokens": 0,
             "sample_index": i} for i, (c, _) in enumerate(POLICY_ROWS)]
    write_jsonl(path, rows)
    return path


def test_stage_defaults():
    assert FilterConfig.__dataclass_fields__["answer_extraction"].default == "boxed"  # kept data teaches the box
    assert EvalConfig.__dataclass_fields__["answer_extraction"].default == "chain"  # a model that doesn't box


@pytest.mark.parametrize("policy,kept", [("boxed", 1), ("chain", 3)])
def test_filter_counts_extraction_rules_and_records_its_policy(tmp_path, policy, kept):
    import pyarrow.parquet as pq

    from distill.filters.run import run as filter_run

    cfg = build_config(FilterConfig, {"input": str(_policy_records(tmp_path / "in.jsonl")), "out": str(tmp_path / "o"),
                                      "steps": "answer_correct", "answer_extraction": policy, "workers": 1})
    stats = filter_run(cfg)
    counts = {"boxed": 1, "none": 3} if policy == "boxed" else {rule: 1 for _, rule in POLICY_ROWS}
    assert stats["kept"] == kept
    assert stats["answer_extraction"] == {"policy": policy, "extracted_by": dict(sorted(counts.items()))}
    rows = pq.read_table(tmp_path / "o" / "kept").to_pylist() + pq.read_table(tmp_path / "o" / "rejected").to_pylist()
    assert sorted(r["extracted_by"] for r in rows) == sorted(n for rule, c in counts.items() for n in [rule] * c)


@pytest.mark.parametrize("policy,pass1", [("chain", 75.0), ("boxed", 25.0)])
def test_eval_counts_extraction_rules_and_records_its_policy(tmp_path, policy, pass1):
    from distill.eval.run import run as eval_run

    out = tmp_path / "o"
    cfg = build_config(EvalConfig, {"completions": str(_policy_records(tmp_path / "c.jsonl")), "out": str(out),
                                    "answer_extraction": policy, "workers": 1})
    results = eval_run(cfg)
    (task, scores), = results["results"].items()
    assert scores["pass@1"] == pass1
    assert results["provenance"]["answer_extraction"] == policy
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    expected = [rule for _, rule in POLICY_ROWS] if policy == "chain" else ["boxed", "none", "none", "none"]
    assert [s["extracted_by"] for s in samples] == expected
    assert scores["extracted_by"] == dict(collections.Counter(expected))
    assert json.loads((out / "stats.json").read_text())["tasks"][task]["extracted_by"] == scores["extracted_by"]


# --- Grader: worker processes, hard timeouts ----------------------------------------------------


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout=2.0) as g:
        yield g


PATHOLOGICAL = [
    # (completion, gold, reasons it may end with): each must END, with a reason, quickly.
    ("\\boxed{9^{9^{9^{9^{9}}}}}", "1", {"answer_timeout", "answer_wrong", "answer_error"}),
    ("\\boxed{2^{2^{2^{2^{2^{2}}}}}}", "\\frac{1}{2}", {"answer_timeout", "answer_wrong", "answer_error"}),
    ("x" * 1_000_000 + "\\boxed{5}", "5", {""}),  # a megabyte completion still grades
    ("\\boxed{" + "1+" * 500_000 + "1}", "1", {"answer_wrong"}),  # a megabyte answer never reaches sympy
    ("\\boxed{\\frac{1}{", "1", {"no_answer"}),
    ("\\boxed{\udcff}", "1", {"answer_wrong"}),
    ("\ud800\\boxed{3}\udcff", "3", {""}),
    ("\\boxed{1\x002}", "1", {"answer_wrong"}),
    ("\x00" * 1000, "1", {"no_answer"}),
    ("\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}", "1", {"answer_wrong", "answer_timeout"}),
    ("\\boxed{" + "{" * 400 + "1" + "}" * 400 + "}", "1", {"answer_wrong", "answer_timeout", "answer_error"}),
    ("\\boxed{3}", "3", {""}),
]


def test_pathological_inputs_end_with_a_reason(grader):
    start = time.monotonic()
    verdicts = list(grader.grade_many((c, g) for c, g, _ in PATHOLOGICAL))
    elapsed = time.monotonic() - start
    assert len(verdicts) == len(PATHOLOGICAL)
    for (completion, _, allowed), verdict in zip(PATHOLOGICAL, verdicts):
        assert verdict.reason in allowed, (completion[:40], verdict)
        assert len(verdict.extracted) <= answer.MAX_ANSWER_CHARS
    # Worst case: one batch killed at 2*2+1 s, then its slow records retried one by one at <= 3 s each.
    assert elapsed < 45, elapsed


def test_results_come_back_in_input_order(grader):
    items = [(f"\\boxed{{{i}}}" if i % 3 else "no answer here", str(i % 5)) for i in range(60)]
    verdicts = list(grader.grade_many(items, chunk_size=3))
    assert [v.extracted for v in verdicts] == [str(i) if i % 3 else "" for i in range(60)]
    assert [v.correct for v in verdicts] == [bool(i % 3) and i % 5 == i for i in range(60)]
    assert [v.reason for v in verdicts] == ["no_answer" if i % 3 == 0 else "" if i < 5 else "answer_wrong"
                                            for i in range(60)]


def test_grade_many_streams(grader):
    pulled = 0

    def items():
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield f"\\boxed{{{i}}}", str(i)

    stream = grader.grade_many(items(), chunk_size=4)
    assert next(stream) == Verdict(True, "", "0", "boxed")
    assert pulled <= 4 * (4 * grader.workers + 1)  # a bounded window, not the whole input
    stream.close()


def test_one_worker_works():
    with Grader(workers=1, timeout=5.0, answer_type="integer") as g:
        assert [v.correct for v in g.grade_many([("\\boxed{025}", "25"), ("\\boxed{7}", "8")])] == [True, False]


def test_grader_in_process_agrees_with_grade(grader):
    items = [(c, g) for c, g, t, _, _ in TRICKY if t == "auto"]
    assert list(grader.grade_many(items, chunk_size=5)) == [grade(c, g) for c, g in items]


def test_grader_applies_its_extraction_policy():
    items = [(c, g) for c, g, _, _, _ in CHAIN]
    with Grader(workers=1, timeout=5.0, extraction="chain") as chain:
        assert list(chain.grade_many(items)) == [grade(c, g, "auto", "chain") for c, g in items]
    with Grader(workers=1, timeout=5.0) as boxed:  # the default: only a box counts
        assert {v.extracted_by for v in boxed.grade_many(items)} == {"none"}


# Test doubles for the worker function. The parent pickles them by reference; the workers import this
# module by name (multiprocessing hands them our sys.path), so they run there, unlike a monkeypatch.
CRASH, HANG = "<crash the worker>", "<hang past any signal>"


def _crash_or_grade(items, *args):
    if any(completion == CRASH for completion, _ in items):
        os._exit(70)  # dies like a segfault would: no exception, no result
    return math_pool._grade_batch(items, *args)


def _hang_or_grade(items, *args):
    if any(completion == HANG for completion, _ in items):
        # Like a huge integer power in C: SIGALRM cannot interrupt it, only a kill ends it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(120)
    return math_pool._grade_batch(items, *args)


@pytest.fixture
def fast_grader():
    with Grader(workers=2, timeout=1.0) as g:
        yield g


def test_worker_crash_is_a_reason_and_the_run_goes_on(fast_grader, monkeypatch):
    monkeypatch.setattr(math_pool, "_grade_batch", _crash_or_grade)
    items = [("\\boxed{1}", "1"), (CRASH, "2"), ("\\boxed{3}", "3"), ("\\boxed{5}", "4"), ("\\boxed{5}", "5")]
    verdicts = list(fast_grader.grade_many(items, chunk_size=2))
    assert [(v.correct, v.reason) for v in verdicts] == [
        (True, ""), (False, "answer_error"), (True, ""), (False, "answer_wrong"), (True, "")]
    assert fast_grader.counts["answer_error"] == 1
    assert [v.correct for v in fast_grader.grade_many([("\\boxed{6}", "6")] * 5)] == [True] * 5


def test_uninterruptible_record_is_killed_and_times_out(fast_grader, monkeypatch):
    monkeypatch.setattr(math_pool, "_grade_batch", _hang_or_grade)
    items = [("\\boxed{1}", "1"), (HANG, "2"), ("\\boxed{3}", "3")]
    start = time.monotonic()
    verdicts = list(fast_grader.grade_many(items, chunk_size=3))
    assert [(v.correct, v.reason) for v in verdicts] == [(True, ""), (False, "answer_timeout"), (True, "")]
    assert fast_grader.counts["answer_timeout"] == 1
    assert time.monotonic() - start < 30  # batch killed at 3 s, the record alone at 2 s, plus restarts
    assert [v.correct for v in fast_grader.grade_many([("\\boxed{6}", "6")] * 3)] == [True] * 3
