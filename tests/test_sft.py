"""`distill sft`: data forms, preflight catches, packing choice, and tiny Qwen2/Llama training on CPU (TRL, PEFT,
a transformers reload and a vLLM reload in a subprocess)."""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.config import SftConfig, build_config, load_config
from distill.data.io import write_parquet
from distill.errors import DistillError
from distill.prompts import normalize_completion, sft_messages
from distill.train.data import load_examples
from distill.train.sft import packing_plan, prepare, run, validate_trl

REPO = Path(__file__).resolve().parents[1]
SFT_RECIPES = sorted((REPO / "recipes").glob("sft_*.yaml"))


def records(n: int = 12, seed: int = 0, long_every: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        reps = 40 if long_every and i % long_every == long_every - 1 else rng.choice([1, 1, 2, 4])
        steps = " ".join(f"Let me think. {a} + {b}." for _ in range(reps))
        rows.append({"id": f"t/{i}/0", "problem_id": str(i), "problem": f"What is {a} + {b}?", "answer": str(a + b),
                     "completion": f"<think>\n{steps} So {a} + {b} = {a + b}.\n</think>\n\nThe answer is "
                                   f"\\boxed{{{a + b}}}.", "finish_reason": "stop"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg(student, data, out, **kw) -> SftConfig:
    trl = {"logging_steps": 1, "per_device_train_batch_size": 4, "save_strategy": "no", **kw.pop("trl", {})}
    base = {"student": str(student), "data": str(data), "out": str(out), "max_length": 512, "learning_rate": 1e-3,
            "max_steps": 6, "trl": trl}
    return build_config(SftConfig, {**base, **kw})


def student_with(tmp_path: Path, model_dir: Path, tokenizer) -> Path:
    """A copy of a tiny student whose tokenizer is replaced (a pad == eos one, a stripping template, …)."""
    path = tmp_path / "student"
    shutil.copytree(model_dir, path)
    tokenizer.save_pretrained(str(path))
    return path


# ---------------------------------------------------------------- data


def test_normalize_completion_gives_the_r1_layout():
    assert normalize_completion("<think>a\n\n</think>b") == "<think>\na\n</think>\n\nb"
    assert normalize_completion("prefilled thought</think>\n\nx") == "<think>\nprefilled thought\n</think>\n\nx"
    assert normalize_completion("no reasoning") == "no reasoning"


def test_data_forms_filter_output_records_messages_sharegpt(tmp_path):
    rows = records(3)
    # filter output: kept/*.parquet with messages + record fields; rejected/ must not be read
    kept = [{**r, "messages": [{"role": "user", "content": r["problem"]},
                               {"role": "assistant", "content": r["completion"]}]} for r in rows]
    write_parquet(tmp_path / "f" / "kept" / "part-0.parquet", kept)
    write_parquet(tmp_path / "f" / "rejected" / "part-0.parquet", [{**kept[0], "messages": "not json"}])
    ex = load_examples(str(tmp_path / "f"))
    assert len(ex) == 3 and ex[0]["prompt"] == sft_messages(rows[0]["problem"], "")[:1]
    assert [e["id"] for e in ex] == [r["id"] for r in rows]  # the ids filter and eval give these rows
    assert ex[0]["completion"][0]["content"].startswith("<think>\nLet me think.")
    # records: the user turn is prompts.sft_messages' (problem + boxed instruction)
    ex = load_examples(str(write_jsonl(tmp_path / "r.jsonl", rows)))
    assert ex[0]["prompt"][0]["content"].endswith("within \\boxed{}.")
    share = [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "<think>t</think>a"}]}]
    ex = load_examples(str(write_jsonl(tmp_path / "s.jsonl", share)))
    assert ex == [{"id": "0", "prompt": [{"role": "user", "content": "q"}],
                   "completion": [{"role": "assistant", "content": "<think>\nt\n</think>\n\na"}]}]
    with pytest.raises(DistillError, match="last turn must be the assistant"):
        load_examples(str(write_jsonl(tmp_path / "u.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])))
    with pytest.raises(DistillError, match="no column 'problem'.*--problem-key.*--format"):
        load_examples(str(write_jsonl(tmp_path / "x.jsonl", [{"text": "q"}])))
    # problem + completion is enough: no id, problem_id or answer needed
    ex = load_examples(str(write_jsonl(tmp_path / "pc.jsonl", [{"problem": "q", "completion": "<think>t</think>a"}])))
    assert ex[0]["completion"][0]["content"] == "<think>\nt\n</think>\n\na"
    with pytest.raises(DistillError, match="pc0.jsonl:1: the completion is empty"):
        load_examples(str(write_jsonl(tmp_path / "pc0.jsonl", [{"problem": "q", "completion": None}])))


# ---------------------------------------------------------------- config, packing choice


def test_trl_passthrough_is_validated_with_did_you_mean():
    assert validate_trl({"gradient_accumulation_steps": 4, "packing": False}) == {
        "gradient_accumulation_steps": 4, "packing": False}
    with pytest.raises(DistillError) as e:
        validate_trl({"gradient_acumulation_steps": 4, "learning_rate": 1.0})
    assert "did you mean 'gradient_accumulation_steps'" in str(e.value)
    assert "set `learning_rate:` at the top level" in str(e.value)


def test_packing_plan_is_what_the_module_documents():
    plan, note = packing_plan("flash_attention_2", {})
    assert plan == {"packing": True, "packing_strategy": "bfd"} and "varlen kernels" in note
    # CPU/sdpa: same packing, padding-free, block mask from position_ids, one pack per micro-batch
    plan, note = packing_plan("sdpa", {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2})
    assert plan == {"packing": True, "packing_strategy": "bfd", "per_device_train_batch_size": 1,
                    "gradient_accumulation_steps": 8} and "position_ids" in note
    assert packing_plan("eager", {})[0]["gradient_accumulation_steps"] == 8  # TRL's default batch of 8
    plan, note = packing_plan("sdpa", {"packing": False})
    assert plan == {"packing": False} and note.startswith("off")


@pytest.mark.parametrize("recipe", SFT_RECIPES, ids=lambda p: p.name)
def test_sft_recipes_parse_and_their_trl_fields_exist(recipe):
    first = recipe.read_text().splitlines()[0]
    assert first == f"# distill sft --config recipes/{recipe.name}"
    cfg_ = load_config(SftConfig, recipe)
    validate_trl(cfg_.trl)


def test_accelerate_configs_ship_and_module_entry_works():
    configs = sorted((REPO / "distill" / "train" / "accelerate").glob("*.yaml"))
    assert {p.stem for p in configs} >= {"ddp", "zero2", "zero3", "fsdp"}
    for p in configs:
        assert yaml.safe_load(p.read_text())["distributed_type"]
    out = subprocess.run([sys.executable, "-m", "distill.cli", "sft", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--preflight-only" in out.stdout and "--lora" in out.stdout


# ---------------------------------------------------------------- preflight


def test_preflight_drops_and_counts_over_long_samples(tmp_path, tiny_qwen_dir):
    data = write_jsonl(tmp_path / "r.jsonl", records(12, long_every=4))
    stats = run(cfg(tiny_qwen_dir, data, tmp_path / "o", max_length=256, max_dropped_share=0.5, preflight_only=True))
    assert stats["preflight"]["dropped_over_max_length"] == 3 and stats["preflight"]["kept"] == 9
    text = (tmp_path / "o" / "preflight.txt").read_text()
    assert "3 of 12 samples (25.0%) longer than max_length 256 are dropped" in text
    with pytest.raises(DistillError, match="3 of 12 samples .* longer than max_length 256"):
        run(cfg(tiny_qwen_dir, data, tmp_path / "o2", max_length=256, max_dropped_share=0.2, preflight_only=True))
    with pytest.raises(DistillError, match="all 12 samples are longer"):
        run(cfg(tiny_qwen_dir, data, tmp_path / "o3", max_length=8, preflight_only=True))


def test_preflight_shows_trained_span_and_passes(tmp_path, tiny_qwen_dir):
    data = write_jsonl(tmp_path / "r.jsonl", records(4))
    prep = prepare(cfg(tiny_qwen_dir, data, tmp_path / "o"))
    text = prep["report"].text()
    assert not prep["report"].failures
    assert "<|im_start|>assistant\n[[<think>\n" in text  # prompt outside, completion inside the marks
    assert "<|im_end|>\n]]" in text  # the end-of-turn token is trained
    assert "end-of-turn '<|im_end|>' is the last trained token" in text


def test_preflight_max_length_over_context(tmp_path, tiny_qwen_dir):
    data = write_jsonl(tmp_path / "r.jsonl", records(4))
    with pytest.raises(DistillError) as e:
        run(cfg(tiny_qwen_dir, data, tmp_path / "o", max_length=8192, preflight_only=True))
    assert "max_length 8192 > the student's context (max_position_embeddings 4096)" in str(e.value)
    assert '"rope_type": "yarn", "factor": 2.0' in str(e.value) and "\n" not in str(e.value)


def test_preflight_fixes_pad_equal_eos(tmp_path, tiny_qwen_dir, tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = tok.eos_token
    student = student_with(tmp_path, tiny_qwen_dir, tok)
    data = write_jsonl(tmp_path / "r.jsonl", records(4))
    prep = prepare(cfg(student, data, tmp_path / "o"))
    assert prep["tokenizer"].pad_token == "<|endoftext|>" and not prep["report"].failures
    assert "pad was '<|im_end|>' (= end-of-turn/EOS); set to the unused '<|endoftext|>'" in prep["report"].text()
    # with pad == eos and no fix, the check fails in one line
    from distill.train import preflight

    prep["tokenizer"].pad_token = prep["tokenizer"].eos_token
    rep = preflight.check(prep["tokenizer"], prep["dataset"], load_examples(str(data)), max_length=512,
                          context_length=4096, end_of_turn="<|im_end|>", template_note="", pad_note="",
                          max_dropped_share=0.1, packing_note="")
    assert any("is the end-of-turn token" in f for f in rep.failures)


def test_preflight_catches_r1_stripping_template(tmp_path, tiny_qwen_dir, tiny_tokenizer, shared_dir):
    """The real R1-Distill tokenizer config on the tiny vocab: its role tokens, pad == eos, and its template."""
    config = json.loads((shared_dir / "tokenizers" / "deepseek-r1-distill-qwen" / "tokenizer_config.json").read_text())
    tok = copy.deepcopy(tiny_tokenizer)
    r1 = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]
    tok.add_special_tokens({"additional_special_tokens": r1})
    tok.bos_token = r1[0]
    tok.eos_token = tok.pad_token = config["eos_token"]["content"]
    tok.chat_template = config["chat_template"]
    student = student_with(tmp_path, tiny_qwen_dir, tok)
    data = write_jsonl(tmp_path / "r.jsonl", records(4))
    with pytest.raises(DistillError, match="lose their <think> reasoning in the trained tokens"):
        run(cfg(student, data, tmp_path / "o", chat_template="own", preflight_only=True))
    stats = run(cfg(student, data, tmp_path / "o2", preflight_only=True))  # auto: switched, passes
    assert stats["chat_template"] == "deepseek-r1" and "deletes the <think> reasoning" in stats["chat_template_note"]
    assert "set to the unused '<|endoftext|>'" in stats["pad_note"]
    text = (tmp_path / "o2" / "preflight.txt").read_text()
    # R1's '<think>\n' prefill is prompt (as at inference); the reasoning, </think>, answer and EOS are trained
    assert "<｜Assistant｜><think>\n[[Let me think." in text and "<｜end▁of▁sentence｜>]]" in text


# ---------------------------------------------------------------- training (tiny models on CPU)


def _params(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


VLLM_CHECK = """
import sys
if __name__ == "__main__":
    import distill
    from distill.engine.vllm_engine import make_llm
    from vllm import SamplingParams
    llm = make_llm(sys.argv[1], max_model_len=512, dtype="float32", seed=0)
    msgs = [[{"role": "user", "content": "What is 2 + 3?"}]]
    out = llm.chat(msgs, SamplingParams(max_tokens=8, temperature=0.0))
    print("VLLM_OK", len(out[0].outputs[0].token_ids))
"""


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen", "llama"])
def test_full_sft_trains_saves_and_reloads(tmp_path, arch, request):
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    data = write_jsonl(tmp_path / "r.jsonl", records(16))
    out = tmp_path / "out"
    stats = run(cfg(model_dir, data, out))
    losses = [x["loss"] for x in stats["loss"]]
    assert stats["steps"] == 6 and losses[-1] < losses[0]
    assert stats["tokens_seen"] > 0 and stats["wall_time_s"] > 0
    assert json.loads((out / "stats.json").read_text())["loss"] == stats["loss"]
    assert (out / "config.yaml").is_file() and (out / "preflight.txt").is_file()
    before, after = _params(model_dir), _params(out)
    assert any(not (before[k] == after[k]).all() for k in before)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert tok.chat_template and tok.pad_token != tok.eos_token
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]
    if arch == "qwen":  # the saved model and its template load in vLLM (own process: pytest may host an engine)
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
        proc = subprocess.run([sys.executable, "-c", VLLM_CHECK, str(out)], capture_output=True, text=True, env=env,
                              timeout=300)
        assert "VLLM_OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.slow
def test_lora_adapter_saves_loads_and_merges(tmp_path, tiny_qwen_dir):
    data = write_jsonl(tmp_path / "r.jsonl", records(8))
    out = tmp_path / "out"
    stats = run(cfg(tiny_qwen_dir, data, out, lora=True, lora_r=4, lora_alpha=8, max_steps=3))
    assert (out / "adapter_config.json").is_file() and stats["merged"] == str(out / "merged")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_qwen_dir))
    peft_model = PeftModel.from_pretrained(base, str(out))
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"))
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(peft_model(x).logits, merged(x).logits, atol=1e-4)
        assert not torch.allclose(AutoModelForCausalLM.from_pretrained(str(tiny_qwen_dir))(x).logits,
                                  merged(x).logits, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("packing", [True, False])
def test_first_step_loss_equals_plain_forward(tmp_path, tiny_qwen_dir, packing):
    """Our first logged loss == a plain transformers forward over the same samples with TRL's labels mask."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "r.jsonl", records(6))
    c = cfg(tiny_qwen_dir, data, tmp_path / "o", max_steps=1,
            trl={"per_device_train_batch_size": 16, "packing": packing})
    prep = prepare(c)
    stats = run(c)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_qwen_dir)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in prep["dataset"]:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
            logits = model(ids).logits[0, :-1]
            total += F.cross_entropy(logits, labels[1:], ignore_index=-100, reduction="sum").item()
            count += int((labels[1:] != -100).sum())
    assert stats["loss"][0]["step"] == 1
    assert abs(stats["loss"][0]["loss"] - total / count) < 1e-4


@pytest.mark.slow
def test_resume_from_last_checkpoint(tmp_path, tiny_qwen_dir):
    data = write_jsonl(tmp_path / "r.jsonl", records(8))
    out = tmp_path / "out"
    run(cfg(tiny_qwen_dir, data, out, max_steps=2, trl={"save_strategy": "steps", "save_steps": 1}))
    assert (out / "checkpoint-2").is_dir()
    stats = run(cfg(tiny_qwen_dir, data, out, max_steps=3, trl={"save_strategy": "steps", "save_steps": 1}))
    assert stats["resumed_from"].endswith("checkpoint-2") and stats["steps"] == 3
    assert [x["step"] for x in stats["loss"]][-1] == 3


@pytest.mark.slow
def test_a_half_written_checkpoint_is_skipped_and_a_changed_config_refused(tmp_path, tiny_qwen_dir, caplog):
    data = write_jsonl(tmp_path / "r.jsonl", records(8))
    out = tmp_path / "out"
    saving = {"save_strategy": "steps", "save_steps": 1}
    run(cfg(tiny_qwen_dir, data, out, max_steps=2, trl=saving))
    weights = out / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a save cut short (disk full, kill)
    stats = run(cfg(tiny_qwen_dir, data, out, max_steps=3, trl=saving))
    assert stats["resumed_from"].endswith("checkpoint-1") and stats["steps"] == 3
    assert "skipping" in caplog.text and "checkpoint-2" in caplog.text and "truncated" in caplog.text
    with pytest.raises(DistillError, match=r"another config \(learning_rate 0.001 → 0.002\).*--overwrite") as e:
        run(cfg(tiny_qwen_dir, data, out, max_steps=4, learning_rate=2e-3, trl=saving))
    assert "\n" not in str(e.value)
    changed = write_jsonl(tmp_path / "other.jsonl", records(8, seed=1))
    with pytest.raises(DistillError, match=r"data_sha256"):
        run(cfg(tiny_qwen_dir, changed, out, max_steps=4, trl=saving))
    stats = run(cfg(tiny_qwen_dir, changed, out, max_steps=2, learning_rate=2e-3, overwrite=True, trl=saving))
    assert stats["resumed_from"] is None and stats["steps"] == 2
