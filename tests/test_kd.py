"""`distill kd`: the shared-tokenizer check, TRL's GKD contract, and tiny on-policy distillation on CPU (the loss
falls, the weights move, the student's KL to the teacher on held-out prompts falls, resume, LoRA, vLLM reload)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distill.config import KdConfig, build_config
from distill.demo import toy_problems, toy_trace
from distill.errors import DistillError
from distill.train.kd import PromptCollator, prepare, render_prompts, run, tokenizer_difference, validate_trl

TRAIN_SEED, HELDOUT_SEED = 11, 12


def write_problems(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({k: r[k] for k in ("id", "problem", "answer")}) + "\n" for r in rows))
    return path


def kd_cfg(student, teacher, data, out, **kw) -> KdConfig:
    trl = {"per_device_train_batch_size": 4, "logging_steps": 1, "save_strategy": "no", "lr_scheduler_type": "constant",
           **kw.pop("trl", {})}
    base = {"student": str(student), "teacher": str(teacher), "data": str(data), "out": str(out),
            "learning_rate": 3e-3, "max_steps": 12, "max_new_tokens": 16, "trl": trl}
    return build_config(KdConfig, {**base, **kw})


def sequences(tokenizer, problems) -> list[tuple[int, list[int]]]:
    """(prompt length, prompt + gold trace + end of turn) for each problem, prompted as kd and eval prompt."""
    from distill.prompts import THINK_PREFILL

    out = []
    for row, p in zip(render_prompts(tokenizer, [_P(p) for p in problems]), problems):
        body = toy_trace(p["terms"]).removeprefix(THINK_PREFILL)
        target = tokenizer.encode(body, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        out.append((len(row["input_ids"]), row["input_ids"] + target))
    return out


class _P:
    def __init__(self, row):
        self.id, self.problem, self.answer = row["id"], row["problem"], row["answer"]


def reverse_kl(student_dir, teacher_dir, seqs) -> float:
    """Mean KL(student ‖ teacher) per completion token, teacher-forced on fixed sequences: a plain forward pass."""
    import torch
    from transformers import AutoModelForCausalLM

    s = AutoModelForCausalLM.from_pretrained(str(student_dir), dtype=torch.float32).eval()
    t = AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32).eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for start, ids in seqs:
            x = torch.tensor([ids])
            ls = torch.log_softmax(s(x).logits[0, start - 1:-1], -1)
            lt = torch.log_softmax(t(x).logits[0, start - 1:-1, :ls.shape[-1]], -1)
            total += float((ls.exp() * (ls - lt)).sum())
            n += ls.shape[0]
    return total / n


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tokenizer, tiny_qwen_dir) -> Path:
    """A teacher that differs from the student: the tiny Qwen2 from another seed, 40 plain SFT steps on toy traces,
    saved with its output layer padded by 64 rows (as Qwen2.5-7B is wider than 1.5B): kd must trim it."""
    import torch

    from distill.tiny import build_model

    path = tmp_path_factory.mktemp("kd-teacher")
    model = build_model(path, tiny_tokenizer, seed=7)
    rows = sequences(tiny_tokenizer, toy_problems(64, seed=TRAIN_SEED))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(40):
        batch = [rows[i] for i in torch.randint(len(rows), (16,)).tolist()]
        width = max(len(ids) for _, ids in batch)
        x = torch.full((16, width), tiny_tokenizer.pad_token_id)
        labels = torch.full((16, width), -100)
        for i, (start, ids) in enumerate(batch):
            x[i, :len(ids)] = torch.tensor(ids)
            labels[i, start:len(ids)] = torch.tensor(ids[start:])
        loss = model(input_ids=x, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.resize_token_embeddings(len(tiny_tokenizer) + 64)
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kd-data")
    train = toy_problems(32, seed=TRAIN_SEED)
    held = toy_problems(8, seed=HELDOUT_SEED, exclude={p["problem"] for p in train})
    return {"train": write_problems(root / "train.jsonl", train), "heldout": held,
            "heldout_file": write_problems(root / "heldout.jsonl", held)}


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, tiny_qwen_dir, teacher_dir, data):
    out = tmp_path_factory.mktemp("kd-run") / "out"
    stats = run(kd_cfg(tiny_qwen_dir, teacher_dir, data["train"], out,
                       trl={"save_strategy": "steps", "save_steps": 6}))
    return out, stats


# ---------------------------------------------------------------- checks before any work


def other_tokenizer(tmp_path: Path, corpus: list[str]) -> Path:
    from distill.tiny import build_tokenizer

    build_tokenizer(tmp_path, corpus=corpus, vocab_size=300)
    return tmp_path


def test_mismatched_tokenizer_is_one_line_before_any_model_loads(tmp_path, tiny_qwen_dir, monkeypatch):
    import transformers

    def no_models(*a, **k):
        raise AssertionError("a model was loaded before the tokenizer check")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_models)
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_qwen_dir, teacher)
    other_tokenizer(teacher, ["a completely different corpus", "zebra quartz 42"])
    problems = write_problems(tmp_path / "p.jsonl", toy_problems(2, seed=1))
    with pytest.raises(DistillError) as e:
        run(kd_cfg(tiny_qwen_dir, teacher, problems, tmp_path / "out"))
    msg = str(e.value)
    assert "do not share a tokenizer: token " in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()  # nothing written either


def test_a_token_special_in_one_tokenizer_only_is_named(tiny_tokenizer):
    import copy

    teacher = copy.deepcopy(tiny_tokenizer)
    teacher.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<think>"]}, replace_extra_special_tokens=True)
    assert teacher.get_vocab() == tiny_tokenizer.get_vocab()  # same ids: only the special flag differs
    assert tokenizer_difference(tiny_tokenizer, teacher) == "'<think>' is a special token of the teacher, not of the student"
    assert tokenizer_difference(tiny_tokenizer, copy.deepcopy(tiny_tokenizer)) is None


def test_trl_fields_are_checked_against_gkdconfig():
    assert validate_trl({"per_device_train_batch_size": 2, "logging_steps": 5}) == {"per_device_train_batch_size": 2,
                                                                                  "logging_steps": 5}
    with pytest.raises(DistillError) as e:
        validate_trl({"lmbda": 0.5, "seq_kd": False, "per_device_train_batch_sise": 2, "logging_steps": "often"})
    msg = str(e.value)
    assert "'lmbda' is the distill option 'lmbda'" in msg and "'seq_kd' is set by distill kd" in msg
    assert "did you mean 'per_device_train_batch_size'" in msg and "'logging_steps' must be" in msg


def test_lambda_and_beta_outside_zero_one_fail_at_once(tmp_path, tiny_qwen_dir):
    with pytest.raises(DistillError, match=r"--lmbda must be in \[0, 1\], got 1.5; --beta must be in \[0, 1\]"):
        prepare(kd_cfg(tiny_qwen_dir, tiny_qwen_dir, tmp_path / "p.jsonl", tmp_path / "o", lmbda=1.5, beta=-0.1))


def test_prompts_are_the_ones_eval_renders(tiny_tokenizer, data):
    from distill.engine.vllm_engine import VLLMEngine
    from distill.prompts import DEFAULT_TEMPLATE

    (row,) = render_prompts(tiny_tokenizer, [_P(data["heldout"][0])])
    assert row["prompt"].endswith("<|im_start|>assistant\n<think>\n")  # the R1 prompt with eval's prefill
    engine = VLLMEngine.__new__(VLLMEngine)  # render() only needs the tokenizer and the template
    engine.tokenizer, engine._template = tiny_tokenizer, tiny_tokenizer.chat_template
    assert list(engine.render(data["heldout"][0]["problem"], DEFAULT_TEMPLATE, "auto").ids) == row["input_ids"]


def test_trl_gkd_contract(tiny_tokenizer, tiny_qwen_dir):
    """What kd relies on in trl.experimental.gkd (an experimental API): fails loudly when an upgrade changes it."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    fields = {f.name for f in dataclasses.fields(GKDConfig)}
    assert {"lmbda", "beta", "seq_kd", "max_new_tokens", "temperature", "disable_dropout"} <= fields
    batch = PromptCollator(tiny_tokenizer.pad_token_id)([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    assert batch["prompts"].tolist() == [[5, 6, 7], [tiny_tokenizer.pad_token_id, 8, 9]]  # left-padded
    model = AutoModelForCausalLM.from_pretrained(str(tiny_qwen_dir))
    torch.manual_seed(0)
    gen = GenerationConfig(max_new_tokens=4, do_sample=True, pad_token_id=tiny_tokenizer.pad_token_id,
                           eos_token_id=tiny_tokenizer.eos_token_id)
    ids, mask, labels = GKDTrainer.generate_on_policy_outputs(model, batch, gen)
    assert ids.shape[1] > 3 and (ids[:, :3] == batch["prompts"]).all()
    assert (labels[:, :3] == -100).all() and (labels[:, 3:] != -100).any() and mask[1, 0] == 0
    # every step regenerates (on-policy with p=λ, else the teacher: seq_kd), which is why the collator has no labels
    import inspect

    source = inspect.getsource(GKDTrainer.training_step)
    assert "self.lmbda" in source and "self.seq_kd" in source and 'inputs["labels"] = new_labels' in source


# ---------------------------------------------------------------- training


@pytest.mark.slow
def test_kd_loss_falls_weights_change_and_kl_to_teacher_falls(kd_run, tiny_qwen_dir, teacher_dir, tiny_tokenizer,
                                                               data):
    import torch
    from safetensors.torch import load_file

    out, stats = kd_run
    losses = [h["loss"] for h in stats["loss"]]
    assert stats["steps"] == 12 and len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    before, after = load_file(str(tiny_qwen_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    seqs = sequences(tiny_tokenizer, data["heldout"])
    kl_before, kl_after = reverse_kl(tiny_qwen_dir, teacher_dir, seqs), reverse_kl(out, teacher_dir, seqs)
    assert kl_after < 0.7 * kl_before, (kl_before, kl_after)
    assert "trimmed from" in stats["output_rows_note"]  # the padded teacher was matched to the student
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert saved.get("chat_template") or (out / "chat_template.jinja").is_file()


@pytest.mark.slow
def test_resume_continues_the_step_count_and_refuses_a_changed_config(kd_run, tiny_qwen_dir, teacher_dir, data):
    out, first = kd_run
    stats = run(kd_cfg(tiny_qwen_dir, teacher_dir, data["train"], out, max_steps=14,
                       trl={"save_strategy": "steps", "save_steps": 6}))
    assert stats["resumed_from"].endswith("checkpoint-12") and stats["steps"] == 14
    # the history of steps 1-12 comes back from the checkpoint; two new steps follow it
    assert stats["loss"][:12] == first["loss"] and [h["step"] for h in stats["loss"]] == list(range(1, 15))
    with pytest.raises(DistillError, match=r"another config \(beta 1.0 → 0.5\)"):
        run(kd_cfg(tiny_qwen_dir, teacher_dir, data["train"], out, max_steps=16, beta=0.5,
                   trl={"save_strategy": "steps", "save_steps": 6}))


@pytest.mark.slow
def test_lora_kd_with_teacher_samples_saves_adapter_and_merged_model(tmp_path, tiny_qwen_dir, teacher_dir, data):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    stats = run(kd_cfg(tiny_qwen_dir, teacher_dir, data["train"], out, lora=True, max_steps=3, lmbda=0.5, beta=0.5,
                       learning_rate=1e-2))
    assert stats["steps"] == 3 and (out / "adapter_model.safetensors").is_file()
    before, merged = load_file(str(tiny_qwen_dir / "model.safetensors")), load_file(f"{stats['merged']}/model.safetensors")
    assert merged.keys() == before.keys()  # a plain model again: what vLLM loads
    assert any(not torch.equal(before[k], merged[k]) for k in before)


@pytest.mark.slow
def test_demo_stage_reports_pass1_before_after_and_time_and_eval_loads_the_result(tmp_path, tiny_qwen_dir,
                                                                                   teacher_dir, data):
    from distill.train.kd import demo_stage

    summary = demo_stage(tiny_qwen_dir, teacher_dir, data["train"], data["heldout"], tmp_path / "demo", seed=0,
                         eval_n=1, max_steps=2, max_new_tokens=16, trl={"per_device_train_batch_size": 4})
    assert summary["steps"] == 2 and summary["kd_seconds"] > 0 and summary["eval_seconds"] > 0
    for key in ("pass1_before", "pass1_after"):
        assert 0.0 <= summary[key] <= 100.0
    results = json.loads((tmp_path / "demo" / "eval" / "after" / "results.json").read_text())
    (task,) = results["results"].values()
    assert task["problems"] == len(data["heldout"])  # vLLM loaded the distilled student and eval graded it
    assert json.loads((tmp_path / "demo" / "kd_demo.json").read_text()) == summary
