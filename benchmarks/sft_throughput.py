"""sft_throughput: trained tokens/s of `distill sft` defaults (bfd packing, padding-free batches) vs TRL SFTTrainer
with its defaults (padded batches, no packing) on a long-tail length mix like real traces; same model, data, steps,
seed and per-device batch size. Also both final losses and both peak memories (CUDA: max allocated; CPU: peak RSS of
the process that ran it, each variant in its own subprocess).

    python benchmarks/sft_throughput.py [--samples 64] [--steps 4] [--batch 8] [--hidden 256] [--layers 4]

Tokens are real (non-pad) tokens as TRL counts them (`num_tokens`); wall time is the trainer's train_runtime.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import distill  # noqa: F401  (first: blocks broken CUDA extras)

WORDS = "let me think so the answer is wait check again first second third therefore sum of all integers".split()


def make_data(path: Path, n: int, seed: int) -> None:
    """Records whose completion lengths follow a log-normal long tail (median ~150 words, a tail to 900)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            words = min(900, max(8, int(rng.lognormvariate(5.0, 0.8))))
            thought = " ".join(rng.choice(WORDS) for _ in range(words))
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            f.write(json.dumps({"id": f"b/{i}/0", "problem_id": str(i), "problem": f"What is {a} + {b}?",
                                "answer": str(a + b), "completion": f"<think>\n{thought}\n</think>\n\n"
                                                                    f"\\boxed{{{a + b}}}"}) + "\n")


def peak_memory_mb() -> tuple[float, str]:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "CUDA max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"  # KiB on Linux


def run_variant(variant: str, model: str, data: str, out: str, steps: int, batch: int, max_length: int,
                ours_trl: dict) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    if variant == "ours":
        from distill.config import SftConfig, build_config
        from distill.train.sft import run

        cfg = build_config(SftConfig, {"student": model, "data": data, "out": out, "max_steps": steps,
                                       "max_length": max_length, "learning_rate": 1e-4, "seed": 0,
                                       "trl": {"per_device_train_batch_size": batch, "logging_steps": 1,
                                               "save_strategy": "no", **ours_trl}})
        stats = run(cfg)
        return {"tokens": stats["tokens_seen"], "seconds": stats["train_runtime_s"], "loss": stats["final_loss"],
                "peak_mb": peak_memory_mb()}
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from distill.train.data import load_examples

    args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4, seed=0,
                     max_length=max_length, bf16=cuda, logging_steps=1, save_strategy="no", report_to="none",
                     gradient_checkpointing=cuda, dataloader_pin_memory=cuda)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model), args=args,
                         train_dataset=Dataset.from_list(load_examples(data)),
                         processing_class=AutoTokenizer.from_pretrained(model))
    result = trainer.train()
    history = trainer.state.log_history
    tokens = [h["num_tokens"] for h in history if "num_tokens" in h][-1]
    losses = [h["loss"] for h in history if "loss" in h]
    return {"tokens": tokens, "seconds": result.metrics["train_runtime"], "loss": losses[-1],
            "peak_mb": peak_memory_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--ours-trl", default="{}", help="JSON: extra trl: fields for our run (ablations)")
    ap.add_argument("--variant", choices=("ours", "anchor"), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:  # child process: one variant, one JSON line
        w = Path(a.workdir)
        res = run_variant(a.variant, str(w / "model"), str(w / "data.jsonl"), str(w / a.variant), a.steps, a.batch,
                          a.max_length, json.loads(a.ours_trl))
        print("RESULT " + json.dumps(res))
        return
    from distill.tiny import DEFAULT_CORPUS, build_model, build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        tok = build_tokenizer(w / "tok", corpus=DEFAULT_CORPUS + [" ".join(WORDS)], vocab_size=512)
        build_model(w / "model", tok, hidden_size=a.hidden, layers=a.layers, heads=a.hidden // 64,
                    max_position_embeddings=a.max_length)
        make_data(w / "data.jsonl", a.samples, seed=0)
        results = {}
        for variant in ("anchor", "ours"):
            proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--workdir", str(w),
                                   "--steps", str(a.steps), "--batch", str(a.batch), "--max-length", str(a.max_length),
                                   "--ours-trl", a.ours_trl],
                                  capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            results[variant] = json.loads(line[0][7:])
    ours, anchor = results["ours"], results["anchor"]
    tps_o, tps_a = ours["tokens"] / ours["seconds"], anchor["tokens"] / anchor["seconds"]
    print(f"sft_throughput: ours {tps_o:.0f} tok/s, anchor {tps_a:.0f} tok/s, ratio {tps_o / tps_a:.2f}")
    print(f"  final loss: ours {ours['loss']:.4f} ({ours['tokens']} tokens), anchor {anchor['loss']:.4f} "
          f"({anchor['tokens']} tokens); {a.steps} steps x batch {a.batch}, seed 0")
    print(f"  peak memory: ours {ours['peak_mb'][0]:.0f} MiB, anchor {anchor['peak_mb'][0]:.0f} MiB "
          f"({ours['peak_mb'][1]})")


if __name__ == "__main__":
    main()
