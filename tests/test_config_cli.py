"""Recipes, config errors, and the CLI surface: every --help, --version, one-line errors."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from distill.cli import cli, main
from distill.config import STAGE_CONFIGS, EvalConfig, GenerateConfig, build_config, load_config, read_recipe, save_config
from distill.errors import DistillError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_defaults_recipe_and_flags_layer_in_order(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("teacher: t\ndataset: aime24\nout: o\nn: 8\ntemperature: 0.7\n")
    cfg = load_config(GenerateConfig, recipe, {"n": 2})
    assert (cfg.n, cfg.temperature, cfg.top_p) == (2, 0.7, 0.95)


def test_unknown_keys_fail_with_suggestion_and_all_errors_at_once():
    with pytest.raises(DistillError) as e:
        build_config(GenerateConfig, {"teacher": "t", "dataset": "d", "out": "o", "temprature": 0.5, "n": "many"})
    msg = str(e.value)
    assert "unknown option 'temprature' (did you mean 'temperature'?)" in msg
    assert "option 'n': expected an integer, got 'many'" in msg
    assert "\n" not in msg


def test_missing_required_and_bad_choice():
    with pytest.raises(DistillError) as e:
        build_config(GenerateConfig, {"backend": "tgi"})
    msg = str(e.value)
    assert "'tgi' is not one of vllm, openai" in msg
    assert "missing required option 'teacher' (pass --teacher" in msg


def test_list_fields_take_comma_strings_and_lists():
    assert build_config(EvalConfig, {"out": "o", "tasks": "aime24, math500"}).tasks == ["aime24", "math500"]
    assert build_config(EvalConfig, {"out": "o", "tasks": ["gsm8k"]}).tasks == ["gsm8k"]


def test_bad_yaml_names_the_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("teacher: t\n  n: [1\n")
    with pytest.raises(DistillError, match=r"bad\.yaml:\d+: not valid YAML"):
        read_recipe(recipe)


def test_saved_config_reloads_to_the_same_config(tmp_path):
    cfg = build_config(GenerateConfig, {"teacher": "t", "dataset": "d", "out": "o", "n": 3})
    path = save_config(cfg, tmp_path)
    assert load_config(GenerateConfig, path) == cfg


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_with_the_command_on_its_first_line(recipe, monkeypatch):
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# distill "), f"{recipe.name}: first line must be the command that runs it"
    argv = shlex.split(first)[2:]
    captured = []
    monkeypatch.setattr("distill.cli._runner", lambda s: captured.append)
    monkeypatch.chdir(REPO)
    assert main(argv) == 0
    assert isinstance(captured[0], STAGE_CONFIGS[argv[0]])


def test_recipes_exist():
    assert RECIPES, "recipes/ must hold at least one recipe"


@pytest.mark.parametrize("args", [["--help"]] + [[stage, "--help"] for stage in STAGE_CONFIGS])
def test_every_help_works(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_top_level_help_lists_every_command():
    out = CliRunner().invoke(cli, ["--help"]).output
    for stage in ("generate", "filter", "sft", "kd", "eval", "publish", "demo", *STAGE_CONFIGS):
        assert f"  {stage} " in out


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "0.1.0" in result.output


def test_user_error_is_one_line_and_traceback_behind_env(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nope.yaml"
    stage = "eval"
    monkeypatch.setattr("distill.cli._runner", lambda s: (lambda cfg: None))
    rc = main([stage, "--config", str(missing), "--out", "o"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: recipe ") and err.count("\n") == 1 and "Traceback" not in err
    monkeypatch.setenv("DISTILL_TRACEBACK", "1")
    with pytest.raises(DistillError):
        main([stage, "--config", str(missing), "--out", "o"])


def test_flags_override_recipe_in_the_cli(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("distill.cli._runner", lambda s: seen.setdefault)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("out: from-recipe\nn: 4\ntasks: [aime24]\n")
    captured = []
    monkeypatch.setattr("distill.cli._runner", lambda s: captured.append)
    assert main(["eval", "--config", str(recipe), "--n", "2"]) == 0
    assert captured[0].n == 2 and captured[0].out == "from-recipe" and captured[0].tasks == ["aime24"]
    assert captured[0].temperature == 0.6  # default kept: an unset flag must not override the recipe


def test_unbuilt_stage_says_so_in_one_line_and_fails():
    proc = subprocess.run([sys.executable, "-m", "distill", "publish", "somedir", "--repo", "o/n"],
                          capture_output=True, text=True)
    if proc.returncode == 0:
        pytest.skip("publish is built")
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")


def test_console_script_runs():
    exe = Path(sys.executable).parent / "distill"
    if not exe.exists():
        pytest.skip("package not installed with its console script")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "generate" in proc.stdout
