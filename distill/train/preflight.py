"""Preflight: the silent SFT failures, caught before the first step (truncation, stripped <think>, EOS never trained,
pad == eos, prompts trained, max_length beyond the student's context). Each failure is one DistillError line."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from distill.errors import DistillError
from distill.prompts import THINK_CLOSE, THINK_OPEN

log = logging.getLogger(__name__)

SHOW_CHARS = 1500  # of the rendered sample, head and tail each
THINK_CHECK_SAMPLES = 2000


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def ok(self, text: str) -> None:
        self.lines.append(f"  ok    {text}")

    def note(self, text: str) -> None:
        self.lines.append(f"  note  {text}")

    def fail(self, text: str) -> None:
        self.lines.append(f"  FAIL  {text}")
        self.failures.append(text)

    def text(self) -> str:
        return "\n".join(["preflight:", *self.lines])

    def raise_if_failed(self) -> None:
        if self.failures:
            raise DistillError(f"preflight failed: {self.failures[0]}"
                               + (f" (+{len(self.failures) - 1} more, see preflight.txt)" if len(self.failures) > 1 else ""))


def mark_trained(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """The sample as text with every trained span (label != -100) inside [[…]]."""
    parts: list[str] = []
    run: list[int] = []
    trained = None
    for tok, lab in zip(input_ids, labels, strict=True):
        t = lab != -100
        if trained is not None and t != trained:
            parts.append(_span(tokenizer, run, trained))
            run = []
        trained = t
        run.append(tok)
    if run:
        parts.append(_span(tokenizer, run, bool(trained)))
    text = "".join(parts)
    if len(text) > 2 * SHOW_CHARS:
        text = f"{text[:SHOW_CHARS]}\n… [{len(text) - 2 * SHOW_CHARS} chars not shown] …\n{text[-SHOW_CHARS:]}"
    return text


def _span(tokenizer, ids: list[int], trained: bool) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return f"[[{text}]]" if trained else text


def last_trained_token(tokenizer, labels: list[int]) -> int | None:
    """The last trained token, skipping trailing whitespace the template writes after the end-of-turn token
    (ChatML's '\\n' after <|im_end|>)."""
    for lab in reversed(labels):
        if lab == -100:
            continue
        if tokenizer.decode([lab], skip_special_tokens=False).strip():
            return lab
    return None


def check(tokenizer, dataset, examples: list[dict[str, Any]], *, max_length: int, context_length: int | None,
          end_of_turn: str, template_note: str, pad_note: str, max_dropped_share: float, packing_note: str) -> Report:
    """Checks the tokenized dataset (TRL's input_ids/labels, before dropping) and returns the report with the
    indices to keep in report.stats["keep"]. Fails are collected; call report.raise_if_failed()."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    rep = Report()
    n = len(dataset)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    labels_all = dataset["labels"]

    rep.note(f"chat template: {template_note}")
    rep.note(f"packing: {packing_note}")

    # 1. the student's context
    if context_length is not None and max_length > context_length:
        factor = -(-max_length // context_length)
        rep.fail(f"max_length {max_length} > the student's context (max_position_embeddings {context_length}); "
                 f"pass --max-length {context_length}, or extend the context with rope scaling in the student's "
                 f"config.json: \"rope_scaling\": {{\"rope_type\": \"yarn\", \"factor\": {factor}.0, "
                 f"\"original_max_position_embeddings\": {context_length}}}")
    else:
        rep.ok(f"max_length {max_length} <= student context {context_length}")

    # 2. over-long samples: dropped, never truncated (a truncated trace teaches the model not to finish)
    keep = [i for i, L in enumerate(lengths) if L <= max_length]
    dropped = n - len(keep)
    share = dropped / n if n else 0.0
    longest = max(lengths) if lengths else 0
    msg = f"{dropped} of {n} samples ({share:.1%}) longer than max_length {max_length} are dropped (longest {longest})"
    if not keep:
        rep.fail(f"all {n} samples are longer than max_length {max_length}; raise --max-length")
    elif share > max_dropped_share:
        rep.fail(f"{msg}; more than max_dropped_share {max_dropped_share:.0%}: raise --max-length or filter by "
                 f"length first")
    else:
        (rep.note if dropped else rep.ok)(msg)

    # 3. <think> reaches the trained tokens (a template may delete it; the data may lack it)
    stripped, no_think = [], []
    checked = keep[:THINK_CHECK_SAMPLES]  # decoding is the slow part; a stripping template hits every sample
    for i in checked:
        source = examples[i]["completion"][-1]["content"]
        target = tokenizer.decode([t for t in labels_all[i] if t != -100], skip_special_tokens=False)
        if THINK_CLOSE in source and (THINK_CLOSE not in target or _reasoning(source) not in target):
            stripped.append(i)
        elif THINK_CLOSE not in source:
            no_think.append(i)
    if stripped:
        rep.fail(f"{len(stripped)} samples lose their <think> reasoning in the trained tokens (e.g. sample "
                 f"{stripped[0]}): the chat template deletes it; use --chat-template auto")
    elif no_think:
        rep.note(f"{len(no_think)} of {len(checked)} checked samples have no </think> in their completion "
                 f"(trained as is)")
    else:
        rep.ok(f"<think>…</think> present in the targets of all {len(checked)} checked samples")

    # 4. prompt masked
    prompt_trained = [i for i in keep if labels_all[i] and labels_all[i][0] != -100]
    if prompt_trained:
        rep.fail(f"{len(prompt_trained)} samples have trained prompt tokens (e.g. sample {prompt_trained[0]}); "
                 f"the prompt must be masked")
    else:
        rep.ok("prompt tokens masked (-100) in every sample")

    # 5. pad != eos, and the end-of-turn token trained as TRL's collator batches it (padding included)
    eos_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == eos_id:
        rep.fail(f"pad token {tokenizer.pad_token!r} is the end-of-turn token {end_of_turn!r}; set a distinct pad")
    else:
        rep.ok(f"pad {tokenizer.pad_token!r} != end-of-turn {end_of_turn!r}" + (f" ({pad_note})" if pad_note else ""))
    if keep:
        idx = sorted(keep, key=lambda i: lengths[i])[:1] + sorted(keep, key=lambda i: -lengths[i])[:1]
        batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(
            [{"input_ids": dataset[i]["input_ids"], "labels": dataset[i]["labels"]} for i in idx])
        bad = [i for row, i in zip(batch["labels"].tolist(), idx, strict=True)
               if last_trained_token(tokenizer, row) != eos_id]
        untrained_eos = sum(1 for i in keep if last_trained_token(tokenizer, labels_all[i]) != eos_id)
        if bad or untrained_eos:
            rep.fail(f"{untrained_eos or len(bad)} samples do not end their target with a trained end-of-turn token "
                     f"{end_of_turn!r}; the model would never learn to stop")
        else:
            rep.ok(f"end-of-turn {end_of_turn!r} is the last trained token of every sample (label != -100)")

    if keep:
        i = keep[0]
        rep.lines.append(f"sample {i} ({lengths[i]} tokens; trained span in [[…]]):")
        rep.lines.append(mark_trained(tokenizer, dataset[i]["input_ids"], dataset[i]["labels"]))
    rep.stats.update(samples=n, kept=len(keep), dropped_over_max_length=dropped, longest=longest,
                     no_think=len(no_think), keep=keep)
    return rep


def _reasoning(content: str) -> str:
    head = content.split(THINK_CLOSE, 1)[0]
    return head.split(THINK_OPEN, 1)[-1].strip()[:200]
