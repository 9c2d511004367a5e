"""The demo end to end on the real engines: distillation must visibly work."""

from __future__ import annotations

import json

import pytest

from distill.config import DemoConfig
from distill.demo import toy_problems, toy_trace


def test_toy_traces_are_correct_and_problems_disjoint():
    train = toy_problems(200, seed=2)
    held = toy_problems(50, seed=3, exclude={p["problem"] for p in train})
    assert not {p["problem"] for p in train} & {p["problem"] for p in held}
    for p in train[:20]:
        trace = toy_trace(p["terms"])
        assert trace.startswith("<think>\n") and f"\\boxed{{{p['answer']}}}" in trace
        assert int(p["answer"]) == sum(p["terms"])


@pytest.mark.slow
# Alone, on one thread: 795-805 s on the 2-core Intel Ice Lake VM (993 s in a shared CI run); 1,353 s before the
# one-thread change on the 2.3x slower AMD VM, ~1,850 s expected there now. 3x that exceeds CI's own 90-minute limit,
# so the timeout is that limit: a hung demo fails here, with its traceback, at the latest when CI would stop anyway.
@pytest.mark.timeout(5400)
def test_demo_student_ends_clearly_better(tmp_path):
    from distill.demo import run

    cfg = DemoConfig(out=str(tmp_path / "demo"), cache_dir=str(tmp_path / "cache"))
    summary = run(cfg)
    on_disk = json.loads((tmp_path / "demo" / "demo.json").read_text())
    for key in ("teacher_pass1", "keep_rate", "student_before_pass1", "student_after_pass1", "student_kd_pass1",
                "student_grpo_pass1"):
        assert on_disk[key] == summary[key]
    # Both models were trained until they fit their check traces (the demo stops with an error otherwise).
    assert summary["teacher_training"]["rounds"][-1]["fit"] >= 80.0
    assert summary["student_training"]["rounds"][-1]["fit"] >= 80.0
    assert 20.0 < summary["teacher_pass1"] <= 100.0
    assert 0.0 < summary["keep_rate"] <= 100.0
    assert summary["student_after_pass1"] >= summary["student_before_pass1"] + 20.0
    # + kd starts from the SFT'd student: it must not make it worse beyond the evals' sampling noise
    assert summary["student_kd_pass1"] >= summary["student_after_pass1"] - 10.0
    # + grpo from the same student (issue 13): the training reward rose, held-out pass@1 did not fall beyond the
    # evals' sampling noise (measured: within 3 points either way at 100 problems x 4 samples)
    grpo = summary["grpo"]
    assert grpo["rollout"] == "vllm" and grpo["reward_late"] > grpo["reward_early"], grpo
    assert summary["student_grpo_pass1"] >= summary["student_after_pass1"] - 5.0
