"""Thinking-budget control on the engine seam: cap the thought at B tokens (then force the answer), or extend short
thoughts with "Wait" (s1 budget forcing).

--thinking-budget B: where the engine has vLLM's own `thinking_token_budget`, generation runs once with it (vLLM
closes the thought after B tokens and the answer follows in the same request; through a server too). Otherwise —
and for --min-thinking-tokens — this module continues samples itself: a thought cut at B is closed with
"\\n</think>\\n\\n" and continued for the answer with the remaining max_tokens - B tokens; a thought that closed
before N tokens loses its `</think>` and everything after, gets "Wait", and is continued once. Continuations
re-tokenize the text so far (a token boundary may differ from the sampled ids) and need an engine that accepts raw
token prompts (Engine.supports_continuation).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from distill import prompts
from distill.data.io import atomic_write_json, read_records, write_jsonl
from distill.data.record import Record
from distill.engine import Engine, Prompt, Request, Sampling
from distill.errors import DistillError
from distill.tasks import prompt_template


def check(cfg: Any) -> bool:
    """Whether budget control is on; one-line errors for settings that cannot work."""
    budget, least = cfg.thinking_budget, cfg.min_thinking_tokens
    if budget is None and least is None:
        return False
    errors = []
    if least is not None and cfg.backend != "vllm":
        errors.append("--min-thinking-tokens needs --backend vllm (the engine continues each thought)")
    if budget is not None and not 1 <= budget < cfg.max_tokens:
        errors.append(f"--thinking-budget must be >= 1 and < --max-tokens {cfg.max_tokens} (the answer gets the rest), "
                      f"got {budget}")
    if least is not None and (least < 1 or (budget is not None and least > budget)):
        errors.append(f"--min-thinking-tokens must be >= 1 and <= --thinking-budget, got {least}")
    if errors:
        raise DistillError("; ".join(errors))
    return True


def native(cfg: Any, engine: Engine) -> bool:
    """The budget is enforced by the engine in the same request (vLLM's thinking_token_budget)."""
    return bool(cfg.thinking_budget) and not cfg.min_thinking_tokens and engine.supports_thinking_budget()


def force(cfg: Any, task_name: str, records: list[Record], engine: Engine,
          dataset: str | None = None) -> tuple[list[Record], dict[str, int]]:
    """Continue generated records under the budget settings (module doc). The result is saved to
    DIR/generations/<task>.budget-B-N.jsonl and reused when the same records come back (resume). `dataset`: what
    generated them (a bundled task's own prompt template is theirs)."""
    from distill.generate import problem_seed

    # Named by the settings, so a rerun with another budget never picks up these continuations.
    path = Path(cfg.out) / "generations" / f"{task_name}.budget-{cfg.thinking_budget}-{cfg.min_thinking_tokens}.jsonl"
    totals = path.with_suffix(".stats.json")
    if path.is_file() and totals.is_file():
        done = {r.id: r for r in read_records(path)}
        if set(done) == {r.id for r in records}:
            return [done[r.id] for r in records], json.loads(totals.read_text(encoding="utf-8"))
    if not engine.supports_continuation():
        raise DistillError(f"--min-thinking-tokens: the {engine.backend} backend cannot continue a sample; use "
                           f"--backend vllm")
    code = bool(getattr(cfg, "tests_key", None))  # a code data set: the code prompt, as generate used
    template = prompt_template(dataset or task_name, cfg.prompt_template, code=code)
    tok = engine.tokenizer
    rendered: dict[str, Prompt] = {}
    for r in records:
        if r.problem_id not in rendered:
            rendered[r.problem_id] = engine.render(r.problem, template, cfg.think_prefill)
    encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    state = [{"text": r.completion, "tokens": r.num_tokens, "finish": r.finish_reason, "waits": 0, "forced": False}
             for r in records]

    def body(i: int) -> str:  # what follows the prompt (the prefill is part of the prompt)
        text = state[i]["text"]
        prefilled = rendered[records[i].problem_id].prefilled
        return text[len(prompts.THINK_PREFILL):] if prefilled and text.startswith(prompts.THINK_PREFILL) else text

    def extend(todo: list[int], budget_of) -> None:
        requests = []
        for i in todo:
            ids = rendered[records[i].problem_id].ids + tuple(encode(body(i)))
            room = engine.max_model_len - len(ids) if engine.max_model_len else budget_of(state[i])
            seed = problem_seed(cfg.seed, records[i].problem_id) + 7919 * (records[i].sample_index + 1)
            requests.append(Request(key=i, prompt=Prompt(ids=ids), n=1, max_tokens=max(1, min(budget_of(state[i]),
                                                                                                 room)), seed=seed))
        for req, (sample,) in engine.generate(requests, Sampling(cfg.temperature, cfg.top_p)):
            st = state[req.key]
            st["text"] += sample.text
            st["tokens"] += sample.num_tokens
            st["finish"] = sample.finish_reason

    close = prompts.THINK_CLOSE
    if cfg.min_thinking_tokens:
        early = [i for i, st in enumerate(state) if st["finish"] == "stop" and close in st["text"]
                 and len(encode(body(i).split(close)[0])) < cfg.min_thinking_tokens]
        for i in early:
            st = state[i]
            st["text"] = st["text"][:st["text"].index(close)].rstrip() + "\n" + prompts.WAIT
            st["tokens"] = len(encode(body(i)))
            st["waits"] += 1
        extend(early, lambda st: (cfg.thinking_budget or cfg.max_tokens) - st["tokens"])
    if cfg.thinking_budget:
        cut = [i for i, st in enumerate(state) if st["finish"] == "length" and st["tokens"] < cfg.max_tokens]
        for i in cut:
            st = state[i]
            if close not in st["text"]:
                st["text"] += prompts.FORCE_ANSWER
                st["tokens"] += len(encode(prompts.FORCE_ANSWER))
                st["forced"] = True
        extend(cut, lambda st: cfg.max_tokens - st["tokens"])
    out = [dataclasses.replace(r, completion=st["text"], num_tokens=st["tokens"], finish_reason=st["finish"],
                               meta={**r.meta, "budget": {"forced": st["forced"], "waits": st["waits"]}})
           for r, st in zip(records, state)]
    summary = {"forced_answers": sum(st["forced"] for st in state), "wait_extensions": sum(st["waits"] for st in state)}
    write_jsonl(path, out)
    atomic_write_json(totals, summary)
    return out, summary
