"""`distill grpo`: RL with verifiable rewards on TRL's GRPOTrainer (TRL owns the loop: group sampling, group-normalised
advantages, the clipped ratio, the KL to a reference model), full or LoRA, resumable.

distill adds what makes it the same pipeline as generate / filter / eval: problems through the one reader (with the
difficulty selection, train/grpo_data.py), prompts rendered exactly as eval renders them, rewards that are thin
wrappers around the one verifier (train/rewards.py), rollouts through vLLM on GPU and on the CPU build
(train/grpo_rollout.py), a per-step log (OUT/steps.jsonl) and stats.json, and a saved model that vLLM and
`distill eval` load as they are (weights + tokenizer with the chat template the prompts were rendered with).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from distill.config import GrpoConfig, config_dict, save_config
from distill.data.io import atomic_write_json
from distill.errors import DistillError
from distill.train.grpo_log import STEPS_FILE
from distill.train.resume import RESUME_FILE, check_resume, clear_out, last_complete_checkpoint, resume_key

log = logging.getLogger(__name__)

# distill options that GRPOConfig also has: set them at the top level, not under trl:, so there is one place each.
OWNED = {"output_dir": "out", "num_train_epochs": "epochs", "learning_rate": "learning_rate", "max_steps": "max_steps",
         "seed": "seed", "beta": "beta", "temperature": "temperature", "top_p": "top_p", "save_steps": "save_steps",
         "num_generations": "num_generations", "max_completion_length": "max_completion_length",
         "gradient_accumulation_steps": "prompts_per_step", "reward_weights": "<name>_weight",
         "use_vllm": "rollout", "vllm_mode": "vllm_mode", "vllm_server_base_url": "vllm_server_url"}


def validate_trl(trl: dict[str, Any]) -> dict[str, Any]:
    """The `trl:` mapping checked against trl.GRPOConfig's fields and types, all errors at once (as sft's)."""
    from trl import GRPOConfig

    from distill.train.trl_args import validate_trl as validate

    return validate(trl, GRPOConfig, OWNED, stage="grpo")


def check_config(cfg: GrpoConfig) -> None:
    """Values TRL would reject late (or accept and misbehave on), all at once, before anything loads."""
    errors = []
    need = [(cfg.num_generations >= 2, f"num_generations must be >= 2 (GRPO normalises within a group), got "
                                       f"{cfg.num_generations}"),
            (cfg.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {cfg.prompts_per_step}"),
            (cfg.max_completion_length >= 1, f"max_completion_length must be >= 1, got {cfg.max_completion_length}"),
            (0 <= cfg.pass_rate_min <= cfg.pass_rate_max <= 1,
             f"need 0 <= pass_rate_min <= pass_rate_max <= 1, got {cfg.pass_rate_min} and {cfg.pass_rate_max}"),
            (cfg.temperature > 0, f"temperature must be > 0 (GRPO needs diverse samples), got {cfg.temperature}"),
            (0 < cfg.top_p <= 1, f"top_p must be in (0, 1], got {cfg.top_p}"),
            (cfg.learning_rate > 0, f"learning_rate must be > 0, got {cfg.learning_rate}"),
            (cfg.beta >= 0, f"beta must be >= 0, got {cfg.beta}"),
            (cfg.save_steps >= 1, f"save_steps must be >= 1, got {cfg.save_steps}"),
            (cfg.answer_timeout > 0, f"answer_timeout must be > 0 seconds, got {cfg.answer_timeout}"),
            (cfg.workers is None or cfg.workers >= 1, f"workers must be >= 1, got {cfg.workers}"),
            (cfg.max_steps > 0 or cfg.epochs > 0, "set max_steps > 0 or epochs > 0"),
            (cfg.lora_r >= 1 or not cfg.lora, f"lora_r must be >= 1, got {cfg.lora_r}"),
            (any(w != 0 for w in weights(cfg).values()), "every reward weight is 0: nothing to learn from; set "
                                                         "correctness_weight (and format_weight, ...)"),
            (cfg.length_weight == 0 or 1 <= cfg.overlong_buffer <= cfg.max_completion_length,
             f"overlong_buffer must be in [1, max_completion_length={cfg.max_completion_length}], got "
             f"{cfg.overlong_buffer}"),
            (cfg.vllm_server_url is None or cfg.vllm_mode == "server",
             "vllm_server_url is for vllm_mode server; pass --vllm-mode server or drop it"),
            (cfg.vllm_mode == "colocate" or cfg.rollout != "transformers",
             "vllm_mode server needs vLLM rollouts; drop --rollout transformers")]
    errors = [msg for ok, msg in need if not ok]
    if errors:
        raise DistillError("; ".join(errors))


def weights(cfg: GrpoConfig) -> dict[str, float]:
    return {"correctness": cfg.correctness_weight, "format": cfg.format_weight, "language": cfg.language_weight,
            "length": cfg.length_weight}


def prepare(cfg: GrpoConfig) -> dict[str, Any]:
    """Everything before the model: checks, tokenizer and template, problems, prompts, grading, resume key."""
    from transformers import AutoConfig, AutoTokenizer

    from distill.models import check_model_dir
    from distill.train.grpo_data import grading, load_problems, prepare_tokenizer, prompt_rows

    check_config(cfg)
    trl = validate_trl(cfg.trl)
    check_model_dir(cfg.model, "--model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        context = getattr(AutoConfig.from_pretrained(cfg.model).get_text_config(), "max_position_embeddings", None)
    except (OSError, ValueError) as e:
        raise DistillError(f"--model {cfg.model}: cannot load its tokenizer/config ({str(e).splitlines()[0]})") from None
    choice, eot = prepare_tokenizer(tokenizer, cfg.chat_template)
    grade = grading(cfg)
    problems, data_summary = load_problems(cfg)
    rows = prompt_rows(problems, tokenizer, cfg.prompt_template, cfg.think_prefill)
    longest = max(len(tokenizer(r["prompt"]).input_ids) for r in rows)
    if context and longest + cfg.max_completion_length > context:
        raise DistillError(f"the longest prompt ({longest} tokens) + max_completion_length {cfg.max_completion_length} "
                           f"exceed the model's context ({context}); lower --max-completion-length or extend the "
                           f"context (rope scaling)")
    key = resume_key(cfg, cfg.model, [{k: r[k] for k in ("problem_id", "prompt", "answer")} for r in rows])
    key.pop("save_steps", None)
    return dict(tokenizer=tokenizer, choice=choice, eot=eot, grading=grade, rows=rows, data=data_summary, trl=trl,
                longest_prompt=longest, resume_key=key)


def build_args(cfg: GrpoConfig, prep: dict[str, Any], out: Path, rollout: str, cuda: bool, reward_weights):
    from trl import GRPOConfig

    trl = dict(prep["trl"])
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    per_device = int(trl.pop("per_device_train_batch_size", cfg.num_generations))
    completions = cfg.prompts_per_step * cfg.num_generations
    if completions % (per_device * world):
        raise DistillError(f"prompts_per_step {cfg.prompts_per_step} x num_generations {cfg.num_generations} = "
                           f"{completions} completions per step must divide into micro-batches of "
                           f"trl.per_device_train_batch_size {per_device} x {world} processes")
    init = {"dtype": "bfloat16" if cuda else "float32", **dict(trl.pop("model_init_kwargs", None) or {})}
    defaults: dict[str, Any] = {
        "bf16": cuda, "fp16": False, "report_to": "none", "logging_steps": 1, "save_strategy": "steps",
        "save_total_limit": 2, "gradient_checkpointing": cuda, "dataloader_pin_memory": cuda,
        "log_completions": False, "use_cpu": not cuda,
    }
    if cuda:
        defaults["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if rollout == "vllm":
        defaults["vllm_max_model_length"] = prep["longest_prompt"] + cfg.max_completion_length
        # A base model's generation_config may not stop at the template's end-of-turn token: make vLLM stop there.
        stop = [prep["tokenizer"].convert_tokens_to_ids(prep["eot"])]
        defaults["generation_kwargs"] = {"stop_token_ids": stop, **dict(trl.pop("generation_kwargs", None) or {})}
    return GRPOConfig(
        output_dir=str(out), learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        seed=cfg.seed, beta=cfg.beta, temperature=cfg.temperature, top_p=cfg.top_p, save_steps=cfg.save_steps,
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        per_device_train_batch_size=per_device, gradient_accumulation_steps=completions // (per_device * world),
        reward_weights=reward_weights, use_vllm=rollout == "vllm", vllm_mode=cfg.vllm_mode,
        vllm_server_base_url=cfg.vllm_server_url, model_init_kwargs=init, **{**defaults, **trl})


def _peft_config(cfg: GrpoConfig):
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                      target_modules=targets[0] if targets == ["all-linear"] else targets)


def run(cfg: GrpoConfig) -> dict[str, Any]:
    import distill  # noqa: F401  (CUDA extras blocked before transformers loads)

    start = time.time()
    out = Path(cfg.out)
    prep = prepare(cfg)
    import torch

    from distill.train.grpo_rollout import StepClock, choose_rollout, engine_seam, reload_sync

    cuda = torch.cuda.is_available()
    rollout, why = choose_rollout(cfg.rollout, cuda)
    if rollout == "vllm" and cfg.vllm_mode == "server" and not cuda:
        raise DistillError("--vllm-mode server: TRL pushes the weights to `trl vllm-serve` over NCCL, which needs a "
                           "CUDA GPU; on CPU use --vllm-mode colocate (vLLM's CPU build in this process)")
    if cfg.overwrite:
        clear_out(out)
        (out / STEPS_FILE).unlink(missing_ok=True)
    elif cfg.resume == "auto":
        check_resume(out, prep["resume_key"])
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)

    from datasets import Dataset
    from trl import GRPOTrainer

    from distill.train.grpo_log import StepLog, summarize
    from distill.train.rewards import Rewards
    from distill.verify import make_verifier

    log.info("grpo: %d problems x G=%d, %d problems per step; rollouts: %s", len(prep["rows"]), cfg.num_generations,
             cfg.prompts_per_step, why)
    tokenizer, grade = prep["tokenizer"], prep["grading"]
    options = dataclasses.replace(cfg, workers=cfg.workers or max(1, (os.cpu_count() or 2) // 2),
                                  answer_type=grade.answer_type)
    resume = last_complete_checkpoint(out) if cfg.resume == "auto" else None
    with make_verifier(grade.verifier, options) as verifier:
        rewards = Rewards(verifier, weights(cfg), cfg.max_completion_length, cfg.overlong_buffer,
                          [tokenizer.eos_token_id], cfg.language)
        first = prep["rows"][0]
        rewards.check(first["problem_id"], first["problem"], first["answer"])
        funcs, reward_weights = rewards.functions()
        args = build_args(cfg, prep, out, rollout, cuda, reward_weights)
        steps = StepLog(out / STEPS_FILE, rewards)
        seam = rollout == "vllm" and cfg.vllm_mode == "colocate"
        with engine_seam(args.model_init_kwargs["dtype"]) if seam else contextlib.nullcontext():
            try:
                trainer = GRPOTrainer(model=cfg.model, reward_funcs=funcs, args=args,
                                      train_dataset=Dataset.from_list(prep["rows"]), processing_class=tokenizer,
                                      peft_config=_peft_config(cfg) if cfg.lora else None, callbacks=[steps])
            except OSError as e:
                raise DistillError(f"--model {cfg.model}: cannot load weights ({str(e).splitlines()[0]})") from None
        if seam and not cuda:
            reload_sync(trainer.vllm_generation)
        steps.clock = StepClock(trainer)
        if resume:
            log.info("resuming from %s", resume)
        atomic_write_json(out / RESUME_FILE, prep["resume_key"])
        result = trainer.train(resume_from_checkpoint=resume)
    stats: dict[str, Any] = {"rollout": {"backend": rollout, "vllm_mode": cfg.vllm_mode if rollout == "vllm" else None,
                                         "device": "cuda" if cuda else "cpu", "why": why},
                             "problems": prep["data"], "grading": dataclasses.asdict(grade),
                             "chat_template": prep["choice"].name, "chat_template_note": prep["choice"].note,
                             "reward_weights": weights(cfg), "resumed_from": resume}
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))  # with the chat template the prompts were rendered with
        if cfg.lora and cfg.merge_lora:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(str(out / "merged"))
            tokenizer.save_pretrained(str(out / "merged"))
            stats["merged"] = str(out / "merged")
    stats.update(summarize(steps.read(), rewards.verdicts, weights(cfg)))
    stats.update(steps=trainer.state.global_step, lora=cfg.lora, train_runtime_s=result.metrics.get("train_runtime"),
                 wall_time_s=round(time.time() - start, 2), config=config_dict(cfg))
    if trainer.is_world_process_zero():
        atomic_write_json(out / "stats.json", stats)
    r = stats["reward"]
    log.info("grpo done: %d steps, reward %s -> %s, pass rate %s -> %s, %.1fs; model in %s", stats["steps"],
             _fmt(r["first"]), _fmt(r["last"]), _fmt(stats["pass_rate"]["first"]), _fmt(stats["pass_rate"]["last"]),
             stats["wall_time_s"], out)
    return stats


def _fmt(x: float | None) -> str:
    return "?" if x is None else f"{x:.3f}"


def run_isolated(cfg: GrpoConfig) -> dict[str, Any]:
    """`run(cfg)` in a child process (`python -m distill grpo --config`), for callers that go on using vLLM in their
    own process (the demo, `distill run`). TRL's colocated vLLM runs in the process that trains, and vLLM's shutdown
    of an in-process engine tears down process-wide state — its parallel groups, torch.distributed — that any other
    in-process engine of the caller still needs ("pipeline model parallel group is not initialized")."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="distill-grpo-") as tmp:
        recipe = save_config(cfg, tmp, "grpo.yaml")
        rc = subprocess.run([sys.executable, "-m", "distill", "grpo", "--config", str(recipe)]).returncode
    if rc != 0:
        raise DistillError(f"grpo into {cfg.out}: the training process failed (exit {rc}); its error is printed above")
    return json.loads((Path(cfg.out) / "stats.json").read_text(encoding="utf-8"))
