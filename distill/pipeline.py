"""`distill run RECIPE`: the stages of a pipeline recipe in order, each one the stage's own `run(cfg)`.

A pipeline recipe is one YAML file: its first line is the command that runs it, then `stages:`, a list of mappings
`{name: <unique name>, stage: generate|filter|sft|eval|grpo, <that stage's options>}`. Every stage's options are
checked before anything runs (all errors at once, each prefixed with its stage's name), so a typo in the last stage
does not surface hours in. Paths link stages: a stage reads what an earlier one wrote to its `out`.

Skipping and resuming. A stage that returns writes a marker beside its output folder (`.<out name>.done.json`, never
inside it: filter owns its folder whole) holding its resolved config and the sha256 of the stats.json it wrote. A
stage is complete when its marker's config equals the current one (minus overwrite/resume) and its stats.json is
still the one the marker saw. Complete stages are skipped until the first one that is not: it and every stage after
it run (their inputs may have changed): an interrupted stage resumes by its own rules (generate/eval: finished chunks;
sft/grpo: the newest complete checkpoint), a complete one after it starts over (overwrite). `--force NAME` reruns a
stage from scratch and the stages after it; `--dry-run` prints the plan.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.config import STAGE_CONFIGS, RunConfig, build_config, config_dict, read_recipe
from distill.data.io import atomic_write_json
from distill.errors import DistillError

log = logging.getLogger(__name__)

# The stages a pipeline may hold (each writes an output folder with a stats.json), and where their run() lives.
STAGE_MODULES = {"generate": "distill.generate", "filter": "distill.filters.run", "sft": "distill.train.sft",
                 "eval": "distill.eval.run", "grpo": "distill.train.grpo"}
IGNORED = ("overwrite", "resume")  # options that do not change a stage's output


@dataclass
class Stage:
    name: str
    stage: str
    cfg: Any

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def marker(self) -> Path:
        return self.out.parent / f".{self.out.name}.done.json"


def load_pipeline(path: str | Path) -> list[Stage]:
    """The stages of a pipeline recipe, every stage's config built and checked; all problems in one error."""
    data = read_recipe(path)
    extra = sorted(set(data) - {"stages"})
    if extra:
        raise DistillError(f"pipeline {path}: unknown top-level key(s) {', '.join(extra)}; a pipeline holds `stages:`")
    raw = data.get("stages")
    if not isinstance(raw, list) or not raw:
        raise DistillError(f"pipeline {path}: `stages:` must be a non-empty list of {{name, stage, options...}}")
    stages, errors, names = [], [], set()
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            errors.append(f"stage {i + 1}: expected a mapping, got {type(entry).__name__}")
            continue
        options = dict(entry)
        name, stage = str(options.pop("name", f"#{i + 1}")), options.pop("stage", None)
        if name in names:
            errors.append(f"stage {name}: the name is used twice; give every stage its own name")
        names.add(name)
        if stage not in STAGE_MODULES:
            hint = difflib.get_close_matches(str(stage), STAGE_MODULES, n=1)
            errors.append(f"stage {name}: `stage: {stage}` is not one of {', '.join(STAGE_MODULES)}"
                          + (f" (did you mean '{hint[0]}'?)" if hint else ""))
            continue
        try:
            stages.append(Stage(name, stage, build_config(STAGE_CONFIGS[stage], options, origin=f"stage {name}")))
        except DistillError as e:
            errors += [m if m.startswith(f"stage {name}") else f"stage {name}: {m}" for m in str(e).split("; ")]
    outs = [s.out.resolve() for s in stages]
    for s, o in zip(stages, outs):
        if outs.count(o) > 1:
            errors.append(f"stage {s.name}: out {s.out} is shared with another stage; give each stage its own out")
    if errors:
        raise DistillError(f"pipeline {path}: " + "; ".join(dict.fromkeys(errors)))
    return stages


def _comparable(cfg: Any) -> dict[str, Any]:
    values = {k: v for k, v in config_dict(cfg).items() if k not in IGNORED}
    return json.loads(json.dumps(values, sort_keys=True, default=str))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_complete(stage: Stage) -> bool:
    """The stage ran to its end with this config, and its output has not been rewritten since (module doc)."""
    stats = stage.out / "stats.json"
    if not stage.marker.is_file() or not stats.is_file():
        return False
    try:
        marker = json.loads(stage.marker.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return (marker.get("stage") == stage.stage and marker.get("config") == _comparable(stage.cfg)
            and marker.get("stats_sha256") == _sha256(stats))


def mark_complete(stage: Stage) -> None:
    stats = stage.out / "stats.json"
    if not stats.is_file():
        raise DistillError(f"stage {stage.name}: {stage.stage} returned but wrote no {stats}; the stage is incomplete")
    atomic_write_json(stage.marker, {"stage": stage.stage, "name": stage.name, "config": _comparable(stage.cfg),
                                     "stats_sha256": _sha256(stats), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})


def stage_runner(stage: str):
    if stage == "grpo":  # in its own process: its colocated vLLM tears down process-wide state (grpo.run_isolated)
        from distill.train.grpo import run_isolated

        return run_isolated
    return importlib.import_module(STAGE_MODULES[stage]).run


def run(cfg: RunConfig) -> dict[str, Any]:
    stages = load_pipeline(cfg.recipe)
    names = [s.name for s in stages]
    unknown = [n for n in cfg.force if n not in names]
    if unknown:
        raise DistillError(f"--force {', '.join(unknown)}: no such stage in {cfg.recipe} (stages: {', '.join(names)})")
    plan, dirty = {}, False
    for s in stages:  # once a stage runs, every later one does: its input may have changed
        complete = is_complete(s)
        dirty = dirty or s.name in cfg.force or not complete
        # run: new or interrupted (it resumes); rerun: complete but forced or fed by a stage that ran (overwrite)
        plan[s.name] = ("rerun" if complete or s.name in cfg.force else "run") if dirty else "skip"
    for s in stages:
        log.info("pipeline: %-16s %-8s %s -> %s", s.name, s.stage, plan[s.name], s.out)
    if cfg.dry_run:
        return {"plan": plan}
    started, ran = time.time(), []
    for i, s in enumerate(stages):
        if plan[s.name] == "skip":
            log.info("pipeline: stage %d/%d %s (%s) is complete in %s; skipped", i + 1, len(stages), s.name, s.stage,
                     s.out)
            continue
        s.marker.unlink(missing_ok=True)
        if plan[s.name] == "rerun" and hasattr(s.cfg, "overwrite"):
            s.cfg = dataclasses.replace(s.cfg, overwrite=True)
        log.info("pipeline: stage %d/%d %s (%s) -> %s", i + 1, len(stages), s.name, s.stage, s.out)
        t = time.time()
        stage_runner(s.stage)(s.cfg)
        mark_complete(s)
        ran.append({"name": s.name, "stage": s.stage, "seconds": round(time.time() - t, 1)})
    log.info("pipeline: %d stages ran, %d skipped, %.1fs", len(ran), len(stages) - len(ran), time.time() - started)
    return {"plan": plan, "ran": ran}
