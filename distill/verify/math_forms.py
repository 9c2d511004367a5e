"""Forms of a math answer: meaning-preserving normalisation (spacing, `\\dfrac`, thousands separators, units,
ordinals, degrees, `\\mathrm{e}`), equation left sides, and exact values of numeric literals. Shared by extraction
(telling a restatement from a new answer) and comparison.
"""

from __future__ import annotations

import re
from fractions import Fraction

# --- normalisation ------------------------------------------------------------------------------

# A LaTeX row break `\\\\` is matched first and kept: "\\\\ " is a row break, not "\\" then the spacing "\\ ".
_SPACING = re.compile(r"(\\\\)|\\[,;:! ]|\\q?quad(?![A-Za-z])|~|\\displaystyle|\\(?:left|right)(?![A-Za-z])\.?")
# "10,\\!000": the MATH dataset's thousands separator (a comma, then a negative thin space).
_THOUSANDS_LATEX = re.compile(r"(?<=\d)(?:\{,\}|,\\!)(?=\d{3}(?!\d))")
# A comma between digits with nothing between is a thousands separator only before a group of three; any other
# comma separates items and is written ", " so that "58, 500" (two numbers) never reads as 58500.
_LIST_COMMA = re.compile(r",\s*")
_THOUSANDS_TAIL = re.compile(r"\d{3}(?![\d])")
# A subscript that is a command is a label: "m_{\\max}", "L_{\\odot}" (Math-Verify cannot parse the command there).
_SUBSCRIPT_COMMAND = re.compile(r"_\{\s*\\([A-Za-z]+)\s*\}")
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
SYMBOL = rf"(?:[A-Za-z]|{_GREEK})(?:_\{{[A-Za-z0-9]+\}}|_[A-Za-z0-9])?'*"
# A left side we strip: one symbol ("x =", "k =", "a_1 =") or a function of one argument ("f(x) =", "g(2) =").
_SIMPLE_LHS = re.compile(rf"\s*(?P<name>{SYMBOL})(?:\s*\(\s*(?:{SYMBOL}|[+-]?\d+)\s*\))?\s*=(?!=)")
# "t \\in (0, 4]", and OlympiadBench's "t(0,4]" (the \\in lost): a symbol before an interval with mixed brackets.
_MEMBERSHIP = re.compile(rf"\s*(?P<name>{SYMBOL})\s*(?:\\in(?![A-Za-z])\s*|(?=\((?:[^()\[\]]*)\]$|\[(?:[^()\[\]]*)\)$))")
RELATION = re.compile(r"[<>=≤≥≠]|\\(?:le|ge|leq|geq|leqslant|geqslant|ne|neq|lt|gt|approx|equiv)(?![A-Za-z])")
# "12:00", "4:30 p.m.", "4:30\\text{ pm}" (normalised: spaces next to non-word characters are gone)
TIME = re.compile(r"(\d{1,2}):([0-5]\d)(?: ?(?:\\text\{ ?)?([ap])\.? ?m\.?\}?)?", re.I)
TIME_LIKE = re.compile(r"\d{1,2}:\d{2}(?!\d)")


def normalize(s: str) -> str:
    """Meaning-preserving cleanup for comparing strings and reading numbers: delimiters, spacing, `\\dfrac`,
    `{,}`, `\\$`, `%`, degrees, `\\mathrm{e}`, a trailing backslash, "1 000", ordinals, one `\\text{}` wrapper."""
    s = s.strip().strip("$").strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right):
            s = s[2:-2].strip()
    s = _UNICODE_SPACE.sub(" ", s)
    s = _THOUSANDS_LATEX.sub(",", s)
    s = _SPACING.sub(lambda m: m.group(1) or " ", s)
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
    s = _LIST_COMMA.sub(lambda m: "," if _thousands(s, m) else ", ", s)
    # Drop a space unless it separates two word characters or follows a list comma: "x + 1" == "x+1", but "1 2"
    # and "58, 500" stay apart.
    s = re.sub(r"(?<=[^\w,]) | (?=\W)", "", s)
    s = _SUBSCRIPT_COMMAND.sub(r"_{\1}", s)
    if _SPACED_THOUSANDS.fullmatch(s):
        s = s.replace(" ", "")
    return _SUBSCRIPT.sub(r"_{\1}", s)


def _thousands(s: str, comma: re.Match) -> bool:
    return (comma.group(0) == "," and comma.start() > 0 and s[comma.start() - 1].isdigit()
            and _THOUSANDS_TAIL.match(s, comma.end()) is not None)


def lhs(s: str) -> tuple[str, str] | None:
    """(left side, right side) of "x = 3", "f(x) = 3x", "t \\in (0, 4]"; None for "2x + z = 1", "x <= 1",
    "x = y = 3", and for "x = 2x + 3": a left side that occurs on the right is an equation to solve, not a name."""
    m = _SIMPLE_LHS.match(s) or _MEMBERSHIP.match(s)
    if not m or RELATION.search(s, m.end()):
        return None
    name, rhs = m.group("name"), s[m.end():].strip()
    if not rhs or re.search(rf"(?<![A-Za-z\\]){re.escape(name)}(?![A-Za-z])", rhs):
        return None
    return s[:m.end()].strip(), rhs


def lhs_name(s: str) -> str | None:
    """The variable an answer names ("x" in "x = 3", "f(x)" in "f(x) = 3x"), or None."""
    found = lhs(s)
    return re.sub(r"\s+|=$|\\in$", "", found[0]) if found else None


def strip_lhs(s: str) -> str:
    """ "x = 3" → "3", "f(x) = 3x" → "3x", "t \\in (0, 4]" → "(0, 4]"; never "2x + z = 1", "x <= 1",
    "x = y = 3", "x = 2x + 3"."""
    found = lhs(s)
    return found[1] if found else s


# Spellings latex2sympy misreads, rewritten the same way on both sides: `\\gamma(` is read as the gamma function
# (and `\\gamma^{2}-1` as zoo), and `E_{0}` as Euler's e with a subscript, which it cannot parse.
_PARSER_SPELLINGS = ((re.compile(r"\\gamma(?![A-Za-z])"), r"{\\gamma}"), (re.compile(r"(?<![A-Za-z\\])E_"), r"\\mathcal{E}_"))


def for_math_verify(s: str) -> str:
    for ascii_rel, latex in _ASCII_RELATIONS:
        s = s.replace(ascii_rel, latex)
    for pattern, spelling in _PARSER_SPELLINGS:
        s = pattern.sub(spelling, s)
    return s


# --- numbers ------------------------------------------------------------------------------------

_DECIMAL = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
INTEGER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)")
_SCIENTIFIC = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)[eE][+-]?\d+")
_LATEX_FRAC = re.compile(r"([+-]?)\\frac(?:\{([+-]?\d+)\}\{([+-]?\d+)\}|(\d)(\d))")
_SLASH_FRAC = re.compile(r"([+-]?\d+)/([+-]?\d+)")
_UNIT_SUFFIX = re.compile(
    r"\s*\\(?:text|mbox|mathrm|textrm|rm)\s*\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\s*\{?\d\}?)?$")


def literal(s: str) -> str:
    """A normalised answer read as a plain value: "x = 3" → "3", "5\\text{ cm}" → "5"."""
    s = strip_lhs(s)
    if s.startswith("(") and s.endswith(")") and _DECIMAL.fullmatch(s[1:-1].strip()):
        s = s[1:-1].strip()  # AoPS style "\textbf{(073)}"; a 1-tuple is never meant
    without_unit = _UNIT_SUFFIX.sub("", s).strip()
    return without_unit if without_unit else s


def as_number(s: str, scientific: bool = False, normalized: bool = False) -> Fraction | None:
    """The exact value of a plain numeric literal (decimal, "1,000", a/b, \\frac{a}{b}, and with
    `scientific` "1e-5"); None otherwise."""
    if len(s) > 100:
        return None
    s = literal(s if normalized else normalize(s))
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
