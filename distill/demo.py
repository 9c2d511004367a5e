"""`distill demo`: the whole loop offline on a toy task where step-by-step <think> reasoning matters.

The task: the sum of 4-7 single digits ("What is 3 + 7 + 2 + 8?"). Written step by step (running totals in
<think>) each step is one small addition; answered at once it is not. A toy teacher is trained from scratch on
gold traces with `distill sft` (cached, keyed by its recipe), then the real loop runs: `generate` (vLLM) →
`filter` → `sft` of a fresh student → `eval` of the teacher, the student before and the student after; then two
stages start from the SFT'd student and are scored the same way: on-policy distillation (`kd`) and RL on the
verifier's reward (`grpo`, vLLM rollouts).

Why it reproduces on any machine: a model this small learns the task through a sudden transition whose timing
depends on the CPU's floating-point kernels and the seed (measured: after the same 800 steps, 18% on one VM and 70%
on another). So neither model is trained for a fixed number of steps and trusted: after its steps each is checked
(`fit`, a deterministic forward pass: the probability that sampling at the eval's t=0.6/top-p 0.95 reproduces a
trace exactly, averaged over 200 traces — the teacher on gold traces of unseen problems, the student on the traces it
was trained on) and trained further, in rounds, until it reaches `fit_target`. A model still below it after
`max_rounds` stops the demo with a one-line error instead of printing a weak result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from distill.config import DemoConfig, EvalConfig, FilterConfig, GenerateConfig, SftConfig, save_config
from distill.data.io import atomic_write_json, iter_rows, write_jsonl
from distill.errors import DistillError
from distill.prompts import THINK_PREFILL, generation_prompt, user_prompt

log = logging.getLogger(__name__)

TOY_VERSION = 4  # bump when the task, tokenizer or teacher recipe changes: it keys the teacher cache
MAX_LENGTH = 256  # tokens per training sample; toy samples are ~60-80
MODEL = dict(hidden_size=128, layers=2, heads=4)
LR = 3e-3
FIT_SAMPLES = 200
SAMPLING = dict(temperature=0.6, top_p=0.95)


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


# ---------------------------------------------------------------- the fit check


def fit(model_dir: str | Path, pairs: list[tuple[str, str]], temperature: float = SAMPLING["temperature"],
        top_p: float = SAMPLING["top_p"]) -> float:
    """Mean probability that sampling (temperature, top-p, as vLLM does) reproduces each completion exactly, given
    its problem rendered as the engine renders it. One teacher-forced forward pass per pair: deterministic."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    total = 0.0
    for problem, completion in pairs:
        prompt, prefilled = generation_prompt(tok, problem)
        body = completion[len(THINK_PREFILL):] if prefilled and completion.startswith(THINK_PREFILL) else completion
        prompt_ids = tok.encode(prompt, add_special_tokens=False)
        target = tok.encode(body, add_special_tokens=False) + [eot]
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + target])).logits[0, len(prompt_ids) - 1:-1]
        probs = torch.softmax(logits / temperature, -1)
        sorted_p, order = probs.sort(-1, descending=True)
        nucleus = sorted_p * ((sorted_p.cumsum(-1) - sorted_p) < top_p)  # the tokens top-p keeps
        kept = torch.zeros_like(probs).scatter(-1, order, nucleus / nucleus.sum(-1, keepdim=True))
        picked = kept.gather(-1, torch.tensor(target)[:, None]).clamp_min(1e-30)
        total += math.exp(float(picked.log().sum()))
    return total / len(pairs)


def train_until_fit(cfg: DemoConfig, who: str, student: Path, data: Path, out: Path, steps: int,
                    pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """`steps` optimizer steps with distill sft, then rounds of steps/2 more (a warm restart of the same schedule,
    from the weights so far) until fit >= cfg.fit_target; a one-line error after cfg.max_rounds. Returns the rounds.
    The learning rate stays high in every round: measured on this task, the transition to a model that fits comes
    while it is high (a third of it barely moved a stuck model: 71% → 78% in 400 steps)."""
    from distill.train.sft import run as sft

    rounds, start, lr, n = [], student, LR, steps
    for k in range(cfg.max_rounds + 1):
        work = out.parent / f"{out.name}.round-{k}"
        shutil.rmtree(work, ignore_errors=True)
        sft(SftConfig(student=str(start), data=str(data), out=str(work), epochs=1000.0, max_steps=n,
                      learning_rate=lr, max_length=MAX_LENGTH, seed=cfg.seed + k, trl=_trl_args()))
        score = fit(work, pairs)
        rounds.append({"steps": n, "learning_rate": lr, "fit": round(100 * score, 1)})
        log.info("demo: %s after %d steps: fit %.1f%% (target %.0f%%)", who, sum(r["steps"] for r in rounds),
                 100 * score, 100 * cfg.fit_target)
        if k:
            shutil.rmtree(start)
        start = work
        if score >= cfg.fit_target:
            shutil.rmtree(out, ignore_errors=True)
            work.rename(out)
            return rounds
        n = max(1, steps // 2)
    raise DistillError(f"demo: the toy {who} reached fit {100 * score:.1f}% after {sum(r['steps'] for r in rounds)} "
                       f"steps in {len(rounds)} rounds, below the {100 * cfg.fit_target:.0f}% the demo needs; rerun "
                       f"with --max-rounds {cfg.max_rounds + 3}, or report your CPU and torch version as an issue")


def _trl_args() -> dict[str, Any]:
    return {"per_device_train_batch_size": 8, "lr_scheduler_type": "cosine", "warmup_steps": 0.05,
            "weight_decay": 0.0, "logging_steps": 50, "save_strategy": "no"}


# ---------------------------------------------------------------- the teacher


def _teacher_recipe(cfg: DemoConfig) -> dict[str, Any]:
    return {"version": TOY_VERSION, "model": MODEL, "train_problems": cfg.teacher_problems, "steps": cfg.teacher_steps,
            "lr": LR, "batch": 8, "seed": cfg.seed, "fit_target": cfg.fit_target, "max_rounds": cfg.max_rounds}


def build_teacher(cfg: DemoConfig) -> tuple[Path, dict[str, Any]]:
    """Train the toy teacher from scratch on gold traces until it fits (module doc); reuse it when the recipe
    matches (the cache keeps its training report, fit included)."""
    from distill.tiny import build_model, build_tokenizer

    recipe = _teacher_recipe(cfg)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cfg.cache_dir).expanduser() / f"teacher-{key}"
    final = root / "model"
    if (final / "config.json").exists() and (root / "recipe.json").is_file():
        report = json.loads((root / "recipe.json").read_text())["report"]
        log.info("demo: toy teacher from cache %s (fit %.1f%%)", final, report["rounds"][-1]["fit"])
        return final, {**report, "cached": True}
    shutil.rmtree(root, ignore_errors=True)
    gold = toy_problems(cfg.teacher_problems, seed=cfg.seed + 1)
    corpus = [user_prompt(p["problem"]) + toy_trace(p["terms"]) for p in gold[:300]]
    tok = build_tokenizer(root / "tokenizer", corpus=corpus, vocab_size=300, individual_digits=True)
    build_model(root / "init", tok, seed=cfg.seed + 1, **MODEL)
    records = [{"id": f"gold/{p['id']}/0", "problem_id": p["id"], "problem": p["problem"], "answer": p["answer"],
                "completion": toy_trace(p["terms"]), "finish_reason": "stop", "source": "toy-gold"} for p in gold]
    write_jsonl(root / "gold.jsonl", records)
    log.info("demo: training the toy teacher (%d gold traces, %d steps; cached for next time)", len(records),
             cfg.teacher_steps)
    check = [(p["problem"], toy_trace(p["terms"])) for p in toy_problems(FIT_SAMPLES, seed=cfg.seed + 5)]
    rounds = train_until_fit(cfg, "teacher", root / "init", root / "gold.jsonl", final, cfg.teacher_steps, check)
    report = {"rounds": rounds, "fit_on": f"{FIT_SAMPLES} gold traces of unseen problems"}
    atomic_write_json(root / "recipe.json", {**recipe, "report": report})
    return final, {**report, "cached": False}


# ---------------------------------------------------------------- the loop


@contextlib.contextmanager
def one_thread() -> Any:
    """Run the demo's torch and vLLM work on one thread (and vLLM in this process); restored afterwards.

    The toy models are too small for a second thread to help, and two spinning OpenMP threads on a 2-core machine
    lose most of their time waiting for each other as soon as anything else runs. Measured on the 2-core Intel VM
    with other work beside it: an SFT step of the toy model (8 x 256 tokens) 0.11 s on one thread vs 0.81 s on two;
    vLLM sampling 400 x 100 tokens 5.6 s bound to one core vs 19.3 s on both. The price on an idle machine: the
    whole demo 805 s on one thread vs 649 s on two spinning ones (two passive threads, OMP_WAIT_POLICY=PASSIVE, were
    slower than one: 4.5 teacher steps/s vs 5.7). Variables the user set win."""
    import torch

    from distill.engine.vllm_engine import allowed_cores

    wanted = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": str(allowed_cores()[0]),
              "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # in-process engines start in seconds, not a process each
    saved = {k: os.environ.get(k) for k in wanted}
    threads = torch.get_num_threads()
    for k, v in wanted.items():
        os.environ.setdefault(k, v)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(cfg: DemoConfig) -> dict[str, Any]:
    """The demo (module doc); returns demo.json's content."""
    with one_thread():
        return _run(cfg)


def _run(cfg: DemoConfig) -> dict[str, Any]:
    from distill.eval.run import run as evaluate
    from distill.filters.run import run as filter_
    from distill.generate import run as generate
    from distill.tiny import build_model
    from transformers import AutoTokenizer

    if not 0 < cfg.fit_target <= 1 or cfg.max_rounds < 0:
        raise DistillError(f"--fit-target must be in (0, 1] and --max-rounds >= 0, got {cfg.fit_target}, "
                           f"{cfg.max_rounds}")
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    stage_s: dict[str, float] = {}
    mark = [t0]

    def lap(name: str) -> None:
        now = time.time()
        stage_s[name] = round(now - mark[0], 1)
        mark[0] = now

    teacher, teacher_report = build_teacher(cfg)
    t_teacher = time.time() - t0
    lap("teacher")

    train = toy_problems(cfg.train_problems, seed=cfg.seed + 2)
    heldout = toy_problems(cfg.heldout_problems, seed=cfg.seed + 3, exclude={p["problem"] for p in train})
    strip = lambda rows: [{k: p[k] for k in ("id", "problem", "answer")} for p in rows]  # noqa: E731
    write_jsonl(out / "problems.jsonl", strip(train))
    write_jsonl(out / "heldout.jsonl", strip(heldout))

    sampling = dict(**SAMPLING, max_tokens=128, seed=cfg.seed)
    generate(GenerateConfig(teacher=str(teacher), dataset=str(out / "problems.jsonl"), out=str(out / "generate"),
                            n=cfg.n, id_key="id", source="toy", max_model_len=512, dtype="float32", overwrite=True,
                            **sampling))
    lap("generate")
    fstats = filter_(FilterConfig(input=str(out / "generate"), out=str(out / "filter"),
                                  steps=["finished", "think_format", "answer_correct", "repetition", "dedup"]))
    lap("filter")

    student_init = out / "student-init"
    build_model(student_init, AutoTokenizer.from_pretrained(str(teacher)), seed=cfg.seed + 4, **MODEL)
    kept = [(row["problem"], row["completion"]) for _, row in iter_rows(out / "filter" / "kept")]
    student_rounds = train_until_fit(cfg, "student", student_init, out / "filter", out / "student",
                                     cfg.student_steps, random.Random(cfg.seed).sample(kept, min(FIT_SAMPLES,
                                                                                               len(kept))))
    lap("student_sft")

    scores = {}
    for name, model in (("teacher", teacher), ("student_before", student_init), ("student_after", out / "student")):
        res = evaluate(EvalConfig(model=str(model), tasks=[str(out / "heldout.jsonl")], out=str(out / "eval" / name),
                                  n=cfg.eval_n, max_model_len=512, dtype="float32", overwrite=True, **sampling))
        scores[name] = _pass1(res)
    lap("evals")

    # After SFT, from the same student: on-policy distillation toward the teacher (distill kd).
    from distill.train.kd import demo_stage as kd_stage

    kd = kd_stage(out / "student", teacher, out / "problems.jsonl", out / "heldout.jsonl", out / "kd", seed=cfg.seed,
                  eval_n=cfg.eval_n, before=scores["student_after"])
    lap("kd")
    # And from the same student: RL with the verifier's reward (distill grpo), the R1 recipe's next stage.
    from distill.train.grpo_demo import demo_stage as grpo_stage

    grpo = grpo_stage(out / "student", strip(train), strip(heldout), out / "grpo", seed=cfg.seed, eval_n=cfg.eval_n,
                      before=scores["student_after"])
    lap("grpo")

    n_kept, total = fstats["kept"], fstats["input"]
    summary = {
        "teacher_pass1": scores["teacher"],
        "keep_rate": round(100.0 * n_kept / total, 2) if total else 0.0,
        "student_before_pass1": scores["student_before"],
        "student_after_pass1": scores["student_after"],
        "student_kd_pass1": kd["pass1_after"],
        "student_grpo_pass1": grpo["pass1_after"],
        "traces_generated": total,
        "traces_kept": n_kept,
        "heldout_problems": len(heldout),
        "eval_samples_per_problem": cfg.eval_n,
        "teacher_training": teacher_report,
        "student_training": {"rounds": student_rounds, "fit_on": f"{FIT_SAMPLES} of its kept training traces"},
        "kd": {k: kd[k] for k in ("steps", "kd_seconds", "loss_first", "loss_last", "options")},
        "grpo": {k: grpo[k] for k in ("steps", "grpo_seconds", "rollout", "reward_early", "reward_late",
                                      "pass_rate_early", "pass_rate_late")},
        "teacher_seconds": round(t_teacher, 1),
        "stage_seconds": stage_s,
        "wall_time_s": round(time.time() - t0, 1),
        "config": dataclasses.asdict(cfg),
    }
    atomic_write_json(out / "demo.json", summary)
    atomic_write_json(out / "stats.json", summary)
    steps = lambda rounds: sum(r["steps"] for r in rounds)  # noqa: E731
    table = [
        "",
        "distill demo — sum of 4-7 digits, held-out problems, pass@1 (%) over "
        f"{cfg.eval_n} samples at t=0.6",
        f"  teacher                 {summary['teacher_pass1']:6.1f}   (trained {steps(teacher_report['rounds'])} steps,"
        f" fit {teacher_report['rounds'][-1]['fit']:.1f}%{', cached' if teacher_report['cached'] else ''})",
        f"  keep rate (filter)      {summary['keep_rate']:6.1f}   ({n_kept} of {total} traces)",
        f"  student before SFT      {summary['student_before_pass1']:6.1f}",
        f"  student after SFT       {summary['student_after_pass1']:6.1f}   (trained {steps(student_rounds)} steps, fit "
        f"{student_rounds[-1]['fit']:.1f}%)",
        f"  SFT + kd                {kd['pass1_after']:6.1f}   (on-policy distillation, {kd['steps']} steps, "
        f"{kd['kd_seconds']:.0f} s)",
        f"  SFT + grpo              {grpo['pass1_after']:6.1f}   (RL on the verifier's reward, {grpo['steps']} steps, "
        f"training reward {grpo['reward_early']:.2f} → {grpo['reward_late']:.2f}, {grpo['grpo_seconds']:.0f} s)",
        f"  wall time               {summary['wall_time_s']:6.1f} s  → {out / 'demo.json'}",
    ]
    log.info("\n".join(table))
    return summary


def _pass1(results: dict[str, Any]) -> float:
    (task_result,) = results["results"].values()
    return float(task_result["pass@1"])
