"""The in-process vLLM engine (the CPU build on CPU machines, upstream vLLM on GPUs)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from distill import prompts
from distill.engine import Engine, Identity, Prompt, Request, Sample, Sampling
from distill.errors import DistillError
from distill.templates import inference_template

log = logging.getLogger(__name__)

# vLLM's CPU build sizes its KV cache from NUMA memory, which VMs under-report; a fixed size starts reliably.
CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_HOST_IP": "127.0.0.1"}
# Requests handed to vLLM at once: enough to keep its scheduler full, bounded so a million prompts are not all
# tokenized into the engine's queue (memory).
VLLM_WINDOW = 4096


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def apply_cpu_defaults(workers: int = 1) -> None:
    """Environment vLLM needs on a CPU machine; values the user already set win."""
    for key, value in CPU_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if workers > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        # vLLM's "auto" binding puts each TP/PP worker on its own NUMA node and refuses more workers than nodes
        # (a VM has one): split this process's cores between the workers instead.
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind(allowed_cores(), workers)


def allowed_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def cpu_bind(cores: list[int], workers: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for `workers` engine workers on `cores`: disjoint core lists joined by '|'
    ('nobind' when there are fewer cores than workers)."""
    if len(cores) < workers:
        return "nobind"
    share = len(cores) // workers
    return "|".join(",".join(map(str, cores[w * share:(w + 1) * share])) for w in range(workers))


def vllm_kwargs(opts: Any) -> dict[str, Any]:
    """Engine options (config.EngineMixin) → vllm.LLM arguments."""
    kw: dict[str, Any] = dict(tensor_parallel_size=opts.tensor_parallel_size,
                              pipeline_parallel_size=opts.pipeline_parallel_size,
                              gpu_memory_utilization=opts.gpu_memory_utilization, dtype=opts.dtype, seed=opts.seed)
    if opts.max_model_len:
        kw["max_model_len"] = opts.max_model_len
    if opts.enforce_eager:
        kw["enforce_eager"] = True
    if opts.distributed_executor_backend:
        kw["distributed_executor_backend"] = opts.distributed_executor_backend
    if getattr(opts, "model_revision", None):
        kw["revision"] = opts.model_revision
    if getattr(opts, "thinking_budget", None):
        # vLLM ends the thought itself after the budget: it needs to know the thought's markers.
        from vllm.config.reasoning import ReasoningConfig

        kw["reasoning_parser"] = "deepseek_r1"
        kw["reasoning_config"] = ReasoningConfig(reasoning_parser="deepseek_r1", reasoning_start_str=prompts.THINK_OPEN,
                                                 reasoning_end_str=prompts.FORCE_ANSWER)
    return kw


def make_llm(model: str, **engine_kwargs: Any):
    """An in-process vllm.LLM; on CPU, with the settings that make the CPU build start (eager)."""
    import distill  # noqa: F401  (blocks unloadable CUDA extras before vllm imports transformers)

    on_gpu = cuda_available()
    if not on_gpu:
        pipeline = engine_kwargs.get("pipeline_parallel_size", 1)
        apply_cpu_defaults(engine_kwargs.get("tensor_parallel_size", 1) * pipeline)
        if pipeline > 1 and engine_kwargs.get("enforce_eager"):
            raise DistillError("--enforce-eager with --pipeline-parallel-size > 1 crashes vLLM's CPU build (the later "
                               "stages get no intermediate tensors); drop --enforce-eager")
        # Eager starts fastest; but the later pipeline stages need the compiled warm-up (tests/test_scale.py).
        engine_kwargs.setdefault("enforce_eager", pipeline == 1)
    from vllm import LLM

    log.info("starting vLLM on %s (%s)", model, "GPU" if on_gpu else "CPU")
    return LLM(model=model, **engine_kwargs)


class VLLMEngine(Engine):
    """vllm.LLM in this process. Requests are fed continuously (`LLM.enqueue` + `LLMEngine.step`, both public) in a
    window of VLLM_WINDOW, and each request is yielded the step it finishes."""

    def __init__(self, model: str, llm=None, option: str = "--model", **engine_kwargs: Any):
        if llm is None:
            try:
                llm = make_llm(model, **engine_kwargs)
            except (OSError, ValueError) as e:
                raise DistillError(f"{option} {model}: vLLM could not load it ({type(e).__name__}: "
                                   f"{' '.join(str(e).split())[:300]})") from None
        self.llm = llm
        config = llm.llm_engine.model_config
        super().__init__(model=model, backend="vllm", tokenizer=llm.get_tokenizer(),
                         max_model_len=int(config.max_model_len),
                         info={"dtype": str(config.dtype).removeprefix("torch."),
                               "tensor_parallel_size": engine_kwargs.get("tensor_parallel_size", 1),
                               "pipeline_parallel_size": engine_kwargs.get("pipeline_parallel_size", 1),
                               "device": "cuda" if cuda_available() else "cpu",
                               "deterministic": os.environ.get("VLLM_BATCH_INVARIANT") == "1"})
        self._seeds = cuda_available()
        self._thinking = "reasoning_config" in engine_kwargs
        choice = inference_template(self.tokenizer)  # the model's own, unless it injects a system prompt
        self._template = choice.template
        if choice.name != "own":
            self.chat_template_note = choice.note
            log.warning("%s: %s", model, choice.note)

    def render(self, problem: str, template: str, think_prefill: str) -> Prompt:
        text, prefilled = prompts.generation_prompt(self.tokenizer, problem, template, think_prefill, self._template)
        # The template already holds BOS where the model has one.
        return Prompt(ids=tuple(self.tokenizer.encode(text, add_special_tokens=False)), prefilled=prefilled)

    def chat_template(self) -> str | None:
        return self._template

    def identity(self) -> Identity:
        from distill.models import fingerprint

        return Identity(fingerprint(self.model), self.chat_template(), self.chat_template_note)

    def supports_continuation(self) -> bool:
        return True

    def supports_thinking_budget(self) -> bool:
        return self._thinking

    def generate(self, requests: Iterable[Request], sampling: Sampling) -> Iterator[tuple[Request, list[Sample]]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if sampling.thinking_budget and not self._thinking:
            raise DistillError("a thinking budget needs an engine started with one (pass --thinking-budget)")
        todo = iter(requests)
        inflight: dict[str, Request] = {}
        core = self.llm.llm_engine
        try:
            while True:
                batch = []
                while len(inflight) + len(batch) < VLLM_WINDOW and (req := next(todo, None)) is not None:
                    batch.append(req)
                if batch:
                    params = [SamplingParams(
                        n=r.n, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=r.max_tokens,
                        # vllm-cpu crashes ("CPU Generator does not use offset") on a seeded request whose prefill
                        # is split across steps: on CPU the engine-wide seed is all we pass.
                        seed=r.seed if self._seeds else None,
                        **({"thinking_token_budget": sampling.thinking_budget} if sampling.thinking_budget else {}))
                        for r in batch]
                    ids = self.llm.enqueue([TokensPrompt(prompt_token_ids=list(r.prompt.ids)) for r in batch],
                                           params, use_tqdm=False)
                    # enqueue returns the engine's internal ids ("<n>-<8 random chars>"); outputs and abort_request
                    # use the external ones ("<n>"): tests/test_engine.py fails loudly if that changes.
                    inflight.update((rid.rsplit("-", 1)[0], r) for rid, r in zip(ids, batch))
                if not inflight:
                    return
                for out in core.step():
                    if out.finished and out.request_id in inflight:
                        req = inflight.pop(out.request_id)
                        yield req, [Sample(o.text, o.finish_reason or "", len(o.token_ids),
                                           len(out.prompt_token_ids or []))
                                    for o in sorted(out.outputs, key=lambda o: o.index)]
                if inflight and not core.has_unfinished_requests():
                    raise RuntimeError(f"vLLM finished {len(inflight)} requests under ids distill did not see (its "
                                       f"request-id format changed); pin the vllm version in pyproject.toml")
        finally:
            if inflight:  # the caller stopped early (an error, a kill): leave the shared engine empty
                core.abort_request(list(inflight))
                while core.has_unfinished_requests():
                    core.step()

    def close(self) -> None:
        self.llm = None
