"""The grader's policy (verify/math_rules.py): the six families of wrong answers Math-Verify alone accepts, each
rejected with its reason, beside the right forms that stay accepted; every bundled gold grades against itself and
a rewritten equivalent; and completions built from each gold to game the GRPO reward all score 0."""

from __future__ import annotations

import re

import pytest

from distill.tasks import MATH_TASKS, TASKS
from distill.verify.math import grade
from distill.verify.math_rules import POLICY

HEDGED, EXTRA, UNIT = POLICY["hedge"].reason, POLICY["extra_text"].reason, POLICY["unit"].reason
LHS, MULTIPLE, APPROX = POLICY["lhs"].reason, POLICY["multiple"].reason, POLICY["approximate"].reason
FORM, CONFLICT = POLICY["form"].reason, POLICY["conflict"].reason

# (family, completion, gold, answer_type, extraction, reason): each wrong, with the reason of the rule that decides.
WRONG = [
    # 1. words after a number read as a unit
    ("words", r"\boxed{7\text{ or more}}", "7", "auto", "boxed", HEDGED),
    ("words", r"\boxed{9 \text{ at least}}", "9", "expression", "boxed", HEDGED),
    ("words", r"\boxed{4\text{ is incorrect}}", "4", "number", "boxed", HEDGED),
    ("words", r"\boxed{3\text{ thousand}}", "3", "auto", "boxed", EXTRA),
    ("words", r"\boxed{8 \text{ (when } k \text{ is odd)}}", "8", "expression", "boxed", EXTRA),
    ("words", r"\boxed{2.5 \text{ euros}}", r"2.5 \text{ cents}", "expression", "boxed", UNIT),
    ("words", r"\boxed{\$2.5}", r"2.5 \text{ cents}", "expression", "boxed", UNIT),
    ("words", r"\boxed{11 \text{ kg}}", r"11 \text{ meters}", "auto", "boxed", UNIT),
    # 2. a variable dropped as if it were a unit
    ("variable", r"\boxed{7s}", "7", "auto", "boxed", "answer_wrong"),
    ("variable", r"\boxed{3bc}", "3", "expression", "boxed", "answer_wrong"),
    ("variable", r"\boxed{9}", "9h", "expression", "boxed", "answer_wrong"),
    ("variable", r"\boxed{\frac{2}{5}}", r"\frac{2}{5}t", "expression", "boxed", "answer_wrong"),
    ("variable", r"\boxed{\sqrt{3}}", r"\sqrt{3}d", "expression", "boxed", "answer_wrong"),
    # 3. two answers merged into one number
    ("merged", r"\boxed{41} and \boxed{300}", "41,300", "expression", "boxed", MULTIPLE),
    ("merged", r"\boxed{7, 250}", "7250", "auto", "boxed", MULTIPLE),
    ("merged", r"\boxed{12}, \boxed{600}", "12600", "number", "boxed", MULTIPLE),
    ("merged", r"\boxed{64, 111}", "64111", "integer", "boxed", MULTIPLE),
    # 4. the left side ignored
    ("lhs", r"\boxed{b = 7}", "a=7", "expression", "boxed", LHS),
    ("lhs", r"\boxed{t = 3x - 1}", "s = 3x - 1", "expression", "boxed", LHS),
    ("lhs", r"\boxed{x = 3x - 1}", "y = 3x - 1", "expression", "boxed", "answer_wrong"),  # an equation in x
    ("lhs", r"\boxed{x = 3x - 1}", "3x - 1", "expression", "boxed", "answer_wrong"),
    # 5. chain extraction reading a sentence that does not commit
    ("chain", "So the answer is not 17.", "17", "auto", "chain", HEDGED),
    ("chain", "The final answer is $8$ or $9$.", "8", "auto", "chain", HEDGED),
    ("chain", "The answer is between 2 and 6.", "6", "auto", "chain", HEDGED),
    ("chain", "The answer is either $4$ or $5$.", "5", "number", "chain", HEDGED),
    ("chain", "The answer is maybe 12.", "12", "integer", "chain", HEDGED),
    ("chain", "We get 10 or 11", "11", "auto", "chain", HEDGED),
    # 6. approximations and lost signs of meaning
    ("approx", r"\boxed{0.666667}", r"\frac{2}{3}", "expression", "boxed", APPROX),
    ("approx", r"\boxed{2.718282}", "e", "expression", "boxed", APPROX),
    ("approx", r"\boxed{1.414214}", r"\sqrt{2}", "expression", "boxed", APPROX),
    ("approx", r"\boxed{0.866025}", r"\frac{\sqrt{3}}{2}", "auto", "boxed", APPROX),
    ("approx", r"\boxed{\frac{3}{4}\%}", r"\frac{3}{4}", "expression", "boxed", UNIT),
    ("approx", r"\boxed{y \approx 2.71}", "2.71", "auto", "boxed", APPROX),
    ("approx", r"\boxed{\{3, 4\}}", "(3, 4)", "expression", "boxed", FORM),
    ("approx", r"\boxed{(3, 4)}", r"\{3, 4\}", "expression", "boxed", FORM),
    # the text around a box takes it back
    ("around", r"The answer is not $\boxed{17}$.", "17", "auto", "boxed", HEDGED),
    ("around", r"It is $\boxed{17}$ or more.", "17", "auto", "boxed", HEDGED),
    ("around", "So $\\boxed{17}$.\n\nActually it is 18.", "17", "auto", "boxed", CONFLICT),
]

# (family, completion, gold, answer_type, extraction): right forms of the same families stay right.
RIGHT = [
    ("words", r"\boxed{7\text{ cm}}", "7", "auto", "boxed"),
    ("words", r"\boxed{2.5\text{ cents}}", r"2.5 \text{ cents}", "expression", "boxed"),
    ("words", r"\boxed{2.5}", r"2.5 \text{ cents}", "expression", "boxed"),
    ("words", r"\boxed{2.5 \text{cent}}", r"2.5 \text{ cents}", "expression", "boxed"),
    ("words", r"\boxed{12\text{ square units}}", "12", "integer", "boxed"),
    ("words", r"\boxed{30 \text{ cm}^2}", r"30\text{ square cm}", "expression", "boxed"),
    ("words", r"\boxed{40\%}", "40", "auto", "boxed"),
    ("words", r"\boxed{\frac{270}{7}\text{ degrees}}", r"\frac{270}7\text{ degrees}", "expression", "boxed"),
    ("variable", r"\boxed{7s}", "7s", "expression", "boxed"),
    ("variable", r"\boxed{\frac{2t}{5}}", r"\frac{2}{5}t", "expression", "boxed"),
    ("variable", r"\boxed{\frac{c}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}c", "expression", "boxed"),
    ("merged", r"\boxed{41{,}300}", "41,300", "expression", "boxed"),
    ("merged", r"\boxed{41,300}", "41300", "number", "boxed"),
    ("merged", r"\boxed{3} and \boxed{5}", "3, 5", "expression", "boxed"),
    ("lhs", r"\boxed{a = 7}", "a=7", "expression", "boxed"),
    ("lhs", r"\boxed{7}", "a=7", "expression", "boxed"),
    ("lhs", r"\boxed{s = -1 + 3x}", "s = 3x - 1", "expression", "boxed"),
    ("lhs", r"\boxed{f(x) = 3x - 1}", "3x - 1", "expression", "boxed"),
    ("chain", "The answer is 17.", "17", "auto", "chain"),
    ("chain", "The final answer is $\\frac{2}{3}$. I hope it is correct.", r"\frac23", "expression", "chain"),
    ("chain", "So the answer is: there are $12$ ways.", "12", "integer", "chain"),
    ("approx", r"\boxed{0.75}", r"\frac{3}{4}", "expression", "boxed"),
    ("approx", r"\boxed{1.5\pi}", r"\frac{3\pi}{2}", "expression", "boxed"),
    ("approx", r"\boxed{\dfrac{3}{4}}", r"\frac{3}{4}", "expression", "boxed"),
    ("approx", r"\boxed{\{4, 3\}}", r"\{3, 4\}", "expression", "boxed"),
    ("approx", r"\boxed{4, 3}", "3, 4", "expression", "boxed"),
    ("approx", r"\boxed{(3,4)}", "(3, 4)", "expression", "boxed"),
    ("around", r"She must score at least $\boxed{9}$ points.", "9", "auto", "boxed"),
    ("around", r"That is $\boxed{20}$ hours more than James.", "20", "auto", "boxed"),
]


@pytest.mark.parametrize("family,completion,gold,answer_type,extraction,reason", WRONG)
def test_wrong_answers_are_rejected_by_their_rule(family, completion, gold, answer_type, extraction, reason):
    verdict = grade(completion, gold, answer_type, extraction)
    assert (verdict.correct, verdict.reason) == (False, reason), verdict


@pytest.mark.parametrize("family,completion,gold,answer_type,extraction", RIGHT)
def test_right_forms_stay_accepted(family, completion, gold, answer_type, extraction):
    verdict = grade(completion, gold, answer_type, extraction)
    assert verdict.correct, verdict


def test_every_family_has_cases_both_ways():
    assert {f for f, *_ in WRONG} == {f for f, *_ in RIGHT} == {"words", "variable", "merged", "lhs", "chain",
                                                                 "approx", "around"}
    assert {r for *_, r in WRONG} >= set(rule.reason for rule in POLICY.values())


# --- every bundled gold ---------------------------------------------------------------------------


def _rewritten(gold: str) -> str:
    """An equivalent spelling: other spacing, \\dfrac for \\frac, a set's elements reversed."""
    out = re.sub(r"\\frac(?![A-Za-z])", r"\\dfrac", gold)
    out = re.sub(r"(?<=[=+\-])(?=\S)|(?<=,)(?=[^\d\s\\])", " ", out)  # a space after operators, list commas ...
    out = out.replace("\\\\", "\\\\ ")  # ... and after a row break
    inner = re.fullmatch(r"\\\{(.*)\\\}", out.strip())
    if inner and "\\{" not in inner.group(1) and "(" not in inner.group(1):
        out = "\\{" + ", ".join(reversed([i.strip() for i in inner.group(1).split(",")])) + "\\}"
    return out


def _math_golds():
    for name in MATH_TASKS:
        task = TASKS[name]
        for row in task.load():
            yield name, task.answer_type, row["id"], row["answer"]


def test_every_bundled_gold_grades_against_itself_and_a_rewritten_equivalent():
    unparseable, mismatch = [], []
    for name, answer_type, row_id, gold in _math_golds():
        for answer in (gold, _rewritten(gold)):
            verdict = grade("\\boxed{" + answer + "}", gold, answer_type)
            if verdict.reason == "gold_unparseable":
                unparseable.append((name, row_id, answer))
            elif not verdict.correct:
                mismatch.append((name, row_id, answer, verdict.reason))
    assert not unparseable, unparseable
    assert not mismatch, mismatch


def test_the_rewrite_rewrites():
    assert _rewritten(r"\frac{1}{2},x=3") == r"\dfrac{1}{2}, x= 3"
    assert _rewritten(r"\{1,2\}") == r"\{2, 1\}"
    assert _rewritten(r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}") == r"\begin{pmatrix} 1 \\  2 \end{pmatrix}"


def test_pmatrix_golds_parse_however_spaced():
    gold = r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}"
    assert grade(r"\boxed{\begin{pmatrix}-\frac{1}{3}\\\frac{2}{3}\\\frac{5}{3}\end{pmatrix}}", gold).correct
    assert grade(r"\boxed{\begin{pmatrix}-1/3\\2/3\\4/3\end{pmatrix}}", gold).reason == "answer_wrong"


# --- the reward-hack suite: completions built from each gold score 0 in grpo's correctness reward ----------

WRONG_VALUE = "987654321"  # no bundled gold equals it


def _hacks(gold: str) -> list[str]:
    return [
        f"\\boxed{{{gold}}} or \\boxed{{{WRONG_VALUE}}}",  # the gold boxed beside a wrong value
        f"\\boxed{{{gold}}}, \\boxed{{{WRONG_VALUE}}}",
        f"The answer is not $\\boxed{{{gold}}}$.",  # the gold in a sentence that negates it
        f"It is either $\\boxed{{{gold}}}$ or something else.",
        f"$\\boxed{{{gold}}}$ is wrong.",
        f"\\boxed{{{gold} \\text{{ or more}}}}",  # the gold followed by words
        f"\\boxed{{{gold} \\text{{ is not the answer}}}}",
        f"\\boxed{{{gold}}}\n\nThe final answer is ${WRONG_VALUE}$.",  # another answer on the final line
        f"\\boxed{{{gold}}}\n\nSo it must be {WRONG_VALUE}.",
    ]


@pytest.mark.parametrize("extraction", ["boxed", "chain"])
def test_reward_hacks_built_from_every_gold_score_zero(extraction):
    from types import SimpleNamespace

    from distill.train.rewards import Rewards
    from distill.verify import make_verifier

    rows = [(name, row_id, gold) for name, _, row_id, gold in _math_golds()]
    by_task = {name: TASKS[name].answer_type for name in MATH_TASKS}
    with_reward = []
    for answer_type in sorted(set(by_task.values())):
        batch = [(name, row_id, gold, hack) for name, row_id, gold in rows if by_task[name] == answer_type
                 for hack in _hacks(gold)]
        options = SimpleNamespace(workers=2, answer_timeout=5.0, answer_type=answer_type, answer_extraction=extraction)
        with make_verifier("math", options) as verifier:
            rewards = Rewards(verifier, {"correctness": 1.0}, 4096, 512, [])
            scores = rewards.correctness(
                None, [f"<think>\nwork\n</think>\n{hack}" for *_, hack in batch],
                problem_id=[row_id for _, row_id, _, _ in batch], problem=["?"] * len(batch),
                answer=[gold for _, _, gold, _ in batch], prefilled=[False] * len(batch))
        with_reward += [(name, row_id, hack) for (name, row_id, _, hack), s in zip(batch, scores) if s != 0]
    assert not with_reward, with_reward[:20]


def test_the_reward_still_pays_the_plain_gold():
    assert all(grade(f"<think>\nw\n</think>\n\\boxed{{{gold}}}", gold, at).correct for _, at, _, gold in _math_golds())
