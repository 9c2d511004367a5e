"""The one definition of "correct" for math: compare a model's extracted answer with the gold, fail closed.

`grade` is the pure, in-process function (extraction: verify/math_extract.py; the forms answers are written in:
verify/math_forms.py); `MathGrader` (verify/math_pool.py) runs it in worker processes with a hard per-record
timeout, so no input can hang or crash a `distill filter` or `distill eval` run.

Expression equivalence is Math-Verify's (`math_verify.parse` / `verify`, default settings); this module adds
what it lacks: R1-style answer extraction (only the text after `</think>` counts) under an explicit policy
(`EXTRACTIONS`), normalisation of the forms people write (thousands separators, units, ordinals, times),
integer/number comparison for AIME/AMC/GSM8K, guards against Math-Verify's lenient cases (an equation is not
its right-hand side), a hard timeout that works outside the main thread, and honest reason codes.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from fractions import Fraction
from functools import lru_cache

import math_verify.grader
import math_verify.parser
import sympy
from latex2sympy2_extended import NormalizationConfig
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from distill.errors import DistillError
from distill.verify import Verdict
from distill.verify import math_rules as rules
from distill.verify.math_extract import EXTRACTIONS, RULES, check_extraction, extract, extract_checked, final_boxes
from distill.verify.math_forms import (INTEGER, RELATION, SYMBOL, TIME, TIME_LIKE, as_number, for_math_verify,
                                       lhs_name, literal, normalize, strip_lhs)

logger = logging.getLogger(__name__)

# Math-Verify warns once per process that its own (signal-based) timeout is off; we pass
# parsing_timeout=None / timeout_seconds=None on purpose and enforce ours in the worker pool.
math_verify.parser.TIMEOUT_WARNING_SHOWN = True
math_verify.grader.TIMEOUT_WARNING_SHOWN = True

# The policy's rejections (math_rules.POLICY: answer_hedged, answer_extra_text, answer_unit_mismatch, ...) are
# "the answer is wrong" too, each with the rule that decided it.
REASONS = ("answer_wrong", "no_answer", "gold_unparseable", "answer_timeout", "answer_error", *rules.REASONS)
ANSWER_TYPES = ("auto", "integer", "number", "expression")
GRADER_VERSION = f"distill-answer/3 math-verify=={importlib.metadata.version('math-verify')}"
__all__ = ["ANSWER_TYPES", "EXTRACTIONS", "GRADER_VERSION", "REASONS", "RULES", "extract", "grade"]

# A final answer longer than this is not an answer (it is a runaway box or a pasted derivation);
# it is graded wrong without reaching sympy, which can take minutes on such input, and the verdict
# keeps only this many characters of it.
MAX_ANSWER_CHARS = 1000
# Relative tolerance of "number" comparisons: exact for any decimal a model writes, forgiving float noise.
NUMBER_RTOL = Fraction(1, 10**9)


@lru_cache(maxsize=4096)  # many samples share one gold
def _gold_facts(gold: str) -> tuple[str, str, Fraction | None, bool]:
    """(the gold's text, normalised, its numeric value or None, is it an integer literal)."""
    if "\\boxed" in gold or "\\fbox" in gold:  # a gold written as one or several boxes
        boxed, _ = final_boxes(gold)
        if boxed is not None and boxed[0] is not None:
            gold = boxed[0]
    gold = gold.strip()
    norm = normalize(gold)
    is_integer = len(gold) <= 100 and INTEGER.fullmatch(literal(norm)) is not None
    return gold, norm, None if len(gold) > 100 else as_number(norm, normalized=True), is_integer


def _close(pred: Fraction, gold: Fraction) -> bool:
    return abs(pred - gold) <= NUMBER_RTOL * max(1, abs(gold))


# --- math-verify --------------------------------------------------------------------------------


@lru_cache(maxsize=4096)  # many samples share one gold; sympy objects are immutable
def _parse_gold(gold: str) -> tuple:
    return tuple(_mv_parse(gold))


# Math-Verify's defaults but one: its unit normalisation drops any trailing word on its unit list, which has
# variables in it ("t", "m", "ab") and hedges ("more", "less"): `12t` would be 12 and `5\text{ or more}` 5. Units are
# ours to drop (math_rules.split_unit), only when they are units that agree with the gold's.
_MV_CONFIG = [LatexExtractionConfig(normalization_config=NormalizationConfig(
    basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False)),
    ExprExtractionConfig()]


def _mv_parse(answer: str) -> list:
    # The answer is already extracted: boxing it makes Math-Verify parse exactly this text.
    parsed = parse("\\boxed{" + for_math_verify(answer) + "}", extraction_config=_MV_CONFIG, parsing_timeout=None,
                   raise_on_error=True)
    # "12:00" parses as 12/0: a value with zoo or nan in it is not understood, whatever it is compared with.
    return [p for p in parsed if not (isinstance(p, sympy.Basic) and p.has(sympy.zoo, sympy.nan))]


def _understood(parsed) -> bool:
    # parse() appends the raw string as a fallback; only a sympy object means it understood the answer.
    return any(not isinstance(p, str) for p in parsed)


def _mv_equal(gold_parsed, pred_parsed) -> bool:
    if _relation_mismatch(gold_parsed, pred_parsed):
        return False
    return verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None, raise_on_error=True)


def _relations(parsed) -> list:
    found: list = []
    for p in parsed:
        if isinstance(p, sympy.Basic):
            found += p.find(lambda e: isinstance(e, sympy.core.relational.Relational))
    return found


def _relation_mismatch(gold_parsed, pred_parsed) -> bool:
    """An equation or inequality compared with a plain value: Math-Verify would compare the value with one
    side (`2x + z = 1` "equals" 1); we accept that only for `x = value` and `f(x) = value`."""
    gold, pred = _relations(gold_parsed), _relations(pred_parsed)
    if bool(gold) == bool(pred):
        return False
    # "x = 2x + 3" is an equation in x, not a name for 2x + 3: its left side may not occur on its right.
    return not all(isinstance(r, sympy.Eq) and isinstance(r.lhs, (sympy.Symbol, sympy.core.function.AppliedUndef))
                   and not (r.lhs.free_symbols & r.rhs.free_symbols if isinstance(r.lhs, sympy.Symbol) else
                            r.rhs.has(r.lhs.func))
                   for r in gold or pred)


_IDENTITY_FUNCS = (sympy.exp, sympy.log, sympy.sinh, sympy.cosh, sympy.tanh, sympy.coth, sympy.sech, sympy.csch,
                   sympy.asinh, sympy.acosh, sympy.atanh)


def _identity_equal(gold_parsed, pred_parsed) -> bool:
    """Equal through an identity Math-Verify's checks miss (`\\tanh x` vs `(e^{2x}-1)/(e^{2x}+1)`): the
    difference rewritten in exponentials simplifies to 0. Only for plain expressions with exp/log/hyperbolic
    functions in them (sympy's simplify is slow); the record's timeout bounds it."""
    gold = next((p for p in gold_parsed if isinstance(p, sympy.Expr)), None)
    pred = next((p for p in pred_parsed if isinstance(p, sympy.Expr)), None)
    if gold is None or pred is None or not (gold.free_symbols or pred.free_symbols):
        return False
    if not any(e.has(*_IDENTITY_FUNCS) or any(b.base == sympy.E for b in e.atoms(sympy.Pow))
               for e in (gold, pred)):
        return False
    return sympy.simplify((gold - pred).rewrite(sympy.exp)) == 0


def _exact(gold_parsed, pred_parsed) -> bool:
    """Math-Verify compares numbers rounded to 6 places, so 0.333333 "equals" 1/3. An answer with decimals
    against a gold without: equal only when the decimals, read as the exact fractions they are, give the gold."""
    gold = next((p for p in gold_parsed if isinstance(p, sympy.Basic)), None)
    pred = next((p for p in pred_parsed if isinstance(p, sympy.Basic)), None)
    if gold is None or pred is None:
        return False
    exact = pred.xreplace({f: sympy.Rational(str(f)) for f in pred.atoms(sympy.Float)})
    gold = gold.xreplace({f: sympy.Rational(str(f)) for f in gold.atoms(sympy.Float)})
    if isinstance(gold, sympy.Expr) and isinstance(exact, sympy.Expr):
        return sympy.simplify(gold - exact) == 0
    return sympy.simplify(gold) == sympy.simplify(exact)


@lru_cache(maxsize=4096)
def _gold_unit(gold_norm: str) -> tuple[str, tuple[str, ...] | None, str | None]:
    return (gold_norm, None, None) if TIME_LIKE.match(gold_norm) else rules.split_unit(gold_norm)



# --- grading ------------------------------------------------------------------------------------

# A list of symbols or names ("E_{1},E_{2}", "\text{Evelyn}"): compared as strings when Math-Verify can't parse it.
_SYMBOL_ITEM = re.compile(rf"{SYMBOL}|[A-Za-z][A-Za-z ]*")


def grade(completion: str, gold: str, answer_type: str = "auto", extraction: str = "boxed") -> Verdict:
    """Grade one completion against its gold answer, in process and without a timeout.

    answer_type: "integer" (AIME: "025" == "25" == "25.0"; a non-integer answer is wrong), "number"
    (GSM8K/AMC: exact numeric compare, "1,000" ok), "expression" (Math-Verify), "auto" (integer when
    the gold is an integer literal, else Math-Verify with a numeric fast path). extraction: "boxed" or
    "chain" (see `extract`). Use `Grader` for anything a user supplied: sympy can take minutes, or the
    process's memory, on a crafted answer.
    """
    if answer_type not in ANSWER_TYPES:
        raise DistillError(f"unknown answer_type {answer_type!r}; choose one of {', '.join(ANSWER_TYPES)}")
    check_extraction(extraction)
    extracted, rule = None, "none"
    try:
        extracted, rule, taken_back = extract_checked(completion, extraction)
        verdict = _grade(extracted, gold, answer_type, taken_back)
    except Exception as e:  # noqa: BLE001 - fail closed: an exception is a verdict, never a crash or a keep
        logger.debug("grader raised %s on gold %.80r", type(e).__name__, gold)
        verdict = Verdict(False, "answer_error", extracted or "")
    return Verdict(verdict.correct, verdict.reason, verdict.extracted, rule if extracted is not None else "none")


def _grade(extracted: str | None, gold: str, answer_type: str, taken_back: str = "") -> Verdict:
    gold, gold_norm, gold_number, gold_is_integer = _gold_facts(
        gold if isinstance(gold, str) else "" if gold is None else str(gold))
    kind = answer_type
    if kind == "auto":
        kind = "integer" if gold_is_integer else "expression_fast"
    if (kind == "integer" and (gold_number is None or gold_number.denominator != 1)) or (
        kind == "number" and gold_number is None
    ):
        return Verdict(False, "gold_unparseable", extracted or "")
    if extracted is None:
        return Verdict(False, "no_answer", "")
    if len(extracted) > MAX_ANSWER_CHARS:
        return Verdict(False, "answer_wrong", extracted[:MAX_ANSWER_CHARS])
    right, wrong = Verdict(True, "", extracted), Verdict(False, "answer_wrong", extracted)
    if taken_back:  # the sentence that names the answer hedges it, or a later line names another
        return Verdict(False, taken_back, extracted)
    pred_norm = normalize(extracted)
    if rules.percent_mismatch(extracted, gold, gold_number, _gold_unit(gold_norm)[0]):  # normalize drops the %
        return Verdict(False, rules.POLICY["unit"].reason, extracted)
    if pred_norm and pred_norm == gold_norm:
        return right  # identical after normalisation: correct before any parsing
    rejected = _policy(extracted, pred_norm, gold, gold_norm, gold_number)
    if rejected:
        return Verdict(False, rejected, extracted)
    gold_value, gold_unit, _ = _gold_unit(gold_norm)
    pred_value = pred_norm if TIME_LIKE.match(pred_norm) else rules.split_unit(pred_norm)[0]
    if rules.lhs_mismatch(lhs_name(pred_value), lhs_name(gold_value)):
        return Verdict(False, rules.POLICY["lhs"].reason, extracted)

    # Compare equations as equations: strip "x =" from both sides only when neither stays a relation.
    gold_cmp, pred_cmp = strip_lhs(gold_value), strip_lhs(pred_value)
    if RELATION.search(gold_cmp) or RELATION.search(pred_cmp):
        gold_cmp, pred_cmp = gold_value, pred_value
    if pred_cmp and pred_cmp == gold_cmp:
        return right
    several = rules.is_list(pred_cmp) and not rules.is_list(gold_cmp)
    wrong = Verdict(False, rules.POLICY["multiple"].reason, extracted) if several else wrong

    pred_number = None if len(extracted) > 100 else as_number(pred_norm, gold_number is not None, normalized=True)
    if kind == "integer" and pred_number is not None:
        return right if pred_number == gold_number else wrong  # 25.0 == 25; 25.5 is never an integer answer
    if pred_number is not None and gold_number is not None:  # two literals compare exactly, whatever the kind
        if _close(pred_number, gold_number):
            return right
        approximate = (rules.has_decimal(pred_cmp) and not rules.has_decimal(gold_cmp)
                       and abs(pred_number - gold_number) <= Fraction(1, 100) * max(1, abs(gold_number)))
        return Verdict(False, rules.POLICY["approximate"].reason, extracted) if approximate else wrong
    if TIME_LIKE.match(gold_cmp):  # "12:00" is a time, not 12/0: it equals only the same time
        gold_time, pred_time = TIME.fullmatch(gold_cmp), TIME.fullmatch(pred_cmp)
        if gold_time is None:  # "4:30p.": no time we can read, and Math-Verify would read 4/(30p)
            return Verdict(False, "gold_unparseable", extracted)
        return right if pred_time is not None and _clock(pred_time) == _clock(gold_time) else wrong

    # A non-literal answer ("2^5", "\sqrt{2}/2"), or an expression gold: Math-Verify.
    gold_parsed = _parse_gold(gold_cmp)
    if not _understood(gold_parsed):
        gold_items = [i.strip() for i in gold_cmp.split(",")]
        if all(_SYMBOL_ITEM.fullmatch(i) for i in gold_items):
            same = sorted(gold_items) == sorted(i.strip() for i in pred_cmp.split(","))
            return right if same else wrong
        if gold_number is None:
            return Verdict(False, "gold_unparseable", extracted)
    pred_parsed = _mv_parse(pred_cmp)
    if not (_mv_equal(gold_parsed, pred_parsed) or _equal_on_second_reading(gold_parsed, pred_parsed)):
        return wrong
    if rules.form_mismatch(pred_cmp, gold_cmp):
        return Verdict(False, rules.POLICY["form"].reason, extracted)
    if rules.has_decimal(pred_cmp) and not rules.has_decimal(gold_cmp) and not _exact(gold_parsed, pred_parsed):
        return Verdict(False, rules.POLICY["approximate"].reason, extracted)
    return right


def _policy(raw: str, pred_norm: str, gold: str, gold_norm: str, gold_number: Fraction | None) -> str:
    """The reason a written answer is rejected before any comparison (math_rules.POLICY), or ""."""
    if re.search(r"\\approx|\\sim(?![A-Za-z])|≈", raw):
        return rules.POLICY["approximate"].reason
    gold_hedges = rules.hedged(" ".join(rules.answer_words(gold_norm)), answer=True)
    if not gold_hedges and rules.hedged(" ".join(rules.answer_words(pred_norm)), answer=True):
        return rules.POLICY["hedge"].reason
    if TIME_LIKE.match(pred_norm):
        return ""
    _, unit, extra = rules.split_unit(pred_norm)
    gold_value, gold_unit, gold_extra = _gold_unit(gold_norm)
    if extra is not None and extra != gold_extra:
        return rules.POLICY["extra_text"].reason
    if unit is None and rules.dollars(raw):
        unit = ("dollar",)
    if gold_unit is None and rules.dollars(gold):
        gold_unit = ("dollar",)
    if rules.unit_mismatch(unit, gold_unit):
        return rules.POLICY["unit"].reason
    return ""


def _clock(time: re.Match) -> tuple:
    hours, minutes, half = time.groups()
    return int(hours), int(minutes), (half or "").lower()


def _equal_on_second_reading(gold_parsed, pred_parsed) -> bool:
    """After Math-Verify said "not equal": an identity through exponentials. It can only establish an equality;
    one that raises establishes nothing."""
    try:
        return not _relation_mismatch(gold_parsed, pred_parsed) and _identity_equal(gold_parsed, pred_parsed)
    except Exception as e:  # noqa: BLE001 - fail closed: the first reading's "not equal" stands
        logger.debug("second reading raised %s", type(e).__name__)
        return False


def _safe_extract(completion: str, extraction: str = "boxed") -> tuple[str, str]:
    try:
        extracted, rule = extract(completion, extraction)
        return (extracted or "")[:MAX_ANSWER_CHARS], rule if extracted is not None else "none"
    except Exception:  # noqa: BLE001 - only used to label a record that already failed
        return "", "none"
