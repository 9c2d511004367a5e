"""Data parallel generation: N engine replicas, each a supervised `distill generate --shard r/N` child process.

vLLM refuses data parallelism inside one in-process `LLM`, so each replica is its own process with its own engine,
writing its partition of the problems (by a hash of the problem id, as `--shard` does) into DIR/shard-r-of-N. Every
replica has generate's own resume semantics: a replica that dies (a crash, the OOM killer, a kill -9) is restarted
up to `MAX_RESTARTS` times and skips the chunks it already wrote, so nothing is lost or written twice. A replica
that stops on a user error (`error: …`, e.g. a refused resume) is not restarted: the others are stopped and the
error is raised. The parent writes DIR/stats.json summed over the replicas.

With `--distributed-executor-backend ray` the replicas are the same child processes; each one's vLLM places its
TP×PP workers on the running Ray cluster (RAY_ADDRESS), so no devices are assigned here. Otherwise each replica gets
its own tensor×pipeline GPUs (CUDA_VISIBLE_DEVICES), or on CPU its share of the cores.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from distill.config import GenerateConfig, save_config
from distill.data.io import atomic_write_json
from distill.errors import DistillError

log = logging.getLogger(__name__)

MAX_RESTARTS = 3  # per replica: a replica that keeps dying is a bug to look at, not to retry forever
POLL_S = 0.5
LOG_FILE = "replica.log"  # in each replica's shard folder, appended across restarts
# Summed over the replicas into the parent's stats.json.
SUMMED = ("problems", "samples", "chunks", "chunks_resumed", "chunks_written", "samples_resumed", "samples_written",
          "completion_tokens", "completion_tokens_written", "clamped_prompts", "retries")


def check(cfg: Any) -> None:
    """Options that cannot combine with --data-parallel-size, in one line."""
    n = cfg.data_parallel_size
    if n < 1:
        raise DistillError(f"--data-parallel-size must be >= 1, got {n}")
    if n == 1:
        return
    if cfg.backend != "vllm":
        raise DistillError("--data-parallel-size runs vLLM replicas (--backend vllm); for servers, pass all of them "
                           "to --base-url (comma-separated) instead")
    if getattr(cfg, "shard", None):
        raise DistillError("--shard with --data-parallel-size: pick one (N jobs with --shard I/N, or one job with "
                           "--data-parallel-size N, which shards the work itself)")


def replica_configs(cfg: GenerateConfig) -> list[GenerateConfig]:
    """One generate config per replica: partition r of N, one engine each."""
    n = cfg.data_parallel_size
    return [dataclasses.replace(cfg, shard=f"{r}/{n}", data_parallel_size=1) for r in range(n)]


def replica_env(r: int, cfg: GenerateConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of replica r: its GPUs (none assigned under Ray: Ray places the workers), or on CPU its
    share of the cores, so N replicas do not oversubscribe them."""
    env = dict(os.environ if base is None else base)
    env["DISTILL_REPLICA"] = str(r)
    n, width = cfg.data_parallel_size, cfg.tensor_parallel_size * cfg.pipeline_parallel_size
    gpus = _gpu_ids(env)
    if gpus:
        if cfg.distributed_executor_backend != "ray":
            if len(gpus) < n * width:
                raise DistillError(f"--data-parallel-size {n} x tensor {cfg.tensor_parallel_size} x pipeline "
                                   f"{cfg.pipeline_parallel_size} needs {n * width} GPUs, {len(gpus)} visible; lower "
                                   f"one of them, or use --distributed-executor-backend ray across nodes")
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[r * width:(r + 1) * width])
        return env
    from distill.engine.vllm_engine import allowed_cores, cpu_bind

    cores = allowed_cores()
    share = max(1, len(cores) // n)
    env.setdefault("OMP_NUM_THREADS", str(max(1, share // width)))
    if "VLLM_CPU_OMP_THREADS_BIND" not in env:
        # vLLM's CPU build binds its threads to cores ("auto": the same ones in every replica): give each replica
        # its own, split between its TP/PP workers.
        mine = cores[r * share:(r + 1) * share] if len(cores) >= n else []
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind(mine, width) if mine else "nobind"
    return env


def _gpu_ids(env: dict[str, str]) -> list[str]:
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def _shard_dirs(root: Path) -> dict[str, Path]:
    from distill.generate import SHARD_DIR_RE

    return {p.name: p for p in root.iterdir() if p.is_dir() and SHARD_DIR_RE.match(p.name)} if root.is_dir() else {}


def _check_out(cfg: GenerateConfig) -> None:
    """A DIR written with another layout is refused here, in the words of this option."""
    from distill.generate import MANIFEST, SHARD_DIR_RE

    root, n = Path(cfg.out), cfg.data_parallel_size
    if (root / MANIFEST).is_file():
        raise DistillError(f"--out {root}: holds a run without --data-parallel-size; use another --out, or rerun "
                           f"it with the options it was written with")
    other = {int(SHARD_DIR_RE.match(name).group(2)) for name in _shard_dirs(root)} - {n}
    if other:
        raise DistillError(f"--out {root}: was written with --data-parallel-size (or --shard I/N) {min(other)}; "
                           f"rerun with that size to resume, or use another --out")


def _on_disk(folder: Path) -> tuple[int, int]:
    """(samples, completion tokens) in the chunk files a replica folder already holds."""
    from distill.generate import CHUNK_RE

    rows = tokens = 0
    for p in folder.iterdir() if folder.is_dir() else ():
        if CHUNK_RE.match(p.name):
            for line in p.read_text(encoding="utf-8").splitlines():
                rows += 1
                try:
                    tokens += int(json.loads(line).get("num_tokens") or 0)
                except (ValueError, AttributeError):
                    pass  # the replica's resume check names the broken file
    return rows, tokens


def run(cfg: GenerateConfig) -> dict[str, Any]:
    """Generate with cfg.data_parallel_size replicas into cfg.out; returns the summed stats (DIR/stats.json)."""
    from distill.data.reader import data_options, read_problems
    from distill.generate import STATS, output_dir, validate

    t0 = time.monotonic()
    validate(cfg)
    check(cfg)
    _check_out(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    configs = replica_configs(cfg)
    dirs = [output_dir(c) for c in configs]
    if cfg.overwrite:
        (Path(cfg.out) / STATS).unlink(missing_ok=True)
    before = [(0, 0) if cfg.overwrite else _on_disk(d) for d in dirs]
    total = len(read_problems(cfg.dataset, **data_options(cfg), limit=cfg.limit)) * cfg.n
    restarts = supervise(configs, [replica_env(r, cfg) for r in range(len(configs))], dirs, total=total)
    stats = aggregate(cfg, dirs, before, restarts, time.monotonic() - t0)
    atomic_write_json(Path(cfg.out) / STATS, stats)
    log.info("generate: %d replicas, %d samples in %s (%d written, %d resumed), %d restarts; %.1f tok/s; %.1fs",
             len(configs), stats["samples"], cfg.out, stats["samples_written"], stats["samples_resumed"],
             sum(restarts.values()), stats["tokens_per_s"], stats["wall_s"])
    return stats


def supervise(configs: list[GenerateConfig], envs: list[dict[str, str]], dirs: list[Path],
              max_restarts: int = MAX_RESTARTS, total: int | None = None) -> Counter:
    """Run one `distill generate` child per config until all exit 0; restart the ones that die. Returns the
    restarts per replica."""
    restarts: Counter = Counter()
    with tempfile.TemporaryDirectory(prefix="distill-replicas-") as tmp:
        cmds = []
        for r, c in enumerate(configs):
            save_config(c, tmp, f"replica-{r}.yaml")
            cmds.append(command(Path(tmp) / f"replica-{r}.yaml"))
            dirs[r].mkdir(parents=True, exist_ok=True)
        procs = {r: _start(cmds[r], envs[r], dirs[r]) for r in range(len(configs))}
        bar = tqdm(total=total, unit="sample", desc=f"generate x{len(configs)} replicas", dynamic_ncols=True)
        seen: dict[Path, int] = {}
        try:
            while procs:
                time.sleep(POLL_S)
                bar.update(_new_rows(dirs, seen))
                for r, proc in list(procs.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    del procs[r]
                    if rc == 0:
                        log.info("replica %d of %d finished", r, len(configs))
                        continue
                    error = _user_error(dirs[r] / LOG_FILE)
                    if error or rc == 130:
                        raise DistillError(f"replica {r} ({dirs[r]}): {error or 'interrupted'}")
                    if restarts[r] >= max_restarts:
                        raise DistillError(f"replica {r} died {restarts[r] + 1} times (last exit {_exit(rc)}); see "
                                           f"{dirs[r] / LOG_FILE}; rerun to resume")
                    restarts[r] += 1
                    log.warning("replica %d died (exit %s); restart %d of %d resumes its finished chunks", r,
                                _exit(rc), restarts[r], max_restarts)
                    # A restart resumes: never let it clear what its first run (with --overwrite) wrote.
                    if configs[r].overwrite:
                        configs[r] = dataclasses.replace(configs[r], overwrite=False)
                        save_config(configs[r], tmp, f"replica-{r}.yaml")
                    procs[r] = _start(cmds[r], envs[r], dirs[r])
        finally:
            bar.close()
            _stop(procs)
    return restarts


def command(config: Path) -> list[str]:
    """The replica: generate's own CLI on its config (its shard, one engine)."""
    return [sys.executable, "-m", "distill", "generate", "--config", str(config)]


def _new_rows(dirs: list[Path], seen: dict[Path, int]) -> int:
    """Rows in chunk files that appeared since the last look (the progress bar; each file is read once)."""
    from distill.generate import CHUNK_RE

    new = 0
    for d in dirs:
        for p in d.iterdir():
            if p not in seen and CHUNK_RE.match(p.name):
                try:
                    seen[p] = len(p.read_text(encoding="utf-8").splitlines())
                except OSError:
                    continue
                new += seen[p]
    return new


def _start(cmd: list[str], env: dict[str, str], folder: Path) -> subprocess.Popen:
    with open(folder / LOG_FILE, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _stop(procs: dict[int, subprocess.Popen]) -> None:
    """Stop what still runs (an error elsewhere, Ctrl-C): SIGTERM to each replica's process group, then SIGKILL."""
    for proc in procs.values():
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the replica and its engine processes
    except (ProcessLookupError, PermissionError):
        pass


def _user_error(log_file: Path) -> str | None:
    """The child's one-line `error: …` (a mistake a restart cannot fix), if it ended with one."""
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    last_run = lines[max((i for i, line in enumerate(lines) if line.startswith("--- ")), default=0):]
    errors = [line.removeprefix("error: ") for line in last_run if line.startswith("error: ")]
    return errors[-1] if errors else None


def _exit(rc: int) -> str:
    return f"signal {signal.Signals(-rc).name}" if rc < 0 else str(rc)


def aggregate(cfg: GenerateConfig, dirs: list[Path], before: list[tuple[int, int]], restarts: Counter,
              wall_s: float) -> dict[str, Any]:
    """DIR/stats.json: the replicas' stats summed. Resumed = what was on disk when this run started, so what a
    restarted replica resumed from its own first try still counts as written by this run."""
    from distill.generate import STATS

    parts = []
    for d in dirs:
        try:
            parts.append(json.loads((d / STATS).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise DistillError(f"{d / STATS}: missing or unreadable after the replica finished ({e}); rerun") from None
    stats: dict[str, Any] = {"teacher": cfg.teacher, "backend": cfg.backend, "data_parallel_size": len(dirs),
                             "problems_in_dataset": parts[0].get("problems_in_dataset") if parts else 0}
    for key in SUMMED:
        stats[key] = sum(int(p.get(key) or 0) for p in parts)
    stats["samples_resumed"] = sum(rows for rows, _ in before)
    stats["samples_written"] = stats["samples"] - stats["samples_resumed"]
    stats["completion_tokens_written"] = stats["completion_tokens"] - sum(tokens for _, tokens in before)
    finish: Counter = Counter()
    for p in parts:
        finish.update(p.get("finish_reasons") or {})
    stats["finish_reasons"] = dict(finish)
    gen_s = max((float(p.get("generation_s") or 0) for p in parts), default=0.0)
    stats.update(restarts={str(r): restarts[r] for r in range(len(dirs))}, wall_s=round(wall_s, 3),
                 tokens_per_s=round(stats["completion_tokens_written"] / wall_s, 2) if wall_s > 0 else 0.0,
                 replicas=[{"out": str(d), "samples": p.get("samples"), "generation_s": p.get("generation_s"),
                            "tokens_per_s": p.get("tokens_per_s")} for d, p in zip(dirs, parts)],
                 generation_s=round(gen_s, 3), out=str(cfg.out))
    return stats
