"""The only code that imports vllm / openai: the offline vLLM engine and OpenAI-compatible teachers."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

# vLLM's CPU build sizes its KV cache from NUMA memory, which VMs under-report; a fixed size starts reliably.
CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_HOST_IP": "127.0.0.1"}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def apply_cpu_defaults() -> None:
    """Environment vLLM needs on a CPU machine; values the user already set win."""
    for key, value in CPU_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def make_llm(model: str, **engine_kwargs: Any):
    """An in-process vllm.LLM; on CPU, with the settings that make the CPU build start (eager, fp32/bf16)."""
    import distill  # noqa: F401  (blocks unloadable CUDA extras before vllm imports transformers)

    on_gpu = cuda_available()
    if not on_gpu:
        apply_cpu_defaults()
        engine_kwargs.setdefault("enforce_eager", True)
    from vllm import LLM

    log.info("starting vLLM on %s (%s)", model, "GPU" if on_gpu else "CPU")
    return LLM(model=model, **engine_kwargs)
