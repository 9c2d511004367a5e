"""Bundled benchmark tasks: their names, YAML specs, and rows checked against the pinned sha256."""

from __future__ import annotations

import difflib
import hashlib
import json
from importlib import resources

import yaml

from distill.errors import DistillError

TASK_NAMES = ("aime24", "aime25", "math500", "amc23", "gsm8k", "minerva", "olympiadbench")

_REBUILD = "python -m distill.tasks.build"


def task_spec(name: str) -> dict:
    """The task's YAML as a dict, plus `path`: the absolute path of its JSONL."""
    if name not in TASK_NAMES:
        close = difflib.get_close_matches(name, TASK_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DistillError(f"unknown task {name!r}{hint}; available: {', '.join(TASK_NAMES)}")
    # importlib.resources rather than __file__, so an installed wheel finds its package data too.
    folder = resources.files(__name__)
    spec = yaml.safe_load(folder.joinpath(f"{name}.yaml").read_text(encoding="utf-8"))
    spec["path"] = str(folder.joinpath(spec["data"]))
    return spec


def load_task(name: str) -> list[dict]:
    """Rows `{id, problem, answer}` of a task, refusing data whose sha256 differs from its YAML."""
    spec = task_spec(name)
    with open(spec["path"], "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec["sha256"]:
        raise DistillError(
            f"{spec['path']}: sha256 {digest[:16]} does not match {name}.yaml ({spec['sha256'][:16]}); "
            f"the bundled data was edited: reinstall distill or re-run `{_REBUILD}`"
        )
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    if len(rows) != spec["rows"]:
        raise DistillError(
            f"{spec['path']}: {len(rows)} rows but {name}.yaml says {spec['rows']}; re-run `{_REBUILD}`"
        )
    return rows
