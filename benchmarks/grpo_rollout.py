"""grpo_rollout: rollout tokens/s of `distill grpo` (its default: TRL driving vLLM colocated, the CPU build on CPU) vs
TRL's default rollouts (transformers `model.generate`), same model, prompts, G, sampling, steps and seed; and the time
per step split into generation, scoring (rewards + old log-probs) and update.

    python benchmarks/grpo_rollout.py [--hidden 512] [--layers 4] [--steps 5] [--g 8] [--prompts 4] [--tokens 128]

Both variants are `distill grpo` runs that differ only in --rollout (vllm / transformers), each in its own process,
one after the other. Tokens are the completion tokens generated; the first step (vLLM's first call, warm-up) is left
out of the rate. A random model rarely emits its end-of-turn token, so both generate ~G x prompts x tokens per step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import distill  # noqa: F401  (first: blocks broken CUDA extras)


def run_variant(rollout: str, w: Path, a: argparse.Namespace) -> dict:
    from distill.config import GrpoConfig, build_config
    from distill.train.grpo import run

    cfg = build_config(GrpoConfig, {
        "model": str(w / "model"), "data": str(w / "problems.jsonl"), "out": str(w / rollout), "id_key": "id",
        "num_generations": a.g, "prompts_per_step": a.prompts, "max_completion_length": a.tokens,
        "max_steps": a.steps, "save_steps": 10_000, "learning_rate": 1e-5, "rollout": rollout, "workers": 1,
        "seed": 0, "overwrite": True})
    stats = run(cfg)
    from distill.train.grpo_log import read_steps

    return {"steps": read_steps(w / rollout), "rollout": stats["rollout"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--g", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--variant", choices=("vllm", "transformers"), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:  # child process: one variant, one JSON line
        print("RESULT " + json.dumps(run_variant(a.variant, Path(a.workdir), a)))
        return
    from distill.data.io import write_jsonl
    from distill.demo import toy_problems
    from distill.tiny import build_model, build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        tok = build_tokenizer(w / "tok")
        build_model(w / "model", tok, hidden_size=a.hidden, layers=a.layers, heads=a.hidden // 64)
        write_jsonl(w / "problems.jsonl", [{k: p[k] for k in ("id", "problem", "answer")}
                                           for p in toy_problems(a.prompts * a.steps, seed=0)])
        results = {}
        for variant in ("transformers", "vllm"):
            proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--workdir", str(w),
                                   *(f"--{k}={getattr(a, k)}" for k in ("hidden", "layers", "steps", "g", "prompts",
                                                                         "tokens"))],
                                  capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            results[variant] = json.loads(line[0][7:])

    def rate(steps: list[dict]) -> float:
        timed = steps[1:] or steps
        return sum(s["completion_tokens"] for s in timed) / sum(s["generation_s"] for s in timed)

    def split(steps: list[dict]) -> str:
        timed = steps[1:] or steps
        mean = {k: sum(s[k] for s in timed) / len(timed) for k in ("step_s", "generation_s", "scoring_s", "update_s")}
        return (f"{mean['step_s']:.2f} s/step = generation {mean['generation_s']:.2f} + scoring {mean['scoring_s']:.2f}"
                f" + update {mean['update_s']:.2f}")

    ours, anchor = results["vllm"]["steps"], results["transformers"]["steps"]
    print(f"grpo_rollout: ours {rate(ours):.0f} tok/s, anchor {rate(anchor):.0f} tok/s, "
          f"ratio {rate(ours) / rate(anchor):.2f}")
    print(f"  ours (vLLM, {results['vllm']['rollout']['device']}): {split(ours)}")
    print(f"  anchor (TRL model.generate): {split(anchor)}")
    print(f"  model hidden {a.hidden} x {a.layers} layers, G={a.g} x {a.prompts} prompts, {a.tokens} new tokens, "
          f"{a.steps} steps (first left out)")


if __name__ == "__main__":
    main()
