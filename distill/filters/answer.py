"""The one definition of "correct": extract the final answer, compare it with the gold, fail closed.

`grade` is the pure, in-process function; `Grader` runs it in worker processes with a hard per-record
timeout, so no input can hang or crash a `distill filter` or `distill eval` run.

Expression equivalence is Math-Verify's (`math_verify.parse` / `verify`, default settings); this module adds
what it lacks: R1-style answer extraction (only the text after `</think>` counts) under an explicit policy
(`EXTRACTIONS`), normalisation of the forms people write (thousands separators, units, ordinals, times),
integer/number comparison for AIME/AMC/GSM8K, guards against Math-Verify's lenient cases (an equation is not
its right-hand side), a hard timeout that works outside the main thread, and honest reason codes.
"""

from __future__ import annotations

import collections
import importlib.metadata
import logging
import multiprocessing
import os
import re
import signal
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import BrokenExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import math_verify.grader
import math_verify.parser
import pebble
import sympy
from latex2sympy2_extended.math_normalization import units_regex as _MV_UNITS
from math_verify import parse, verify

from distill.errors import DistillError

logger = logging.getLogger(__name__)

# Math-Verify warns once per process that its own (signal-based) timeout is off; we pass
# parsing_timeout=None / timeout_seconds=None on purpose and enforce ours in `Grader`.
math_verify.parser.TIMEOUT_WARNING_SHOWN = True
math_verify.grader.TIMEOUT_WARNING_SHOWN = True

REASONS = ("answer_wrong", "no_answer", "gold_unparseable", "answer_timeout", "answer_error")
ANSWER_TYPES = ("auto", "integer", "number", "expression")
# boxed: only a \boxed{} answer counts (filter: its kept traces teach the format);
# chain: boxed → an explicit "final answer is / answer:" phrase → the last math span or number of the
# final line (eval: a model that does not box still gets graded).
EXTRACTIONS = ("boxed", "chain")
# Verdict.extracted_by: which extraction rule found the answer.
RULES = ("boxed", "boxes", "phrase", "last_math", "none")
GRADER_VERSION = f"distill-answer/2 math-verify=={importlib.metadata.version('math-verify')}"

# A final answer longer than this is not an answer (it is a runaway box or a pasted derivation);
# it is graded wrong without reaching sympy, which can take minutes on such input, and the verdict
# keeps only this many characters of it.
MAX_ANSWER_CHARS = 1000
# Relative tolerance of "number" comparisons: exact for any decimal a model writes, forgiving float noise.
NUMBER_RTOL = Fraction(1, 10**9)


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str  # "" when correct; else one of REASONS
    extracted: str  # the extracted model answer ("" when none)
    extracted_by: str = "none"  # the extraction rule that found it, one of RULES


def _check_extraction(extraction: str) -> None:
    if extraction not in EXTRACTIONS:
        raise DistillError(f"unknown answer extraction {extraction!r}; choose one of {', '.join(EXTRACTIONS)}")


# --- extraction ---------------------------------------------------------------------------------

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def answer_part(completion: str) -> str:
    """The text after the last `</think>`; the whole completion when it has no think block.

    A completion that opens `<think>` and never closes it was cut off mid-thought: its answer
    part is empty, so a box it wrote while thinking is never graded as the answer.
    """
    end = completion.rfind(THINK_CLOSE)
    if end >= 0:
        return completion[end + len(THINK_CLOSE):]
    if THINK_OPEN in completion:
        return ""
    return completion


_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# Text between two boxes that makes them one answer even across a paragraph break ("\boxed{1} and \boxed{2}").
_JOINER = re.compile(r"[,;]|\band\b|\bor\b")
_CONNECTIVE = re.compile(r"(?:\s|[,;.]|\$|\\[()\[\]]|\\quad|\\qquad|\\text\{\s*(?:and|or)?\s*\}|\band\b|\bor\b)*")
# Explicit final-answer phrases, strongest first; the value is the rest of the line after the anchor
# ("Final Answer: The final answer is 12." gives "12").
_PHRASES = (
    # "The final answer is $5$", "**Final Answer:** 5", "The answer is 18.", "Answer: 7"
    re.compile(r"(?i)\b(?:final\s+)?answer[*_\s]*(?:is\b[*_\s]*:?|:)"),
    re.compile(r"####"),  # GSM8K reference format
    re.compile(r"(?m)^[ \t]*A:"),  # GSM8K "example_model_solutions" format: last line "A: 18"
)
_TOKEN = re.compile(r"[^\s$]+")
# Inline and display math; a display may span lines, inline math may not.
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$([^$\n]+?)\$", re.S)
_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_NUMBER_TEXT = re.compile(r"(?<![\w.])[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")
# Words a bare-text math answer may contain ("sqrt(2)", "2 pi"); any other word makes it a sentence.
_MATH_WORDS = {"sqrt", "pi", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "inf", "infty"}


def extract(completion: str, extraction: str = "boxed") -> tuple[str | None, str]:
    """(the model's final answer or None, the rule that found it) from the answer part (see `answer_part`).

    1. Boxes: the content of the last `\\boxed{...}` / `\\fbox{...}` (balanced braces; `\\boxed 5` too). When
       the final answer (the last box's paragraph, plus boxes joined to it by "and" / "," only) holds several
       different boxes, they are one answer, joined with ", " and graded as a set or tuple ("boxes"). A box
       in an earlier paragraph is an intermediate result. If the last box is empty or never closes (a
       truncated or broken answer), there is no answer: an earlier box is a draft, not the answer.
    2. An explicit final-answer phrase after the last box that names a different answer ("\\boxed{255} ...
       The final answer is $10,455$") overrides it under "chain"; under "boxed" it means the final answer
       is not boxed, so there is none.
    3. "chain" only, without a box: the last "final answer is X" / "answer is X" / "answer: X", else the
       last "#### X" (GSM8K), else the last line "A: X" ("phrase"); X is the math span or number the
       sentence names. Else the last math span or number of the final line ("last_math").
    """
    text = answer_part(completion)
    boxed, end = _final_boxes(text)
    if boxed is not None:
        answer, rule = boxed
        if answer is None:
            return None, "none"
        later = _phrase(text, end)
        if later is not None and not _same_answer(later, answer):
            return (later, "phrase") if extraction == "chain" else (None, "none")
        return answer, rule
    if extraction == "boxed":
        return None, "none"
    answer = _phrase(text, 0)
    if answer is not None:
        return answer, "phrase"
    answer = _last_math(text)
    return (answer, "last_math") if answer is not None else (None, "none")


def _same_answer(a: str, b: str) -> bool:
    """The same answer written twice ("10455" and "10,455"): only to tell a restatement from a new answer."""
    if _normalize(a) == _normalize(b):
        return True
    a_number, b_number = _as_number(a), _as_number(b)
    return a_number is not None and a_number == b_number


def extract_answer(completion: str, extraction: str = "boxed") -> str | None:
    """The model's final answer under `extraction` (see `extract`), or None."""
    return extract(completion, extraction)[0]


def _final_boxes(text: str) -> tuple[tuple[str | None, str] | None, int]:
    """((answer, "boxed"|"boxes") or (None, "none") for a broken last box, end of the last box); (None, 0)
    when the text has no box."""
    boxes = []  # (start, end, content) of the top-level boxes
    pos = 0
    while (m := _BOX.search(text, pos)) is not None:
        content, end = _box_content(text, m.end())  # a box that never closes ends the text
        boxes.append((m.start(), end, content))
        pos = end
    if not boxes:
        return None, 0
    start, end, content = boxes[-1]
    if content is None:
        return (None, "none"), end
    paragraph = 0
    for paragraph_break in _PARAGRAPH_BREAK.finditer(text, 0, start):
        paragraph = paragraph_break.end()
    group = [content]
    first = start
    for b_start, b_end, b_content in reversed(boxes[:-1]):
        if b_start < paragraph and not (_CONNECTIVE.fullmatch(text, b_end, first)
                                        and _JOINER.search(text, b_end, first)):
            break
        if b_content is not None:
            group.append(b_content)
        first = b_start
    if len(group) == 1:
        return (content, "boxed"), end
    distinct: dict[str, str] = {}  # normalised → as written; the same answer boxed twice is one answer
    for c in reversed(group):
        distinct.setdefault(_normalize(c), c)
    if len(distinct) == 1:
        return (content, "boxed"), end
    return (", ".join(distinct.values()), "boxes"), end


def _box_content(text: str, start: int) -> tuple[str | None, int]:
    """(content or None, index after the box) of the box whose command ends at `start`."""
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i == len(text):
        return None, len(text)
    if text[i] != "{":  # "\boxed 5": one token
        token = _TOKEN.match(text, i)
        return (token.group(0), token.end()) if token else (None, i)
    closed = _closing_brace(text, i, escapes=True)
    if closed is None:
        # "\boxed{185\}": a stray backslash before the closing brace, not a literal brace
        closed = _closing_brace(text, i, escapes=False)
        if closed is None:
            return None, len(text)
    content = text[i + 1:closed].strip()
    content = content.rstrip("\\").strip() if not content.endswith("\\\\") else content[:-2].strip()
    return content or None, closed + 1


def _closing_brace(text: str, i: int, escapes: bool) -> int | None:
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\" and (escapes or text[j + 1:j + 2] not in ("{", "}")):
            j += 2  # \{ and \} are literal braces, not grouping
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return None


def _phrase(text: str, start: int) -> str | None:
    """The answer an explicit final-answer phrase after `start` names, or None."""
    for pattern in _PHRASES:
        for m in reversed(list(pattern.finditer(text, start))):
            line_end = text.find("\n", m.end())
            value = _named_answer(text[m.end():line_end if line_end >= 0 else len(text)])
            if value is not None:
                return value
    return None


def _named_answer(tail: str) -> str | None:
    """The answer a phrase's tail names: its leading math span, the whole clause when it is math
    ("x = 2", "18"), else the last math span or number in it ("The largest $n$ is 34" gives "34")."""
    tail = tail.strip().strip("*_").strip()
    for left, right in _MATH_DELIMS:
        if tail.startswith(left):
            end = tail.find(right, len(left))
            if end > len(left):
                return tail[len(left):end].strip() or None
            break
    # The rest of the sentence: up to ". " (not "3.5"), then without a trailing full stop.
    clause = re.split(r"\.(?:\s|$)", tail, maxsplit=1)[0]
    clause = clause.strip().strip("*_").strip().rstrip(".").strip()
    if not clause:
        return None
    if _is_math(clause):
        return clause
    return _last_item(clause, 0)


def _is_math(s: str) -> bool:
    """No English word outside LaTeX commands: "x = 2", "\\frac{3}{4}", "(C)", not "5 dollars"."""
    bare = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    bare = re.sub(r"\\[A-Za-z]+", " ", bare)
    words = re.findall(r"[A-Za-z]{2,}", bare)
    return all(w.lower() in _MATH_WORDS for w in words) and re.search(r"[\w\\]", s) is not None


def _last_item(text: str, start: int) -> str | None:
    """The last math span or bare number (by position) ending after `start`."""
    items: list[tuple[int, str]] = []
    spans = []
    for m in _MATH_SPAN.finditer(text):
        spans.append((m.start(), m.end()))
        if m.end() > start:
            content = next(g for g in m.groups() if g is not None).strip()
            if content:
                items.append((m.end(), content))
    for m in _NUMBER_TEXT.finditer(text, start):
        if not any(a <= m.start() < b for a, b in spans):
            items.append((m.end(), m.group(0)))
    return max(items)[1] if items else None


def _last_math(text: str) -> str | None:
    """The last math span or number of the final line (a display math block ending on it counts)."""
    text = text.rstrip()
    if not text:
        return None
    return _last_item(text, text.rfind("\n") + 1)


# --- normalisation ------------------------------------------------------------------------------

_SPACING = re.compile(r"\\[,;:! ]|\\q?quad(?![A-Za-z])|~|\\displaystyle|\\(?:left|right)(?![A-Za-z])\.?")
_UNICODE_SPACE = re.compile(r"[\u00a0\u2009\u202f\u2007\u2002\u2003]")
_FRAC_VARIANT = re.compile(r"\\[dtc]frac(?![A-Za-z])")
_EULER = re.compile(r"\\(?:mathrm|text|operatorname)\s*\{\s*e\s*\}|\\mathrm\s+e(?![A-Za-z])")
_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?$|°$")
_SPACED_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?: \d{3})+(?:\.\d+)?")
_ORDINAL = re.compile(
    r"(\d)\s*(?:\^\s*)?\{?\s*(?:\\(?:text|mathrm|textrm|rm|mbox)\s*\{\s*)?(?:st|nd|rd|th)\s*\}?\s*\}?$")
_SUBSCRIPT = re.compile(r"_([A-Za-z0-9])")
_ASCII_RELATIONS = (("<=", "\\le "), (">=", "\\ge "), ("!=", "\\ne "), ("≤", "\\le "), ("≥", "\\ge "),
                    ("≠", "\\ne "))
_GREEK = (r"\\(?:alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|iota|kappa|lambda|mu|nu|xi"
          r"|pi|rho|sigma|tau|upsilon|phi|varphi|chi|psi|omega|Gamma|Delta|Theta|Lambda|Xi|Pi|Sigma|Phi|Psi|Omega)"
          r"(?![A-Za-z])")
_SYMBOL = rf"(?:[A-Za-z]|{_GREEK})(?:_\{{[A-Za-z0-9]+\}}|_[A-Za-z0-9])?'*"
# A left side we strip: one symbol ("x =", "k =", "a_1 =") or a function of one argument ("f(x) =", "g(2) =").
_SIMPLE_LHS = re.compile(rf"\s*{_SYMBOL}(?:\s*\(\s*(?:{_SYMBOL}|[+-]?\d+)\s*\))?\s*=(?!=)")
_RELATION = re.compile(r"[<>=≤≥≠]|\\(?:le|ge|leq|geq|leqslant|geqslant|ne|neq|lt|gt|approx|equiv)(?![A-Za-z])")
# "12:00", "4:30 p.m.", "4:30\\text{ pm}" (normalised: spaces next to non-word characters are gone)
_TIME = re.compile(r"(\d{1,2}):([0-5]\d)(?: ?(?:\\text\{ ?)?([ap])\.? ?m\.?\}?)?", re.I)
_TIME_LIKE = re.compile(r"\d{1,2}:\d{2}(?!\d)")


def _normalize(s: str) -> str:
    """Meaning-preserving cleanup for comparing strings and reading numbers: delimiters, spacing, `\\dfrac`,
    `{,}`, `\\$`, `%`, degrees, `\\mathrm{e}`, a trailing backslash, "1 000", ordinals, one `\\text{}` wrapper."""
    s = s.strip().strip("$").strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right):
            s = s[2:-2].strip()
    s = _UNICODE_SPACE.sub(" ", s)
    s = _SPACING.sub(" ", s)
    s = _FRAC_VARIANT.sub(r"\\frac", s)
    s = _EULER.sub("e", s)
    s = s.replace("{,}", ",").replace("\\$", "").replace("\\%", "")
    s = s.strip().rstrip("%").rstrip("\\").strip()
    s = _DEGREES.sub("", s).strip()
    whole = _WRAPPER.fullmatch(s)
    if whole:
        s = whole.group(1).strip()
    s = _ORDINAL.sub(r"\1", s)
    s = s.rstrip(".").strip()
    s = re.sub(r"\s+", " ", s)
    # Drop a space unless it separates two word characters: "x + 1" == "x+1", but "1 2" stays apart.
    s = re.sub(r"(?<=\W) | (?=\W)", "", s)
    if _SPACED_THOUSANDS.fullmatch(s):
        s = s.replace(" ", "")
    return _SUBSCRIPT.sub(r"_{\1}", s)


def _strip_lhs(s: str) -> str:
    """ "x = 3" → "3", "f(x) = 3x" → "3x"; never "2x + z = 1", "x <= 1", "x = y = 3"."""
    m = _SIMPLE_LHS.match(s)
    if m and not _RELATION.search(s, m.end()):
        return s[m.end():].strip()
    return s


def _for_math_verify(s: str) -> str:
    for ascii_rel, latex in _ASCII_RELATIONS:
        s = s.replace(ascii_rel, latex)
    return s


# --- numbers ------------------------------------------------------------------------------------

_DECIMAL = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
_INTEGER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)")
_SCIENTIFIC = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)[eE][+-]?\d+")
_LATEX_FRAC = re.compile(r"([+-]?)\\frac(?:\{([+-]?\d+)\}\{([+-]?\d+)\}|(\d)(\d))")
_SLASH_FRAC = re.compile(r"([+-]?\d+)/([+-]?\d+)")
_UNIT_SUFFIX = re.compile(
    r"\s*\\(?:text|mbox|mathrm|textrm|rm)\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\s*\{?\d\}?)?$")


def _literal(s: str) -> str:
    """A normalised answer read as a plain value: "x = 3" → "3", "5\\text{ cm}" → "5"."""
    s = _strip_lhs(s)
    if s.startswith("(") and s.endswith(")") and _DECIMAL.fullmatch(s[1:-1].strip()):
        s = s[1:-1].strip()  # AoPS style "\textbf{(073)}"; a 1-tuple is never meant
    without_unit = _UNIT_SUFFIX.sub("", s).strip()
    return without_unit if without_unit else s


def _as_number(s: str, scientific: bool = False, normalized: bool = False) -> Fraction | None:
    """The exact value of a plain numeric literal (decimal, "1,000", a/b, \\frac{a}{b}, and with
    `scientific` "1e-5"); None otherwise."""
    if len(s) > 100:
        return None
    s = _literal(s if normalized else _normalize(s))
    if _DECIMAL.fullmatch(s):
        return Fraction(s.replace(",", ""))
    if scientific and _SCIENTIFIC.fullmatch(s):
        return Fraction(s)
    frac = _LATEX_FRAC.fullmatch(s)
    if frac:
        sign, num, den = frac.group(1), frac.group(2) or frac.group(4), frac.group(3) or frac.group(5)
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if sign == "-" else value
    frac = _SLASH_FRAC.fullmatch(s)
    if frac:
        return None if int(frac.group(2)) == 0 else Fraction(int(frac.group(1)), int(frac.group(2)))
    return None


@lru_cache(maxsize=4096)  # many samples share one gold
def _gold_facts(gold: str) -> tuple[str, str, Fraction | None, bool]:
    """(the gold's text, normalised, its numeric value or None, is it an integer literal)."""
    if "\\boxed" in gold or "\\fbox" in gold:  # a gold written as one or several boxes
        boxed, _ = _final_boxes(gold)
        if boxed is not None and boxed[0] is not None:
            gold = boxed[0]
    gold = gold.strip()
    norm = _normalize(gold)
    is_integer = len(gold) <= 100 and _INTEGER.fullmatch(_literal(norm)) is not None
    return gold, norm, None if len(gold) > 100 else _as_number(norm, normalized=True), is_integer


def _close(pred: Fraction, gold: Fraction) -> bool:
    return abs(pred - gold) <= NUMBER_RTOL * max(1, abs(gold))


# --- math-verify --------------------------------------------------------------------------------


@lru_cache(maxsize=4096)  # many samples share one gold; sympy objects are immutable
def _parse_gold(gold: str) -> tuple:
    return tuple(_mv_parse(gold))


def _mv_parse(answer: str) -> list:
    # The answer is already extracted: boxing it makes Math-Verify parse exactly this text.
    parsed = parse("\\boxed{" + _for_math_verify(answer) + "}", parsing_timeout=None, raise_on_error=True)
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
_SYMBOL_ITEM = re.compile(rf"{_SYMBOL}|[A-Za-z][A-Za-z ]*")


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
    _check_extraction(extraction)
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
    pred_norm = _normalize(extracted)
    gold_cmp, pred_cmp = _strip_lhs(gold_norm), _strip_lhs(pred_norm)
    if _RELATION.search(gold_cmp) or _RELATION.search(pred_cmp):
        gold_cmp, pred_cmp = gold_norm, pred_norm
    if pred_cmp and pred_cmp == gold_cmp:
        return right  # identical after normalisation: correct before any parsing

    pred_number = None if len(extracted) > 100 else _as_number(pred_norm, gold_number is not None, normalized=True)
    if kind == "integer" and pred_number is not None:
        return right if pred_number == gold_number else wrong  # 25.0 == 25; 25.5 is never an integer answer
    if kind in ("number", "expression_fast") and pred_number is not None and gold_number is not None:
        return right if _close(pred_number, gold_number) else wrong
    if _TIME_LIKE.match(gold_cmp):  # "12:00" is a time, not 12/0: it equals only the same time
        gold_time, pred_time = _TIME.fullmatch(gold_cmp), _TIME.fullmatch(pred_cmp)
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


# --- worker processes ---------------------------------------------------------------------------


class _RecordTimeout(BaseException):
    """Raised by SIGALRM inside a worker; a BaseException so `except Exception` in sympy can't eat it."""


def _on_alarm(signum, frame):
    raise _RecordTimeout


def _grade_batch(items: list[tuple[str, str]], answer_type: str, timeout: float,
                 extraction: str = "boxed") -> list[Verdict]:
    """Worker side: grade a batch, each record under a soft SIGALRM timeout.

    The soft timeout ends the common slow case (sympy simplifying in Python) without killing the
    worker; the parent's hard timeout covers what a signal cannot interrupt (a huge integer power in C).
    """
    soft = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if soft:
        signal.signal(signal.SIGALRM, _on_alarm)
    out = []
    for completion, gold in items:
        try:
            try:
                if soft:
                    signal.setitimer(signal.ITIMER_REAL, timeout)
                verdict = grade(completion, gold, answer_type, extraction)
            finally:  # an alarm landing here, just before the disarm, is still caught below
                if soft:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except _RecordTimeout:
            verdict = Verdict(False, "answer_timeout", *_safe_extract(completion, extraction))
        except BaseException as e:  # noqa: BLE001 - e.g. a library's SystemExit, which pebble re-raises in the parent
            logger.debug("grader raised %s", type(e).__name__)
            verdict = Verdict(False, "answer_error", *_safe_extract(completion, extraction))
        out.append(verdict)
    return out


def _mp_context():
    # Not fork: the parent has threads (pebble's own, tokenizers, engines), and fork copies their locks.
    # forkserver with this module preloaded makes replacing a killed worker cheap (no sympy re-import).
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


class Grader:
    """Grade many (completion, gold) pairs in worker processes, each record under a hard timeout.

    A record that runs past `timeout` seconds gets Verdict(False, "answer_timeout", extracted) and a
    stuck worker is killed and replaced; a worker that dies on a record (segfault, os._exit, the OOM
    killer) ends that record as "answer_error". Records go to workers in batches; a batch that times
    out or loses its worker is regraded one record per task, so a verdict always belongs to its record.
    `extraction` is the policy every record is graded under ("boxed" or "chain", see `extract`).
    """

    # Slack on top of the per-record timeout for IPC before a worker is killed.
    HARD_MARGIN_S = 1.0
    # Pool restarts in a row without one batch graded before we stop and tell the user.
    MAX_RESTARTS = 3

    def __init__(self, workers: int | None = None, timeout: float = 5.0, answer_type: str = "auto",
                 extraction: str = "boxed"):
        if answer_type not in ANSWER_TYPES:
            raise DistillError(f"unknown answer_type {answer_type!r}; choose one of {', '.join(ANSWER_TYPES)}")
        _check_extraction(extraction)
        if not timeout > 0:
            raise DistillError(f"answer timeout must be > 0 seconds, got {timeout}")
        if workers is not None and workers < 1:
            raise DistillError(f"grader workers must be >= 1, got {workers}")
        self.workers = workers or os.cpu_count() or 1
        self.timeout, self.answer_type, self.extraction = float(timeout), answer_type, extraction
        self.counts: collections.Counter[str] = collections.Counter()  # timeouts/crashes the parent decided
        self._restarts = 0
        self._generation = 0  # bumped on every pool restart
        self._closed = False
        self._pool = pebble.ProcessPool(max_workers=self.workers, context=_mp_context())

    def grade_many(self, items: Iterable[tuple[str, str]], chunk_size: int = 16) -> Iterator[Verdict]:
        """Verdicts for (completion, gold) pairs, in input order; at most 4 batches per worker in flight."""
        if chunk_size < 1:
            raise DistillError(f"chunk_size must be >= 1, got {chunk_size}")
        window: collections.deque = collections.deque()
        batch: list[tuple[str, str]] = []
        for item in items:
            batch.append(item)
            if len(batch) == chunk_size:
                window.append(self._submit(batch))
                batch = []
                while len(window) >= 4 * self.workers:
                    yield from self._collect(*window.popleft())
        if batch:
            window.append(self._submit(batch))
        while window:
            yield from self._collect(*window.popleft())

    def _submit(self, batch: list) -> tuple:
        # A batch may spend one whole timeout on a record the soft timeout ends and still finish; a batch
        # stuck beyond that is killed and regraded record by record.
        hard = self.timeout * (2 if len(batch) > 1 else 1) + self.HARD_MARGIN_S
        args = (batch, self.answer_type, self.timeout, self.extraction)
        try:
            future = self._pool.schedule(_grade_batch, args=args, timeout=hard)
        except RuntimeError as e:  # pebble: "Unexpected error within the Pool", i.e. it broke (see _collect)
            if self._closed:
                raise DistillError("this Grader is closed; make a new one") from e
            self._restart_pool(self._generation, e)
            future = self._pool.schedule(_grade_batch, args=args, timeout=hard)
        return batch, future, self._generation

    def _collect(self, batch: list, future, generation: int) -> list[Verdict]:
        try:
            verdicts = future.result()
        except BrokenExecutor as e:
            # pebble gives up the whole pool when a worker dies while no task runs (e.g. killed while idle,
            # or it could not start): not any record's fault, so restart the pool and grade the batch again.
            self._restart_pool(generation, e)
            return self._collect(*self._submit(batch))
        except Exception as e:  # noqa: BLE001 - timeout, ProcessExpired, unpicklable input: the record's verdict
            if len(batch) == 1:
                return [self._failed(batch[0], e)]
            logger.debug("grader batch of %d: %s; regrading one record per task", len(batch), type(e).__name__)
            singles = [self._submit([item]) for item in batch]
            return [v for single in singles for v in self._collect(*single)]
        self._restarts = 0
        return verdicts

    def _restart_pool(self, generation: int, error: BaseException):
        if generation != self._generation:
            return  # another batch of the same broken pool already restarted it
        self._restarts += 1
        if self._restarts > self.MAX_RESTARTS:
            raise DistillError(
                f"grader worker processes keep dying before they grade anything ({error}); if you call "
                "Grader from a script, run it under `if __name__ == '__main__':`"
            ) from error
        logger.warning("grader pool broke (%s); restarting it", error)
        self._pool.stop()
        self._pool.join()
        self._pool = pebble.ProcessPool(max_workers=self.workers, context=_mp_context())
        self._generation += 1

    def _failed(self, item: tuple, error: BaseException) -> Verdict:
        completion = item[0] if isinstance(item[0], str) else ""
        if isinstance(error, FutureTimeoutError):
            reason = "answer_timeout"
            logger.debug("grader: record over %.1fs; worker killed", self.timeout)
        else:
            reason = "answer_error"
            logger.warning("grader: %s on one record (%s); graded answer_error", type(error).__name__, error)
        self.counts[reason] += 1
        return Verdict(False, reason, *_safe_extract(completion, self.extraction))

    def close(self):
        self._closed = True
        self._pool.stop()
        self._pool.join()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc):
        self.close()
