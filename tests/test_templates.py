"""Chat templates: the real R1-Distill / Qwen2.5 / Qwen3 templates, rendered, and the switch to one that keeps <think>."""

from __future__ import annotations

import copy
import gzip
import json
import shutil

import pytest

from distill.errors import DistillError
from distill.templates import (CHATML, DEEPSEEK_R1, PROBE, choose_template, end_of_turn_token, inference_template,
                               injected_system, lost_reasoning, render)
from distill.train.sft import fix_pad

R1_TOKENS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"]


def real_template(shared_dir, name: str) -> dict:
    return json.loads((shared_dir / "tokenizers" / name / "tokenizer_config.json").read_text(encoding="utf-8"))


def r1_like(tiny_tokenizer, config: dict):
    """The tiny tokenizer dressed as DeepSeek-R1-Distill: its role tokens, bos, pad == eos, and its real template."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": R1_TOKENS})
    tok.bos_token, tok.eos_token = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
    tok.pad_token = "<｜end▁of▁sentence｜>"  # as shipped: pad == eos
    tok.chat_template = config["chat_template"]
    return tok


def test_tiny_chatml_keeps_reasoning(tiny_tokenizer):
    assert lost_reasoning(tiny_tokenizer) == []
    choice = choose_template(tiny_tokenizer, "auto")
    assert choice.name == "own" and choice.template == tiny_tokenizer.chat_template
    assert end_of_turn_token(tiny_tokenizer, choice.template) == "<|im_end|>"


def test_r1_distill_template_is_caught_and_replaced_by_its_own_format(tiny_tokenizer, shared_dir):
    config = real_template(shared_dir, "deepseek-r1-distill-qwen")
    tok = r1_like(tiny_tokenizer, config)
    assert lost_reasoning(tok) == [1, 2]  # `content.split('</think>')[-1]` in every assistant turn
    assert "distill probe answer one" in render(tok, PROBE)
    choice = choose_template(tok, "auto")
    assert choice.name == "deepseek-r1" and "deletes the <think> reasoning" in choice.note
    assert lost_reasoning(tok, choice.template) == []
    # same prompt (and '<think>\n' prefill) at inference as the original template: nothing changes for vLLM users
    prompt = PROBE[:1]
    assert render(tok, prompt, choice.template, add_generation_prompt=True) == render(tok, prompt,
                                                                                     add_generation_prompt=True)
    assert end_of_turn_token(tok, choice.template) == "<｜end▁of▁sentence｜>"
    note, added = fix_pad(tok, "<｜end▁of▁sentence｜>")
    assert tok.pad_token == "<|endoftext|>" and not added and "set to the unused" in note


def test_r1_template_on_a_vocab_without_r1_tokens_falls_back_to_chatml(tiny_tokenizer, shared_dir):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = real_template(shared_dir, "deepseek-r1-distill-qwen")["chat_template"]
    assert choose_template(tok, "auto").name == "chatml"


def test_own_stripping_template_is_kept_only_when_asked_and_flagged(tiny_tokenizer, shared_dir):
    tok = r1_like(tiny_tokenizer, real_template(shared_dir, "deepseek-r1-distill-qwen"))
    choice = choose_template(tok, "own")
    assert choice.name == "own" and "WARNING: deletes <think>" in choice.note


def test_qwen25_instruct_template_keeps_reasoning_but_injects_a_system_prompt(tiny_tokenizer, shared_dir):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = real_template(shared_dir, "qwen2.5-instruct")["chat_template"]
    assert lost_reasoning(tok) == []
    assert injected_system(tok).startswith("You are Qwen, created by Alibaba Cloud")
    # trained and prompted the same way: ChatML without the default system prompt (R1 protocol), token for token
    # what Qwen's template renders once a conversation's system turn is taken out
    choice = choose_template(tok, "auto")
    assert choice.name == "chatml" and "injects a default system prompt" in choice.note
    assert inference_template(tok).template == choice.template
    assert render(tok, PROBE[:1], choice.template, add_generation_prompt=True) == (
        "<|im_start|>user\ndistill probe question one<|im_end|>\n<|im_start|>assistant\n")
    assert end_of_turn_token(tok, choice.template) == "<|im_end|>"
    assert choose_template(tok, "own").name == "own"  # kept when asked


def test_qwen3_template_strips_past_turns_only_switches_to_chatml(shared_dir, tmp_path):
    from transformers import PreTrainedTokenizerFast

    config = real_template(shared_dir, "qwen3")
    with gzip.open(shared_dir / "tokenizers" / "qwen3" / "tokenizer.json.gz", "rb") as src, \
            (tmp_path / "tokenizer.json").open("wb") as dst:
        shutil.copyfileobj(src, dst)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), eos_token=config["eos_token"],
                                  pad_token=config["pad_token"])
    tok.chat_template = config["chat_template"]
    assert lost_reasoning(tok) == [1]  # the last turn keeps it, the earlier one loses it
    single = render(tok, PROBE[:2])
    assert "distill probe reasoning one" in single  # single-turn rendering is fine
    choice = choose_template(tok, "auto")
    assert choice.name == "chatml" and "earlier turns only" in choice.note
    # the single-turn training text is Qwen3's own, token for token
    assert render(tok, PROBE[:2], choice.template) == single
    assert render(tok, PROBE[:1], CHATML, add_generation_prompt=True) == render(tok, PROBE[:1],
                                                                               add_generation_prompt=True)


def test_template_file_and_bad_mode(tiny_tokenizer, tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text(DEEPSEEK_R1.replace("message['content'] + '<｜end", "message['content'].split('</think>')[-1] + '<｜end"))
    with pytest.raises(DistillError, match="deletes the <think> reasoning"):
        choose_template(tiny_tokenizer, str(path))
    with pytest.raises(DistillError, match="not a file nor one of"):
        choose_template(tiny_tokenizer, "chatmll")
