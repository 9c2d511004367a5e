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
from latex2sympy2_extended.math_normalization import units_regex as _MV_UNITS
from math_verify import parse, verify

from distill.errors import DistillError
from distill.verify import Verdict
from distill.verify.math_extract import EXTRACTIONS, RULES, check_extraction, extract, final_boxes
from distill.verify.math_forms import (INTEGER, RELATION, SYMBOL, TIME, TIME_LIKE, as_number, for_math_verify,
                                       literal, normalize, strip_lhs)

logger = logging.getLogger(__name__)

# Math-Verify warns once per process that its own (signal-based) timeout is off; we pass
# parsing_timeout=None / timeout_seconds=None on purpose and enforce ours in the worker pool.
math_verify.parser.TIMEOUT_WARNING_SHOWN = True
math_verify.grader.TIMEOUT_WARNING_SHOWN = True

REASONS = ("answer_wrong", "no_answer", "gold_unparseable", "answer_timeout", "answer_error")
ANSWER_TYPES = ("auto", "integer", "number", "expression")
GRADER_VERSION = f"distill-answer/2 math-verify=={importlib.metadata.version('math-verify')}"
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


def _mv_parse(answer: str) -> list:
    # The answer is already extracted: boxing it makes Math-Verify parse exactly this text.
    parsed = parse("\\boxed{" + for_math_verify(answer) + "}", parsing_timeout=None, raise_on_error=True)
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
    return not all(isinstance(r, sympy.Eq) and isinstance(r.lhs, (sympy.Symbol, sympy.core.function.AppliedUndef))
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


def _protect_units(s: str) -> str | None:
    """Math-Verify drops a trailing unit-like word, and its unit list has "m", "s", "t", "h", "cm"...: so
    `\\frac{3}{4}m` reads as 3/4. In parentheses the letter stays a factor; None when nothing would be dropped."""
    return f"({s})" if "," not in s and _MV_UNITS.search(s) else None



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
        extracted, rule = extract(completion, extraction)
        verdict = _grade(extracted, gold, answer_type)
    except Exception as e:  # noqa: BLE001 - fail closed: an exception is a verdict, never a crash or a keep
        logger.debug("grader raised %s on gold %.80r", type(e).__name__, gold)
        verdict = Verdict(False, "answer_error", extracted or "")
    return Verdict(verdict.correct, verdict.reason, verdict.extracted, rule if extracted is not None else "none")


def _grade(extracted: str | None, gold: str, answer_type: str) -> Verdict:
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

    # Compare equations as equations: strip "x =" from both sides only when neither stays a relation.
    pred_norm = normalize(extracted)
    gold_cmp, pred_cmp = strip_lhs(gold_norm), strip_lhs(pred_norm)
    if RELATION.search(gold_cmp) or RELATION.search(pred_cmp):
        gold_cmp, pred_cmp = gold_norm, pred_norm
    if pred_cmp and pred_cmp == gold_cmp:
        return right  # identical after normalisation: correct before any parsing

    pred_number = None if len(extracted) > 100 else as_number(pred_norm, gold_number is not None, normalized=True)
    if kind == "integer" and pred_number is not None:
        return right if pred_number == gold_number else wrong  # 25.0 == 25; 25.5 is never an integer answer
    if kind in ("number", "expression_fast") and pred_number is not None and gold_number is not None:
        return right if _close(pred_number, gold_number) else wrong
    if TIME_LIKE.match(gold_cmp):  # "12:00" is a time, not 12/0: it equals only the same time
        gold_time, pred_time = TIME.fullmatch(gold_cmp), TIME.fullmatch(pred_cmp)
        if gold_time is None:  # "4:30p.": no time we can read, and Math-Verify would read 4/(30p)
            return Verdict(False, "gold_unparseable", extracted)
        return right if pred_time is not None and _clock(pred_time) == _clock(gold_time) else wrong

    # A non-literal answer ("2^5", "5\text{ cm}", "\sqrt{2}/2"), or an expression gold: Math-Verify.
    gold_parsed = _parse_gold(gold_cmp)
    if not _understood(gold_parsed):
        gold_items = [i.strip() for i in gold_cmp.split(",")]
        if all(_SYMBOL_ITEM.fullmatch(i) for i in gold_items):
            same = sorted(gold_items) == sorted(i.strip() for i in pred_cmp.split(","))
            return right if same else wrong
        if gold_number is None:
            return Verdict(False, "gold_unparseable", extracted)
    pred_parsed = _mv_parse(pred_cmp)
    if _mv_equal(gold_parsed, pred_parsed):
        return right
    return right if _equal_on_second_reading(gold_cmp, pred_cmp, gold_parsed, pred_parsed) else wrong


def _clock(time: re.Match) -> tuple:
    hours, minutes, half = time.groups()
    return int(hours), int(minutes), (half or "").lower()


def _equal_on_second_reading(gold: str, pred: str, gold_parsed, pred_parsed) -> bool:
    """After Math-Verify said "not equal": a trailing letter read as a factor, not a unit, and an identity
    through exponentials. Each can only establish an equality; one that raises establishes nothing."""
    try:
        for gold_alt, pred_alt in ((gold, _protect_units(pred)), (_protect_units(gold), pred)):
            if gold_alt is not None and pred_alt is not None and _mv_equal(_parse_gold(gold_alt), _mv_parse(pred_alt)):
                return True
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
