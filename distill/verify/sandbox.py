"""Run untrusted Python in a child process: namespaces or an audit-hook fallback, rlimits, its own uid, timeouts.

`run_cases(program, cases, limits)` hands one job per call (one per problem) to a warm launcher process
(started once, it runs no untrusted code), which forks a fresh sandbox for it; the sandbox runs each case in
a fresh fork of itself, so a test case never sees another's state. What it does (see _sandbox_child.py; the parent's
side is sandbox_host.py):

- its own session and process group; a pid namespace where the machine allows it, so that nothing the
  program starts survives the call (otherwise the sandbox uid's processes are swept after every case);
- a new network namespace (only a downed loopback); otherwise an audit hook refuses sockets, exec and ctypes;
- a private mount namespace: every mount read-only, fresh tmpfs on /tmp and /dev/shm, /root, /home and the
  caller's working directory hidden (the interpreter's own folders re-exposed read-only); otherwise the
  audit hook refuses writes outside the working directory;
- a fresh working directory (tmpfs, or a host temporary directory removed afterwards), `HOME`/`TMPDIR` there;
- a scrubbed environment: none of the parent's variables (HF_TOKEN, OPENAI_API_KEY, ...) reach the child;
- per case: RLIMIT_CPU, RLIMIT_AS/DATA, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_NPROC, no core files, a
  wall-clock limit, stdout capped (read with a limit, never unbounded) and the stderr tail kept;
- when the caller is root, the case drops to an unprivileged uid/gid of its own (leased per concurrent run,
  so that RLIMIT_NPROC binds and one fork bomb cannot starve another sandbox), with no_new_privs.

`sandbox_info()` reports which of these are active on this machine. Linux only.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from distill.data.code_spec import DEFAULT_TIMEOUT_S
from distill.errors import DistillError
from distill.verify._sandbox_child import _readable_by_others
from distill.verify.calibrate import calibration, speed_factor
from distill.verify.sandbox_host import (_NS_WORKDIR, UID_BASE, UID_COUNT, _child_sys_path, _hidden_roots, _launch,
                                         _Outcome, _sweep_uid, _UidLease, seccomp_program)

logger = logging.getLogger(__name__)

STATUSES = (
    "ok", "compile_error", "runtime_error", "assertion_failed", "timeout", "memory", "output_limit", "sandbox_error",
)
ISOLATIONS = ("auto", "namespaces", "fallback")
__all__ = ["ISOLATIONS", "STATUSES", "UID_BASE", "UID_COUNT", "Case", "CaseResult", "Limits", "run_cases",
           "run_python", "sandbox_info"]

# Seconds the parent waits beyond the problem's own time limit (start-up, a loaded machine) before killing.
_GRACE_S = 10.0


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run; every test case gets them afresh."""

    timeout_s: float = DEFAULT_TIMEOUT_S  # CPU seconds per test case on the reference machine (x the speed factor)
    memory_mb: int = 1024  # address space of each process (RLIMIT_AS and RLIMIT_DATA)
    output_bytes: int = 1 << 20  # stdout kept per case; printing more ends the case as output_limit
    file_bytes: int = 16 << 20  # largest file a case may write (RLIMIT_FSIZE); /tmp holds 4x this
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 16  # RLIMIT_NPROC of the sandbox uid (threads count); only binds when we can drop root
    total_timeout_s: float = 60.0  # wall clock for all the cases of one problem (x the speed factor)
    # How many times slower than the reference machine this one runs Python (verify/calibrate.py); None: measure
    # it (or read $DISTILL_SANDBOX_SPEED_FACTOR). run_cases multiplies timeout_s and total_timeout_s by it.
    speed_factor: float | None = None

    def __post_init__(self):
        checks = {
            "timeout_s": self.timeout_s > 0, "memory_mb": self.memory_mb >= 64,
            "output_bytes": self.output_bytes >= 1024, "file_bytes": self.file_bytes >= 0,
            "open_files": self.open_files >= 16, "processes": self.processes >= 1,
            "total_timeout_s": self.total_timeout_s > 0,
            "speed_factor": self.speed_factor is None or self.speed_factor >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            minimum = {"memory_mb": 64, "output_bytes": 1024, "open_files": 16, "processes": 1, "speed_factor": 1}
            raise DistillError("sandbox limits: " + ", ".join(
                f"{k}={getattr(self, k)!r} must be {'>= ' + str(minimum[k]) if k in minimum else '> 0'}"
                for k in bad))

    @property
    def case_wall_s(self) -> float:
        """Wall clock a case may take: 3x its CPU limit + 1 s, so that a machine busy with other work (which
        halves a case's share of a core, or worse) does not turn a correct program into a timeout."""
        return 3 * max(1, math.ceil(self.timeout_s)) + 1

    def in_force(self) -> Limits:
        """These limits on this machine: the CPU and total limits stretched by the speed factor."""
        factor = self.speed_factor if self.speed_factor is not None else speed_factor()
        return replace(self, timeout_s=round(self.timeout_s * factor, 3),
                       total_timeout_s=round(self.total_timeout_s * factor, 3), speed_factor=factor)

    def describe_cpu(self) -> str:
        """'9 s' or '9 s = 4 s x speed factor 2.3': the CPU limit in force and why (for verdict details)."""
        cpu = max(1, math.ceil(self.timeout_s))
        factor = self.speed_factor or 1.0
        if factor == 1.0:
            return f"{cpu} s"
        return f"{cpu} s = {self.timeout_s / factor:g} s x speed factor {factor:g}"


@dataclass(frozen=True)
class Case:
    """One test case: the program runs with `stdin` as its standard input, then `then` (if any) runs in the
    program's namespace (function tests). With `then`, the case is ok only if `then` ran to its end."""

    stdin: str = ""
    then: str | None = None


@dataclass(frozen=True)
class CaseResult:
    status: str  # one of STATUSES
    stdout: str  # at most Limits.output_bytes, decoded as UTF-8 (invalid bytes replaced)
    stderr: str  # the last 4 KiB
    detail: str  # one line: the exception, the signal, the limit that was hit
    time_s: float  # wall clock of the case process
    cpu_s: float = 0.0  # CPU seconds of the case's reaped processes (not a functional case's program, killed at its end)


# --- isolation probe ------------------------------------------------------------------------------

_probe_lock = threading.Lock()
_probed: dict[str, dict] = {}


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _probe_namespaces() -> dict:
    """Start one child that sets up the namespaces and stops: does this machine allow them?"""
    if not sys.platform.startswith("linux"):
        return {"ok": False, "why": f"not Linux ({sys.platform})"}
    if _is_root():
        with _UidLease() as uid:
            job, _ = _job("pass", [], Limits(speed_factor=1.0), "namespaces", uid)
            out = _launch(job | {"probe": True}, 30.0, 1 << 20)
            _sweep_uid(uid)
    else:  # a user namespace of our own
        job, _ = _job("pass", [], Limits(speed_factor=1.0), "namespaces", None)
        out = _launch(job | {"probe": True}, 30.0, 1 << 20)
    setup = next((e for e in out.events if e.get("event") == "setup"), None)
    if setup is not None:
        return {"ok": True, "info": setup["info"]}
    errors = [e.get("detail", "") for e in out.events if e.get("event") == "error"]
    return {"ok": False, "why": errors[0] if errors else (out.error or out.stderr.strip()[-200:] or "no answer")}


def _resolve(isolation: str) -> str:
    if isolation not in ISOLATIONS:
        raise DistillError(f"sandbox isolation {isolation!r}: choose one of {', '.join(ISOLATIONS)}")
    if isolation == "fallback":
        return "fallback"
    with _probe_lock:
        if "namespaces" not in _probed:
            _probed["namespaces"] = probe = _probe_namespaces()
            if probe["ok"]:
                logger.info("code sandbox: namespaces active (network, mount, pid, ipc); hidden: %s",
                            ", ".join(probe["info"].get("hidden", [])) or "nothing")
            else:
                logger.warning(
                    "code sandbox: namespaces unavailable (%s); falling back to an audit hook that refuses sockets, "
                    "exec, ctypes and writes outside the working directory (weaker: C code is not seen)",
                    probe["why"])
        probe = _probed["namespaces"]
    if probe["ok"]:
        return "namespaces"
    if isolation == "namespaces":
        raise DistillError(f"sandbox: namespaces were asked for but are unavailable here ({probe['why']})")
    return "fallback"


def sandbox_info(isolation: str = "auto") -> dict:
    """Which protections a run with this `isolation` gets on this machine (probes once per process)."""
    mode = _resolve(isolation)
    root = _is_root()
    probe = _probed.get("namespaces", {})
    info = {
        "isolation": mode,
        "platform": sys.platform,
        "python": sys.executable,
        "environment": "scrubbed (PATH, LANG, HOME, TMPDIR and thread counts only)",
        "limits": "per case: RLIMIT_CPU, RLIMIT_AS, RLIMIT_DATA, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0, "
                  "wall clock, stdout cap" + (", RLIMIT_NPROC" if root else " (RLIMIT_NPROC inactive: not root)"),
        "calibration": calibration(),
        "uid": f"unprivileged uid/gid leased from {UID_BASE}..{UID_BASE + UID_COUNT - 1}" if root
               else f"the caller's own uid {os.getuid()}, without capabilities in a user namespace of its own"
               if mode == "namespaces" else f"the caller's own uid {os.getuid()} (not root: cannot drop privileges)",
        "syscalls": seccomp_program()[1],
        "verdicts": "a case's test code runs in a separate test process that reaches the program only as plain data "
                    "over a pipe; the program never sees the tests or the channel the verdict travels on",
    }
    if mode == "namespaces":
        hidden = probe.get("info", {}).get("hidden", [])
        info |= {
            "network": "network namespace (only a downed loopback)",
            "filesystem": "mount namespace: all mounts read-only, private tmpfs /tmp and /dev/shm, "
                          f"hidden: {', '.join(hidden) or 'nothing'}",
            "processes": "a pid namespace per case: everything the program started dies with it",
            "fallbacks": [],
        }
    else:
        info |= {
            "network": "audit hook refusing non-AF_UNIX sockets (Python level only)",
            "filesystem": "audit hook refusing writes outside the working directory"
                          + (" + unprivileged uid" if root else ""),
            "processes": "sandbox uid swept with SIGKILL after each case" if root else "process group killed",
            "fallbacks": ["network", "filesystem", "processes"],
            "why_fallback": probe.get("why", "asked for"),
        }
        if root and not _readable_by_others(os.path.dirname(os.__file__)):
            info["imports"] = ("the sandbox uid cannot read the interpreter's folder: only modules the launcher "
                               "preloads import (no mount namespace to re-expose it)")
    return info


# --- the API --------------------------------------------------------------------------------------


def _job(program: str, cases: Sequence[Case], limits: Limits, mode: str, uid: int | None, entry_point: str = "",
         prelude: str = "") -> tuple[dict, bytes]:
    """The job the launcher gets, and the test code it must not see (read by the test processes alone)."""
    sys_path = _child_sys_path()
    keep = sorted({sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, *sys_path})
    tests, located = bytearray(), []
    for c in cases:
        if c.then is None:
            located.append({"stdin": c.stdin, "test": None})
            continue
        data = c.then.encode("utf-8")
        located.append({"stdin": c.stdin, "test": (len(tests), len(data))})
        tests += data
    return {
        "program": program,
        "cases": located,
        "entry_point": entry_point,
        "prelude": prelude,
        "limits": asdict(limits) | {"case_wall_s": limits.case_wall_s, "cpu_in_force": limits.describe_cpu()},
        "isolation": mode,
        "userns": mode == "namespaces" and not _is_root(),
        "uid": uid, "gid": uid,
        "sys_path": sys_path,
        "hide": _hidden_roots(),
        "keep": keep,
        "workdir": _NS_WORKDIR,
        "seccomp": seccomp_program()[0],
    }, bytes(tests)


def run_cases(program: str, cases: Sequence[Case], limits: Limits = Limits(), isolation: str = "auto",
              entry_point: str = "", prelude: str = "") -> list[CaseResult]:
    """Run `program` once per case in one sandboxed child; a result per case, in order. Never raises for
    anything the program does: our own failures are `sandbox_error` results. Nothing it started survives.

    A case with test code (`then`) runs it in a separate test process that reaches the program's names through
    proxies (plain data over a pipe): `entry_point` (LeetCode's `Solution().entry_point` when there is no such
    function) and any other name the test uses and does not define. `prelude` is trusted code the test process runs
    first (a HumanEval prompt): the names it defines are its own, not the program's, the entry point aside."""
    if not cases:
        return []
    mode = _resolve(isolation)
    limits = limits.in_force()
    lease = _UidLease() if _is_root() else None
    host_dir = None
    try:
        uid = lease.__enter__() if lease else None
        job, tests = _job(program, cases, limits, mode, uid, entry_point, prelude)
        if mode == "fallback":
            host_dir = tempfile.mkdtemp(prefix="distill-sandbox-")
            job["workdir"] = host_dir
            job["hide"], job["keep"] = [], []
        cap = len(cases) * (2 * limits.output_bytes + (1 << 16)) + (1 << 20)
        out = _launch(job, limits.total_timeout_s + _GRACE_S, cap, tests)
        if uid is not None:
            _sweep_uid(uid)
    finally:
        if lease:
            lease.__exit__(None, None, None)
        if host_dir:
            shutil.rmtree(host_dir, ignore_errors=True)
    return _results(out, len(cases), limits)


def _results(out: _Outcome, n: int, limits: Limits) -> list[CaseResult]:
    by_index: dict[int, CaseResult] = {}
    for e in out.events:
        if e.get("event") == "case" and isinstance(e.get("i"), int) and 0 <= e["i"] < n:
            status = e.get("status") if e.get("status") in STATUSES else "sandbox_error"
            by_index[e["i"]] = CaseResult(status, str(e.get("stdout", "")), str(e.get("stderr", "")),
                                          str(e.get("detail", "")), float(e.get("time_s", 0.0)),
                                          float(e.get("cpu_s", 0.0)))
    if len(by_index) < n:
        errors = [str(e.get("detail", "")) for e in out.events if e.get("event") == "error"]
        if out.killed == "deadline":
            status, detail = "timeout", f"the problem ran past {limits.total_timeout_s + _GRACE_S:.0f} s in all"
        else:
            status = "sandbox_error"
            detail = (out.error or (errors[0] if errors else "") or (
                "sandbox output over its cap" if out.killed else "") or (
                "the sandbox ended early: " + (out.stderr.strip().splitlines() or ["no message"])[-1]))
            logger.warning("code sandbox failed: %s", detail)
        for i in range(n):
            by_index.setdefault(i, CaseResult(status, "", "", detail, 0.0))
    return [by_index[i] for i in range(n)]


def run_python(source: str, stdin: str = "", limits: Limits = Limits(), isolation: str = "auto") -> CaseResult:
    """Run one program once, sandboxed, with `stdin` as its standard input."""
    return run_cases(source, [Case(stdin=stdin)], limits, isolation)[0]
