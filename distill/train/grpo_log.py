"""GRPO's per-step log (OUT/steps.jsonl, one line per logged step, and one log line) and the run's summary for
stats.json: reward mean/std per function, group pass rate, the share of all-correct and all-wrong groups (zero
advantage), completion lengths, KL, clip fraction, verdict reasons, and the time split generation / scoring / update.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from distill.data.io import atomic_write_text

log = logging.getLogger(__name__)

STEPS_FILE = "steps.jsonl"
# TRL's metric names kept per step (rewards/<name>/{mean,std} in addition); KL only exists when beta > 0, the sampling/
# ones (vLLM's log-probs against the trainer's: the weight sync's check) only with vLLM rollouts.
STEP_KEYS = ("reward", "reward_std", "frac_reward_zero_std", "correctness/pass_rate", "correctness/groups_all_correct",
             "correctness/groups_all_wrong", "correctness/failed_closed", "completions/mean_length",
             "completions/max_length", "completions/clipped_ratio", "kl", "clip_ratio/region_mean",
             "clip_ratio/low_mean", "clip_ratio/high_mean", "entropy", "loss", "grad_norm", "learning_rate",
             "sampling/sampling_logp_difference/mean", "sampling/importance_sampling_ratio/mean")


def read_steps(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a steps.jsonl (a folder means its steps.jsonl), in file order."""
    p = Path(path)
    p = p / STEPS_FILE if p.is_dir() else p
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


class StepLog(TrainerCallback):
    """Appends one row per logged step to steps.jsonl: TRL's metrics (STEP_KEYS), the step's wall time split by the
    StepClock, rollout tokens/s, and the verdict reasons since the previous row. A resumed run first drops the rows
    logged after its checkpoint, so every step appears once."""

    def __init__(self, path: Path, rewards: Any):
        self.path, self.rewards, self.clock = Path(path), rewards, None
        self._busy, self._steps, self._begin = 0.0, 0, None
        self._seen: Counter[str] = Counter()

    def read(self) -> list[dict[str, Any]]:
        return read_steps(self.path)

    def on_train_begin(self, args, state, control, **kwargs):
        kept = [r for r in self.read() if r["step"] <= state.global_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if self.clock is not None:
            self.clock.take()

    def on_step_begin(self, args, state, control, **kwargs):
        self._begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._begin is not None:
            self._busy += time.perf_counter() - self._begin
            self._steps += 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "reward" not in logs or not state.is_world_process_zero:
            return
        row: dict[str, Any] = {"step": state.global_step, "steps": self._steps}
        row.update({k: logs[k] for k in STEP_KEYS if k in logs})
        row.update({k: v for k, v in sorted(logs.items()) if k.startswith("rewards/")})
        clock = self.clock.take() if self.clock is not None else {}
        if clock:
            update = max(0.0, self._busy - clock["generation_s"] - clock["scoring_s"])
            row.update(step_s=round(self._busy, 4), generation_s=round(clock["generation_s"], 4),
                       scoring_s=round(clock["scoring_s"], 4), update_s=round(update, 4),
                       completion_tokens=clock["completion_tokens"],
                       rollout_tokens_per_s=round(clock["completion_tokens"] / clock["generation_s"], 2)
                       if clock["generation_s"] > 0 else None)
        verdicts = self.rewards.verdicts - self._seen
        self._seen = Counter(self.rewards.verdicts)
        row["verdicts"] = dict(sorted(verdicts.items()))
        self._busy, self._steps = 0.0, 0
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        parts = [f"step {row['step']}", f"reward {row['reward']:.3f}"]
        if "correctness/pass_rate" in row:
            parts.append(f"pass {row['correctness/pass_rate']:.3f} (all-wrong groups "
                         f"{row.get('correctness/groups_all_wrong', 0):.2f}, all-correct "
                         f"{row.get('correctness/groups_all_correct', 0):.2f})")
        parts.append(f"len {row.get('completions/mean_length', 0):.0f}")
        if "kl" in row:
            parts.append(f"kl {row['kl']:.4f}")
        if clock:
            parts.append(f"{row['step_s']:.1f}s (gen {row['generation_s']:.1f}s)")
        log.info("grpo %s", ", ".join(parts))


def _series(rows: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    """first / last / mean of a per-step metric, and early / late: the means of its first and last quarter."""
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return {"first": None, "last": None, "mean": None, "early": None, "late": None}
    q = max(1, len(values) // 4)
    mean = lambda xs: round(sum(xs) / len(xs), 6)  # noqa: E731
    return {"first": values[0], "last": values[-1], "mean": mean(values), "early": mean(values[:q]),
            "late": mean(values[-q:])}


def summarize(rows: list[dict[str, Any]], verdicts: Counter, weights: dict[str, float]) -> dict[str, Any]:
    """stats.json's view of a run (module doc). `verdicts`: this process's verdict counts (all of a run when it
    was not resumed; else since the resume)."""
    from distill.train.rewards import FAILED_CLOSED

    timed = [r for r in rows if "step_s" in r]
    gen = sum(r["generation_s"] for r in timed)
    tokens = sum(r["completion_tokens"] for r in timed)
    total_verdicts = Counter()
    for r in rows:
        total_verdicts.update(r.get("verdicts", {}))
    return {
        "reward": _series(rows, "reward"),
        "rewards": {name: {"weight": w, "mean": _series(rows, f"rewards/{name}/mean"),
                           "std": _series(rows, f"rewards/{name}/std")} for name, w in weights.items() if w},
        "pass_rate": _series(rows, "correctness/pass_rate"),
        "groups": {"all_correct": _series(rows, "correctness/groups_all_correct"),
                   "all_wrong": _series(rows, "correctness/groups_all_wrong"),
                   "zero_advantage": _series(rows, "frac_reward_zero_std")},
        "completion_length": {"mean": _series(rows, "completions/mean_length"),
                              "max": max((r.get("completions/max_length", 0) for r in rows), default=None),
                              "clipped_ratio": _series(rows, "completions/clipped_ratio")},
        "kl": _series(rows, "kl"),
        "clip_fraction": _series(rows, "clip_ratio/region_mean"),
        "verdicts": dict(sorted((total_verdicts or verdicts).items())),
        "failed_closed": {k: v for k, v in sorted((total_verdicts or verdicts).items()) if k in FAILED_CLOSED},
        "timing": {"steps_timed": len(timed), "step_s": round(sum(r["step_s"] for r in timed), 3),
                   "generation_s": round(gen, 3), "scoring_s": round(sum(r["scoring_s"] for r in timed), 3),
                   "update_s": round(sum(r["update_s"] for r in timed), 3), "completion_tokens": tokens,
                   "rollout_tokens_per_s": round(tokens / gen, 2) if gen > 0 else None},
        "history": [{k: r.get(k) for k in ("step", "reward", "correctness/pass_rate", "completions/mean_length")}
                    for r in rows],
    }
