"""Resuming training exactly: the newest complete checkpoint, a resume key that refuses a changed config, and
--overwrite. Shared by every trainer stage (sft, grpo, kd)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

from distill.errors import DistillError

log = logging.getLogger(__name__)


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (a save cut short: disk full, a kill), or None if whole.
    Whole means: trainer_state.json parses, every safetensors file is as long as its header says, and the
    optimizer/scheduler archives have their zip directory (torch.save writes it last)."""
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable trainer_state.json"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no weights (*.safetensors)"
    for w in weights:
        try:
            with w.open("rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            if w.stat().st_size < 8 + size + end:
                return f"{w.name} is truncated"
        except (OSError, ValueError, KeyError, TypeError):
            return f"{w.name} is unreadable"
    if not (path / "optimizer.pt").is_file():
        return "no optimizer.pt"
    for name in ("optimizer.pt", "scheduler.pt"):
        if (path / name).is_file():
            try:
                zipfile.ZipFile(path / name).close()
            except (OSError, zipfile.BadZipFile):
                return f"{name} is truncated"
    return None


def last_complete_checkpoint(out: Path) -> str | None:
    """The newest checkpoint-N in `out` that is whole; incomplete newer ones are skipped with a warning."""
    if not out.is_dir():
        return None
    found = sorted((p for p in out.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)),
                   key=lambda p: int(p.name.split("-")[1]), reverse=True)
    for ckpt in found:
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return str(ckpt)
        log.warning("skipping %s: %s (a save was cut short); resuming from an earlier checkpoint", ckpt, problem)
    return None


# What decides the trained weights: a resume must match it exactly (like generate's manifest). max_steps is
# not in it: raising it continues the same run.
RESUME_KEY_SKIP = ("out", "resume", "overwrite", "preflight_only", "merge_lora", "max_steps")
RESUME_FILE = "resume_key.json"


def resume_key(cfg: Any, model: str, examples: list[dict[str, Any]]) -> dict[str, Any]:
    """The config (minus what does not change the weights), the starting model's fingerprint and the data's hash."""
    from distill.models import fingerprint

    data = hashlib.sha256()
    for ex in examples:
        data.update(json.dumps(ex, ensure_ascii=False, sort_keys=True).encode() + b"\n")
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_KEY_SKIP}
    return {**config, "model_fingerprint": fingerprint(model), "data_sha256": data.hexdigest(),
            "samples": len(examples)}


def check_resume(out: Path, key: dict[str, Any]) -> None:
    """Refuse to continue another run's checkpoints: list what changed."""
    path = out / RESUME_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise DistillError(f"{path}: unreadable; pass --overwrite to start over") from None
    diffs = [f"{k} {old.get(k)!r} → {key.get(k)!r}" for k in sorted(set(old) | set(key)) if old.get(k) != key.get(k)]
    if diffs:
        raise DistillError(f"--out {out}: holds checkpoints of a run with another config ({'; '.join(diffs)}); "
                           f"rerun with the same options, pass --overwrite to start over, or choose another --out")


def clear_out(out: Path) -> None:
    """--overwrite: remove what an earlier run trained (checkpoints, weights, its resume key), nothing else."""
    removed = 0
    for p in list(out.iterdir()) if out.is_dir() else []:
        if p.is_dir() and (re.fullmatch(r"checkpoint-\d+", p.name) or p.name == "merged"):
            shutil.rmtree(p)
            removed += 1
        elif p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name == RESUME_FILE):
            p.unlink()
            removed += 1
    if removed:
        log.info("--overwrite: removed %d checkpoints/weight files from %s", removed, out)
