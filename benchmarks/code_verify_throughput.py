"""code_verify: verified samples/s of CodeVerifier (sandboxed, all cores) vs a single-process subprocess loop.

    python benchmarks/code_verify_throughput.py [--limit N] [--workers N]

Samples: the canonical solution of every bundled HumanEval (164) and MBPP (427) problem, and a broken copy
of each (its entry point replaced by one returning None): 1182 samples, half of them correct.
Equal work: both sides run the same program (distill.verify.code.program_for: prompt completion included)
followed by the same test code, in a fresh Python process per sample, under the same per-sample timeout.
The anchor is the loop a competent user writes without a sandbox: write the program to a temporary file,
`subprocess.run([sys.executable, file], timeout=...)`, correct when it exits 0. It has no isolation, no
rlimits, no output cap and no per-case pass fraction; ours does all of that, one process per problem with
a fresh fork per test case. Ours is timed warm: the one-off start-up (the namespace probe, ~50 ms) is
printed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distill.data.code_spec import parse_spec
from distill.verify.code import CodeVerifier, extract_code, program_for
from distill.verify.sandbox import Limits, sandbox_info

REPO = Path(__file__).resolve().parents[1]

TIMEOUT_S = 4.0


def samples(limit: int | None) -> list[tuple[str, str, bool]]:
    """(completion, spec JSON, expected correct)."""
    out = []
    for name in ("humaneval", "mbpp"):
        with open(REPO / "distill" / "tasks" / f"{name}.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        for r in rows:
            entry = parse_spec(r["answer"]).entry_point
            bad = f"{r['solution']}\n\n\ndef {entry}(*args, **kwargs):\n    return None\n"
            out.append((f"```python\n{r['solution']}\n```", r["answer"], True))
            out.append((f"```python\n{bad}\n```", r["answer"], False))
    return out[:limit] if limit else out


def anchor(items: list[tuple[str, str, bool]]) -> tuple[float, list[bool]]:
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample.py"
        start = time.perf_counter()
        for completion, spec_text, _ in items:
            spec = parse_spec(spec_text)
            program = program_for(spec, extract_code(completion))
            path.write_text(program + "\n" + "\n".join(c.then for c in spec.cases), encoding="utf-8")
            try:
                proc = subprocess.run([sys.executable, str(path)], capture_output=True, cwd=tmp,
                                      timeout=TIMEOUT_S * len(spec.cases))
                verdicts.append(proc.returncode == 0)
            except subprocess.TimeoutExpired:
                verdicts.append(False)
        elapsed = time.perf_counter() - start
    return len(items) / elapsed, verdicts


def ours(items: list[tuple[str, str, bool]], workers: int) -> tuple[float, float, list[bool]]:
    start = time.perf_counter()
    info = sandbox_info()  # the one-off probe: does this machine allow namespaces?
    startup = time.perf_counter() - start
    with CodeVerifier(workers=workers, limits=Limits(timeout_s=TIMEOUT_S)) as verifier:
        start = time.perf_counter()
        verdicts = [v.correct for v in verifier.grade_many((c, s) for c, s, _ in items)]
        elapsed = time.perf_counter() - start
    print(f"# sandbox: {info['isolation']} ({info['network']}; {info['processes']}); "
          f"start-up (probe + warm launcher) {startup * 1000:.0f} ms; {workers} verifier threads")
    return len(items) / elapsed, startup, verdicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="first N samples only (default: all 1182)")
    ap.add_argument("--workers", type=int, default=None, help="verifier threads (default: all cores)")
    args = ap.parse_args()
    cores = args.workers or os.cpu_count() or 1
    items = samples(args.limit)
    expected = [ok for _, _, ok in items]
    ours_rate, _, ours_v = ours(items, cores)
    anchor_rate, anchor_v = anchor(items)
    agree = sum(a == b for a, b in zip(ours_v, anchor_v))
    print(f"# {len(items)} samples ({sum(expected)} canonical, {len(items) - sum(expected)} broken); "
          f"verdicts: ours right on {sum(a == b for a, b in zip(ours_v, expected))}, "
          f"anchor right on {sum(a == b for a, b in zip(anchor_v, expected))}, "
          f"ours and anchor agree on {agree}/{len(items)}; load average {os.getloadavg()[0]:.1f}")
    print(f"code_verify: ours {ours_rate:.1f} samples/s, anchor {anchor_rate:.1f} samples/s, "
          f"ratio {ours_rate / anchor_rate:.2f} (cores {os.cpu_count()})")


if __name__ == "__main__":
    main()
