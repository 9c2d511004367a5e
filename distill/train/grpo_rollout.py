"""GRPO rollouts: which backend samples (TRL driving vLLM, or transformers' generate), the two adaptations that make
TRL's colocated vLLM run on vLLM's CPU build, and the per-step clock (generation / scoring / update).

On the CPU build TRL's colocate mode works once two things change, both here:
1. vLLM is started through `distill.engine.vllm_engine.make_llm` (the engine seam): it applies the CPU settings
   (eager mode, a fixed KV-cache size) that TRL's own `LLM(...)` call does not pass.
2. Weight sync. After loading, the CPU build repacks every linear layer's weight for its GEMM kernels (oneDNN / sgl)
   and removes the checkpoint-layout parameter, so TRL's per-tensor `model.load_weights([(name, tensor)])` fails
   ("'Parameter' object has no attribute 'weight_loader'"). vLLM's own in-place reload (`reload_weights` on the
   worker: restore the checkpoint layout, load, repack) takes TRL's full parameter stream instead; a tied LM head,
   which that reload skips (no tensor of its own), is repacked after it. tests/test_grpo.py checks the result: vLLM's
   log-probs of its samples match the trainer's after every step (TRL's sampling/sampling_logp_difference).
GPUs keep TRL's paths unchanged. Server mode (`trl vllm-serve`) is TRL's as is.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
import types
from collections.abc import Iterator
from typing import Any

from distill.errors import DistillError

log = logging.getLogger(__name__)


def choose_rollout(requested: str, cuda: bool) -> tuple[str, str]:
    """(backend, why): vllm when requested or installed (auto), else transformers."""
    has_vllm = importlib.util.find_spec("vllm") is not None
    if requested == "vllm" and not has_vllm:
        raise DistillError("--rollout vllm: vLLM is not installed; install distill[cpu] or distill[gpu], or pass "
                           "--rollout transformers")
    if requested == "transformers":
        return "transformers", "--rollout transformers: TRL's model.generate"
    if has_vllm:
        device = "GPU" if cuda else "CPU build: eager, in-place weight reload (distill/train/grpo_rollout.py)"
        return "vllm", f"TRL drives vLLM ({device})"
    return "transformers", "vLLM is not installed: TRL's model.generate"


@contextlib.contextmanager
def engine_seam(dtype: str) -> Iterator[None]:
    """While TRL builds its colocated vllm.LLM, build it through distill's engine factory instead, in the dtype the
    policy trains in (vLLM's CPU build would pick bfloat16 for a float32 model: samples off the trained policy)."""
    import trl.generation.vllm_generation as vg

    from distill.engine.vllm_engine import make_llm

    original = vg.LLM
    vg.LLM = lambda model, **kwargs: make_llm(model, **{"dtype": dtype, **kwargs})
    try:
        yield
    finally:
        vg.LLM = original


def _repack_lm_heads(worker: Any) -> None:
    """Runs in vLLM's worker: pack the LM head's weight again. A tied head has no checkpoint tensor of its own, so
    the reload skips it and its packed copy of the embedding would stay the one packed at load time."""
    for module in worker.model_runner.get_model().modules():
        if type(module).__name__ == "ParallelLMHead":
            module.quant_method.process_weights_after_loading(module)


def reload_sync(generation: Any) -> None:
    """Replace TRL's colocated weight sync with vLLM's in-place reload (module doc, 2.)."""

    def sync_weights(self) -> None:
        # Every reload warns that the rotary embedding and the tied head have no tensors to load: expected here.
        quiet = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": self._iter_named_params(),
                                                              "is_checkpoint_format": True})
        finally:
            quiet.setLevel(level)
        self.llm.collective_rpc(_repack_lm_heads)
        self.llm.reset_prefix_cache()

    generation.sync_weights = types.MethodType(sync_weights, generation)


class StepClock:
    """Seconds per optimizer step spent generating (TRL's `_generate`: sampling + decoding), scoring (the rest of
    `_generate_and_score_completions`: rewards, old/ref log-probs) and updating (the rest of the step), and the
    completion tokens generated. Wraps the two methods on the trainer instance; TRL's code is unchanged."""

    def __init__(self, trainer: Any):
        self.generation_s = self.scoring_s = 0.0
        self.tokens = 0
        generate, score = trainer._generate, trainer._generate_and_score_completions

        def timed_generate(*args, **kwargs):
            t = time.perf_counter()
            out = generate(*args, **kwargs)
            self.generation_s += time.perf_counter() - t
            self.tokens += sum(len(ids) for ids in out[1])  # (prompt_ids, completion_ids, ...)
            return out

        def timed_score(*args, **kwargs):
            t, g = time.perf_counter(), self.generation_s
            out = score(*args, **kwargs)
            self.scoring_s += (time.perf_counter() - t) - (self.generation_s - g)
            return out

        trainer._generate, trainer._generate_and_score_completions = timed_generate, timed_score

    def take(self) -> dict[str, float]:
        """The counters since the last take, then reset."""
        out = {"generation_s": self.generation_s, "scoring_s": self.scoring_s, "completion_tokens": self.tokens}
        self.generation_s = self.scoring_s = 0.0
        self.tokens = 0
        return out
