"""Tiny tokenizers and models built offline from config: the test fixtures and the demo's toy teacher/student."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from distill.prompts import THINK_CLOSE, THINK_OPEN

log = logging.getLogger(__name__)

CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# As in Qwen3's and DeepSeek-R1's tokenizers, <think>/</think> are added tokens but not "special": decoding with
# skip_special_tokens (vLLM's default) keeps them in the text.
THINK_TOKENS = [THINK_OPEN, THINK_CLOSE]
SPECIAL_TOKENS = CONTROL_TOKENS + THINK_TOKENS

# ChatML, as Qwen2.5 uses it, keeping <think> in assistant turns; an optional system turn.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

DEFAULT_CORPUS = [
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "What is 12 + 34? Let me think. 12 + 34 = 46. The answer is \\boxed{46}.",
    "Find the sum of all integers x such that x^2 < 10. So x ranges from -3 to 3, and the sum is 0.",
    "Let $f(x) = 2x + 3$. Then $f(5) = 13$. \\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6}",
    "Wait, let me check again. First, second, third: therefore the answer is 0123456789.",
]


def build_tokenizer(out_dir: str | Path, corpus: Iterable[str] | None = None, vocab_size: int = 384,
                    chat_template: str = CHATML_TEMPLATE, individual_digits: bool = False):
    """Train a byte-level BPE tokenizer with ChatML and <think> tokens; save it with save_pretrained.

    individual_digits splits numbers into one token per digit, as Qwen2's tokenizer does; arithmetic needs it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if individual_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CONTROL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(corpus or DEFAULT_CORPUS), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",  # distinct from eos, so the end-of-turn token is trained, not masked as padding
        additional_special_tokens=["<|im_start|>"],
        model_max_length=4096,
    )
    fast.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast.chat_template = chat_template
    fast.save_pretrained(str(out_dir))
    return fast


def build_model(out_dir: str | Path, tokenizer, arch: str = "qwen2", hidden_size: int = 64, layers: int = 2,
                heads: int = 2, max_position_embeddings: int = 4096, seed: int = 0):
    """A randomly initialised Qwen2 or Llama small enough for CPU tests. head_dim = hidden/heads must be ≥ 32
    (vLLM's CPU attention needs it)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    if hidden_size // heads < 32:
        raise ValueError("head_dim must be >= 32 for vLLM's CPU attention")
    common = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    config = Qwen2Config(**common) if arch == "qwen2" else LlamaConfig(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return model
