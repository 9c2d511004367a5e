"""The real pretrained SmolLM2-135M-Instruct (a GGUF from the package registry) through eval (= generate on vLLM,
then grading), and through sft (full and LoRA): its two traps — a chat template that injects a default system
prompt, and pad == end-of-turn — are detected and handled."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from distill.config import SftConfig, build_config
from distill.data.io import write_jsonl

pytestmark = pytest.mark.real
REPO = Path(__file__).resolve().parents[1]
ENGLISH = {"the", "is", "of", "and", "to", "a", "in", "we", "so", "for", "that", "each", "has", "total", "are"}


@pytest.mark.timeout(300)  # 26 s alone on the Intel VM (the GGUF conversion); 3x on a 2.3x slower CPU: 179 s
def test_the_gguf_becomes_a_real_llama_with_its_traps(smollm2_dir):
    from transformers import AutoConfig, AutoTokenizer

    from distill.templates import inference_template, injected_system

    config = AutoConfig.from_pretrained(str(smollm2_dir))
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == (
        "llama", 30, 576, 49152)
    assert config.num_attention_heads == 9 and config.num_key_value_heads == 3 and config.tie_word_embeddings
    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert tok.pad_token == tok.eos_token == "<|im_end|>"  # trap 2: pad == end-of-turn
    assert injected_system(tok).startswith("You are a helpful AI assistant named SmolLM")  # trap 1
    choice = inference_template(tok)
    assert choice.name == "chatml" and "system" not in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], chat_template=choice.template, tokenize=False, add_generation_prompt=True)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


@pytest.mark.timeout(420)  # 33 s alone on the Intel VM (+26 s if it converts the GGUF); 3x on a 2.3x slower CPU: 228 s
@pytest.mark.slow
def test_eval_generates_on_vllm_and_grades_gsm8k(smollm2_dir, tmp_path):
    """One CLI run on the .gguf file: eval → generate (vLLM, the real template minus its injected system prompt) →
    the grader."""
    from conftest import smollm2_gguf

    out = tmp_path / "eval"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    # --model takes the .gguf file itself (converted once: the fixture already did, so this run reuses the cache)
    cmd = [sys.executable, "-m", "distill", "eval", "--model", str(smollm2_gguf()), "--tasks", "gsm8k", "--limit", "4",
           "--n", "1", "--max-tokens", "96", "--max-model-len", "1024", "--dtype", "float32", "--workers", "1",
           "--out", str(out)]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((out / "generations" / "gsm8k" / "manifest.json").read_text())
    assert "injects a default system prompt" in manifest["chat_template_note"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["reason"] in ("", "answer_wrong", "no_answer") for s in samples)
    words = [w for s in samples for w in _words(s["completion"])]
    assert len(words) >= 40 and sum(w in ENGLISH for w in words) / len(words) > 0.1  # coherent English
    result = json.loads((out / "results.json").read_text())["results"]["gsm8k"]
    assert 0.0 <= result["pass@1"] <= 100.0 and result["samples"] == 4
    assert sum(result["extracted_by"].values()) == 4


def _traces(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = 12 + i, 7 + 2 * i
        rows.append({"problem": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
                     "completion": f"<think>\nHe starts with {a} and adds {b}, so {a} + {b} = {a + b}.\n</think>\n\n"
                                   f"He has \\boxed{{{a + b}}} apples."})
    return rows


@pytest.mark.timeout(420)  # 17 s alone on the Intel VM (+26 s if it converts the GGUF); 3x on a 2.3x slower CPU: 117 s
@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_trains_the_real_model_and_the_preflight_catches_its_traps(smollm2_dir, tmp_path, lora):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.train.sft import run

    write_jsonl(tmp_path / "d.jsonl", _traces(8))
    out = tmp_path / "sft"
    cfg = build_config(SftConfig, {
        "student": str(smollm2_dir), "data": str(tmp_path / "d.jsonl"), "out": str(out), "max_length": 256,
        "learning_rate": 1e-4 if lora else 2e-5, "max_steps": 3, "lora": lora, "lora_r": 8,
        "trl": {"per_device_train_batch_size": 2, "logging_steps": 1, "save_strategy": "no"}})
    stats = run(cfg)
    preflight = (out / "preflight.txt").read_text()
    assert "pad was '<|im_end|>' (= end-of-turn/EOS)" in preflight  # trap 2, fixed before training
    assert stats["chat_template"] == "chatml" and "injects a default system prompt" in stats["chat_template_note"]
    assert stats["steps"] == 3 and all(0 < x["loss"] < 20 for x in stats["loss"])
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.pad_token != tok.eos_token and "system" not in tok.apply_chat_template(
        [{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True)
    if lora:
        adapter = load_file(str(out / "adapter_model.safetensors"))
        assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at 0: it trained
        trained = out / "merged"
    else:
        trained = out
    model = AutoModelForCausalLM.from_pretrained(str(trained), dtype=torch.float32)
    before = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(dict(model.named_parameters())[name], dict(before.named_parameters())[name])
    prompt = tok.apply_chat_template([{"role": "user", "content": _traces(1)[0]["problem"]}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt")
    text = tok.decode(model.generate(**ids, max_new_tokens=24, do_sample=False)[0][ids["input_ids"].shape[1]:])
    assert len(_words(text)) >= 3  # it still writes words after a few steps
