"""SFT data: filter outputs, records, messages or ShareGPT rows → TRL conversational prompt/completion examples.

Every example is {"prompt": [user (and earlier) turns], "completion": [one assistant turn]}, the assistant content
normalised to "<think>\\n…\\n</think>\\n\\n<answer>". TRL then trains on the completion only (completion_only_loss).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from distill.data.io import iter_rows
from distill.data.record import Record
from distill.errors import DistillError
from distill.prompts import THINK_CLOSE, THINK_OPEN, sft_messages

log = logging.getLogger(__name__)

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
          "model": "assistant", "bot": "assistant"}


def data_source(data: str) -> str:
    """A filter output dir trains on its kept/ rows only (rejected/ sits beside them)."""
    kept = Path(data) / "kept"
    return str(kept) if kept.is_dir() else data


def format_completion(text: str) -> str:
    """'<think>\\n{reasoning}\\n</think>\\n\\n{answer}': one layout for every source, the one R1 emits. A completion
    without </think> is returned as is (the preflight counts it)."""
    if THINK_CLOSE not in text:
        return text
    head, answer = text.split(THINK_CLOSE, 1)
    reasoning = head.split(THINK_OPEN, 1)[1] if THINK_OPEN in head else head  # '<think>\n' prefill not stored
    return f"{THINK_OPEN}\n{reasoning.strip(chr(10))}\n{THINK_CLOSE}\n\n{answer.lstrip()}"


def _messages(where: str, value: Any, sharegpt: bool) -> list[dict[str, str]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DistillError(f"{where}: messages column is not valid JSON ({e.msg}); store a list of turns") from None
    if not isinstance(value, list) or not value:
        raise DistillError(f"{where}: expected a non-empty list of turns, got {type(value).__name__}")
    out = []
    for turn in value:
        if not isinstance(turn, dict):
            raise DistillError(f"{where}: each turn must be an object, got {type(turn).__name__}")
        role = turn.get("from") if sharegpt else turn.get("role")
        content = turn.get("value") if sharegpt else turn.get("content")
        if role not in _ROLES or not isinstance(content, str):
            keys = "{from, value}" if sharegpt else "{role, content}"
            raise DistillError(f"{where}: a turn needs {keys} with role in {', '.join(_ROLES)}; got {turn!r:.80}")
        out.append({"role": _ROLES[role], "content": content})
    return out


def to_example(where: str, messages: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    if messages[-1]["role"] != "assistant":
        raise DistillError(f"{where}: the last turn must be the assistant's (the trained completion), "
                           f"got '{messages[-1]['role']}'")
    if len(messages) < 2:
        raise DistillError(f"{where}: needs a user turn before the assistant turn")
    completion = {"role": "assistant", "content": format_completion(messages[-1]["content"])}
    return {"prompt": messages[:-1], "completion": [completion]}


def load_examples(data: str, split: str = "train", subset: str | None = None,
                  revision: str | None = None) -> list[dict[str, Any]]:
    """Rows → prompt/completion examples. The form is decided by the first row's columns: `messages`,
    ShareGPT `conversations`, or record fields (`problem` + `completion`, messages built by prompts.sft_messages)."""
    from tqdm.auto import tqdm

    examples: list[dict[str, Any]] = []
    form = None
    for where, row in tqdm(iter_rows(data_source(data), split, subset, revision), desc="reading SFT data",
                           unit=" rows", mininterval=2.0):
        if form is None:
            form = ("messages" if "messages" in row else "sharegpt" if "conversations" in row
                    else "records" if {"problem", "completion"} <= set(row) else None)
            if form is None:
                raise DistillError(f"{where}: no 'messages', 'conversations' or 'problem'+'completion' columns "
                                   f"(columns: {', '.join(map(str, row))}); pass a filter output, records, or a "
                                   f"messages/ShareGPT dataset")
        if form == "records":
            rec = Record.from_dict(row, where)
            messages = sft_messages(rec.problem, rec.completion)
        else:
            messages = _messages(where, row.get(form if form == "messages" else "conversations"), form == "sharegpt")
        examples.append(to_example(where, messages))
    if not examples:
        raise DistillError(f"{data}: no rows to train on; the dataset is empty")
    log.info("read %d SFT examples from %s (%s)", len(examples), data_source(data), form)
    return examples


class _TokenizeOnly:
    """What TRL's dataset preparation reads from the trainer, nothing else."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.completion_only_loss = True
        self.chat_template = None


def tokenize(examples: list[dict[str, Any]], tokenizer, num_proc: int | None = None):
    """TRL's own tokenization (chat template, prompt/completion split, labels with -100 on the prompt) without
    truncation or packing, so we can measure, drop over-long samples and check masks before training. The trainer
    receives the result pre-tokenized and packs it.

    This calls SFTTrainer._prepare_dataset (private) deliberately: hand-written loss masks are how prompts end up
    trained; TRL's are the ones training uses.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir="unused", max_length=None, packing=False, bf16=False, report_to="none",
                     dataset_num_proc=num_proc, completion_only_loss=True)
    ds = Dataset.from_list(examples)
    ds = SFTTrainer._prepare_dataset(_TokenizeOnly(tokenizer), ds, tokenizer, args, False, None, "train")
    return ds.select_columns(["input_ids", "labels"])
