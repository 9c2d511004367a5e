"""The one definition of "correct": extraction, tricky pairs, reason codes, and a Grader no input can hang."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import time

import pytest

from distill.errors import DistillError
from distill.filters import answer
from distill.filters.answer import GRADER_VERSION, REASONS, Grader, Verdict, answer_part, extract_answer, grade


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


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("so \\boxed{4}.", "4"),
        ("\\boxed{1} then \\boxed{2}", "2"),  # the last box
        ("\\fbox{7}", "7"),
        ("\\boxed {\\frac{1}{2}}", "\\frac{1}{2}"),  # balanced braces
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # \{ \} are literal braces
        ("$\\boxed 5$", "5"),
        ("<think>\\boxed{3}</think>So \\boxed{4}", "4"),  # after </think> wins
        ("<think>\\boxed{3}</think>", None),  # nothing after think
        ("<think>\\boxed{3}</think>I am not sure.", None),
        ("\\boxed{1} and finally \\boxed{\\frac{1}{", None),  # the last box is broken: no answer, not the draft
        ("\\boxed{}", None),
        ("The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
        ("Final Answer: The final answer is 12. I hope it is correct.", "12"),
        ("**Final Answer:** 3.5", "3.5"),
        ("The answer is 18.", "18"),
        ("Answer: x = 2", "x = 2"),
        ("... so 72 in all.\n#### 72", "72"),
        ("She has 9 eggs left.\nA: 1,234", "1,234"),
        ("To answer this, we compute 5 + 5 = 10.", None),  # "answer" without "is"/":" is not an anchor
        ("We get 42.", None),  # no naked last-number guessing
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


TRICKY = [
    # (completion, gold, answer_type, correct, reason)
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
    ("\\boxed{x=3}", "3", "auto", True, ""),
    ("\\boxed{x = 3}", "3", "integer", True, ""),
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
    ("\\boxed{1.0000001}", "1", "number", False, "answer_wrong"),
    ("\\boxed{5 \\text{ and } 7}", "5", "auto", False, "answer_wrong"),
    ("\\boxed{3.14}", "\\pi", "auto", False, "answer_wrong"),
    # Numbers as people write them:
    ("\\boxed{1,000}", "1000", "number", True, ""),
    ("\\boxed{1{,}000}", "1000", "number", True, ""),
    ("\\boxed{10000}", "10,\\!000", "auto", True, ""),
    ("\\boxed{\\$18.00}", "18", "number", True, ""),
    ("\\boxed{50\\%}", "50", "auto", True, ""),
    ("\\boxed{27}", "27.0", "number", True, ""),  # AMC golds are floats
    ("\\boxed{5\\text{ cm}}", "5", "number", True, ""),
    ("#### 1,234", "1234", "number", True, ""),
    ("A: 72", "72", "number", True, ""),
    ("\\boxed{1,2}", "12", "number", False, "answer_wrong"),  # not a thousands grouping
    # Fail closed:
    ("I think it is 4", "4", "auto", False, "no_answer"),
    ("\\boxed{4}", "4:30p..", "expression", False, "gold_unparseable"),
    ("\\boxed{4}", "", "auto", False, "gold_unparseable"),
    ("\\boxed{4}", "x^2", "integer", False, "gold_unparseable"),
    ("\\boxed{4}", "four", "number", False, "gold_unparseable"),
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


def test_verdict_carries_extracted_answer():
    assert grade("\\boxed{025}", "25", "integer") == Verdict(True, "", "025")
    assert grade("nothing", "25") == Verdict(False, "no_answer", "")


def test_exception_inside_grader_is_answer_error(monkeypatch):
    def boom(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(answer, "verify", boom)
    assert grade("\\boxed{\\sqrt{4}}", "2") == Verdict(False, "answer_error", "\\sqrt{4}")


def test_grade_works_outside_the_main_thread():
    # Math-Verify's own timeout uses signal.alarm and raises off the main thread; ours must not.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        verdict = pool.submit(grade, "\\boxed{\\frac{\\sqrt{8}}{2}}", "\\sqrt{2}", "expression").result()
    assert verdict.correct


def test_unknown_answer_type_is_a_user_error():
    with pytest.raises(DistillError, match="answer_type"):
        grade("\\boxed{1}", "1", "float")
    with pytest.raises(DistillError, match="answer_type"):
        Grader(workers=1, answer_type="float")


def test_reasons_and_version():
    assert set(REASONS) == {"answer_wrong", "no_answer", "gold_unparseable", "answer_timeout", "answer_error"}
    assert re.fullmatch(r"distill-answer/\d+ math-verify==\S+", GRADER_VERSION)


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
    assert next(stream) == Verdict(True, "", "0")
    assert pulled <= 4 * (4 * grader.workers + 1)  # a bounded window, not the whole input
    stream.close()


def test_one_worker_works():
    with Grader(workers=1, timeout=5.0, answer_type="integer") as g:
        assert [v.correct for v in g.grade_many([("\\boxed{025}", "25"), ("\\boxed{7}", "8")])] == [True, False]


def test_grader_in_process_agrees_with_grade(grader):
    items = [(c, g) for c, g, t, _, _ in TRICKY if t == "auto"]
    assert list(grader.grade_many(items, chunk_size=5)) == [grade(c, g) for c, g in items]


# Test doubles for the worker function. The parent pickles them by reference; the workers import this
# module by name (multiprocessing hands them our sys.path), so they run there, unlike a monkeypatch.
CRASH, HANG = "<crash the worker>", "<hang past any signal>"


def _crash_or_grade(items, answer_type, timeout):
    if any(completion == CRASH for completion, _ in items):
        os._exit(70)  # dies like a segfault would: no exception, no result
    return answer._grade_batch(items, answer_type, timeout)


def _hang_or_grade(items, answer_type, timeout):
    if any(completion == HANG for completion, _ in items):
        # Like a huge integer power in C: SIGALRM cannot interrupt it, only a kill ends it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(120)
    return answer._grade_batch(items, answer_type, timeout)


@pytest.fixture
def fast_grader():
    with Grader(workers=2, timeout=1.0) as g:
        yield g


def test_worker_crash_is_a_reason_and_the_run_goes_on(fast_grader, monkeypatch):
    monkeypatch.setattr(answer, "_grade_batch", _crash_or_grade)
    items = [("\\boxed{1}", "1"), (CRASH, "2"), ("\\boxed{3}", "3"), ("\\boxed{5}", "4"), ("\\boxed{5}", "5")]
    verdicts = list(fast_grader.grade_many(items, chunk_size=2))
    assert [(v.correct, v.reason) for v in verdicts] == [
        (True, ""), (False, "answer_error"), (True, ""), (False, "answer_wrong"), (True, "")]
    assert fast_grader.counts["answer_error"] == 1
    assert [v.correct for v in fast_grader.grade_many([("\\boxed{6}", "6")] * 5)] == [True] * 5


def test_uninterruptible_record_is_killed_and_times_out(fast_grader, monkeypatch):
    monkeypatch.setattr(answer, "_grade_batch", _hang_or_grade)
    items = [("\\boxed{1}", "1"), (HANG, "2"), ("\\boxed{3}", "3")]
    start = time.monotonic()
    verdicts = list(fast_grader.grade_many(items, chunk_size=3))
    assert [(v.correct, v.reason) for v in verdicts] == [(True, ""), (False, "answer_timeout"), (True, "")]
    assert fast_grader.counts["answer_timeout"] == 1
    assert time.monotonic() - start < 30  # batch killed at 3 s, the record alone at 2 s, plus restarts
    assert [v.correct for v in fast_grader.grade_many([("\\boxed{6}", "6")] * 3)] == [True] * 3
