"""SFT data: filter outputs, records, published formats, messages or ShareGPT rows → TRL conversational
prompt/completion examples.

Samples (records, --problem-key/--completion-key columns, a filter output's kept/, a published format by
detection or --format) are read by the one reader (data/reader.py), so their ids are the ones filter and eval
give them, and turned into the generation conversation by prompts.sft_messages. Chat rows (`messages` or ShareGPT
`conversations` with no record columns) are trained verbatim, all earlier turns included.
Every example is {"id", "prompt": [user (and earlier) turns], "completion": [one assistant turn]}, the assistant
content in the R1 layout (prompts.normalize_completion). TRL then trains on the completion only.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from distill.data.io import iter_rows
from distill.data.reader import read_samples, resolve_input
from distill.errors import DistillError
from distill.prompts import normalize_completion, sft_messages

log = logging.getLogger(__name__)

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
          "model": "assistant", "bot": "assistant"}


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


def to_example(where: str, messages: list[dict[str, str]], example_id: str) -> dict[str, Any]:
    if messages[-1]["role"] != "assistant":
        raise DistillError(f"{where}: the last turn must be the assistant's (the trained completion), "
                           f"got '{messages[-1]['role']}'")
    if len(messages) < 2:
        raise DistillError(f"{where}: needs a user turn before the assistant turn")
    if not messages[-1]["content"].strip():
        raise DistillError(f"{where}: the completion is empty; drop the row or run `distill filter` first (it "
                           f"rejects empty completions as completion_empty)")
    completion = {"role": "assistant", "content": normalize_completion(messages[-1]["content"])}
    return {"id": example_id, "prompt": messages[:-1], "completion": [completion]}


def load_examples(data: str, split: str = "train", subset: str | None = None, revision: str | None = None,
                  format: str | None = None, problem_key: str = "problem", completion_key: str = "completion",
                  id_key: str | None = None, skip_invalid: bool = False) -> list[dict[str, Any]]:
    """Rows → prompt/completion examples (module doc). The form is decided by the first row's columns."""
    from tqdm.auto import tqdm

    path = resolve_input(data)
    first = next(iter_rows(path, split, subset, revision, skip_invalid, {}), None)
    if first is None:
        raise DistillError(f"{data}: no rows to train on; the dataset is empty")
    columns = set(map(str, first[1]))
    chat = None if format or {problem_key, completion_key} <= columns else (
        "messages" if "messages" in columns else "sharegpt" if "conversations" in columns else None)
    examples: list[dict[str, Any]] = []
    if chat is None:
        samples = read_samples(data, format=format, problem_key=problem_key, answer_key=None,
                               completion_key=completion_key, id_key=id_key, split=split, subset=subset,
                               revision=revision, skip_invalid=skip_invalid)
        for rec in tqdm(samples, desc="reading SFT data", unit=" rows", mininterval=2.0):
            examples.append(to_example(rec.meta.get("row", rec.id), sft_messages(rec.problem, rec.completion),
                                       rec.id))
    else:
        rows = iter_rows(path, split, subset, revision, skip_invalid, {})
        for i, (where, row) in enumerate(tqdm(rows, desc="reading SFT data", unit=" rows", mininterval=2.0)):
            column = "messages" if chat == "messages" else "conversations"
            examples.append(to_example(where, _messages(where, row.get(column), chat == "sharegpt"),
                                       str(row.get("id") or i)))
    if not examples:
        raise DistillError(f"{data}: no rows to train on; the dataset is empty")
    log.info("read %d SFT examples from %s (%s)", len(examples), path, format or chat or "records")
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
    ds = SFTTrainer._prepare_dataset(_TokenizeOnly(tokenizer), ds.remove_columns(["id"]), tokenizer, args, False,
                                     None, "train")
    return ds.select_columns(["input_ids", "labels"])
