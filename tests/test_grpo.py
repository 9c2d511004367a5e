"""`distill grpo`: rewards are the verifier's verdicts (failing closed included), the difficulty selection, prompts
rendered as eval renders them, config errors in one line, and tiny GRPO runs on CPU: weights change and the mean
reward rises (TRL's generate, and TRL driving vLLM's CPU build, whose log-probs must track the trained weights),
resume after SIGKILL continues the step count, LoRA saves a merged model, and the demo stage end to end.

The tiny runs use the "secret digit" model: a random tiny Qwen2 whose first answer token is '7' for ~30% of prompts
(one embedding row moved), asked "Guess the secret digit" with gold 7 and one-token completions. A reward GRPO can
raise in a few steps on two cores, from the real verifier, with nothing else learned first."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from distill.cli import main
from distill.config import GrpoConfig, build_config
from distill.data.io import write_jsonl
from distill.data.reader import Problem
from distill.data.record import content_id
from distill.errors import DistillError
from distill.prompts import generation_prompt
from distill.train.grpo_data import pass_rates, prompt_rows, select_by_pass_rate
from distill.train.grpo_log import read_steps
from distill.train.rewards import Rewards, group_stats, overlong_penalty
from distill.verify import Verdict, make_verifier, math_pool
from distill.verify.math import grade

REPO = Path(__file__).resolve().parents[1]
SECRET = "7"
P_SECRET = 0.3


# ---------------------------------------------------------------- rewards


HANG = "\\boxed{hang}"


def _hang_or_grade(items, *args):
    """A grader batch that never returns when it holds HANG (an input no signal can interrupt)."""
    if any(c == HANG for c, _ in items):
        time.sleep(120)
    return math_pool._grade_batch(items, *args)  # in the worker: the real one


def batch(completions, answers, prefilled=False, ids=None, problem_ids=None):
    n = len(completions)
    return dict(prompts=["p"] * n, completions=completions, completion_ids=ids,
                problem_id=problem_ids or [str(i) for i in range(n)], problem=["What is 2 + 2?"] * n,
                answer=answers, prefilled=[prefilled] * n)


def test_correctness_reward_is_the_verifiers_verdict_and_fails_closed(monkeypatch):
    monkeypatch.setattr(math_pool, "_grade_batch", _hang_or_grade)
    completions = ["<think>\nok\n</think>\n\n\\boxed{4}", "<think>\nok\n</think>\n\n\\boxed{5}",
                   "<think>\nok\n</think>\n\nfour", "<think>\nstill thinking \\boxed{4}", HANG,
                   "<think>\nok\n</think>\n\n\\boxed{4}", "\\boxed{4}"]
    answers = ["4", "4", "4", "4", "4", "\\frac{\\sqrt{}}{", "4"]
    options = SimpleNamespace(workers=1, answer_timeout=1.0, answer_type="auto", answer_extraction="boxed")
    with make_verifier("math", options) as verifier:
        rewards = Rewards(verifier, {"correctness": 1.0}, 64, 16, [0])
        metrics = {}
        got = rewards.correctness(**batch(completions, answers), log_metric=metrics.__setitem__)
    # The verdicts the verifier's own grading function gives in this process; HANG is what its pool decides.
    verdicts = [grade(c, a, "auto", "boxed") if c != HANG else Verdict(False, "answer_timeout", "")
                for c, a in zip(completions, answers)]
    assert got == [v.reward for v in verdicts] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    reasons = [v.reason for v in verdicts]
    assert reasons == ["", "answer_wrong", "no_answer", "no_answer", "answer_timeout", "gold_unparseable", ""]
    assert rewards.verdicts == Counter(r or "correct" for r in reasons)
    assert metrics["correctness/failed_closed"] == pytest.approx(2 / 7)  # the timeout and the unparseable gold
    assert metrics["correctness/pass_rate"] == pytest.approx(2 / 7)


def test_the_prefilled_think_is_part_of_the_graded_completion():
    options = SimpleNamespace(workers=1, answer_timeout=5.0, answer_type="auto", answer_extraction="boxed")
    with make_verifier("math", options) as verifier:
        rewards = Rewards(verifier, {"correctness": 1.0, "format": 0.1}, 64, 16, [0])
        # The engine's text starts inside the thought: "<think>\n" was the prompt's prefill.
        b = batch(["ok\n</think>\n\n\\boxed{4}", "still thinking \\boxed{4}"], ["4", "4"], prefilled=True)
        assert rewards.correctness(**b) == [1.0, 0.0]
        assert rewards.format(**b) == [1.0, 0.0]


@pytest.mark.parametrize("completion,reward", [
    ("<think>\nok\n</think>\n\n\\boxed{4}", 1.0),
    ("<think>\nok\n</think>\n\n", 0.0),  # format_empty_answer
    ("<think>\n\n</think>\n\nfour", 0.0),  # format_empty_reasoning
    ("<think>\nok, still", 0.0),  # format_unclosed_think
    ("the answer is 4", 0.0),  # format_no_think
    ("<think>a</think><think>b</think> 4", 0.0),  # format_multiple_think
])
def test_format_reward_is_filters_think_format(completion, reward):
    rewards = Rewards(None, {"format": 1.0}, 64, 16, [0])
    assert rewards.format(**batch([completion], ["4"])) == [reward]


def test_language_reward_is_the_share_of_the_expected_script():
    rewards = Rewards(None, {"language": 1.0}, 64, 16, [0])
    got = rewards.language(**batch(["<think>\nwe add two and two\n</think>\n\nfour",
                                    "<think>\nмы складываем two and two\n</think>\n\n4",
                                    "<think>\n$2 + 2 = 4$\n</think>\n\n$4$"], ["4"] * 3))
    assert got[0] == 1.0 and 0.0 < got[1] < 1.0 and got[2] == 1.0  # pure math has no language to mix


def test_length_penalty_is_dapos_soft_overlong_punishment():
    assert [overlong_penalty(n, False, 100, 20) for n in (10, 80, 90, 100)] == [0.0, 0.0, -0.5, -1.0]
    assert overlong_penalty(30, True, 100, 20) == -1.0  # truncated: no end-of-turn token
    rewards = Rewards(None, {"length": 1.0}, 4, 2, eos_ids=[9])
    got = rewards.length(**batch(["a", "b", "c"], ["4"] * 3, ids=[[1, 9], [1, 2, 9], [1, 2, 3, 4]]))
    assert got == [0.0, -0.5, -1.0]


def test_group_stats_count_all_correct_and_all_wrong_groups():
    records = [SimpleNamespace(problem_id=p) for p in "aabbcc"]
    stats = group_stats(records, [True, True, False, False, True, False])
    assert stats == {"pass_rate": 0.5, "groups_all_correct": 1 / 3, "groups_all_wrong": 1 / 3}


# ---------------------------------------------------------------- data


def test_difficulty_selection_keeps_the_pass_rate_range_and_drops_unmeasured(tmp_path):
    rows = [{"problem_id": "a", "problem": "A?", "correct": c} for c in (True, True, True, True)]
    rows += [{"problem_id": "b", "problem": "B?", "correct": c} for c in (True, False, False, False)]
    rows += [{"problem_id": "c", "problem": "C?", "correct": c} for c in (False, False, False, False)]
    rows += [{"problem_id": "other-id", "problem": "D?", "correct": c} for c in (True, False)]
    write_jsonl(tmp_path / "samples.jsonl", rows)
    rates = pass_rates(tmp_path)
    problems = [Problem("a", "A?", "1"), Problem("b", "B?", "1"), Problem("c", "C?", "1"),
                Problem(content_id("D?"), "D?", "1"), Problem("e", "E?", "1")]
    kept, summary = select_by_pass_rate(problems, rates, 0.1, 0.9)
    assert [p.problem for p in kept] == ["B?", "D?"]  # D matched by its text's content id
    assert summary["dropped"] == {"too_easy": 1, "too_hard": 1, "unmeasured": 1}
    with pytest.raises(DistillError, match="no samples.jsonl"):
        pass_rates(tmp_path / "nowhere")


def test_prompts_are_rendered_as_eval_renders_them(tiny_tokenizer):
    rows = prompt_rows([Problem("1", "What is 2 + 2?", "4")], tiny_tokenizer, None, "auto")
    text, prefilled = generation_prompt(tiny_tokenizer, "What is 2 + 2?")
    assert rows == [{"prompt": text, "problem_id": "1", "problem": "What is 2 + 2?", "answer": "4",
                     "prefilled": prefilled}]
    assert prefilled and text.endswith("<|im_start|>assistant\n<think>\n")


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize("extra,message", [
    (["--num-generations", "1"], "num_generations must be >= 2"),
    (["--pass-rate-min", "0.8", "--pass-rate-max", "0.2"], "need 0 <= pass_rate_min <= pass_rate_max <= 1"),
    (["--correctness-weight", "0", "--format-weight", "0"], "every reward weight is 0"),
    (["--length-weight", "1", "--overlong-buffer", "0"], "overlong_buffer must be in [1"),
    (["--vllm-server-url", "http://x"], "vllm_server_url is for vllm_mode server"),
    (["--prompts-per-step", "0"], "prompts_per_step must be >= 1"),
])
def test_bad_configs_give_one_line_errors(extra, message, tmp_path, capsys, tiny_qwen_dir):
    rc = main(["grpo", "--model", str(tiny_qwen_dir), "--data", "gsm8k", "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert rc != 0 and message in err and err.strip().count("\n") == 0, err


def test_recipe_typos_and_cpu_server_mode_are_one_line_errors(tmp_path, capsys, tiny_qwen_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_qwen_dir}\ndata: gsm8k\nout: {tmp_path / 'o'}\nnum_generation: 4\n")
    assert main(["grpo", "--config", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert "unknown option 'num_generation' (did you mean 'num_generations'?)" in err and err.count("\n") == 1
    import torch

    if not torch.cuda.is_available():
        args = ["grpo", "--model", str(tiny_qwen_dir), "--data", "gsm8k", "--out", str(tmp_path / "o"),
                "--vllm-mode", "server", "--rollout", "vllm", "--limit", "4", "--max-completion-length", "64"]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "needs a CUDA GPU" in err and err.count("\n") == 1
        assert not (tmp_path / "o").exists()


def test_bad_trl_fields_fail_before_anything_loads(tmp_path, tiny_qwen_dir):
    recipe = {"model": str(tiny_qwen_dir), "data": "gsm8k", "out": str(tmp_path / "o"),
              "trl": {"num_generation": 4, "beta": 0.1, "per_device_train_batch_size": "four"}}
    with pytest.raises(DistillError) as e:
        from distill.train.grpo import run

        run(build_config(GrpoConfig, recipe))
    msg = str(e.value)
    assert "unknown GRPOConfig field 'num_generation' (did you mean 'num_generations'?)" in msg
    assert "'beta' is the distill option 'beta'" in msg and "'per_device_train_batch_size' must be int" in msg
    assert not (tmp_path / "o").exists()


def test_empty_gold_answers_are_refused(tmp_path, tiny_qwen_dir):
    write_jsonl(tmp_path / "p.jsonl", [{"problem": "What is 1 + 1?", "answer": ""}])
    from distill.train.grpo import run

    with pytest.raises(DistillError, match="1 problems have no gold answer"):
        run(build_config(GrpoConfig, {"model": str(tiny_qwen_dir), "data": str(tmp_path / "p.jsonl"),
                                      "out": str(tmp_path / "o")}))


# ---------------------------------------------------------------- tiny runs


@pytest.fixture(scope="session")
def guesser_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny random Qwen2 whose first answer token is '7' with probability P_SECRET on the guess prompt: the
    embedding row of '7' is moved along the prompt's final hidden state (tied embeddings: that row is the logit)."""
    import torch

    from distill.tiny import build_model

    path = tmp_path_factory.mktemp("guesser")
    model = build_model(path, tiny_tokenizer, seed=0)
    text, _ = generation_prompt(tiny_tokenizer, guess_problem(0), think_prefill="off")
    ids = torch.tensor([tiny_tokenizer(text).input_ids])
    target = tiny_tokenizer.convert_tokens_to_ids(SECRET)
    with torch.no_grad():
        h = model.model(ids).last_hidden_state[0, -1]
        logits = model.lm_head(h)
        rest = torch.logsumexp(torch.cat([logits[:target], logits[target + 1:]]), 0)
        want = rest + math.log(P_SECRET / (1 - P_SECRET))
        model.model.embed_tokens.weight[target] += (want - logits[target]) * h / h.norm() ** 2
    model.save_pretrained(str(path))
    return path


def guess_problem(i: int) -> str:
    return f"Guess the secret digit ({i})."


def guess_data(path: Path, n: int = 32) -> Path:
    write_jsonl(path, [{"id": f"g{i}", "problem": guess_problem(i), "answer": SECRET} for i in range(n)])
    return path


# One-token completions, graded by the chain rule (a bare "7" is the final line's math), no <think> prefill.
GUESS = {"id_key": "id", "num_generations": 8, "prompts_per_step": 4, "max_completion_length": 1,
         "think_prefill": "off", "answer_extraction": "chain", "format_weight": 0.0, "learning_rate": 1e-2,
         "workers": 1, "save_steps": 100, "seed": 0}


def guess_cfg(model: Path, data: Path, out: Path, **kw) -> GrpoConfig:
    return build_config(GrpoConfig, {"model": str(model), "data": str(data), "out": str(out), **GUESS, **kw})


def weights_of(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def early_late(stats: dict) -> tuple[float, float]:
    rewards = [h["reward"] for h in stats["history"]]
    return sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2


@pytest.mark.slow
def test_tiny_grpo_changes_the_weights_and_raises_the_mean_reward(tmp_path, guesser_dir):
    from distill.train.grpo import run

    out = tmp_path / "out"
    stats = run(guess_cfg(guesser_dir, guess_data(tmp_path / "p.jsonl"), out, max_steps=6, rollout="transformers"))
    early, late = early_late(stats)
    assert late > early + 0.2, stats["history"]
    before, after = weights_of(guesser_dir), weights_of(out)
    assert any((before[k] - after[k]).abs().max() > 1e-4 for k in before)
    rows = read_steps(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and stats["steps"] == 6
    for key in ("reward", "reward_std", "rewards/correctness/mean", "correctness/pass_rate",
                "correctness/groups_all_correct", "correctness/groups_all_wrong", "frac_reward_zero_std",
                "completions/mean_length", "clip_ratio/region_mean", "generation_s", "update_s"):
        assert key in rows[-1], key
    assert stats["rollout"]["backend"] == "transformers"
    assert sum(stats["verdicts"].values()) == 6 * 32 and stats["timing"]["rollout_tokens_per_s"] > 0
    saved = json.loads((out / "stats.json").read_text())
    assert saved["reward"] == stats["reward"] and saved["rewards"]["correctness"]["weight"] == 1.0


@pytest.mark.timeout(300)  # 27 s alone on the Intel VM (vLLM rollouts); 3x on a 2.3x slower CPU: 186 s
@pytest.mark.slow
def test_demo_stage_on_vllm_rollouts_raises_reward_and_heldout_pass1(tmp_path, guesser_dir):
    """The demo's GRPO stage on the secret digit: TRL drives vLLM's CPU build (weights synced every step), then
    `distill eval` (vLLM) loads the saved model for held-out pass@1."""
    from distill.train.grpo_demo import demo_stage

    problems = [{"id": f"g{i}", "problem": guess_problem(i), "answer": SECRET} for i in range(32)]
    heldout = [{"id": f"h{i}", "problem": guess_problem(100 + i), "answer": SECRET} for i in range(8)]
    grpo = {k: v for k, v in GUESS.items() if k not in ("id_key", "save_steps", "seed")}
    summary = demo_stage(guesser_dir, problems, heldout, tmp_path / "demo", seed=0, steps=6, eval_n=4,
                         grpo={**grpo, "rollout": "vllm"},
                         sampling={"max_tokens": 1, "temperature": 1.0, "think_prefill": "off"})
    assert summary["rollout"] == "vllm"
    assert summary["reward_late"] > summary["reward_early"], summary
    assert 0 < summary["pass1_before"] <= summary["pass1_after"], summary
    rows = read_steps(tmp_path / "demo" / "grpo")
    # vLLM samples from the weights being trained: its log-probs match the trainer's after every sync.
    assert max(r["sampling/sampling_logp_difference/mean"] for r in rows) < 0.05, rows


def test_isolated_grpo_failure_is_one_line(tmp_path):
    from distill.train.grpo import run_isolated

    data = guess_data(tmp_path / "p.jsonl")
    with pytest.raises(DistillError, match=r"the training process failed \(exit 1\)"):
        run_isolated(guess_cfg(tmp_path / "no-such-model", data, tmp_path / "out", max_steps=1))


@pytest.mark.slow
def test_resume_after_sigkill_continues_the_step_count(tmp_path, guesser_dir):
    data, out = guess_data(tmp_path / "p.jsonl"), tmp_path / "out"
    args = ["grpo", "--model", str(guesser_dir), "--data", str(data), "--out", str(out), "--max-steps", "6",
            "--save-steps", "1", "--rollout", "transformers"]
    for key, value in GUESS.items():
        if key != "save_steps":
            args += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen([sys.executable, "-m", "distill", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "DISTILL_LOG_LEVEL": "WARNING"})
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint-2" / "trainer_state.json").is_file() and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (out / "stats.json").exists(), "the kill must land mid-run"
    assert main(args) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["resumed_from"] and int(stats["resumed_from"].rsplit("-", 1)[1]) >= 2
    assert stats["steps"] == 6
    assert [r["step"] for r in read_steps(out)] == [1, 2, 3, 4, 5, 6]  # each step logged once
    with pytest.raises(DistillError, match="holds checkpoints of a run with another config"):
        from distill.train.grpo import run

        run(guess_cfg(guesser_dir, data, out, max_steps=6, learning_rate=1e-3, rollout="transformers"))


@pytest.mark.slow
def test_lora_grpo_saves_an_adapter_and_a_merged_model(tmp_path, guesser_dir):
    from transformers import AutoModelForCausalLM

    from distill.train.grpo import run

    out = tmp_path / "out"
    stats = run(guess_cfg(guesser_dir, guess_data(tmp_path / "p.jsonl", n=8), out, max_steps=2, lora=True,
                          lora_r=4, rollout="transformers", prompts_per_step=1))
    assert stats["lora"] and (out / "adapter_model.safetensors").is_file()
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"))
    assert merged.config.vocab_size == AutoModelForCausalLM.from_pretrained(str(guesser_dir)).config.vocab_size
