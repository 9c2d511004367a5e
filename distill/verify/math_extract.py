"""Extraction of a model's final answer, under an explicit policy: `boxed` (filter's default: only a \\boxed{}
answer counts, so kept traces teach the format) or `chain` (eval's default: boxed, else an explicit "final answer
is" phrase, else the last math span or number of the final line). Only the answer part counts (the text after
`</think>`, prompts.answer_part). `extract` returns the answer and the rule that found it (`extracted_by`).
"""

from __future__ import annotations

import re

from distill import prompts
from distill.errors import DistillError
from distill.verify.math_forms import as_number, normalize
from distill.verify.math_rules import POLICY, hedged

# boxed: only a \boxed{} answer counts (filter: its kept traces teach the format);
# chain: boxed → an explicit "final answer is / answer:" phrase → the last math span or number of the
# final line (eval: a model that does not box still gets graded).
EXTRACTIONS = ("boxed", "chain")
# Verdict.extracted_by: which extraction rule found the answer.
RULES = ("boxed", "boxes", "phrase", "last_math", "none")


def check_extraction(extraction: str) -> None:
    if extraction not in EXTRACTIONS:
        raise DistillError(f"unknown answer extraction {extraction!r}; choose one of {', '.join(EXTRACTIONS)}")


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
# Inline and display math; a display may span lines, inline math may not.
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$([^$\n]+?)\$", re.S)
_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_NUMBER_TEXT = re.compile(r"(?<![\w.])[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")
# Words a bare-text math answer may contain ("sqrt(2)", "2 pi"); any other word makes it a sentence.
_MATH_WORDS = {"sqrt", "pi", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "inf", "infty"}


def extract(completion: str, extraction: str = "boxed") -> tuple[str | None, str]:
    """(the model's final answer or None, the rule that found it) from the answer part (see `answer_part`);
    `extract_checked` also says whether the text around it commits to it.

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
    answer, rule, _ = extract_checked(completion, extraction)
    return answer, rule


def extract_checked(completion: str, extraction: str = "boxed") -> tuple[str | None, str, str]:
    """(answer, rule, reason): `extract`'s answer and rule, and "" or the reason the text around the answer
    takes it back (math_rules.POLICY): a hedge or negation in the sentence that names it ("The answer is not 42",
    "is $5$ or $6$", "approximately \\boxed{3}", "\\boxed{5} or more"), or a different answer on the final line
    after the box."""
    text = prompts.answer_part(completion)
    boxed, end = final_boxes(text)
    if boxed is not None:
        answer, rule = boxed
        if answer is None:
            return None, "none", ""
        later = _phrase(text, end)
        if later is not None and not _same_answer(later[0], answer):
            return (later[0], "phrase", later[1]) if extraction == "chain" else (None, "none", "")
        reason = POLICY["hedge"].reason if _box_hedged(text, end) else ""
        if not reason and later is None and _conflict(text, end, answer):
            reason = POLICY["conflict"].reason
        return answer, rule, reason
    if extraction == "boxed":
        return None, "none", ""
    later = _phrase(text, 0)
    if later is not None:
        return later[0], "phrase", later[1]
    answer = _last_math(text)
    if answer is None:
        return None, "none", ""
    final_line = text.rstrip()[text.rstrip().rfind("\n") + 1:]
    return answer, "last_math", POLICY["hedge"].reason if hedged(_prose(final_line)) else ""


def _same_answer(a: str, b: str) -> bool:
    """The same answer written twice ("10455" and "10,455"): only to tell a restatement from a new answer."""
    if normalize(a) == normalize(b):
        return True
    a_number, b_number = as_number(a), as_number(b)
    return a_number is not None and a_number == b_number


def extract_answer(completion: str, extraction: str = "boxed") -> str | None:
    """The model's final answer under `extraction` (see `extract`), or None."""
    return extract(completion, extraction)[0]


def final_boxes(text: str) -> tuple[tuple[str | None, str] | None, int]:
    """((answer, "boxed"|"boxes") or (None, "none") for a broken last box, end of the last box); (None, 0)
    when the text has no box."""
    boxes = prompts.boxes(text)  # a box that never closes ends the text
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
        distinct.setdefault(normalize(c), c)
    if len(distinct) == 1:
        return (content, "boxed"), end
    return (", ".join(distinct.values()), "boxes"), end


def _phrase(text: str, start: int) -> tuple[str, str] | None:
    """(the answer an explicit final-answer phrase after `start` names, "" or answer_hedged when the sentence does
    not commit to it), or None."""
    for pattern in _PHRASES:
        for m in reversed(list(pattern.finditer(text, start))):
            line_end = text.find("\n", m.end())
            named = _named_answer(text[m.end():line_end if line_end >= 0 else len(text)])
            if named is not None:
                return named
    return None


def _named_answer(tail: str) -> tuple[str, str] | None:
    """The answer a phrase's tail names: its leading math span, the whole clause when it is math
    ("x = 2", "18"), else the last math span or number in it ("The largest $n$ is 34" gives "34"); and whether
    the clause hedges ("not 42", "$5$ or $6$", "between 3 and 5")."""
    tail = tail.strip().strip("*_").strip()
    # The rest of the sentence: up to ". " (not "3.5"), then without a trailing full stop.
    clause = re.split(r"\.(?:\s|$)", tail, maxsplit=1)[0]
    clause = clause.strip().strip("*_").strip().rstrip(".").strip()
    reason = POLICY["hedge"].reason if hedged(_prose(clause)) else ""
    for left, right in _MATH_DELIMS:
        if tail.startswith(left):
            end = tail.find(right, len(left))
            if end > len(left):
                value = tail[len(left):end].strip()
                return (value, reason) if value else None
            break
    if not clause:
        return None
    if _is_math(clause):
        return clause, reason
    value = _last_item(clause, 0)
    return (value, reason) if value is not None else None


def _prose(text: str) -> str:
    """`text` without its math spans: the words a hedge is looked for in."""
    return _MATH_SPAN.sub(" ", text)


# Right before a box: a negation or hedge ("is not", "approximately", "at least") or a relation other than "=".
_BEFORE_HEDGE = re.compile(r"(?:\\neq?|\\approx|\\sim|\\[lg]eq?|[<>≠≈])\s*$")
_AFTER_HEDGE = re.compile(r"(?i)[\s,;(]*(?:or|nor|not|isn't|is\s+(?:not|wrong|incorrect|false|probably|possibly)|"
                          r"at\s+(?:least|most)|maybe|perhaps|probably|possibly)\b")
# Right before it, a negation or a disjunction ("is not", "either", "maybe"); not "at least" or "up to", which
# restate the question ("must score at least $\\boxed{9}$ points", "add up to $\\boxed{5}$ hours").
_BEFORE_WORDS = re.compile(r"(?i)(?:\bnot|n't|\bor|\beither|\bnor|\bmaybe|\bperhaps|\bprobably|\bpossibly)"
                           r"(?:\s+(?:be|equal|equals|to|exactly|the|answer|is|:))*[\s:,]*$")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)|\n")


def _box_hedged(text: str, end: int) -> bool:
    """The sentence around the last box takes it back: a hedge in the three words before it or anywhere after it
    in its sentence ("\\boxed{5} or more", "\\boxed{6} is wrong")."""
    start = prompts.boxes(text)[-1][0]
    before = re.sub(r"(?:\$|\\[(\[]|\s)+$", "", text[max(0, start - 200):start])
    if _BEFORE_HEDGE.search(before):
        return True
    if _BEFORE_WORDS.search(_prose(re.split(r"[.!?](?:\s)|\n", before)[-1])):
        return True
    # After it, only the words right after the box: "\\boxed{20}$ hours more than James" describes the quantity.
    after = text[end:]
    stop = _SENTENCE_END.search(after)
    after = re.sub(r"^(?:\$|\\[)\]]|\s)+", "", after[:stop.start() if stop else len(after)])
    return _AFTER_HEDGE.match(_prose(after)) is not None


def _conflict(text: str, end: int, answer: str) -> bool:
    """A line after the box's line whose last math or number (its right side, for "a = b") is another answer."""
    rest = text[end:]
    if "\n" not in rest.rstrip():
        return False
    last = _last_math(rest[rest.find("\n"):])
    if last is None:
        return False
    last = re.split(r"(?<![<>!\\])=", last)[-1].strip()
    return bool(last) and not _same_answer(last, answer)


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
