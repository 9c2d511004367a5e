"""filter_throughput: records/s of answer_correct (the Grader, all cores) vs a single-process Math-Verify loop
on the same records, and peak RSS of the non-grader steps streaming a large synthetic input.

    python benchmarks/filter_throughput.py [--records 2000] [--stream 200000]

Records: the 8 sampled responses x 100 MATH problems of ../shared/data/external/generations/qwen25-math/
math_cot_100.jsonl, cycled to --records (synthetic arithmetic when shared/ is absent).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import distill  # noqa: F401  (first: blocks broken CUDA extras)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "external" / "generations" / "qwen25-math" / "math_cot_100.jsonl"


def grading_pairs(n: int) -> tuple[list[tuple[str, str]], str]:
    if SHARED.is_file():
        base = []
        for line in SHARED.open(encoding="utf-8"):
            row = json.loads(line)
            base += [(resp, str(row["gt"])) for resp in row["code"]]
        source = f"{SHARED.name} ({len(base)} responses)"
    else:
        rng = random.Random(0)
        base = []
        for _ in range(800):
            a, b = rng.randint(2, 999), rng.randint(2, 999)
            pred = a * b + rng.choice([0, 0, 0, 1])
            text = f"We multiply {a} by {b}.\n\\[ {a}\\cdot {b} = {pred} \\]\nSo \\(\\boxed{{{pred}}}\\)."
            base.append((text, str(a * b)))
        source = "synthetic arithmetic"
    return [base[i % len(base)] for i in range(n)], source


def anchor(pairs: list[tuple[str, str]]) -> tuple[float, int]:
    """The usual loop (open-r1's accuracy reward): math_verify.parse + verify, one process, its own timeouts."""
    from math_verify import parse, verify

    start, correct = time.perf_counter(), 0
    for completion, gold in pairs:
        try:
            gold_parsed = parse("$" + gold + "$")
            correct += bool(gold_parsed) and bool(verify(gold_parsed, parse(completion)))
        except Exception:  # noqa: BLE001 - the anchor counts a crash as wrong, like the loops it stands for
            pass
    return len(pairs) / (time.perf_counter() - start), correct


def ours(pairs: list[tuple[str, str]], workers: int) -> tuple[float, float, int]:
    from distill.verify.math_pool import MathGrader as Grader

    start = time.perf_counter()
    with Grader(workers=workers, timeout=5.0) as grader:
        list(grader.grade_many(pairs[:workers * 4]))  # start-up: workers spawned and sympy imported
        warm = time.perf_counter()
        correct = sum(v.correct for v in grader.grade_many(pairs))
        end = time.perf_counter()
    return len(pairs) / (end - warm), len(pairs) / (end - start), correct


# ---------------------------------------------------------------- streaming memory

WORDS = ("we", "check", "the", "sum", "of", "terms", "so", "each", "value", "is", "then", "add", "again", "note")


def write_synthetic(path: Path, n: int) -> None:
    rng = random.Random(1)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            pid = i // 4
            words = " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 99)}" for _ in range(80))
            completion = f"<think>\nProblem {pid}, sample {i}: {words}\n</think>\nThe answer is \\boxed{{{pid % 97}}}."
            f.write(json.dumps({"id": f"syn/{pid}/{i % 4}", "problem_id": str(pid), "sample_index": i % 4,
                                "problem": f"Synthetic problem number {pid}: add {pid} and {i % 7} then reduce.",
                                "answer": str(pid % 97), "completion": completion, "finish_reason": "stop",
                                "num_tokens": 0}) + "\n")


def stream_child(src: str, out: str) -> None:
    from distill.config import FilterConfig, build_config
    from distill.filters.run import run

    steps = "finished,think_format,length,repetition,language,dedup,decontaminate,select"
    stats = run(build_config(FilterConfig, {"input": src, "out": out, "steps": steps, "select_k": 2}))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": round(peak_mb, 1), "input": stats["input"], "kept": stats["kept"],
                      "rec_per_s": stats["records_per_s"]}))


def stream_peak(n: int, tmp: Path) -> dict:
    src = tmp / f"synthetic-{n}.jsonl"
    write_synthetic(src, n)
    proc = subprocess.run([sys.executable, __file__, "--stream-child", str(src), str(tmp / f"out-{n}")],
                          capture_output=True, text=True, env={**os.environ, "DISTILL_LOG_LEVEL": "WARNING"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    src.unlink()
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--stream", type=int, default=200_000, help="records of the streaming-memory run (0: skip)")
    ap.add_argument("--workers", type=int, default=None, help="grader workers (default: all cores)")
    ap.add_argument("--stream-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stream_child:
        return stream_child(*args.stream_child)

    cores = args.workers or os.cpu_count() or 1
    pairs, source = grading_pairs(args.records)
    ours_warm, ours_total, ours_correct = ours(pairs, cores)
    anchor_rate, anchor_correct = anchor(pairs)
    print(f"# {len(pairs)} records from {source}; correct: ours {ours_correct}, anchor {anchor_correct}; "
          f"ours incl. worker start-up {ours_total:.1f} rec/s")
    print(f"filter_throughput: ours {ours_warm:.1f} rec/s, anchor {anchor_rate:.1f} rec/s, "
          f"ratio {ours_warm / anchor_rate:.2f} (cores {cores}, goal >= {0.9 * cores:.1f})")
    if args.stream:
        with tempfile.TemporaryDirectory() as tmp:
            small = stream_peak(max(args.stream // 10, 1000), Path(tmp))
            large = stream_peak(args.stream, Path(tmp))
        print(f"filter_stream_memory: peak RSS {large['peak_rss_mb']:.0f} MB at {large['input']} records "
              f"vs {small['peak_rss_mb']:.0f} MB at {small['input']} records "
              f"({large['rec_per_s']:.0f} rec/s, non-grader steps)")


if __name__ == "__main__":
    main()
