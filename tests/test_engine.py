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

    outs = vllm_engine.llm.generate(["What is 1+1?", "Find x."],
                                    SamplingParams(n=2, max_tokens=16, temperature=1.0, seed=0))
    assert len(outs) == 2
    for out in outs:
        assert len(out.outputs) == 2
        for sample in out.outputs:
            assert 0 < len(sample.token_ids) <= 16
            assert sample.finish_reason in ("stop", "length")


@pytest.mark.slow
def test_engine_streams_each_request_when_it_finishes(vllm_engine):
    """The engine seam feeds vLLM continuously (LLM.enqueue + LLMEngine.step, public API: this test fails loudly if
    an upgrade changes them) and yields a request the step it finishes: short ones before long ones."""
    from distill.engine import Request, Sampling
    from distill.prompts import DEFAULT_TEMPLATE

    prompt = vllm_engine.render("What is 1+1?", DEFAULT_TEMPLATE, "auto")
    assert prompt.prefilled and vllm_engine.tokenizer.decode(list(prompt.ids)).endswith("assistant\n<think>\n")
    requests = [Request(key=k, prompt=prompt, n=2, max_tokens=m) for k, m in (("long", 48), ("short", 2))]
    got = list(vllm_engine.generate(requests, Sampling(temperature=1.0, top_p=1.0)))
    assert [req.key for req, _ in got][-1] == "long" or all(len(s) == 2 for _, s in got)
    assert {req.key for req, _ in got} == {"long", "short"}
    for req, samples in got:
        assert len(samples) == 2 and all(0 < s.num_tokens <= req.max_tokens for s in samples)
        assert all(s.prompt_tokens == len(prompt.ids) for s in samples)


@pytest.mark.slow
def test_engine_left_empty_when_the_consumer_stops_early(vllm_engine):
    from distill.engine import Request, Sampling
    from distill.prompts import DEFAULT_TEMPLATE

    prompt = vllm_engine.render("Find x.", DEFAULT_TEMPLATE, "auto")
    stream = vllm_engine.generate([Request(key=i, prompt=prompt, n=1, max_tokens=4 + 30 * (i % 2)) for i in range(6)],
                                  Sampling(temperature=1.0, top_p=1.0))
    next(stream)
    stream.close()  # e.g. the chunk writer failed
    assert not vllm_engine.llm.llm_engine.has_unfinished_requests()


def test_deterministic_mode_is_refused_where_vllm_has_no_kernels_for_it(tiny_qwen_dir):
    from distill.config import GenerateConfig, build_config
    from distill.engine import make_engine
    from distill.errors import DistillError
    from distill.engine.vllm_engine import cuda_available

    cfg = build_config(GenerateConfig, {"teacher": str(tiny_qwen_dir), "dataset": "d", "out": "o",
                                        "deterministic": True})
    if not cuda_available():
        with pytest.raises(DistillError, match="--deterministic needs a CUDA GPU"):
            make_engine(str(tiny_qwen_dir), cfg)
    openai = build_config(GenerateConfig, {"teacher": "m", "dataset": "d", "out": "o", "deterministic": True,
                                           "backend": "openai", "base_url": "http://127.0.0.1:9/v1"})
    with pytest.raises(DistillError, match="start your server with VLLM_BATCH_INVARIANT=1"):
        make_engine("m", openai)
