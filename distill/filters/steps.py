"""Per-record filters: one small class each, `check(record)` returns None (keep) or a stable reason code.

Every check is linear in the completion's length (no backtracking regex over the whole text), so a
megabyte completion or a 10k-character run of one token ends with a decision, never a hang.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter

import numpy as np

from distill.data.record import Record
from distill.errors import DistillError
from distill.prompts import THINK_CLOSE, THINK_OPEN

# ---------------------------------------------------------------- finished


class Finished:
    """Drop samples the engine cut off, and samples with no completion at all (a null or empty column). A
    finish_reason of "" means the source did not say (truncation is then still caught by think_format's unclosed
    <think> and answer_correct's no_answer)."""

    name = "finished"
    reasons = ("completion_empty", "truncated", "unfinished")
    OK = ("stop", "eos", "end_turn", "")

    def check(self, record: Record) -> str | None:
        if not record.completion.strip():
            return "completion_empty"
        if record.finish_reason == "length":
            return "truncated"
        if record.finish_reason not in self.OK:  # abort, error, content_filter, tool_calls ...
            return "unfinished"
        return None


# ---------------------------------------------------------------- think format


class ThinkFormat:
    """Exactly one closed <think>…</think> at the start, non-empty reasoning, non-empty answer after it."""

    name = "think_format"
    reasons = ("format_no_think", "format_multiple_think", "format_unclosed_think", "format_unopened_think",
               "format_text_before_think", "format_empty_reasoning", "format_empty_answer")

    def check(self, record: Record) -> str | None:
        text = record.completion
        opens, closes = text.count(THINK_OPEN), text.count(THINK_CLOSE)
        if opens == 0 and closes == 0:
            return "format_no_think"
        if opens > 1 or closes > 1:
            return "format_multiple_think"
        if closes == 0:
            return "format_unclosed_think"
        start, end = text.find(THINK_OPEN), text.find(THINK_CLOSE)
        if opens == 0 or end < start:
            return "format_unopened_think"
        if text[:start].strip():
            return "format_text_before_think"
        if not text[start + len(THINK_OPEN):end].strip():
            return "format_empty_reasoning"
        if not text[end + len(THINK_CLOSE):].strip():
            return "format_empty_answer"
        return None


# ---------------------------------------------------------------- length


class TokenCounter:
    """Completion length in tokens: a real tokenizer when given; else the record's num_tokens when > 0;
    else characters / 4 (a documented estimate, ~English BPE; it over-counts CJK-free math slightly)."""

    def __init__(self, tokenizer: str | None = None):
        self.tokenizer = None
        if tokenizer:
            from transformers import AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
            except (OSError, ValueError) as e:
                raise DistillError(f"tokenizer {tokenizer}: could not load it ({type(e).__name__}); "
                                   f"pass a local tokenizer folder or Hub id to --tokenizer") from None

    def __call__(self, record: Record) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer(record.completion, add_special_tokens=False)["input_ids"])
        if record.num_tokens > 0:
            return record.num_tokens
        return (len(record.completion) + 3) // 4


class Length:
    name = "length"
    reasons = ("length_over_max", "length_under_min")

    def __init__(self, min_tokens: int = 0, max_tokens: int | None = None, counter: TokenCounter | None = None):
        if min_tokens < 0 or (max_tokens is not None and max_tokens < min_tokens):
            raise DistillError(f"length: need 0 <= min_tokens <= max_tokens, got {min_tokens} and {max_tokens}; "
                               f"fix --min-tokens/--max-tokens")
        self.min_tokens, self.max_tokens = min_tokens, max_tokens
        self.count = counter or TokenCounter()

    def check(self, record: Record) -> str | None:
        n = self.count(record)
        if self.max_tokens is not None and n > self.max_tokens:
            return "length_over_max"
        if n < self.min_tokens:
            return "length_under_min"
        return None


# ---------------------------------------------------------------- repetition

_PRIME = np.uint64(1099511628211)  # FNV prime: odd, so the polynomial hash is a bijection per position
# A whitespace-free run this long is either a loop ("aaaa…", "1111…") or a huge formula; loops compress ~100x.
_LONG_TOKEN = 200
_LOOP_COMPRESSION = 0.1


class Repetition:
    """A trace stuck in a loop: some word n-gram occurs >= max_repeats times (overlapping, anywhere — a run
    of one short phrase until the token limit counts once per position), or a long whitespace-free run
    that compresses like a loop. Linear time: one dict pass for word ids, n vector ops, one sort."""

    name = "repetition"
    reasons = ("repetition_loop",)

    def __init__(self, ngram: int = 20, max_repeats: int = 10):
        if ngram < 1 or max_repeats < 2:
            raise DistillError(f"repetition: need repetition_ngram >= 1 and repetition_max_repeats >= 2, "
                               f"got {ngram} and {max_repeats}")
        self.ngram, self.max_repeats = ngram, max_repeats

    def check(self, record: Record) -> str | None:
        text = record.completion
        words = text.split()
        if max_ngram_count(words, self.ngram) >= self.max_repeats:
            return "repetition_loop"
        for w in words:
            if len(w) >= _LONG_TOKEN and len(zlib.compress(w.encode("utf-8", "replace"))) < _LOOP_COMPRESSION * len(w):
                return "repetition_loop"
        return None


def max_ngram_count(words: list[str], n: int) -> int:
    """The highest number of occurrences of any word n-gram (0 when there are fewer than n words)."""
    if len(words) < n:
        return 0
    ids: dict[str, int] = {}
    seq = np.fromiter((ids.setdefault(w, len(ids)) for w in words), dtype=np.uint64, count=len(words))
    seq += np.uint64(1)
    m = len(seq) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrap-around is the hash
        for j in range(n):
            h = h * _PRIME + seq[j:j + m]
    _, counts = np.unique(h, return_counts=True)
    return int(counts.max())


# ---------------------------------------------------------------- language

# Alphabetic scripts count words of >= 2 letters (a lone x or α is a math variable); CJK scripts count
# characters (a character is about a word). Greek is left out: in math text it is symbols, not language.
SCRIPTS: dict[str, re.Pattern] = {
    "latin": re.compile(r"[A-Za-z\u00C0-\u024F]{2,}"),
    "cyrillic": re.compile(r"[\u0400-\u04FF]{2,}"),
    "arabic": re.compile(r"[\u0600-\u06FF]{2,}"),
    "hebrew": re.compile(r"[\u0590-\u05FF]{2,}"),
    "devanagari": re.compile(r"[\u0900-\u097F]{2,}"),
    "thai": re.compile(r"[\u0E00-\u0E7F]"),
    "cjk": re.compile(r"[\u3040-\u30FF\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF]"),
    "hangul": re.compile(r"[\uAC00-\uD7AF\u1100-\u11FF]"),
}
LANGUAGES = ("auto", *SCRIPTS)
# Math is not language: $…$, $$…$$, \(…\), \[…\] and \commands are removed before counting. Every pattern
# is bounded (no `.*` to a closer that may never come), so broken LaTeX stays linear.
_MATH = re.compile(r"\$\$[^$]{0,5000}\$\$|\$[^$]{0,2000}\$|\\\((?s:.){0,500}?\\\)|\\\[(?s:.){0,2000}?\\\]")
_COMMAND = re.compile(r"\\[A-Za-z]+")


def script_counts(text: str) -> Counter:
    prose = _COMMAND.sub(" ", _MATH.sub(" ", text.replace(THINK_OPEN, " ").replace(THINK_CLOSE, " ")))
    return Counter({name: n for name, pat in SCRIPTS.items() if (n := len(pat.findall(prose)))})


def dominant_script(counts: Counter) -> str | None:
    return counts.most_common(1)[0][0] if counts else None


class Language:
    """Reasoning in another script than the problem (R1's language mixing): the share of the completion's
    words/characters outside the expected script (the problem's dominant script, or `language`) is over
    `max_foreign`. A problem with no prose (pure math) expects the completion's own dominant script."""

    name = "language"
    reasons = ("language_mixed",)

    def __init__(self, language: str = "auto", max_foreign: float = 0.05):
        if language not in LANGUAGES:
            raise DistillError(f"language: unknown script {language!r}; choose one of {', '.join(LANGUAGES)}")
        if not 0 <= max_foreign < 1:
            raise DistillError(f"language: language_max_foreign must be in [0, 1), got {max_foreign}")
        self.language, self.max_foreign = language, max_foreign
        self._problem_cache: dict[str, str | None] = {}

    def expected(self, record: Record) -> str | None:
        if self.language != "auto":
            return self.language
        key = record.problem_id
        if key not in self._problem_cache:
            if len(self._problem_cache) > 100_000:  # per-problem memo, bounded
                self._problem_cache.clear()
            self._problem_cache[key] = dominant_script(script_counts(record.problem))
        return self._problem_cache[key]

    def check(self, record: Record) -> str | None:
        counts = script_counts(record.completion)
        total = sum(counts.values())
        if not total:
            return None  # nothing but math: no language to mix
        expected = self.expected(record) or dominant_script(counts)
        if (total - counts.get(expected, 0)) / total > self.max_foreign:
            return "language_mixed"
        return None
