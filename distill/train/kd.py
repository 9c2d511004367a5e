"""`distill kd`: on-policy distillation (GKD, Agarwal et al. 2024) on TRL's GKDTrainer, full or LoRA, resumable.

On λ of the steps the student samples completions for the R1 prompts and is trained toward the teacher's per-token
distribution on them (generalised JSD, β; β = 1 is reverse KL); on the rest the teacher writes the samples
(sequence-level KD: the problems carry no completions). TRL computes the loss; we only feed it.

Why GKDTrainer and not TRL's DistillationTrainer: the latter is on-policy only (no λ) and tokenises the prompts
itself, without the '<think>\\n' prefill `distill eval` adds; GKDTrainer takes our collator, so the student samples
from exactly the token ids eval will prompt it with (template from templates.choose_template, prompt from
prompts.generation_prompt). Its contract with the collator (`prompts`, `prompt_attention_mask`; every step
regenerates, so no labels) is checked by tests/test_kd.py::test_trl_gkd_contract. Not implemented: vLLM generation
and chunked logits (DistillationTrainer has them), so long generations are slow and full (B, L, V) logits are held.

Teacher and student must share a tokenizer (same token → id map and special tokens), checked before any model loads.
A teacher whose output layer is only padded wider (Qwen2.5-7B: 152064 rows, 1.5B: 151936; both tokenizers 151665)
is trimmed in memory to the student's rows, which drops only ids no token has.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from distill.config import KdConfig, save_config
from distill.data.io import atomic_write_json
from distill.errors import DistillError
from distill.train.resume import RESUME_FILE, check_resume, clear_out, last_complete_checkpoint, resume_key

log = logging.getLogger(__name__)
# trl.experimental warns on import that its APIs may change; tests/test_kd.py::test_trl_gkd_contract pins what we use.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

# distill options that GKDConfig also has: set at the top level, so there is one place for each.
OWNED = {"output_dir": "out", "num_train_epochs": "epochs", "learning_rate": "learning_rate", "max_steps": "max_steps",
         "seed": "seed", "lmbda": "lmbda", "beta": "beta", "temperature": "temperature",
         "max_new_tokens": "max_new_tokens", "teacher_model_name_or_path": "teacher"}
# GKDConfig fields we set ourselves: the problems carry no completions, so the off-policy steps must be teacher
# samples (seq_kd) and the prompt length is measured, not truncated.
FIXED = {"seq_kd": "always on: the off-policy (1 - λ) steps train on teacher samples",
         "max_length": "set to the longest prompt, so no prompt is cut", "dataset_kwargs": "the prompts are ours",
         "remove_unused_columns": "off: the collator reads the prompt ids"}


def validate_trl(trl: dict[str, Any]) -> dict[str, Any]:
    """The `trl:` mapping, checked against GKDConfig's fields and types before any work (train/trl_args.py)."""
    from trl.experimental.gkd import GKDConfig

    from distill.train import trl_args

    return trl_args.validate_trl(trl, GKDConfig, OWNED, FIXED, stage="kd")


def check_options(cfg: KdConfig) -> None:
    bad = [f"--{name} must be in [0, 1], got {getattr(cfg, name)}" for name in ("lmbda", "beta")
           if not 0.0 <= getattr(cfg, name) <= 1.0]
    if cfg.temperature <= 0:
        bad.append(f"--temperature must be > 0, got {cfg.temperature}")
    if cfg.max_new_tokens < 1:
        bad.append(f"--max-new-tokens must be >= 1, got {cfg.max_new_tokens}")
    if bad:
        raise DistillError("; ".join(bad))


# ---------------------------------------------------------------- the shared tokenizer


def load_tokenizer(model: str, option: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise DistillError(f"{option} {model}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None


def tokenizer_difference(student, teacher) -> str | None:
    """The first difference between two tokenizers that would misalign their distributions, or None: a token with
    another id (or in one vocabulary only), then a token special in one and not the other."""
    s_vocab, t_vocab = student.get_vocab(), teacher.get_vocab()
    for token, tid in sorted(t_vocab.items(), key=lambda kv: kv[1]):
        if token not in s_vocab:
            return f"token {token!r} (teacher id {tid}) is not in the student's vocabulary"
        if s_vocab[token] != tid:
            return f"token {token!r} is id {tid} for the teacher, {s_vocab[token]} for the student"
    for token, sid in sorted(s_vocab.items(), key=lambda kv: kv[1]):
        if token not in t_vocab:
            return f"token {token!r} (student id {sid}) is not in the teacher's vocabulary"
    s_special, t_special = _specials(student), _specials(teacher)
    for token in sorted(s_special ^ t_special):
        who = "student" if token in s_special else "teacher"
        other = "teacher" if who == "student" else "student"
        return f"{token!r} is a special token of the {who}, not of the {other}"
    return None


def _specials(tokenizer) -> set[str]:
    added = getattr(tokenizer, "added_tokens_decoder", {}).values()
    return set(tokenizer.all_special_tokens) | {t.content for t in added if getattr(t, "special", False)}


def check_tokenizers(student, teacher, student_name: str, teacher_name: str) -> None:
    diff = tokenizer_difference(student, teacher)
    if diff:
        raise DistillError(f"teacher {teacher_name} and student {student_name} do not share a tokenizer: {diff}; "
                           f"on-policy distillation compares next-token distributions id by id, so pick a teacher "
                           f"of the student's family (cross-tokenizer distillation is not supported yet)")


# ---------------------------------------------------------------- prompts, collator, models


def render_prompts(tokenizer, problems) -> list[dict[str, Any]]:
    """The R1 prompt of each problem, rendered as `distill eval` will render it for the saved model."""
    from distill.prompts import generation_prompt
    from distill.templates import inference_template

    template = inference_template(tokenizer).template
    rows = []
    for p in problems:
        text, _ = generation_prompt(tokenizer, p.problem, chat_template=template)
        rows.append({"id": p.id, "prompt": text, "input_ids": tokenizer.encode(text, add_special_tokens=False)})
    return rows


class PromptCollator:
    """Left-padded prompt ids in GKDTrainer's keys. No labels: every step replaces the batch with fresh samples
    (the student's, or the teacher's), and labels here would make the Trainer count zero loss tokens."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, width - n:] = torch.tensor(e["input_ids"], dtype=torch.long)
            mask[i, width - n:] = 1
        return {"prompts": ids, "prompt_attention_mask": mask, "input_ids": ids.clone(), "attention_mask": mask.clone()}


def _load(model: str, option: str, cuda: bool, init_kwargs: dict[str, Any]):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.bfloat16 if cuda else torch.float32, **init_kwargs}
    try:
        return AutoModelForCausalLM.from_pretrained(model, **kwargs)
    except OSError as e:
        raise DistillError(f"{option} {model}: cannot load weights ({str(e).splitlines()[0]})") from None


def match_output_rows(student, teacher, n_tokens: int) -> str:
    """Make the teacher's output layer as wide as the student's when only padding rows (ids past the tokenizer's
    n_tokens) differ; one line saying what was done, or a one-line error."""
    s_rows = student.get_output_embeddings().weight.shape[0]
    t_rows = teacher.get_output_embeddings().weight.shape[0]
    if s_rows == t_rows:
        return ""
    if n_tokens > min(s_rows, t_rows):
        raise DistillError(f"the tokenizer has {n_tokens} tokens but the {'student' if s_rows < t_rows else 'teacher'}"
                           f" outputs only {min(s_rows, t_rows)}; the models do not match their tokenizer")
    if t_rows < s_rows:
        raise DistillError(f"the teacher outputs {t_rows} ids, the student {s_rows} (padding rows only); "
                           f"a teacher narrower than the student is not supported: trim the student's embeddings")
    teacher.resize_token_embeddings(s_rows)
    note = f"teacher output layer trimmed from {t_rows} to the student's {s_rows} rows (padding ids past {n_tokens})"
    log.info("%s", note)
    return note


def _peft_config(cfg: KdConfig):
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                      target_modules=targets[0] if targets == ["all-linear"] else targets)


def build_args(cfg: KdConfig, trl: dict[str, Any], out: Path, cuda: bool, max_prompt: int):
    from trl.experimental.gkd import GKDConfig

    trl = {k: v for k, v in trl.items() if k not in ("model_init_kwargs", "teacher_model_init_kwargs")}
    # Gradient checkpointing off by default: GKDTrainer then samples without the KV cache (quadratic in length).
    defaults: dict[str, Any] = {"bf16": cuda, "fp16": False, "report_to": "none", "save_total_limit": 2,
                                "logging_first_step": True, "gradient_checkpointing": False,
                                "dataloader_pin_memory": cuda, "disable_dropout": True}
    return GKDConfig(output_dir=str(out), num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
                     max_steps=cfg.max_steps, seed=cfg.seed, lmbda=cfg.lmbda, beta=cfg.beta,
                     temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seq_kd=True,
                     max_length=max_prompt, dataset_kwargs={"skip_prepare_dataset": True},
                     remove_unused_columns=False, **{**defaults, **trl})


# ---------------------------------------------------------------- the stage


def prepare(cfg: KdConfig) -> dict[str, Any]:
    """Everything before the models: options, the shared-tokenizer check, template, prompts, context, resume key."""
    from distill.data.reader import read_problems
    from distill.models import check_model_dir, fingerprint
    from distill.templates import adopt_template, choose_template
    from distill.train.sft import context_length

    check_options(cfg)
    trl = validate_trl(cfg.trl)
    check_model_dir(cfg.student, "--student")
    check_model_dir(cfg.teacher, "--teacher")
    tokenizer = load_tokenizer(cfg.student, "--student")
    check_tokenizers(tokenizer, load_tokenizer(cfg.teacher, "--teacher"), cfg.student, cfg.teacher)
    choice = choose_template(tokenizer, cfg.chat_template)
    eot, _ = adopt_template(tokenizer, choice, "the student stops where its turn ends")
    if tokenizer.pad_token is None:  # pad is masked everywhere GKD looks, so pad == eos is harmless here
        tokenizer.pad_token = eot
    problems = read_problems(cfg.data, cfg.problem_key, cfg.answer_key, cfg.id_key, cfg.split, cfg.subset,
                             cfg.revision, cfg.limit)
    rows = render_prompts(tokenizer, problems)
    longest = max(len(r["input_ids"]) for r in rows)
    for option, model in (("--student", cfg.student), ("--teacher", cfg.teacher)):
        ctx = context_length(model)
        if ctx and longest + cfg.max_new_tokens > ctx:
            raise DistillError(f"{option} {model}: the longest prompt ({longest} tokens) + --max-new-tokens "
                               f"{cfg.max_new_tokens} exceed its context of {ctx}; lower --max-new-tokens")
    key = resume_key(cfg, cfg.student, [{"id": r["id"], "prompt": r["prompt"]} for r in rows])
    key["teacher_fingerprint"] = fingerprint(cfg.teacher)
    import torch

    return dict(tokenizer=tokenizer, choice=choice, eot=eot, rows=rows, longest=longest, trl=trl, resume_key=key,
                cuda=torch.cuda.is_available())


def run(cfg: KdConfig) -> dict[str, Any]:
    import distill  # noqa: F401  (CUDA extras blocked before transformers loads)

    start = time.time()
    out = Path(cfg.out)
    prep = prepare(cfg)
    if cfg.overwrite:
        clear_out(out)
    elif cfg.resume == "auto":
        check_resume(out, prep["resume_key"])
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)

    from datasets import Dataset
    from trl.experimental.gkd import GKDTrainer

    tokenizer, trl, cuda = prep["tokenizer"], prep["trl"], prep["cuda"]
    student = _load(cfg.student, "--student", cuda, dict(trl.get("model_init_kwargs") or {}))
    teacher = _load(cfg.teacher, "--teacher", cuda, dict(trl.get("teacher_model_init_kwargs") or {}))
    rows_note = match_output_rows(student, teacher, len(tokenizer))
    eot_id = tokenizer.convert_tokens_to_ids(prep["eot"])
    eos = student.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    student.generation_config.eos_token_id = eos if eot_id in eos else [eot_id, *eos]  # samples end with the turn
    args = build_args(cfg, trl, out, cuda, prep["longest"])
    resume = last_complete_checkpoint(out) if cfg.resume == "auto" else None
    if resume:
        log.info("resuming from %s", resume)
    atomic_write_json(out / RESUME_FILE, prep["resume_key"])
    log.info("kd: %d prompts, λ=%.2f on-policy, β=%.2f (%s), up to %d new tokens per sample; teacher %s",
             len(prep["rows"]), cfg.lmbda, cfg.beta, _divergence(cfg.beta), cfg.max_new_tokens, cfg.teacher)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args,
                         train_dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "input_ids")}
                                                          for r in prep["rows"]]),
                         data_collator=PromptCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                         peft_config=_peft_config(cfg) if cfg.lora else None)
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out))  # model (or adapter) + generation config
    stats: dict[str, Any] = {"chat_template": prep["choice"].name, "chat_template_note": prep["choice"].note,
                             "teacher": cfg.teacher, "lmbda": cfg.lmbda, "beta": cfg.beta,
                             "divergence": _divergence(cfg.beta), "output_rows_note": rows_note, "lora": cfg.lora}
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))  # with the template the prompts were rendered with
        if cfg.lora and cfg.merge_lora:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(str(out / "merged"))
            tokenizer.save_pretrained(str(out / "merged"))
            stats["merged"] = str(out / "merged")
    losses = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    stats.update(loss=losses, steps=trainer.state.global_step, prompts=len(prep["rows"]), resumed_from=resume,
                 final_loss=losses[-1]["loss"] if losses else None, train_runtime_s=result.metrics.get("train_runtime"),
                 wall_time_s=round(time.time() - start, 2))
    if trainer.is_world_process_zero():
        atomic_write_json(out / "stats.json", stats)
    log.info("kd done: %d steps on %d prompts, loss %s -> %s, %.1fs; model in %s", stats["steps"], len(prep["rows"]),
             losses[0]["loss"] if losses else "?", stats["final_loss"], stats["wall_time_s"], out)
    return stats


def _divergence(beta: float) -> str:
    return {0.0: "forward KL", 0.5: "JSD", 1.0: "reverse KL"}.get(beta, f"generalised JSD(β={beta:g})")


# ---------------------------------------------------------------- the demo's `+ kd` row

# The demo's eval sampling (distill/demo.py: SAMPLING, max_tokens 128, max_model_len 512), so the rows compare.
DEMO_EVAL = dict(temperature=0.6, top_p=0.95, max_tokens=128, max_model_len=512, dtype="float32")
DEMO_KD = dict(max_steps=100, learning_rate=1e-4, max_new_tokens=128, lmbda=1.0, beta=1.0, temperature=1.0)


def demo_stage(student_dir: str | Path, teacher_dir: str | Path, problems: str | Path | list[dict[str, Any]],
               heldout: str | Path | list[dict[str, Any]], out: str | Path, seed: int = 0, *, eval_n: int = 4,
               before: float | None = None, **kd: Any) -> dict[str, Any]:
    """`distill demo`'s `+ kd` row: on-policy KD of the SFT'd toy student toward the toy teacher on `problems`, then
    `distill eval` on `heldout` as the demo evaluates. `problems`/`heldout`: JSONL files or rows with id, problem,
    answer. `before`: the student's pass@1 when the demo has it (else evaluated here); `kd`: KdConfig overrides of
    DEMO_KD. Returns pass@1 before/after (%), the KD wall time and the eval time (seconds), and the KD stats."""
    from distill.config import EvalConfig
    from distill.data.io import write_jsonl
    from distill.eval.run import run as evaluate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, given in (("problems", problems), ("heldout", heldout)):
        if isinstance(given, (str, Path)):
            files[name] = Path(given)
        else:
            files[name] = out / f"{name}.jsonl"
            write_jsonl(files[name], [{k: r[k] for k in ("id", "problem", "answer")} for r in given])

    def pass1(model: Path, name: str) -> float:
        res = evaluate(EvalConfig(model=str(model), tasks=[str(files["heldout"])], out=str(out / "eval" / name),
                                  n=eval_n, seed=seed, overwrite=True, **DEMO_EVAL))
        (task,) = res["results"].values()
        return float(task["pass@1"])

    t0 = time.time()
    if before is None:
        before = pass1(Path(student_dir), "before")
    t1 = time.time()
    options = {**DEMO_KD, **kd}
    trl = {"per_device_train_batch_size": 8, "lr_scheduler_type": "constant", "logging_steps": 10,
           "save_strategy": "no", **options.pop("trl", {})}
    stats = run(KdConfig(student=str(student_dir), teacher=str(teacher_dir), data=str(files["problems"]),
                         out=str(out / "kd"), seed=seed, overwrite=True, trl=trl, **options))
    t2 = time.time()
    after = pass1(out / "kd", "after")
    summary = {"pass1_before": before, "pass1_after": after, "kd_seconds": round(t2 - t1, 1),
               "eval_seconds": round(time.time() - t2 + (t1 - t0), 1), "steps": stats["steps"],
               "loss_first": stats["loss"][0]["loss"] if stats["loss"] else None, "loss_last": stats["final_loss"],
               "model": str(out / "kd"), "options": options}
    atomic_write_json(out / "kd_demo.json", summary)
    log.info("demo: + kd  pass@1 %.1f -> %.1f on held-out problems (%d steps, %.0fs)", before, after,
             stats["steps"], summary["kd_seconds"])
    return summary
