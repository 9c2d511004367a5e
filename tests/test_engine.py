"""The tiny model on the real vLLM engine (CPU build here), and the fixtures themselves."""

from __future__ import annotations

import pytest

from distill.tiny import SPECIAL_TOKENS


def test_tiny_tokenizer_has_chatml_and_think_tokens(tiny_tokenizer):
    for token in SPECIAL_TOKENS:
        ids = tiny_tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, f"{token} must be a single token"
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think>\nso 2\n</think>\n\n2"}],
        tokenize=False)
    assert text == "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n<think>\nso 2\n</think>\n\n2<|im_end|>\n"


@pytest.mark.parametrize("fixture", ["tiny_qwen_dir", "tiny_llama_dir"])
def test_tiny_models_load_with_from_pretrained(fixture, request):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(request.getfixturevalue(fixture)))
    assert model.config.model_type == ("qwen2" if "qwen" in fixture else "llama")
    assert model.config.hidden_size // model.config.num_attention_heads >= 32


@pytest.mark.slow
def test_tiny_vllm_generation_on_cpu(vllm_engine):
    from vllm import SamplingParams

    outs = vllm_engine.generate(["What is 1+1?", "Find x."], SamplingParams(n=2, max_tokens=16, temperature=1.0, seed=0))
    assert len(outs) == 2
    for out in outs:
        assert len(out.outputs) == 2
        for sample in out.outputs:
            assert 0 < len(sample.token_ids) <= 16
            assert sample.finish_reason in ("stop", "length")
