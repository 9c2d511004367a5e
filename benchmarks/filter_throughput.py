"""filter_throughput: records/s of answer_correct (distill's math grader) vs Math-Verify on the same records, and
peak RSS of the non-grader steps streaming a large synthetic input.

    python benchmarks/filter_throughput.py [--records 800] [--stream 200000] [--workers N]

Equal work: every grader grades the same records once (by default the 8 sampled responses x 100 MATH problems
of ../shared/data/external/generations/qwen25-math/math_cot_100.jsonl, no repeats, so no grader profits from a
cache of repeated inputs; synthetic arithmetic when shared/ is absent). Anchors: the single-process
parse+verify loop (open-r1's accuracy reward), the same function in a persistent process pool on all cores, and
`datasets.map(num_proc=cores)`. Rates are reported warm and including start-up (worker spawn, sympy import),
with the agreement between our verdicts and Math-Verify's.
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


def mv_verdict(pair: tuple[str, str]) -> bool:
    """The usual check (open-r1's accuracy reward): math_verify.parse + verify on the whole completion."""
    from math_verify import parse, verify

    completion, gold = pair
    try:
        gold_parsed = parse("$" + gold + "$")
        return bool(gold_parsed) and bool(verify(gold_parsed, parse(completion)))
    except Exception:  # noqa: BLE001 - the anchor counts a crash as wrong, like the loops it stands for
        return False


def anchor_loop(pairs: list[tuple[str, str]]) -> tuple[float, list[bool]]:
    """Anchor 1: one process, a plain loop."""
    start = time.perf_counter()
    verdicts = [mv_verdict(p) for p in pairs]
    return len(pairs) / (time.perf_counter() - start), verdicts


def _mv_row(row: dict) -> dict:
    return {"correct": mv_verdict((row["completion"], row["gold"]))}


def anchor_datasets(pairs: list[tuple[str, str]], workers: int) -> tuple[float, list[bool]]:
    """Anchor 2: the same work with `datasets.map(num_proc=cores)`, what a user parallelises with; its worker
    pool starts inside the call, so this rate includes start-up."""
    import datasets

    ds = datasets.Dataset.from_dict({"completion": [c for c, _ in pairs], "gold": [g for _, g in pairs]})
    start = time.perf_counter()
    out = ds.map(_mv_row, num_proc=workers, load_from_cache_file=False, desc=None)
    return len(pairs) / (time.perf_counter() - start), list(out["correct"])


def anchor_pool(pairs: list[tuple[str, str]], workers: int) -> tuple[float, float]:
    """Anchor 2 warm: the same function in a persistent multiprocessing pool, timed after its start-up."""
    import multiprocessing

    start = time.perf_counter()
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        pool.map(mv_verdict, pairs[:workers], chunksize=1)  # start-up: workers spawned, sympy imported
        warm = time.perf_counter()
        pool.map(mv_verdict, pairs, chunksize=16)
        end = time.perf_counter()
    return len(pairs) / (end - warm), len(pairs) / (end - start)


def ours(pairs: list[tuple[str, str]], workers: int) -> tuple[float, float, list[bool]]:
    from distill.verify.math_pool import MathGrader

    start = time.perf_counter()
    with MathGrader(workers=workers, timeout=5.0) as grader:
        list(grader.grade_many(pairs[:workers]))  # start-up: workers spawned and sympy imported
        warm = time.perf_counter()
        verdicts = [v.correct for v in grader.grade_many(pairs)]
        end = time.perf_counter()
    return len(pairs) / (end - warm), len(pairs) / (end - start), verdicts


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
    ap.add_argument("--records", type=int, default=800, help="records to grade (the 800 real outputs; more cycles)")
    ap.add_argument("--stream", type=int, default=200_000, help="records of the streaming-memory run (0: skip)")
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    ap.add_argument("--stream-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stream_child:
        return stream_child(*args.stream_child)

    cores = args.workers or os.cpu_count() or 1
    pairs, source = grading_pairs(args.records)
    one_warm, one_total, _ = ours(pairs, 1)
    ours_warm, ours_total, ours_v = ours(pairs, cores)
    loop_rate, loop_v = anchor_loop(pairs)
    pool_warm, pool_total = anchor_pool(pairs, cores)
    ds_rate, ds_v = anchor_datasets(pairs, cores)
    agree = sum(a == b for a, b in zip(ours_v, loop_v)) / len(pairs)
    print(f"# {len(pairs)} records from {source}, each graded once by every grader; cores {cores}")
    print(f"# correct: ours {sum(ours_v)}, math-verify {sum(loop_v)} (datasets.map {sum(ds_v)}); verdicts agree on "
          f"{100 * agree:.1f}% of records")
    print(f"# ours: 1 worker {one_warm:.1f} rec/s warm, {one_total:.1f} incl. start-up; {cores} workers "
          f"{ours_warm:.1f} warm, {ours_total:.1f} incl. start-up")
    print(f"# anchor: single-process loop {loop_rate:.1f} rec/s; pool of {cores} {pool_warm:.1f} warm, "
          f"{pool_total:.1f} incl. start-up; datasets.map(num_proc={cores}) {ds_rate:.1f} incl. start-up")
    print(f"filter_throughput: ours {ours_warm:.1f} rec/s, anchor {pool_warm:.1f} rec/s (math-verify in a pool of "
          f"{cores}, both warm), ratio {ours_warm / pool_warm:.2f}; incl. start-up ours {ours_total:.1f} vs "
          f"datasets.map {ds_rate:.1f}, ratio {ours_total / ds_rate:.2f}; vs the single-process loop "
          f"{ours_warm / loop_rate:.2f}")
    if args.stream:
        with tempfile.TemporaryDirectory() as tmp:
            small = stream_peak(max(args.stream // 10, 1000), Path(tmp))
            large = stream_peak(args.stream, Path(tmp))
        print(f"filter_stream_memory: peak RSS {large['peak_rss_mb']:.0f} MB at {large['input']} records "
              f"vs {small['peak_rss_mb']:.0f} MB at {small['input']} records "
              f"({large['rec_per_s']:.0f} rec/s, non-grader steps)")


if __name__ == "__main__":
    main()
