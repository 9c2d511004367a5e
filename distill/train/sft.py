"""`distill sft`: TRL SFTTrainer on <think> traces, completion-only loss, packing, preflight, LoRA, resume.

Packing (documented choice, tested in tests/test_sft.py::test_packing_plan):
- flash-attention (flash_attention_2/3 or a hub flash kernel): TRL packing, best-fit decreasing (`bfd`), which makes
  batches padding-free: samples are concatenated with restarting position_ids and the varlen kernels keep them apart.
- sdpa / eager (CPU, or GPUs without flash-attn): the same bfd packing and padding-free batches. TRL would call this
  flash-only, but transformers derives a block-diagonal causal mask from the restarting position_ids when no
  attention_mask is given, so samples still never attend to each other (the loss-equivalence test checks it). That
  mask, and the attention it feeds, are quadratic in the tokens of one micro-batch, and a padding-free micro-batch
  of B packs is one row of B x max_length tokens: so each micro-batch holds ONE pack (per_device_train_batch_size 1)
  and gradient_accumulation_steps is multiplied by the requested batch size: same samples per optimizer step,
  attention cost max_length^2 per pack instead of (B x max_length)^2.
- `trl: {packing: false}` turns it off: padded batches, like TRL's default.
Samples longer than max_length are dropped by the preflight before packing, so bfd never truncates one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from distill.config import SftConfig, save_config
from distill.data.io import apply_umask, atomic_write_json, atomic_write_text
from distill.errors import DistillError
from distill.train import trl_args
from distill.train.resume import RESUME_FILE, check_resume, clear_out, last_complete_checkpoint, resume_key

log = logging.getLogger(__name__)

FLASH = ("flash_attention_2", "flash_attention_3")
# distill options that TRL also has: set them at the top level, not under trl:, so there is one place for each.
OWNED = {"output_dir": "out", "num_train_epochs": "epochs", "learning_rate": "learning_rate",
         "max_length": "max_length", "max_steps": "max_steps", "seed": "seed"}
# Unused special tokens we may turn into the pad token, in order (Qwen, Llama-3.1, generic).
PAD_CANDIDATES = ("<|endoftext|>", "<|fim_pad|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_0|>",
                  "<pad>", "[PAD]", "<|pad|>")


def validate_trl(trl: dict[str, Any]) -> dict[str, Any]:
    """The `trl:` mapping, checked against trl.SFTConfig's fields and their types (train/trl_args.py)."""
    from trl import SFTConfig

    return trl_args.validate_trl(trl, SFTConfig, OWNED)


def attn_implementation(cuda: bool, model_init_kwargs: dict[str, Any]) -> str:
    if "attn_implementation" in model_init_kwargs:
        return str(model_init_kwargs["attn_implementation"])
    return "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"


def packing_plan(attn: str, trl: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """TRL packing arguments for this attention implementation, and one line saying what happens (module doc)."""
    if not trl.get("packing", True):
        return {"packing": False}, "off (trl.packing: false): padded batches"
    strategy = trl.get("packing_strategy", "bfd")
    plan = {"packing": True, "packing_strategy": strategy}
    flash = attn in FLASH or "flash" in attn
    if strategy == "wrapped":
        return plan, "wrapped packing (trl.packing_strategy): samples are cut at block edges"
    if flash:
        return plan, f"{strategy} packing, padding-free batches on {attn} varlen kernels"
    batch = int(trl.get("per_device_train_batch_size", 8))
    accum = int(trl.get("gradient_accumulation_steps", 1))
    if batch > 1:
        plan.update(per_device_train_batch_size=1, gradient_accumulation_steps=accum * batch)
    return plan, (f"{strategy} packing, padding-free on {attn}: one pack per micro-batch (batch {batch} x accumulation "
                  f"{accum} -> 1 x {accum * batch}), samples kept apart by a block-diagonal mask from the restarting "
                  f"position_ids; install flash-attn on GPU for varlen kernels")


def fix_pad(tokenizer, end_of_turn: str) -> tuple[str, bool]:
    """Make pad distinct from the end-of-turn/EOS token (else collators that mask padding mask EOS too, and the model
    never learns to stop). Returns (note, added a token?)."""
    eos_ids = {tokenizer.convert_tokens_to_ids(end_of_turn), tokenizer.eos_token_id}
    if tokenizer.pad_token is not None and tokenizer.pad_token_id not in eos_ids:
        return "", False
    was = tokenizer.pad_token
    vocab = tokenizer.get_vocab()
    for cand in PAD_CANDIDATES:
        if cand in vocab and vocab[cand] not in eos_ids:
            tokenizer.pad_token = cand
            note = f"pad was {was!r} (= end-of-turn/EOS); set to the unused {cand!r}"
            log.warning(note)
            return note, False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    note = f"pad was {was!r} (= end-of-turn/EOS); added a new special token '<|pad|>' (embeddings resized)"
    log.warning(note)
    return note, True


def context_length(student: str) -> int | None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(student)
    except (OSError, ValueError) as e:
        raise DistillError(f"student {student}: cannot read its config ({str(e).splitlines()[0]}); "
                           f"pass a local model folder or a Hub id") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def _load_model(cfg: SftConfig, student: str, cuda: bool, init_kwargs: dict[str, Any], attn: str):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.bfloat16 if cuda else torch.float32, "attn_implementation": attn, **init_kwargs}
    if cfg.load_in_4bit:
        if not cuda or not importlib.util.find_spec("bitsandbytes"):
            raise DistillError("load_in_4bit (QLoRA) needs a CUDA GPU and the bitsandbytes package; "
                               "drop --load-in-4bit or install bitsandbytes on a GPU machine")
        if not cfg.lora:
            raise DistillError("load_in_4bit trains LoRA adapters on a 4-bit base; add --lora")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16,
                                                           bnb_4bit_use_double_quant=True)
    try:
        return AutoModelForCausalLM.from_pretrained(student, **kwargs)
    except OSError as e:
        raise DistillError(f"student {cfg.student}: cannot load weights ({str(e).splitlines()[0]})") from None


def _peft_config(cfg: SftConfig):
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                      target_modules=targets[0] if targets == ["all-linear"] else targets)


def prepare(cfg: SftConfig) -> dict[str, Any]:
    """Everything before the model: tokenizer fixes, data, TRL tokenization, preflight. Raises on a failed check."""
    from distill.models import resolve_model

    from transformers import AutoTokenizer

    from distill.data.adapters import check_format
    from distill.train import preflight
    from distill.train.data import load_examples, tokenize
    from distill.templates import adopt_template, choose_template

    if cfg.format:
        check_format(cfg.format)
    trl = validate_trl(cfg.trl)  # before anything slow: a typo or a wrong type fails in a second
    student = resolve_model(cfg.student, "--student")  # a .gguf file: its dequantised, cached folder

    try:
        tokenizer = AutoTokenizer.from_pretrained(student)
    except (OSError, ValueError) as e:
        raise DistillError(f"student {cfg.student}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None
    choice = choose_template(tokenizer, cfg.chat_template)
    eot, eos_note = adopt_template(tokenizer, choice, "the model must learn to emit the token that ends its turn")
    pad_note, added = fix_pad(tokenizer, eot)
    ctx = context_length(student)
    examples = load_examples(cfg.data, cfg.split, cfg.subset, cfg.revision, cfg.format, cfg.problem_key,
                             cfg.completion_key, cfg.id_key, cfg.skip_invalid)
    check_counts(cfg.data, len(examples))
    dataset = tokenize(examples, tokenizer)
    import torch

    cuda = torch.cuda.is_available()
    attn = attn_implementation(cuda, dict(trl.get("model_init_kwargs") or {}))
    plan, packing_note = packing_plan(attn, trl)
    rep = preflight.check(tokenizer, dataset, examples, max_length=cfg.max_length, context_length=ctx,
                          end_of_turn=eot, template_note=choice.note + (f"; {eos_note}" if eos_note else ""),
                          pad_note=pad_note, max_dropped_share=cfg.max_dropped_share, packing_note=packing_note)
    return dict(tokenizer=tokenizer, choice=choice, eot=eot, added_pad=added, pad_note=pad_note, dataset=dataset,
                report=rep, trl=trl, cuda=cuda, attn=attn, plan=plan, packing_note=packing_note, context_length=ctx,
                resume_key=resume_key(cfg, student, examples), student=student)


def check_counts(data: str, rows: int) -> None:
    """A filter output must hold the rows its stats.json counts (else it was cut short or mixed)."""
    stats = Path(data) / "stats.json"
    if not (Path(data) / "kept").is_dir() or not stats.is_file():
        return
    try:
        kept = json.loads(stats.read_text(encoding="utf-8")).get("kept")
    except ValueError:
        raise DistillError(f"{stats}: not valid JSON; re-run `distill filter` into {data}") from None
    if isinstance(kept, int) and kept != rows:
        raise DistillError(f"{data}: kept/ holds {rows} rows but its stats.json counts {kept} (an interrupted or "
                           f"mixed filter output); re-run `distill filter` into this folder")


def build_args(cfg: SftConfig, prep: dict[str, Any], out: Path):
    from trl import SFTConfig

    trl = dict(prep["trl"])
    trl.pop("model_init_kwargs", None)  # used when we load the model ourselves
    cuda = prep["cuda"]
    defaults: dict[str, Any] = {
        "bf16": cuda, "fp16": False, "report_to": "none", "save_total_limit": 2, "logging_first_step": True,
        "gradient_checkpointing": cuda, "eos_token": prep["eot"], "dataloader_pin_memory": cuda,
        # Without a GPU, accelerate's state is a CPU one only when asked: then `accelerate launch --num_processes N`
        # (the ddp config) trains N processes over gloo instead of N independent single-process runs.
        "use_cpu": not cuda,
    }
    if cuda and importlib.util.find_spec("liger_kernel"):
        defaults["use_liger_kernel"] = True
    if cuda:
        defaults["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    kwargs = {**defaults, **trl, **prep["plan"]}
    return SFTConfig(output_dir=str(out), num_train_epochs=cfg.epochs, learning_rate=cfg.learning_rate,
                     max_length=cfg.max_length, max_steps=cfg.max_steps, seed=cfg.seed,
                     completion_only_loss=True, **kwargs)


def run(cfg: SftConfig) -> dict[str, Any]:
    import distill  # noqa: F401  (CUDA extras blocked before transformers loads)

    start = time.time()
    out = Path(cfg.out)
    prep = prepare(cfg)
    if cfg.overwrite:
        # Under `accelerate launch` one process clears; the others only write files it rewrites after clearing, and
        # none resumes (below), so no process can pick up a checkpoint that is being deleted.
        if int(os.environ.get("RANK", "0") or 0) == 0:
            clear_out(out)
    elif cfg.resume == "auto" and not cfg.preflight_only:
        check_resume(out, prep["resume_key"])
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    rep = prep["report"]
    atomic_write_text(out / "preflight.txt", rep.text() + "\n")
    log.info("%s", rep.text())
    stats: dict[str, Any] = {"preflight": {k: v for k, v in rep.stats.items() if k != "keep"},
                             "chat_template": prep["choice"].name, "chat_template_note": prep["choice"].note,
                             "packing": prep["packing_note"], "attn_implementation": prep["attn"],
                             "pad_note": prep["pad_note"]}
    rep.raise_if_failed()
    if cfg.preflight_only:
        atomic_write_json(out / "stats.json", {**stats, "preflight_only": True})
        log.info("sft preflight passed: %d of %d samples would train (--preflight-only: no training)",
                 rep.stats["kept"], rep.stats["samples"])
        return stats

    from trl import SFTTrainer

    tokenizer = prep["tokenizer"]
    train = prep["dataset"].select(rep.stats["keep"])
    args = build_args(cfg, prep, out)
    init_kwargs = dict(prep["trl"].get("model_init_kwargs") or {})
    model = _load_model(cfg, prep["student"], prep["cuda"], init_kwargs, prep["attn"])
    if prep["added_pad"]:
        model.resize_token_embeddings(len(tokenizer))
    resume = last_complete_checkpoint(out) if cfg.resume == "auto" and not cfg.overwrite else None
    if resume:
        log.info("resuming from %s", resume)
    atomic_write_json(out / RESUME_FILE, prep["resume_key"])
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=_peft_config(cfg) if cfg.lora else None)
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out))  # model (or adapter) + tokenizer with the template it was trained with
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        if cfg.lora and cfg.merge_lora:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(str(out / "merged"))
            tokenizer.save_pretrained(str(out / "merged"))
            stats["merged"] = str(out / "merged")
    if trainer.is_world_process_zero():
        apply_umask(out)
    history = trainer.state.log_history
    losses = [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]
    tokens = [h["num_tokens"] for h in history if "num_tokens" in h]
    stats.update(loss=losses, steps=trainer.state.global_step, tokens_seen=int(tokens[-1]) if tokens else None,
                 train_samples=len(train), epochs=cfg.epochs, resumed_from=resume,
                 train_runtime_s=result.metrics.get("train_runtime"), wall_time_s=round(time.time() - start, 2),
                 final_loss=losses[-1]["loss"] if losses else None, lora=cfg.lora,
                 processes=trainer.args.world_size)
    if trainer.is_world_process_zero():
        atomic_write_json(out / "stats.json", stats)
    log.info("sft done: %d steps on %d samples, loss %s -> %s, %s tokens, %.1fs; model in %s",
             stats["steps"], len(train), losses[0]["loss"] if losses else "?", stats["final_loss"],
             stats["tokens_seen"], stats["wall_time_s"], out)
    return stats
