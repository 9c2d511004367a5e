"""`distill run RECIPE`: stages in order, complete ones skipped (marker beside the output + its stats.json), an
interrupted one resumed and everything after it rerun, --force and --dry-run, all config errors before any stage
runs, and every shipped pipeline recipe loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from distill import pipeline
from distill.cli import main
from distill.config import RunConfig
from distill.errors import DistillError

REPO = Path(__file__).resolve().parents[1]
PIPELINES = [p for p in sorted((REPO / "recipes").glob("*.yaml")) if p.read_text().startswith("# distill run ")]


@pytest.fixture
def calls(monkeypatch):
    """Stage runners replaced by fakes that record their call and write the output a stage writes."""
    seen: list[tuple[str, object]] = []

    def runner(stage):
        def run(cfg):
            seen.append((stage, cfg))
            if getattr(cfg, "max_steps", None) == 666:
                raise KeyboardInterrupt  # a stage killed mid-run: no stats.json
            out = Path(cfg.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "stats.json").write_text(json.dumps({"stage": stage, "overwrite": getattr(cfg, "overwrite", None),
                                                        "n": len(seen)}))
            return {}
        return run

    monkeypatch.setattr(pipeline, "stage_runner", runner)
    return seen


def write_recipe(path: Path, root: Path, grpo_steps: int = 10, **sft) -> Path:
    stages = [
        {"name": "cold_start", "stage": "sft", "student": "base", "data": "cold", "out": str(root / "sft"), **sft},
        {"name": "rl", "stage": "grpo", "model": str(root / "sft"), "data": "gsm8k", "out": str(root / "grpo"),
         "max_steps": grpo_steps},
        {"name": "score", "stage": "eval", "model": str(root / "grpo"), "tasks": "gsm8k", "out": str(root / "eval")},
    ]
    path.write_text("# distill run " + str(path) + "\n" + yaml.safe_dump({"stages": stages}, sort_keys=False))
    return path


def names(seen) -> list[str]:
    return [stage for stage, _ in seen]


def test_stages_run_in_order_then_are_skipped_when_complete(tmp_path, calls):
    recipe = write_recipe(tmp_path / "p.yaml", tmp_path)
    result = pipeline.run(RunConfig(recipe=str(recipe)))
    assert names(calls) == ["sft", "grpo", "eval"] and result["plan"] == {"cold_start": "run", "rl": "run",
                                                                         "score": "run"}
    assert calls[1][1].model == str(tmp_path / "sft") and calls[1][1].max_steps == 10
    assert (tmp_path / ".sft.done.json").is_file() and not (tmp_path / "sft" / ".done.json").exists()
    calls.clear()
    assert pipeline.run(RunConfig(recipe=str(recipe)))["plan"] == {"cold_start": "skip", "rl": "skip", "score": "skip"}
    assert calls == []


def test_an_interrupted_stage_resumes_and_the_stages_after_it_rerun(tmp_path, calls):
    recipe = write_recipe(tmp_path / "p.yaml", tmp_path)
    pipeline.run(RunConfig(recipe=str(recipe)))
    write_recipe(recipe, tmp_path, grpo_steps=666)  # the grpo stage's config changes and it gets killed mid-run
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(RunConfig(recipe=str(recipe)))
    assert names(calls) == ["grpo"] and not (tmp_path / ".grpo.done.json").exists()
    write_recipe(recipe, tmp_path, grpo_steps=20)
    calls.clear()
    plan = pipeline.run(RunConfig(recipe=str(recipe)))["plan"]
    assert plan == {"cold_start": "skip", "rl": "run", "score": "rerun"}
    assert names(calls) == ["grpo", "eval"]
    assert calls[0][1].overwrite is False  # an interrupted stage resumes from its checkpoints
    assert calls[1][1].overwrite is True  # a complete stage fed by a stage that ran starts over


def test_a_rewritten_output_is_not_complete(tmp_path, calls):
    recipe = write_recipe(tmp_path / "p.yaml", tmp_path)
    pipeline.run(RunConfig(recipe=str(recipe)))
    (tmp_path / "grpo" / "stats.json").write_text("{}")  # someone reran the stage by hand
    calls.clear()
    assert pipeline.run(RunConfig(recipe=str(recipe)))["plan"] == {"cold_start": "skip", "rl": "run", "score": "rerun"}


def test_force_and_dry_run(tmp_path, calls):
    recipe = write_recipe(tmp_path / "p.yaml", tmp_path)
    pipeline.run(RunConfig(recipe=str(recipe)))
    calls.clear()
    assert pipeline.run(RunConfig(recipe=str(recipe), force=["rl"], dry_run=True))["plan"] == {
        "cold_start": "skip", "rl": "rerun", "score": "rerun"}
    assert calls == []
    pipeline.run(RunConfig(recipe=str(recipe), force=["rl"]))
    assert names(calls) == ["grpo", "eval"] and calls[0][1].overwrite is True
    with pytest.raises(DistillError, match="--force nope: no such stage"):
        pipeline.run(RunConfig(recipe=str(recipe), force=["nope"]))


def test_every_config_error_of_every_stage_at_once_in_one_line(tmp_path, calls, capsys):
    stages = [{"name": "a", "stage": "sft", "student": "s", "data": "d", "out": str(tmp_path / "a"), "epohcs": 2},
              {"name": "a", "stage": "grpo", "model": "m", "data": "d"},
              {"name": "c", "stage": "filtr", "input": "x", "out": str(tmp_path / "c")}]
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(yaml.safe_dump({"stages": stages, "outdir": "x"}))
    assert main(["run", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown top-level key(s) outdir" in err
    recipe.write_text(yaml.safe_dump({"stages": stages}))
    assert main(["run", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "stage a: unknown option 'epohcs' (did you mean 'epochs'?)" in err
    assert "stage a: the name is used twice" in err and "stage a: missing required option 'out'" in err
    assert "stage c: `stage: filtr` is not one of generate, filter, sft, eval, grpo (did you mean 'filter'?)" in err
    assert calls == []


@pytest.mark.parametrize("recipe", PIPELINES, ids=lambda p: p.name)
def test_shipped_pipelines_load(recipe, monkeypatch):
    monkeypatch.chdir(REPO)
    stages = pipeline.load_pipeline(recipe)
    assert len(stages) >= 2 and all(s.stage in pipeline.STAGE_MODULES for s in stages)


def test_the_r1_pipeline_is_the_r1_recipe():
    stages = pipeline.load_pipeline(REPO / "recipes" / "r1_pipeline.yaml")
    kinds = [s.stage for s in stages]
    assert kinds[:5] == ["sft", "grpo", "generate", "filter", "sft"]
    by_name = {s.name: s for s in stages}
    rl, gen, filt = (next(s for s in stages if s.stage == k) for k in ("grpo", "generate", "filter"))
    assert gen.cfg.teacher == rl.cfg.out  # rejection sampling samples the RL model
    assert filt.cfg.input == gen.cfg.out
    assert stages[4].cfg.data == filt.cfg.out
    assert by_name  # names are unique (load_pipeline checks)
