"""Math grading in worker processes, each record under a hard timeout: `MathGrader.grade_many`.

The soft timeout (SIGALRM inside a worker) ends the common slow case, sympy simplifying in Python; the parent's
hard timeout (pebble kills the worker) covers what a signal cannot interrupt, a huge integer power in C.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from concurrent.futures import BrokenExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError

import pebble

from distill.errors import DistillError
from distill.verify import Verdict
from distill.verify.math import ANSWER_TYPES, GRADER_VERSION, _safe_extract, check_extraction, grade
from distill.verify.math_audit import plain_grade

logger = logging.getLogger(__name__)


class _RecordTimeout(BaseException):
    """Raised by SIGALRM inside a worker; a BaseException so `except Exception` in sympy can't eat it."""


def _on_alarm(signum, frame):
    raise _RecordTimeout


def _grade_batch(items: list[tuple[str, str]], answer_type: str, timeout: float,
                 extraction: str = "boxed", audit: bool = False) -> list[Verdict]:
    """Worker side: grade a batch, each record under a soft SIGALRM timeout; with `audit`, plain math-verify grades
    each record too (math_audit.plain_grade), under a timeout of its own, its verdict in `Verdict.audit`.

    The soft timeout ends the common slow case (sympy simplifying in Python) without killing the
    worker; the parent's hard timeout covers what a signal cannot interrupt (a huge integer power in C).
    """
    soft = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if soft:
        signal.signal(signal.SIGALRM, _on_alarm)
    out = []
    for completion, gold in items:
        verdict = _timed(soft, timeout, completion, extraction, grade, completion, gold, answer_type, extraction)
        if audit:
            plain = _timed(soft, timeout, completion, extraction, plain_grade, completion, gold)
            verdict = dataclasses.replace(verdict, audit=plain)
        out.append(verdict)
    return out


def _timed(soft: bool, timeout: float, completion: str, extraction: str, fn, *args) -> Verdict:
    """fn(*args) under the soft timeout; a timeout or any error is the record's verdict."""
    try:
        try:
            if soft:
                signal.setitimer(signal.ITIMER_REAL, timeout)
            return fn(*args)
        finally:  # an alarm landing here, just before the disarm, is still caught below
            if soft:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except _RecordTimeout:
        return Verdict(False, "answer_timeout", *_safe_extract(completion, extraction))
    except BaseException as e:  # noqa: BLE001 - e.g. a library's SystemExit, which pebble re-raises in the parent
        logger.debug("grader raised %s", type(e).__name__)
        return Verdict(False, "answer_error", *_safe_extract(completion, extraction))


def _mp_context():
    # Not fork: the parent has threads (pebble's own, tokenizers, engines), and fork copies their locks.
    # forkserver with this module preloaded makes replacing a killed worker cheap (no sympy re-import).
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


class MathGrader:
    """The `math` verifier: grade many (completion, gold) pairs in worker processes, each under a hard timeout.

    A record that runs past `timeout` seconds gets Verdict(False, "answer_timeout", extracted) and a
    stuck worker is killed and replaced; a worker that dies on a record (segfault, os._exit, the OOM
    killer) ends that record as "answer_error". Records go to workers in batches; a batch that times
    out or loses its worker is regraded one record per task, so a verdict always belongs to its record.
    `extraction` is the policy every record is graded under ("boxed" or "chain", see `extract`). With `audit`,
    `verify_many` also grades each record by plain math-verify (verify/math_audit.py) in the same worker, each
    grader under its own timeout; a record whose worker is killed gets the timeout verdict from both.
    """

    name = "math"
    # Slack on top of the per-record timeout for IPC before a worker is killed.
    HARD_MARGIN_S = 1.0
    # Pool restarts in a row without one batch graded before we stop and tell the user.
    MAX_RESTARTS = 3

    def __init__(self, workers: int | None = None, timeout: float = 5.0, answer_type: str = "auto",
                 extraction: str = "boxed", audit: bool = False):
        if answer_type not in ANSWER_TYPES:
            raise DistillError(f"unknown answer_type {answer_type!r}; choose one of {', '.join(ANSWER_TYPES)}")
        check_extraction(extraction)
        if not timeout > 0:
            raise DistillError(f"answer timeout must be > 0 seconds, got {timeout}")
        if workers is not None and workers < 1:
            raise DistillError(f"grader workers must be >= 1, got {workers}")
        self.workers = workers or os.cpu_count() or 1
        self.timeout, self.answer_type, self.extraction = float(timeout), answer_type, extraction
        self.audit = audit
        self.counts: collections.Counter[str] = collections.Counter()  # timeouts/crashes the parent decided
        self._restarts = 0
        self._generation = 0  # bumped on every pool restart
        self._closed = False
        self._pool = pebble.ProcessPool(max_workers=self.workers, context=_mp_context())

    @property
    def version(self) -> str:
        return GRADER_VERSION

    def verify_many(self, records: Iterable[Any]) -> Iterator[Verdict]:
        """Verdicts for records (their completion against their gold `answer`), in input order; audited when the
        grader was built with `audit`."""
        return self.grade_many(((r.completion, r.answer) for r in records), audit=self.audit)

    def grade_many(self, items: Iterable[tuple[str, str]], chunk_size: int = 16,
                   audit: bool = False) -> Iterator[Verdict]:
        """Verdicts for (completion, gold) pairs, in input order; at most 4 batches per worker in flight. `audit`:
        each verdict carries plain math-verify's in `Verdict.audit` (eval's answer clustering for cons@k needs none)."""
        if chunk_size < 1:
            raise DistillError(f"chunk_size must be >= 1, got {chunk_size}")
        window: collections.deque = collections.deque()
        batch: list[tuple[str, str]] = []
        for item in items:
            batch.append(item)
            if len(batch) == chunk_size:
                window.append(self._submit(batch, audit))
                batch = []
                while len(window) >= 4 * self.workers:
                    yield from self._collect(*window.popleft())
        if batch:
            window.append(self._submit(batch, audit))
        while window:
            yield from self._collect(*window.popleft())

    def _submit(self, batch: list, audit: bool = False) -> tuple:
        # A batch may spend one whole timeout on a record the soft timeout ends and still finish (two with audit:
        # one per grader); a batch stuck beyond that is killed and regraded record by record.
        hard = self.timeout * (2 if len(batch) > 1 else 1) * (2 if audit else 1) + self.HARD_MARGIN_S
        args = (batch, self.answer_type, self.timeout, self.extraction, audit)
        try:
            future = self._pool.schedule(_grade_batch, args=args, timeout=hard)
        except RuntimeError as e:  # pebble: "Unexpected error within the Pool", i.e. it broke (see _collect)
            if self._closed:
                raise DistillError("this MathGrader is closed; make a new one") from e
            self._restart_pool(self._generation, e)
            future = self._pool.schedule(_grade_batch, args=args, timeout=hard)
        return batch, future, self._generation, audit

    def _collect(self, batch: list, future, generation: int, audit: bool = False) -> list[Verdict]:
        try:
            verdicts = future.result()
        except BrokenExecutor as e:
            # pebble gives up the whole pool when a worker dies while no task runs (e.g. killed while idle,
            # or it could not start): not any record's fault, so restart the pool and grade the batch again.
            self._restart_pool(generation, e)
            return self._collect(*self._submit(batch, audit))
        except Exception as e:  # noqa: BLE001 - timeout, ProcessExpired, unpicklable input: the record's verdict
            if len(batch) == 1:
                return [self._failed(batch[0], e, audit)]
            logger.debug("grader batch of %d: %s; regrading one record per task", len(batch), type(e).__name__)
            singles = [self._submit([item], audit) for item in batch]
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

    def _failed(self, item: tuple, error: BaseException, audit: bool = False) -> Verdict:
        completion = item[0] if isinstance(item[0], str) else ""
        if isinstance(error, FutureTimeoutError):
            reason = "answer_timeout"
            logger.debug("grader: record over %.1fs; worker killed", self.timeout)
        else:
            reason = "answer_error"
            logger.warning("grader: %s on one record (%s); graded answer_error", type(error).__name__, error)
        self.counts[reason] += 1
        verdict = Verdict(False, reason, *_safe_extract(completion, self.extraction))
        # Killed: which grader ran long is unknown, so both get the verdict (never a disagreement).
        return dataclasses.replace(verdict, audit=verdict) if audit else verdict

    def close(self):
        self._closed = True
        self._pool.stop()
        self._pool.join()

    def __enter__(self) -> MathGrader:
        return self

    def __exit__(self, *exc):
        self.close()
