"""Bundled tasks: `<name>.jsonl` rows `{id, problem, answer}` plus `<name>.yaml` (version, rows, sha256, answer
type, verifier, an optional prompt template, provenance), found by globbing this folder. A new task is those two
files; every stage reads them through `TASKS` / `get_task`, and rows are refused when their sha256 differs from the
YAML's.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from distill.errors import DistillError
from distill.prompts import CODE_TEMPLATE, DEFAULT_TEMPLATE, check_template, load_template

REBUILD = "python -m distill.tasks.build"


@dataclass(frozen=True)
class Task:
    name: str
    version: int
    rows: int
    answer_type: str  # how the math verifier compares: integer | number | expression (code tasks: code)
    verifier: str  # the verifier that grades it (distill.verify.VERIFIERS)
    path: str  # the JSONL beside the YAML
    sha256: str
    yaml_sha256: str
    source: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    prompt_template: str | None = None  # the user turn for this task ({problem}); None: the R1 default

    def load(self) -> list[dict[str, Any]]:
        """The rows, refusing data whose sha256 or row count differs from the YAML."""
        with open(self.path, "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise DistillError(
                f"{self.path}: sha256 {digest[:16]} does not match {self.name}.yaml ({self.sha256[:16]}); "
                f"the bundled data was edited: reinstall distill or re-run `{REBUILD}`"
            )
        rows = [json.loads(line) for line in data.decode("utf-8").splitlines()]
        if len(rows) != self.rows:
            raise DistillError(f"{self.path}: {len(rows)} rows but {self.name}.yaml says {self.rows}; "
                               f"re-run `{REBUILD}`")
        return rows


def discover(folder: Any) -> dict[str, Task]:
    """Every `<name>.yaml` in `folder` (a path or an importlib.resources Traversable) → its Task, by name."""
    tasks = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        raw = entry.read_bytes()
        spec = yaml.safe_load(raw)
        template = spec.get("prompt_template")
        if template is not None:
            check_template(template, f"{entry.name}: prompt_template")
        tasks[spec["name"]] = Task(
            name=spec["name"], version=int(spec["version"]), rows=int(spec["rows"]), answer_type=spec["answer_type"],
            verifier=spec.get("verifier", "math"), path=str(folder.joinpath(spec["data"])), sha256=spec["sha256"],
            yaml_sha256=hashlib.sha256(raw).hexdigest(), source=spec.get("source") or {}, notes=spec.get("notes", ""),
            prompt_template=template)
    return tasks


# importlib.resources rather than __file__, so an installed wheel finds its package data too.
TASKS: dict[str, Task] = discover(resources.files(__name__))
MATH_TASKS = tuple(name for name, t in TASKS.items() if t.verifier == "math")


def get_task(name: str) -> Task:
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DistillError(f"unknown task {name!r}{hint}; available: {', '.join(TASKS)}")
    return TASKS[name]


def load_task(name: str) -> list[dict[str, Any]]:
    return get_task(name).load()


def prompt_template(dataset: str, override: str | None = None, code: bool = False) -> str:
    """The user-turn template of a run on `dataset`: the --prompt-template file when given, else a bundled task's
    own (code tasks ask for a code block, not a box), else the code prompt for a code dataset (`code`: its tests
    were read with --tests-key), else the R1 default."""
    if override:
        return load_template(override)
    task = TASKS.get(str(dataset))
    if task is not None and not Path(str(dataset)).exists():
        return task.prompt_template or DEFAULT_TEMPLATE
    return CODE_TEMPLATE if code else DEFAULT_TEMPLATE
