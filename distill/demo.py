"""`distill demo`: the whole loop offline on a toy task where step-by-step <think> reasoning matters.

The task: the sum of 4-7 single digits ("What is 3 + 7 + 2 + 8?"). Written step by step (running totals in
<think>) each step is one small addition; answered at once it is not. A toy teacher is trained from scratch on
gold traces with `distill sft` (cached, keyed by its recipe), then the real loop runs: `generate` (vLLM) →
`filter` → `sft` of a fresh student → `eval` of the teacher, the student before and the student after.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

from distill.config import DemoConfig, EvalConfig, FilterConfig, GenerateConfig, SftConfig, save_config
from distill.data.io import atomic_write_json, write_jsonl
from distill.prompts import user_prompt

log = logging.getLogger(__name__)

TOY_VERSION = 2  # bump when the task, tokenizer or teacher recipe changes: it keys the teacher cache
MAX_LENGTH = 256  # tokens per training sample; toy samples are ~60-80
MODEL = dict(hidden_size=128, layers=2, heads=4)


def toy_terms(rng: random.Random, lo: int = 4, hi: int = 7) -> list[int]:
    return [rng.randint(1, 9) for _ in range(rng.randint(lo, hi))]


def toy_problem(terms: list[int]) -> str:
    return "What is " + " + ".join(map(str, terms)) + "?"


def toy_trace(terms: list[int]) -> str:
    """The gold completion: running totals inside <think>, then the boxed answer."""
    total, lines = terms[0], []
    for x in terms[1:]:
        lines.append(f"{total} + {x} = {total + x}")
        total += x
    return "<think>\n" + "\n".join(lines) + f"\n</think>\n\nThe answer is \\boxed{{{total}}}."


def toy_problems(n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows, seen = [], set(exclude)
    while len(rows) < n:
        terms = toy_terms(rng)
        text = toy_problem(terms)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"id": f"{seed}-{len(rows)}", "problem": text, "answer": str(sum(terms)), "terms": terms})
    return rows


def _teacher_recipe(cfg: DemoConfig) -> dict[str, Any]:
    return {"version": TOY_VERSION, "model": MODEL, "train_problems": cfg.teacher_problems,
            "steps": cfg.teacher_steps, "lr": 3e-3, "batch": 8, "seed": cfg.seed}


def build_teacher(cfg: DemoConfig) -> Path:
    """Train the toy teacher from scratch on gold traces with `distill sft`; reuse it when the recipe matches."""
    from distill.tiny import build_model, build_tokenizer
    from distill.train.sft import run as sft

    recipe = _teacher_recipe(cfg)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cfg.cache_dir).expanduser() / f"teacher-{key}"
    final = root / "model"
    if (final / "config.json").exists():
        log.info("demo: toy teacher from cache %s", final)
        return final
    shutil.rmtree(root, ignore_errors=True)
    gold = toy_problems(cfg.teacher_problems, seed=cfg.seed + 1)
    corpus = [user_prompt(p["problem"]) + toy_trace(p["terms"]) for p in gold[:300]]
    tok = build_tokenizer(root / "tokenizer", corpus=corpus, vocab_size=300, individual_digits=True)
    build_model(root / "init", tok, seed=cfg.seed + 1, **MODEL)
    records = [{"id": f"gold/{p['id']}/0", "problem_id": p["id"], "problem": p["problem"], "answer": p["answer"],
                "completion": toy_trace(p["terms"]), "finish_reason": "stop", "source": "toy-gold"} for p in gold]
    write_jsonl(root / "gold.jsonl", records)
    log.info("demo: training the toy teacher (%d gold traces, %d steps; cached for next time)",
             len(records), cfg.teacher_steps)
    sft(SftConfig(student=str(root / "init"), data=str(root / "gold.jsonl"), out=str(root / "train"),
                  epochs=1.0, max_steps=cfg.teacher_steps, learning_rate=3e-3, max_length=MAX_LENGTH,
                  seed=cfg.seed, trl=_trl_args()))
    (root / "train").rename(final)
    atomic_write_json(root / "recipe.json", recipe)
    return final


def _trl_args() -> dict[str, Any]:
    return {"per_device_train_batch_size": 8, "lr_scheduler_type": "cosine", "warmup_steps": 0.05,
            "weight_decay": 0.0, "logging_steps": 25, "save_strategy": "no"}


def run(cfg: DemoConfig) -> dict[str, Any]:
    from distill.eval.run import run as evaluate
    from distill.filters.run import run as filter_
    from distill.generate import run as generate
    from distill.tiny import build_model
    from distill.train.sft import run as sft
    from transformers import AutoTokenizer

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    teacher = build_teacher(cfg)
    t_teacher = time.time() - t0

    train = toy_problems(cfg.train_problems, seed=cfg.seed + 2)
    heldout = toy_problems(cfg.heldout_problems, seed=cfg.seed + 3, exclude={p["problem"] for p in train})
    strip = lambda rows: [{k: p[k] for k in ("id", "problem", "answer")} for p in rows]  # noqa: E731
    write_jsonl(out / "problems.jsonl", strip(train))
    write_jsonl(out / "heldout.jsonl", strip(heldout))

    sampling = dict(temperature=0.6, top_p=0.95, max_tokens=128, seed=cfg.seed)
    generate(GenerateConfig(teacher=str(teacher), dataset=str(out / "problems.jsonl"), out=str(out / "generate"),
                            n=cfg.n, id_key="id", source="toy", max_model_len=512, dtype="float32", **sampling))
    fstats = filter_(FilterConfig(input=str(out / "generate"), out=str(out / "filter"),
                                  steps=["finished", "think_format", "answer_correct", "repetition", "dedup"]))

    student_init = out / "student-init"
    build_model(student_init, AutoTokenizer.from_pretrained(str(teacher)), seed=cfg.seed + 4, **MODEL)
    sft(SftConfig(student=str(student_init), data=str(out / "filter"), out=str(out / "student"),
                  epochs=1000.0, max_steps=cfg.student_steps, learning_rate=3e-3, max_length=MAX_LENGTH, seed=cfg.seed,
                  trl=_trl_args()))

    scores = {}
    for name, model in (("teacher", teacher), ("student_before", student_init), ("student_after", out / "student")):
        res = evaluate(EvalConfig(model=str(model), tasks=[str(out / "heldout.jsonl")], out=str(out / "eval" / name),
                                  n=cfg.eval_n, max_model_len=512, dtype="float32", **sampling))
        scores[name] = _pass1(res)

    kept, total = fstats["kept"], fstats["input"]
    summary = {
        "teacher_pass1": scores["teacher"],
        "keep_rate": round(100.0 * kept / total, 2) if total else 0.0,
        "student_before_pass1": scores["student_before"],
        "student_after_pass1": scores["student_after"],
        "traces_generated": total,
        "traces_kept": kept,
        "heldout_problems": len(heldout),
        "eval_samples_per_problem": cfg.eval_n,
        "teacher_seconds": round(t_teacher, 1),
        "wall_time_s": round(time.time() - t0, 1),
        "config": dataclasses.asdict(cfg),
    }
    atomic_write_json(out / "demo.json", summary)
    atomic_write_json(out / "stats.json", summary)
    table = [
        "",
        "distill demo — sum of 4-7 digits, held-out problems, pass@1 (%) over "
        f"{cfg.eval_n} samples at t=0.6",
        f"  teacher                 {summary['teacher_pass1']:6.1f}",
        f"  keep rate (filter)      {summary['keep_rate']:6.1f}   ({kept} of {total} traces)",
        f"  student before SFT      {summary['student_before_pass1']:6.1f}",
        f"  student after SFT       {summary['student_after_pass1']:6.1f}",
        f"  wall time               {summary['wall_time_s']:6.1f} s  → {out / 'demo.json'}",
    ]
    log.info("\n".join(table))
    return summary


def _pass1(results: dict[str, Any]) -> float:
    (task_result,) = results["results"].values()
    return float(task_result["pass@1"])
