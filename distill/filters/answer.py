"""The one definition of "correct": extract the final answer, compare it with the gold, fail closed.

`grade` is the pure, in-process function; `Grader` runs it in worker processes with a hard per-record
timeout, so no input can hang or crash a `distill filter` or `distill eval` run.

Expression equivalence is Math-Verify's (`math_verify.parse` / `verify`); this module adds what it lacks:
R1-style answer extraction (only the text after `</think>` counts), integer/number comparison for
AIME/AMC/GSM8K, a hard timeout that works outside the main thread, and honest reason codes.
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
from math_verify import parse, verify

from distill.errors import DistillError

logger = logging.getLogger(__name__)

# Math-Verify warns once per process that its own (signal-based) timeout is off; we pass
# parsing_timeout=None / timeout_seconds=None on purpose and enforce ours in `Grader`.
math_verify.parser.TIMEOUT_WARNING_SHOWN = True
math_verify.grader.TIMEOUT_WARNING_SHOWN = True

REASONS = ("answer_wrong", "no_answer", "gold_unparseable", "answer_timeout", "answer_error")
ANSWER_TYPES = ("auto", "integer", "number", "expression")
GRADER_VERSION = f"distill-answer/1 math-verify=={importlib.metadata.version('math-verify')}"

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
# Fallback anchors when the answer part has no box, strongest first; the value is the rest of the line
# after the last match of the first anchor found ("Final Answer: The final answer is 12." gives "12").
_FALLBACKS = (
    # "The final answer is $5$", "**Final Answer:** 5", "The answer is 18.", "Answer: 7"
    re.compile(r"(?i)\b(?:final\s+)?answer[*_\s]*(?:is\b[*_\s]*:?|:)"),
    re.compile(r"####"),  # GSM8K reference format
    re.compile(r"(?m)^[ \t]*A:"),  # GSM8K "example_model_solutions" format: last line "A: 18"
)
_TOKEN = re.compile(r"[^\s$]+")
_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def extract_answer(completion: str) -> str | None:
    """The model's final answer from the answer part (see `answer_part`), or None.

    1. The content of the last `\\boxed{...}` / `\\fbox{...}` (balanced braces; `\\boxed 5` too). If that
       last box is empty or never closes (a truncated or broken answer), there is no answer: an
       earlier box is a draft, not the answer.
    2. Without a box, the last "final answer is X" / "answer is X" / "answer: X", else the last
       "#### X" (GSM8K), else the last line "A: X" (GSM8K model solutions). X is the math inside
       `$...$` / `\\(...\\)` when it starts with one, else the rest of the sentence.
    """
    text = answer_part(completion)
    last_box = None
    for last_box in _BOX.finditer(text):
        pass
    if last_box is not None:
        return _box_content(text, last_box.end())
    for pattern in _FALLBACKS:
        last = None
        for last in pattern.finditer(text):
            pass
        if last is not None:
            line_end = text.find("\n", last.end())
            return _clean_tail(text[last.end():line_end if line_end >= 0 else len(text)])
    return None


def _box_content(text: str, start: int) -> str | None:
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i == len(text):
        return None
    if text[i] != "{":  # "\boxed 5": one token
        token = _TOKEN.match(text, i)
        return token.group(0) if token else None
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\":  # \{ and \} are literal braces, not grouping
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip() or None
        j += 1
    return None


def _clean_tail(tail: str) -> str | None:
    tail = tail.strip().strip("*_").strip()
    for left, right in _MATH_DELIMS:
        if tail.startswith(left):
            end = tail.find(right, len(left))
            if end > len(left):
                return tail[len(left):end].strip() or None
            break
    # The rest of the sentence: up to ". " (not "3.5"), then without a trailing full stop.
    tail = re.split(r"\.(?:\s|$)", tail, maxsplit=1)[0]
    tail = tail.strip().strip("*_").strip().rstrip(".").strip()
    return tail or None


# --- numbers ------------------------------------------------------------------------------------

_DECIMAL = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
_INTEGER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)")
_LATEX_FRAC = re.compile(r"([+-]?)\\[dt]?frac(?:\{([+-]?\d+)\}\{([+-]?\d+)\}|(\d)(\d))")
_SLASH_FRAC = re.compile(r"([+-]?\d+)/([+-]?\d+)")
_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\{([^{}]*)\}")
_UNIT_SUFFIX = re.compile(r"\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z .]*\}$")
_LHS = re.compile(r"[A-Za-z]")


def _normalize_literal(s: str) -> str:
    """Light, meaning-preserving cleanup so that "$1{,}000", "x = 3", "25^\\circ", "50\\%" read as numbers."""
    s = s.strip().strip("$").strip()
    if s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2].strip()
    for spacing in ("\\!", "\\,", "\\;", "\\:", "~"):
        s = s.replace(spacing, "")
    s = s.replace("{,}", ",").replace("\\$", "").replace("\\%", "").rstrip("%")
    s = re.sub(r"\^\{?\\circ\}?$|°$", "", s).strip()
    whole = _WRAPPER.fullmatch(s)
    if whole:
        s = whole.group(1).strip()
    if s.startswith("(") and s.endswith(")") and _DECIMAL.fullmatch(s[1:-1].strip()):
        s = s[1:-1].strip()  # AoPS style "\textbf{(073)}"; a 1-tuple is never meant
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if _LHS.search(lhs):
            s = rhs.strip()
    s = _UNIT_SUFFIX.sub("", s)
    return s.strip().rstrip(".").strip()


def _as_number(s: str) -> Fraction | None:
    """The exact value of a plain numeric literal (decimal, "1,000", a/b, \\frac{a}{b}); None otherwise."""
    if len(s) > 100:
        return None
    s = _normalize_literal(s)
    if _DECIMAL.fullmatch(s):
        return Fraction(s.replace(",", ""))
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


def _is_integer_literal(s: str) -> bool:
    return len(s) <= 100 and _INTEGER.fullmatch(_normalize_literal(s)) is not None


def _close(pred: Fraction, gold: Fraction) -> bool:
    return abs(pred - gold) <= NUMBER_RTOL * max(1, abs(gold))


# --- math-verify --------------------------------------------------------------------------------


@lru_cache(maxsize=4096)  # many samples share one gold; sympy objects are immutable
def _parse_gold(gold: str) -> tuple:
    return tuple(_mv_parse(gold))


def _mv_parse(answer: str) -> list:
    # The answer is already extracted: boxing it makes Math-Verify parse exactly this text.
    return parse("\\boxed{" + answer + "}", parsing_timeout=None, raise_on_error=True)


def _mv_equal(gold_parsed: tuple, extracted: str) -> bool:
    return verify(list(gold_parsed), _mv_parse(extracted), timeout_seconds=None, raise_on_error=True)


def _parsed_to_sympy(parsed: tuple) -> bool:
    # parse() appends the raw string as a fallback; only a sympy object means it understood the gold.
    return any(not isinstance(p, str) for p in parsed)


# --- grading ------------------------------------------------------------------------------------


def grade(completion: str, gold: str, answer_type: str = "auto") -> Verdict:
    """Grade one completion against its gold answer, in process and without a timeout.

    answer_type: "integer" (AIME: "025" == "25" == "25.0"; a non-integer answer is wrong), "number"
    (GSM8K/AMC: exact numeric compare, "1,000" ok), "expression" (Math-Verify), "auto" (integer when
    the gold is an integer literal, else Math-Verify with a numeric fast path). Use `Grader` for
    anything a user supplied: sympy can take minutes, or the process's memory, on a crafted answer.
    """
    if answer_type not in ANSWER_TYPES:
        raise DistillError(f"unknown answer_type {answer_type!r}; choose one of {', '.join(ANSWER_TYPES)}")
    extracted = None
    try:
        extracted = extract_answer(completion)
        return _grade(extracted, gold, answer_type)
    except Exception as e:  # noqa: BLE001 - fail closed: an exception is a verdict, never a crash or a keep
        logger.debug("grader raised %s on gold %.80r", type(e).__name__, gold)
        return Verdict(False, "answer_error", extracted or "")


def _grade(extracted: str | None, gold: str, answer_type: str) -> Verdict:
    gold = gold if isinstance(gold, str) else "" if gold is None else str(gold)
    gold_number = _as_number(gold)
    kind = answer_type
    if kind == "auto":
        kind = "integer" if _is_integer_literal(gold) else "expression_fast"
    gold_parsed: tuple = ()
    if (kind == "integer" and (gold_number is None or gold_number.denominator != 1)) or (
        kind == "number" and gold_number is None
    ):
        return Verdict(False, "gold_unparseable", extracted or "")
    if kind in ("expression", "expression_fast"):
        gold_parsed = _parse_gold(gold.strip())
        if not _parsed_to_sympy(gold_parsed) and gold_number is None:
            return Verdict(False, "gold_unparseable", extracted or "")
    if extracted is None:
        return Verdict(False, "no_answer", "")
    if len(extracted) > MAX_ANSWER_CHARS:
        return Verdict(False, "answer_wrong", extracted[:MAX_ANSWER_CHARS])

    pred_number = _as_number(extracted)
    if kind == "integer" and pred_number is not None:
        correct = pred_number == gold_number  # 25.0 == 25; 25.5 is never an integer answer
    elif kind == "number" and pred_number is not None:
        correct = _close(pred_number, gold_number)
    elif kind == "expression_fast" and pred_number is not None and gold_number is not None:
        correct = _close(pred_number, gold_number)
    else:  # a non-literal answer ("2^5", "5\text{ cm}", "\sqrt{2}/2"), or an expression gold
        if not gold_parsed:
            gold_parsed = _parse_gold(gold.strip())
        correct = _mv_equal(gold_parsed, extracted)
    return Verdict(True, "", extracted) if correct else Verdict(False, "answer_wrong", extracted)


def _safe_extract(completion: str) -> str:
    try:
        return (extract_answer(completion) or "")[:MAX_ANSWER_CHARS]
    except Exception:  # noqa: BLE001 - only used to label a record that already failed
        return ""


# --- worker processes ---------------------------------------------------------------------------


class _RecordTimeout(BaseException):
    """Raised by SIGALRM inside a worker; a BaseException so `except Exception` in sympy can't eat it."""


def _on_alarm(signum, frame):
    raise _RecordTimeout


def _grade_batch(items: list[tuple[str, str]], answer_type: str, timeout: float) -> list[Verdict]:
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
                verdict = grade(completion, gold, answer_type)
            finally:  # an alarm landing here, just before the disarm, is still caught below
                if soft:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except _RecordTimeout:
            verdict = Verdict(False, "answer_timeout", _safe_extract(completion))
        except BaseException as e:  # noqa: BLE001 - e.g. a library's SystemExit, which pebble re-raises in the parent
            logger.debug("grader raised %s", type(e).__name__)
            verdict = Verdict(False, "answer_error", _safe_extract(completion))
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
    """

    # Slack on top of the per-record timeout for IPC before a worker is killed.
    HARD_MARGIN_S = 1.0
    # Pool restarts in a row without one batch graded before we stop and tell the user.
    MAX_RESTARTS = 3

    def __init__(self, workers: int | None = None, timeout: float = 5.0, answer_type: str = "auto"):
        if answer_type not in ANSWER_TYPES:
            raise DistillError(f"unknown answer_type {answer_type!r}; choose one of {', '.join(ANSWER_TYPES)}")
        if not timeout > 0:
            raise DistillError(f"answer timeout must be > 0 seconds, got {timeout}")
        if workers is not None and workers < 1:
            raise DistillError(f"grader workers must be >= 1, got {workers}")
        self.workers = workers or os.cpu_count() or 1
        self.timeout, self.answer_type = float(timeout), answer_type
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
        args = (batch, self.answer_type, self.timeout)
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
        return Verdict(False, reason, _safe_extract(completion))

    def close(self):
        self._closed = True
        self._pool.stop()
        self._pool.join()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc):
        self.close()
