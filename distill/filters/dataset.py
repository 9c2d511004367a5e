"""Dataset-level steps as generators over a stream of Items: answer_correct / code_correct (batched over a
verifier),
dedup, decontaminate, and the per-problem cap `select`.

Items flow through every step in input order; a dropped item passes through the later steps untouched
(carrying its reason and step), so one sink writes kept and rejected rows. Memory: answer_correct holds
one chunk; dedup holds per problem an 8-byte hash and a 128-byte MinHash signature per kept completion;
select holds three integers per surviving record — never whole completions.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import zlib
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from distill.data.record import Record
from distill.errors import DistillError

log = logging.getLogger(__name__)


@dataclass
class Item:
    record: Record
    extracted: str | None = None  # the grader's extracted answer, once answer_correct has run
    extracted_by: str | None = None  # the extraction rule that found it (answer.RULES), once graded
    reason: str | None = None  # None while kept
    step: str | None = None  # the step that dropped it

    @property
    def alive(self) -> bool:
        return self.reason is None

    def drop(self, step: str, reason: str) -> None:
        self.step, self.reason = step, reason


# ---------------------------------------------------------------- answer_correct, code_correct


def verified(items: Iterable[Item], verifier, step: str, chunk_size: int = 10_000, audit=None) -> Iterator[Item]:
    """Grade live items chunk by chunk with the verifier's `verify_many` (all cores, hard timeouts); the
    Verdict's reason is the drop reason, its extracted answer is kept on every graded item. `audit`
    (verify.math_audit.Audit): every verdict is also handed to it, to compare with plain math-verify's."""
    it = iter(items)
    while chunk := list(itertools.islice(it, chunk_size)):
        live = [x for x in chunk if x.alive]
        verdicts = verifier.verify_many(x.record for x in live)
        for x, v in zip(live, verdicts, strict=True):  # one verdict per record, or a loud bug
            if audit is not None:
                audit.add(x.record, v)
            x.extracted, x.extracted_by = v.extracted, v.extracted_by
            if not v.correct:
                # Fail closed: a verdict that is not correct but gives no reason still drops.
                x.drop(step, v.reason or "answer_error")
        yield from chunk


# ---------------------------------------------------------------- dedup

NUM_PERM = 64
SHINGLE = 5
_MASK61 = np.uint64((1 << 61) - 1)
_rng = np.random.default_rng(20250101)  # fixed: signatures must not depend on the run
_A = _rng.integers(1, 1 << 62, NUM_PERM, dtype=np.uint64) | np.uint64(1)
_B = _rng.integers(0, 1 << 62, NUM_PERM, dtype=np.uint64)


def normalize_ws(text: str) -> str:
    return " ".join(text.split())


def exact_hash(text: str) -> bytes:
    return hashlib.blake2b(normalize_ws(text).encode("utf-8", "replace"), digest_size=8).digest()


def minhash(text: str) -> np.ndarray:
    """b-bit MinHash signature (NUM_PERM uint16) over word 5-grams; crc32 word hashes keep it stable across runs.
    16 bits per minimum add a ~1/65536 bias to the Jaccard estimate and halve the per-record state."""
    words = text.lower().split()
    if not words:
        return np.zeros(NUM_PERM, dtype=np.uint16)
    w = np.fromiter((zlib.crc32(x.encode("utf-8", "replace")) for x in words), dtype=np.uint64, count=len(words))
    k = min(SHINGLE, len(w))
    m = len(w) - k + 1
    sh = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            sh = sh * np.uint64(1000003) + w[j:j + m]
        sh = np.unique(sh)
        sig = np.full(NUM_PERM, np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, len(sh), 8192):  # blocks keep the (shingles x perms) matrix small
            block = sh[start:start + 8192, None]
            sig = np.minimum(sig, (block * _A + _B).min(axis=0))
        # b-bit MinHash: the minimum is taken on 64 bits, 16 bits of it (not its top ones, which are ~0) are kept
    return ((sig >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.uint16)


class Dedup:
    """Per problem: drop a completion equal (modulo whitespace) to a kept one (`duplicate_exact`), or whose
    estimated Jaccard similarity of word 5-grams with a kept one is >= threshold (`duplicate_near`)."""

    name = "dedup"
    reasons = ("duplicate_exact", "duplicate_near")

    def __init__(self, threshold: float = 0.8):
        if not 0 < threshold <= 1:
            raise DistillError(f"dedup: dedup_threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        # Per problem: the exact hashes (as ints) and the signatures of kept completions, concatenated in one
        # bytearray — a few hundred bytes per kept record, no Python object per signature.
        self.exact: dict[str, set[int]] = {}
        self.sigs: dict[str, bytearray] = {}

    def check(self, record: Record) -> str | None:
        seen = self.exact.setdefault(record.problem_id, set())
        h = int.from_bytes(exact_hash(record.completion), "little")
        if h in seen:
            return "duplicate_exact"
        sig = minhash(record.completion)
        kept = self.sigs.setdefault(record.problem_id, bytearray())
        if kept:
            others = np.frombuffer(bytes(kept), dtype=np.uint16).reshape(-1, NUM_PERM)
            if float((others == sig).mean(axis=1).max()) >= self.threshold:
                return "duplicate_near"
        seen.add(h)
        kept += sig.tobytes()
        return None


# ---------------------------------------------------------------- decontaminate

_LATEX_CMD = re.compile(r"\\[A-Za-z]+")
_NON_WORD = re.compile(r"[^0-9a-z\u00C0-\uFFFF]+")


def normalize_words(text: str) -> list[str]:
    """Lowercase, LaTeX commands and punctuation removed: the word sequence n-grams are taken over."""
    return _NON_WORD.sub(" ", _LATEX_CMD.sub(" ", text.lower())).split()


def _ngram_keys(words: list[str], n: int) -> Iterator[bytes]:
    for i in range(len(words) - n + 1):
        yield hashlib.blake2b(" ".join(words[i:i + n]).encode(), digest_size=8).digest()


class Decontaminator:
    """A problem is `contaminated` when it contains at least `min_overlap` of the word n-grams of one problem
    of a bundled eval set (a benchmark problem shorter than n words: its whole normalized text); hits are
    counted per benchmark. min_overlap=0 is the classic rule (any shared n-gram), which also drops problems
    that merely share a stock phrase ("what is the ratio of the area of"); real copies, even reworded or
    embedded in a longer text, contain most of the benchmark problem's n-grams."""

    name = "decontaminate"
    reasons = ("contaminated",)

    def __init__(self, tasks: Iterable[str] | None = None, ngram: int = 8, min_overlap: float = 0.2):
        from distill.tasks import MATH_TASKS, load_task

        if ngram < 1:
            raise DistillError(f"decontaminate: decontam_ngram must be >= 1, got {ngram}")
        if not 0 <= min_overlap <= 1:
            raise DistillError(f"decontaminate: decontam_min_overlap must be in [0, 1], got {min_overlap}")
        self.tasks = list(tasks) if tasks else list(MATH_TASKS)
        self.ngram, self.min_overlap = ngram, min_overlap
        self.index: dict[bytes, list[int]] = {}  # n-gram → benchmark problems (indices into self.problems)
        self.problems: list[tuple[str, int]] = []  # (task, number of distinct n-grams)
        for task in self.tasks:
            for row in load_task(task):  # raises a one-line DistillError for an unknown name
                words = normalize_words(row["problem"])
                keys = set(_ngram_keys(words, ngram)) if len(words) >= ngram else {self._whole(words)}
                for key in keys:
                    self.index.setdefault(key, []).append(len(self.problems))
                self.problems.append((task, len(keys)))
        self.hits: Counter = Counter({t: 0 for t in self.tasks})
        self._memo: dict[bytes, tuple[str, ...]] = {}

    @staticmethod
    def _whole(words: list[str]) -> bytes:
        return hashlib.blake2b(("\x00" + " ".join(words)).encode(), digest_size=8).digest()

    def benchmarks(self, problem: str) -> tuple[str, ...]:
        """The bundled benchmarks this problem overlaps (memoized per problem text: n samples share it)."""
        memo_key = hashlib.blake2b(problem.encode("utf-8", "replace"), digest_size=16).digest()
        if memo_key not in self._memo:
            if len(self._memo) > 50_000:
                self._memo.clear()
            words = normalize_words(problem)
            shared: Counter = Counter()
            for key in set(itertools.chain(_ngram_keys(words, self.ngram), [self._whole(words)])):
                shared.update(self.index.get(key, ()))
            found = {self.problems[i][0] for i, n in shared.items() if n >= self.min_overlap * self.problems[i][1]}
            self._memo[memo_key] = tuple(sorted(found))
        return self._memo[memo_key]

    def check(self, record: Record) -> str | None:
        found = self.benchmarks(record.problem)
        if found:
            self.hits.update(found)
            return "contaminated"
        return None


# ---------------------------------------------------------------- select

SELECT_STRATEGIES = ("shortest", "random", "all")


class SelectPlan:
    """Cap correct traces per problem at k. Pass 1 `add`s every surviving record (problem, length, row);
    `winners()` returns the rows to keep: the k shortest (ties: input order) or k at random (seeded, by a
    hash of the record id, so the choice does not depend on input order)."""

    name = "select"
    reasons = ("select_over_k",)

    def __init__(self, k: int, strategy: str = "random", seed: int = 0):
        if strategy not in SELECT_STRATEGIES:
            raise DistillError(f"select: unknown strategy {strategy!r}; choose one of {', '.join(SELECT_STRATEGIES)}")
        if k < 1:
            raise DistillError(f"select: select_k must be >= 1, got {k}")
        self.k, self.strategy, self.seed = k, strategy, seed
        self._problems: dict[str, int] = {}
        self._pid = array("q")  # 8 bytes per record, not a Python int each
        self._key = array("q")

    def add(self, record: Record, length: int) -> None:
        self._pid.append(self._problems.setdefault(record.problem_id, len(self._problems)))
        if self.strategy == "random":
            digest = hashlib.blake2b(f"{self.seed}\x00{record.id}".encode(), digest_size=8).digest()
            self._key.append(int.from_bytes(digest, "little") >> 1)
        else:
            self._key.append(length)

    def winners(self) -> np.ndarray:
        """Boolean mask over the added rows, in the order they were added."""
        n = len(self._pid)
        if self.strategy == "all" or n == 0:
            return np.ones(n, dtype=bool)
        pid = np.frombuffer(self._pid, dtype=np.int64)
        key = np.frombuffer(self._key, dtype=np.int64)
        order = np.lexsort((np.arange(n), key, pid))
        sorted_pid = pid[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_pid)) + 1]
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        mask = np.zeros(n, dtype=bool)
        mask[order[rank < self.k]] = True
        return mask
