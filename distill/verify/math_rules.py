"""The grader's rejection rules: each a named policy with its reason code and why (README "The grader's policy").

Math-Verify answers "are these two expressions equal?". It is lenient by design around that question: it drops
trailing words it takes for units (`5\\text{ or more}` is 5, `12t` is 12), compares floats rounded to 6 places
(0.333333 is 1/3) and a set with a tuple. Under GRPO every such leniency is a reward the policy can find, so these
rules run around it and reject, with a stable reason, what does not commit to one answer equal to the gold.
Each check returns a reason code (a POLICY key's `reason`) or None; none of them can make an answer correct.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Rule:
    reason: str  # the Verdict reason when the rule rejects
    why: str


POLICY = {
    "hedge": Rule("answer_hedged", "an answer that does not commit (`5 or 6`, `not 42`, `at least 5`, `between 3 "
                                   "and 5`, `5\\text{ or more}`) is no answer, whatever it names"),
    "extra_text": Rule("answer_extra_text", "words after a value that are not a unit (`5\\text{ million}`, "
                                            "`6\\text{ is wrong}`, a condition `(if n even)`) change its meaning"),
    "unit": Rule("answer_unit_mismatch", "a unit is dropped only when it is a unit and agrees with the gold's "
                                         "(`5.4\\text{ dollars}` is not 5.4 cents); a percent is a unit too"),
    "lhs": Rule("answer_lhs_mismatch", "`y = 5` names another variable than the gold's `x = 5`"),
    "multiple": Rule("answer_multiple", "several answers (two boxes, `3, 125`) for a gold that is one value"),
    "approximate": Rule("answer_approximate", "a rounded decimal (`0.333333`, `3.141593`) or `\\approx` is not an "
                                              "exact gold; a decimal matches only when exactly equal or the gold is "
                                              "itself a decimal"),
    "form": Rule("answer_form_mismatch", "a set `\\{1, 2\\}` is not the ordered pair or interval `(1, 2)`"),
    "conflict": Rule("answer_conflict", "a box followed by a different answer on the final line: which one is meant "
                                        "cannot be told, so neither counts"),
}
REASONS = tuple(rule.reason for rule in POLICY.values())

# Words that hedge or negate an answer. Matched as whole words, case-insensitive; bigrams are joined by one space.
HEDGES = frozenset("""or nor not either neither maybe perhaps probably possibly likely between unclear unknown unsure
cannot guess wrong incorrect false isn't isnt doesn't aren't""".split())
# Words of approximation hedge inside an answer (`\\text{about } 5`); in the prose around it ("which is
# approximately $\\boxed{8\\%}$") the value itself is judged, by the approximation rule.
APPROXIMATIONS = frozenset("approximately approx about around roughly nearly almost estimate estimated".split())
HEDGE_BIGRAMS = frozenset({"at least", "at most", "more than", "less than", "fewer than", "greater than", "up to",
                           "or more", "or less", "or fewer", "no more", "no less", "close to"})

# Units by canonical name → the spellings that name it (plural "s"/"es" is also read). Inside \text{} a single
# letter is a unit ("m"); bare in math mode it is a variable, so bare words are read as units only from 2 letters.
_UNIT_SPELLINGS = {
    "meter": "m meter metre mtr", "centimeter": "cm centimeter centimetre", "millimeter": "mm millimeter millimetre",
    "kilometer": "km kilometer kilometre", "micrometer": "um micrometer micron", "nanometer": "nm nanometer",
    "angstrom": "angstrom å", "inch": "in inch inches", "foot": "ft foot feet", "yard": "yd yard",
    "mile": "mi mile", "acre": "acre", "hectare": "ha hectare", "gram": "g gm gram gramme",
    "kilogram": "kg kilogram kilo", "milligram": "mg milligram", "pound": "lb lbs pound", "ounce": "oz ounce",
    "ton": "ton tonne", "liter": "l liter litre lt", "milliliter": "ml milliliter millilitre", "gallon": "gal gallon",
    "quart": "qt quart", "pint": "pt pint", "cup": "cup", "second": "s sec second", "millisecond": "ms millisecond",
    "minute": "min minute", "hour": "h hr hour", "day": "day", "week": "wk week", "month": "month",
    "year": "yr year", "dollar": "dollar usd", "cent": "cent ¢", "euro": "euro eur", "rupee": "rupee rs",
    "yen": "yen", "yuan": "yuan", "degree": "deg degree °", "radian": "rad radian", "kelvin": "k kelvin",
    "celsius": "celsius", "fahrenheit": "fahrenheit", "mph": "mph", "kph": "kph kmh kmph", "joule": "j joule",
    "kilojoule": "kj kilojoule", "calorie": "cal calorie", "kilocalorie": "kcal kilocalorie", "erg": "erg",
    "electronvolt": "ev electronvolt", "kev": "kev", "mev": "mev", "gev": "gev", "watt": "w watt",
    "kilowatt": "kw kilowatt", "newton": "n newton", "pascal": "pa pascal", "atmosphere": "atm atmosphere",
    "hertz": "hz hertz", "khz": "khz", "mhz": "mhz", "ghz": "ghz", "volt": "v volt", "ampere": "a amp ampere",
    "coulomb": "c coulomb", "ohm": "ohm ω", "tesla": "t tesla", "gauss": "gauss", "mole": "mol mole",
    "parsec": "pc parsec", "kiloparsec": "kpc", "megaparsec": "mpc", "au": "au", "lightyear": "ly lightyear",
    "solarmass": "msun", "percent": "percent pct %", "unit": "unit", "arcsec": "arcsec arcsecond",
    "arcmin": "arcmin arcminute", "byte": "byte", "bit": "bit", "mb": "mb", "gb": "gb", "kb": "kb",
}
UNITS = {spelling: name for name, spellings in _UNIT_SPELLINGS.items() for spelling in spellings.split()}
# Words that only qualify a unit ("square units", "cm per second", "cubic feet").
_UNIT_MODIFIERS = {"square": "square", "sq": "square", "cubic": "cubic", "cu": "cubic", "per": "per"}

_TEXT = re.compile(r"\\(?:text|textnormal|textrm|textbf|textit|mbox|mathrm|rm|operatorname)\s*\{([^{}]*)\}")
# One or more trailing \text{...} groups (each may carry a power: "\text{cm}^2", "\text{yr}^{-1}"), or bare words.
_TRAILING_TEXT = re.compile(
    r"(?P<unit>(?:\s*\\(?:text|textnormal|textrm|textbf|textit|mbox|mathrm|rm)\s*\{[^{}]*\}"
    r"(?:\s*\^\s*(?:\{\s*-?\d\s*\}|-?\d))?(?:\s*[/\s]\s*)?)+)$")
_BARE_WORDS = re.compile(r"(?<=[\d}.])\s*(?P<unit>[A-Za-z]{2,}(?:\s*(?:/|\s)\s*[A-Za-z]{2,})*)$")
_WORD = re.compile(r"[^\W\d_]+(?:'[a-z]+)?|[%°¢Åω]", re.I)
_POWER = re.compile(r"\^\s*\{?\s*(-?\d)\s*\}?")
_PERCENT = re.compile(r"\\?%|\\text\s*\{\s*percent\s*\}|\bpercent\b")
_DOLLAR = re.compile(r"\\\$|^\$(?=\d)")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def hedged(text: str, answer: bool = False) -> bool:
    """Does `text` (prose, or with `answer` the words of an answer) hedge or negate? Whole words; LaTeX commands
    are not words."""
    found = words(_LATEX_COMMAND.sub(" ", text))
    if any(w in HEDGES or (answer and w in APPROXIMATIONS) for w in found):
        return True
    return any(f"{a} {b}" in HEDGE_BIGRAMS for a, b in zip(found, found[1:]))


def answer_words(answer: str) -> list[str]:
    """The English words of an answer: inside \\text{} and friends, and bare words of 2+ letters in math mode that
    are not LaTeX commands or math words ("sqrt", "pi")."""
    inside = " ".join(_TEXT.findall(answer))
    outside = _LATEX_COMMAND.sub(" ", _TEXT.sub(" ", answer))
    bare = [w for w in re.findall(r"[A-Za-z]{2,}", outside) if w.lower() not in _MATH_WORDS]
    return words(inside) + [w.lower() for w in bare]


_MATH_WORDS = {"sqrt", "pi", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "inf", "infty", "lim",
               "max", "min", "mod", "gcd", "lcm", "det", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "deg"}


def split_unit(answer: str) -> tuple[str, tuple[str, ...] | None, str | None]:
    """(the value, its unit as canonical names or None, the trailing words when they are not a unit or None).

    `5\\text{ cm}` → ("5", ("centimeter",), None); `5\\text{ million}` → ("5", None, "million"); `12t` → ("12t",
    None, None): a single letter bare in math mode is a variable, never a unit."""
    m = _TRAILING_TEXT.search(answer)
    bare = m is None
    if bare:
        m = _BARE_WORDS.search(answer)
    if m is None or not answer[:m.start("unit")].strip():
        return answer, None, None  # no value before the words: the words are the answer ("\text{Evelyn}")
    value, tail = answer[:m.start("unit")].strip(), m.group("unit")
    unit = _unit_of(tail)
    if unit is None:
        if bare and not hedged(tail):
            return answer, None, None  # bare letters Math-Verify reads as a product of variables
        return value, None, " ".join(words(_LATEX_COMMAND.sub(" ", _strip_text(tail)))) or tail.strip()
    return value, unit, None


def _strip_text(s: str) -> str:
    return _TEXT.sub(r" \1 ", s)


def _unit_of(tail: str) -> tuple[str, ...] | None:
    names: list[str] = []
    for group in re.split(r"(?=\\(?:text|textnormal|textrm|textbf|textit|mbox|mathrm|rm)\s*\{)", tail):
        if not group.strip():
            continue
        power = _POWER.search(group)
        text = _POWER.sub(" ", _strip_text(group)).replace("~", " ").replace("/", " per ")
        tokens = [t for t in re.split(r"[\s.]+", text.strip().lower()) if t]
        if not tokens:
            continue
        for token in tokens:
            name = _unit_name(token)
            if name is None:
                return None
            names.append(name)
        if power and power.group(1) in ("2", "3"):
            names.insert(len(names) - 1, "square" if power.group(1) == "2" else "cubic")
        elif power and power.group(1).startswith("-"):
            names.insert(len(names) - 1, "per")
    return tuple(names) or None


def _unit_name(token: str) -> str | None:
    if token in _UNIT_MODIFIERS:
        return _UNIT_MODIFIERS[token]
    for form in (token, token[:-1] if token.endswith("s") else None, token[:-2] if token.endswith("es") else None):
        if form and form in UNITS:
            return UNITS[form]
    return None


def percent(raw: str) -> bool:
    return _PERCENT.search(raw) is not None


def dollars(raw: str) -> bool:
    return _DOLLAR.search(raw.strip()) is not None


def unit_mismatch(pred_unit: tuple | None, gold_unit: tuple | None) -> bool:
    """Both name a unit and not the same one ("square" "cm" is "cm^2"; singular is plural)."""
    return pred_unit is not None and gold_unit is not None and pred_unit != gold_unit


def percent_mismatch(pred_raw: str, gold_raw: str, gold_number: Fraction | None, gold_norm: str) -> bool:
    """`50\\%` for a gold 50 is the same number in the unit the problem asked for; `\\frac{1}{2}\\%` for a gold
    1/2 is 0.005. A percent answer matches a gold with a percent, or a gold written as a plain integer or decimal."""
    if not percent(pred_raw) or percent(gold_raw):
        return False
    return gold_number is None or re.fullmatch(r"[+-]?[\d,]*\.?\d+", gold_norm) is None


# --- left sides -------------------------------------------------------------------------------------


def lhs_mismatch(pred_lhs: str | None, gold_lhs: str | None) -> bool:
    return pred_lhs is not None and gold_lhs is not None and pred_lhs != gold_lhs


# --- several answers, sets, approximations ----------------------------------------------------------

_DECIMAL_LITERAL = re.compile(r"(?<![\d.])\d*\.\d+")


def is_list(s: str) -> bool:
    """A comma outside (), [], {} and \\{\\} that is not a thousands separator: after `normalize`, a thousands
    comma sits between digits with no space ("58,500"); "58, 500" and "3, 125" are two numbers."""
    depth = 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth <= 0 and not (i and s[i - 1].isdigit() and _THOUSANDS_TAIL.match(s, i + 1)):
            return True
    return False


_THOUSANDS_TAIL = re.compile(r"\d{3}(?!\d)")


def is_set(s: str) -> bool:
    return s.startswith("\\{") and s.endswith("\\}")


def is_ordered(s: str) -> bool:
    """A tuple or interval as written: "(1, 2)", "[2, 5)"."""
    return len(s) > 2 and s[0] in "([" and s[-1] in ")]" and is_list(s[1:-1])


def form_mismatch(pred: str, gold: str) -> bool:
    return (is_set(pred) and is_ordered(gold)) or (is_ordered(pred) and is_set(gold))


def has_decimal(s: str) -> bool:
    return _DECIMAL_LITERAL.search(s) is not None
