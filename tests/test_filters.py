"""Each filter step, table-driven: the input and the reason code it must give (None = keep)."""

from __future__ import annotations

import numpy as np
import pytest

from distill.data.record import Record
from distill.errors import DistillError
from distill.tasks import load_task
from distill.filters import dataset, steps
from distill.filters.dataset import (
    Decontaminator,
    Dedup,
    Item,
    SelectPlan,
    verified,
)
from distill.filters.steps import (
    Finished,
    Language,
    Length,
    Repetition,
    ThinkFormat,
    TokenCounter,
)

EN = "Find the number of positive integers n such that n squared is less than fifty."


def r(completion: str = "<think>\nok\n</think>\n\\boxed{1}", problem: str = EN, finish: str = "stop",
      num_tokens: int = 0, pid: str = "p", i: int = 0, answer: str = "1") -> Record:
    return Record(id=f"s/{pid}/{i}", problem_id=pid, problem=problem, answer=answer, completion=completion,
                  finish_reason=finish, num_tokens=num_tokens, sample_index=i)


@pytest.mark.parametrize("finish, reason", [
    ("stop", None), ("", None), ("length", "truncated"), ("abort", "unfinished"), ("error", "unfinished"),
])
def test_finished(finish, reason):
    assert Finished().check(r(finish=finish)) == reason


@pytest.mark.parametrize("completion, reason", [
    ("<think>\nreason\n</think>\n\\boxed{1}", None),
    ("  \n<think>reason</think>answer", None),
    ("The answer is \\boxed{1}", "format_no_think"),
    ("<think>\nreasoning that never ends", "format_unclosed_think"),
    ("<think>a</think><think>b</think>c", "format_multiple_think"),
    ("<think>a</think>b</think>c", "format_multiple_think"),
    ("reasoning</think>\nanswer", "format_unopened_think"),
    ("</think>x<think>y", "format_unopened_think"),
    ("Sure!<think>reason</think>answer", "format_text_before_think"),
    ("<think>\n \n</think>\nanswer", "format_empty_reasoning"),
    ("<think>\nreason\n</think>\n  \n", "format_empty_answer"),
    ("", "format_no_think"),
])
def test_think_format(completion, reason):
    assert ThinkFormat().check(r(completion)) == reason


@pytest.mark.parametrize("completion, num_tokens, lo, hi, reason", [
    ("x" * 400, 0, 0, 100, None),  # chars/4 = 100: at the limit
    ("x" * 404, 0, 0, 100, "length_over_max"),
    ("x" * 4000, 50, 0, 100, None),  # the record's num_tokens wins over the estimate
    ("x" * 40, 0, 20, None, "length_under_min"),
    ("x" * 80, 0, 20, None, None),
])
def test_length(completion, num_tokens, lo, hi, reason):
    assert Length(lo, hi).check(r(completion, num_tokens=num_tokens)) == reason


def test_length_with_a_real_tokenizer(tiny_tokenizer_dir, tiny_tokenizer):
    text = "<think>\nhello world\n</think>\n\\boxed{1}"
    n = len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])
    counter = TokenCounter(str(tiny_tokenizer_dir))
    assert counter(r(text, num_tokens=999)) == n  # the tokenizer, not the stored count
    assert Length(0, n, counter).check(r(text)) is None
    assert Length(0, n - 1, counter).check(r(text)) == "length_over_max"


def test_length_bad_settings_and_tokenizer():
    with pytest.raises(DistillError, match="min_tokens <= max_tokens"):
        Length(10, 5)
    with pytest.raises(DistillError, match="--tokenizer"):
        TokenCounter("/nonexistent/tokenizer")


_PROSE = " ".join(f"Step {i}: the value {i * i} is the square of {i}, so we move on." for i in range(200))


@pytest.mark.parametrize("completion, reason", [
    (f"<think>\n{_PROSE}\n</think>\n\\boxed{{1}}", None),
    ("<think>\n" + "Wait, let me recompute the sum once more. " * 30 + "</think>\n\\boxed{1}", "repetition_loop"),
    ("<think>\n" + "no " * 40 + "</think>\n\\boxed{1}", "repetition_loop"),  # period 1 word
    ("<think>\n" + "Wait, let me recompute the sum once more. " * 3 + "</think>\n\\boxed{1}", None),
    ("<think>\n" + "a" * 10_000 + "\n</think>\n\\boxed{1}", "repetition_loop"),  # 10k-char single token
    ("<think>\n" + "\\frac{1}{2}" * 2000 + "</think>x", "repetition_loop"),
    ("<think>\nx=\\frac{a+b}{c-d}+\\sqrt{e^2+f^2}-\\int_0^1 g(t)\\,dt+\\sum_{k=1}^{n}k^2=\\binom{n}{2}\\cdot\\pi r^2"
     "+\\log_2(1+x)-\\tan\\theta\n</think>\nx", None),  # a long formula is not a loop
])
def test_repetition(completion, reason):
    assert Repetition(ngram=20, max_repeats=10).check(r(completion)) == reason


def test_max_ngram_count_is_exact():
    words = "a b c a b c a b c d".split()
    assert steps.max_ngram_count(words, 3) == 3  # "a b c" x3
    assert steps.max_ngram_count(words, 20) == 0


ZH = "求满足条件的正整数的个数。"


@pytest.mark.parametrize("problem, completion, language, reason", [
    (EN, "<think>\nWe count the integers from one to seven.\n</think>\nThere are \\boxed{7}.", "auto", None),
    (EN, "<think>\n我们来数一下：从一到七的整数满足条件，所以答案是七。\n</think>\n\\boxed{7}", "auto",
     "language_mixed"),
    (EN, "<think>\nWe count. 我们来数一下从一到七的整数，所以答案是七。 So seven.\n</think>\n\\boxed{7}", "auto",
     "language_mixed"),
    (ZH, "<think>\n我们来数一下：从一到七的整数满足条件。\n</think>\n答案是 \\boxed{7}", "auto", None),
    (EN, "<think>\nМы считаем целые числа от одного до семи.\n</think>\n\\boxed{7}", "auto", "language_mixed"),
    # math, LaTeX commands, single-letter variables and Greek symbols are not language
    (ZH, "<think>\n设 $x^2 + \\alpha y = n$，则 \\(\\frac{a}{b}\\) 满足 α < β，所以答案是七。\n</think>\n\\boxed{7}",
     "auto", None),
    ("$2+2=$?", "<think>\n$2+2=4$\n</think>\n\\boxed{4}", "auto", None),  # no prose at all
    ("$2+2=$?", "<think>\nTwo plus two is four. 二加二等于四。\n</think>\n\\boxed{4}", "auto", "language_mixed"),
    (ZH, "<think>\nWe count the integers from one to seven.\n</think>\n\\boxed{7}", "latin", None),
    (EN, "<think>\nWe count. Broken $latex \\( never closed \\frac{1}{\n</think>\n\\boxed{7}", "auto", None),
])
def test_language(problem, completion, language, reason):
    assert Language(language, 0.05).check(r(completion, problem=problem)) == reason


# ---------------------------------------------------------------- pathological inputs end with a decision


@pytest.mark.timeout(60)
def test_megabyte_completions_end_with_a_decision():
    loop = "<think>\n" + "Let me try again with x = 3 and see. " * 30_000 + "</think>\n\\boxed{3}"  # ~1.1 MB
    prose = "<think>\n" + " ".join(f"w{i} v{i % 977} u{i % 1013}" for i in range(120_000)) + "\n</think>\n\\boxed{3}"
    broken = "<think>\n" + "\\( $$ \\[ \\frac{ { $ " * 60_000 + "\n</think>\n\\boxed{3}"
    single = "<think>\n" + "9" * 1_000_000 + "\n</think>\n\\boxed{3}"
    assert len(loop) > 1_000_000 and len(prose) > 1_000_000 and len(broken) > 1_000_000
    for text in (loop, prose, broken, single):
        rec = r(text)
        for filt in (Finished(), ThinkFormat(), Length(0, 16384), Repetition(), Language()):
            filt.check(rec)  # returns, does not hang
        Dedup().check(rec)
        Decontaminator(["aime24"]).check(rec)
    assert Repetition().check(r(loop)) == "repetition_loop"
    assert Repetition().check(r(single)) == "repetition_loop"
    assert Repetition().check(r(prose)) is None
    assert Length(0, 16384).check(r(prose)) == "length_over_max"


# ---------------------------------------------------------------- dedup


def _trace(seed: int, n: int = 120) -> str:
    rng = np.random.default_rng(seed)
    return "<think>\n" + " ".join(f"t{x}" for x in rng.integers(0, 10_000, n)) + "\n</think>\n\\boxed{1}"


@pytest.mark.parametrize("first, second, reason", [
    (_trace(1), _trace(1), "duplicate_exact"),
    (_trace(1), "  " + _trace(1).replace(" ", " \n "), "duplicate_exact"),  # whitespace only
    (_trace(1), _trace(1).replace("<think>\n", "<think>\nHmm. "), "duplicate_near"),  # one word added
    (_trace(1), _trace(2), None),
])
def test_dedup_same_problem(first, second, reason):
    d = Dedup(0.8)
    assert d.check(r(first, i=0)) is None
    assert d.check(r(second, i=1)) == reason


def test_dedup_is_per_problem_and_minhash_is_stable():
    d = Dedup(0.8)
    assert d.check(r(_trace(1), pid="a")) is None
    assert d.check(r(_trace(1), pid="b")) is None  # the same text for another problem is not a duplicate
    assert np.array_equal(dataset.minhash(_trace(3)), dataset.minhash(_trace(3)))
    assert dataset.minhash(_trace(3)).dtype == np.uint16 and dataset.minhash(_trace(3)).shape == (dataset.NUM_PERM,)


def test_minhash_estimates_jaccard():
    a = " ".join(f"w{i}" for i in range(400))
    b = " ".join(f"w{i}" for i in range(200, 600))  # shingle Jaccard ~ 196/604 = 0.32
    est = float((dataset.minhash(a) == dataset.minhash(b)).mean())
    assert 0.1 < est < 0.55


# ---------------------------------------------------------------- decontaminate


@pytest.fixture(scope="module")
def decon():
    return Decontaminator(ngram=8)


def test_decontaminate_exact_copy_and_reformatted_copy(decon):
    aime = load_task("aime24")[3]["problem"]
    assert decon.check(r(problem=aime)) == "contaminated"
    reformatted = "Problem: " + aime.upper().replace("$", " ").replace(",", " ; ") + "  (from a forum)"
    assert decon.benchmarks(reformatted) == ("aime24",)
    gsm = load_task("gsm8k")[10]["problem"]
    assert "gsm8k" in decon.benchmarks("Here is a question. " + gsm)
    assert decon.hits["aime24"] == 1


@pytest.mark.parametrize("problem", [
    "Maria owns twelve green apples and gives three of them to each of her two younger brothers; how many remain?",
    "Let $f(x) = x^2 + 3x$. Find $f(7)$ and explain every step you take along the way.",
    "",
    "\\frac{ \\( broken $ latex",
])
def test_decontaminate_keeps_clean_problems(decon, problem):
    assert decon.check(r(problem=problem)) is None


def test_decontaminate_short_benchmark_problem_matches_whole_text():
    d = Decontaminator(["aime24"], ngram=10_000)  # every problem shorter than n words: whole-text match only
    aime = load_task("aime24")[0]["problem"]
    assert d.check(r(problem=aime + " ")) == "contaminated"
    assert d.check(r(problem=aime[:-20])) is None


def test_decontaminate_unknown_task_is_one_line():
    with pytest.raises(DistillError, match="unknown task 'aime2024'"):
        Decontaminator(["aime2024"])


# ---------------------------------------------------------------- select


@pytest.mark.parametrize("strategy, k, expected", [
    ("shortest", 2, [True, False, True, False, True]),  # p: lengths 30, 50, 10, 40 → ids 0, 2; q: id 4
    ("shortest", 1, [False, False, True, False, True]),
    ("all", 1, [True] * 5),
])
def test_select_plan(strategy, k, expected):
    plan = SelectPlan(k, strategy)
    for i, (pid, length) in enumerate([("p", 30), ("p", 50), ("p", 10), ("p", 40), ("q", 99)]):
        plan.add(r(pid=pid, i=i), length)
    assert plan.winners().tolist() == expected


def test_select_random_is_seeded_and_order_free():
    recs = [r(pid="p", i=i) for i in range(10)]

    def chosen(seed, order):
        plan = SelectPlan(3, "random", seed)
        for x in order:
            plan.add(x, 0)
        return {x.id for x, w in zip(order, plan.winners(), strict=True) if w}

    assert chosen(0, recs) == chosen(0, recs[::-1])
    assert len(chosen(0, recs)) == 3
    assert any(chosen(s, recs) != chosen(0, recs) for s in range(1, 6))


# ---------------------------------------------------------------- answer_correct over a verifier


class FakeVerifier:
    """Stands in for a verifier in this unit test only (the real one runs in test_filter_run)."""

    def __init__(self, verdicts):
        self.verdicts = iter(verdicts)

    def verify_many(self, records):
        from distill.verify import Verdict

        for record, (ok, reason) in zip(list(records), self.verdicts, strict=False):
            yield Verdict(ok, reason, record.completion[-1])


def test_answer_correct_grades_only_live_items_in_order():
    items = [Item(r("a1")), Item(r("b2")), Item(r("c3")), Item(r("d4"))]
    items[1].drop("finished", "truncated")
    verifier = FakeVerifier([(True, ""), (False, "answer_timeout"), (False, "")])
    out = list(verified(items, verifier, "answer_correct", chunk_size=2))
    assert [x.record.completion for x in out] == ["a1", "b2", "c3", "d4"]
    assert [(x.step, x.reason, x.extracted) for x in out] == [
        (None, None, "1"), ("finished", "truncated", None), ("answer_correct", "answer_timeout", "3"),
        ("answer_correct", "answer_error", "4"),  # not correct and no reason: still dropped (fail closed)
    ]


def test_decontaminate_stock_phrase_is_not_a_copy_unless_min_overlap_is_zero():
    # "what is the ratio of the area of" is one 8-gram of a long olympiadbench problem, not a copy of it
    problem = "A square has side 12. What is the ratio of the area of the square to its perimeter?"
    assert Decontaminator(["olympiadbench"], 8, min_overlap=0.2).check(r(problem=problem)) is None
    classic = Decontaminator(["olympiadbench"], 8, min_overlap=0.0)
    assert classic.check(r(problem=problem)) == "contaminated"
