"""How fast this machine runs Python, relative to the one the sandbox's limits were set on: the speed factor.

The code verifier's CPU limits (Limits.timeout_s, a spec's own `timeout_s`, the bundled tasks' measured costs)
are seconds on the reference machine. On a slower CPU the same correct program needs more seconds, so every
limit is multiplied by `speed_factor()` = max(1, this machine's time / the reference time) for a fixed pure-Python
workload, run by the interpreter the sandbox uses with the sandbox's flags and timed in CPU seconds (so that a
busy machine does not read as a slow one). The factor never goes below 1: a faster machine keeps the limits as
written, and a limit is never tighter than it is on the reference machine.

Measured once per machine (CPU model, interpreter) and cached in ~/.cache/distill/sandbox/calibration.json
($XDG_CACHE_HOME honoured); `DISTILL_SANDBOX_SPEED_FACTOR` (a number >= 1) or `Limits(speed_factor=...)`
replaces the measurement. `sandbox_info()["calibration"]` says which was used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from distill.errors import DistillError

logger = logging.getLogger(__name__)

ENV = "DISTILL_SANDBOX_SPEED_FACTOR"
# CPU seconds of _WORKLOAD (the best of _REPEATS) on the reference machine: a 2-core Intel Xeon VM (Ice Lake,
# 2.8 GHz, CPython 3.11). Changing the workload means measuring this again (and the bundled tasks' costs).
REFERENCE_S = 0.25
REFERENCE_CPU = "Intel(R) Xeon(R) Processor @ 2.80GHz (Ice Lake, family 6 model 106), CPython 3.11"
WORKLOAD_VERSION = 1
_REPEATS = 3

# What test code does: integer arithmetic, list/dict/set/str work, function calls, a sort.
_WORKLOAD = r"""
import time
def work():
    t = time.process_time()
    acc, d, words = 0, {}, []
    for i in range(800000):
        acc = (acc * 31 + i) % 1000003
        d[i % 997] = d.get(i % 997, 0) + i
        if i % 7 == 0:
            words.append(str(acc)[::-1])
    s = sorted(words)
    u = len(set(s)) + sum(len(w) for w in s)
    def f(n):
        return n if n < 2 else f(n - 1) + f(n - 2)
    acc += f(24) + u + sum(d.values())
    return time.process_time() - t, acc
best = min(work()[0] for _ in range(REPEATS))
print(repr(best))
"""

_lock = threading.Lock()
_cached: dict | None = None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "distill" / "sandbox" / "calibration.json"


def measure() -> float:
    """CPU seconds of the workload (best of 3) in a fresh `python -I -S -B`, the way sandboxed code runs."""
    code = _WORKLOAD.replace("REPEATS", str(_REPEATS))
    out = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", code], capture_output=True, text=True,
                         timeout=600, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    if out.returncode != 0:
        raise DistillError(f"sandbox calibration failed: {(out.stderr.strip().splitlines() or ['no output'])[-1]}")
    return float(out.stdout.strip())


def _key() -> str:
    return f"{_cpu_model()} | {sys.executable} {platform.python_version()} | workload {WORKLOAD_VERSION}"


def _load() -> dict | None:
    path = _cache_path()
    try:
        entry = json.loads(path.read_text()).get(_key())
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(entry, dict) and isinstance(entry.get("measured_s"), (int, float)) and entry["measured_s"] > 0:
        return entry
    return None


def _store(entry: dict) -> None:
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            table = json.loads(path.read_text())
            table = table if isinstance(table, dict) else {}
        except (OSError, ValueError):
            table = {}
        table[_key()] = entry
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".calibration.")
        with os.fdopen(fd, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:  # a read-only home: measure again next time
        logger.debug("sandbox calibration not cached (%s)", e)


def _from_env() -> dict | None:
    raw = os.environ.get(ENV)
    if raw is None or not raw.strip():
        return None
    try:
        factor = float(raw)
    except ValueError:
        factor = 0.0
    if not (math.isfinite(factor) and factor >= 1.0):
        raise DistillError(f"{ENV}={raw!r}: must be a number >= 1 (how many times slower than the reference "
                           f"machine this one runs Python); unset it to measure")
    return {"factor": factor, "source": f"${ENV}"}


def calibration() -> dict:
    """{factor, source, measured_s, reference_s, cpu}: this machine's speed factor and where it came from."""
    global _cached
    env = _from_env()
    if env is not None:
        return env | {"reference_s": REFERENCE_S, "reference_cpu": REFERENCE_CPU}
    with _lock:
        if _cached is None:
            entry, source = _load(), "cached"
            if entry is None:
                entry, source = {"measured_s": round(measure(), 4), "cpu": _cpu_model()}, "measured"
                _store(entry)
                logger.info("sandbox calibration: workload %.3f s CPU here vs %.3f s on the reference machine",
                            entry["measured_s"], REFERENCE_S)
            factor = max(1.0, round(entry["measured_s"] / REFERENCE_S, 2))
            _cached = {"factor": factor, "source": f"{source} ({_cache_path()})", "measured_s": entry["measured_s"],
                       "cpu": entry.get("cpu", _cpu_model()), "reference_s": REFERENCE_S,
                       "reference_cpu": REFERENCE_CPU}
        return dict(_cached)


def speed_factor() -> float:
    """How many times the sandbox's CPU limits are stretched on this machine (>= 1)."""
    return calibration()["factor"]


# --- the bundled code tasks' costs (maintainers) ---------------------------------------------------


def measure_task_costs(root: Path) -> dict:
    """Each task's canonical solutions run once in the sandbox (run it on an idle machine): {task: {id: slowest
    case, in reference seconds}}."""
    from distill.data.code_spec import parse_spec
    from distill.tasks.build_code import TASKS
    from dataclasses import replace

    from distill.verify.code import run_spec
    from distill.verify.sandbox import Limits

    here = calibration()
    scale = here.get("measured_s", REFERENCE_S) / REFERENCE_S  # this machine's own speed, not floored at 1
    costs: dict = {}
    for name, (builder, _, _) in TASKS.items():
        rows = builder(root)[0]
        costs[name] = {}
        for i, r in enumerate(rows):
            spec = parse_spec(r["answer"])
            # the spec's own limit is replaced too: this measures what the solution needs, not what it is allowed
            results = run_spec(replace(spec, timeout_s=None), r["solution"],
                               Limits(timeout_s=120, total_timeout_s=1200, speed_factor=1.0))
            bad = [x for x in results if x.status != "ok"]
            if bad:
                raise SystemExit(f"error: {name} {r['id']}: the canonical solution fails ({bad[0].detail})")
            # Wall seconds of each case: an upper bound on a single-threaded solution's CPU seconds on an idle
            # machine, and the one measure every case has (a functional case's program process is killed when its
            # test process ends, so its CPU seconds are not reaped: CaseResult.cpu_s misses them).
            costs[name][r["id"]] = round(max(x.time_s for x in results) / scale, 3)
            if (i + 1) % 50 == 0:
                logger.info("%s: measured %d/%d", name, i + 1, len(rows))
    return {"reference": f"CPU seconds on {here.get('reference_cpu')}; measured on {here.get('cpu')} "
                         f"(workload {here.get('measured_s')} s vs {REFERENCE_S} s)"} | costs


def main(argv: list[str] | None = None) -> None:
    """`python -m distill.verify.calibrate [--tasks [--shared PATH]]`: this machine's calibration; with --tasks,
    also time every bundled canonical solution and rewrite distill/tasks/code_costs.json (then run build_code)."""
    import argparse

    from distill.tasks.build_code import COSTS, DEFAULT_SHARED

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--tasks", action="store_true", help=f"measure the bundled tasks and rewrite {COSTS.name}")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared data/external folder")
    args = parser.parse_args(argv)
    print(json.dumps(calibration(), indent=1))
    if args.tasks:
        if not (args.shared / "code").is_dir():
            raise SystemExit(f"error: no code/ under {args.shared}; pass --shared PATH to data/external")
        costs = measure_task_costs(args.shared)
        COSTS.write_text(json.dumps(costs, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        logger.info("wrote %s; now run python -m distill.tasks.build_code", COSTS)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
