"""Problems → n samples each → resumable shards: one atomic JSONL file per finished chunk, a manifest, stats.

The engine is fed continuously (engine.Engine.generate streams): a chunk file is written the moment its last problem
completes, so the engine never idles waiting for a chunk's slowest sample, and a crash loses only the chunks whose
problems were still in flight. A rerun of the same command resumes: chunks on disk are checked and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from distill import prompts
from distill.config import GenerateConfig, save_config
from distill.data.io import atomic_write_json, write_jsonl
from distill.data.reader import Problem, data_options, read_problems, source_name
from distill.data.record import Record
from distill.engine import Engine, Request, Sample, Sampling, make_engine, model_identity, package_versions
from distill.errors import DistillError
from distill.redact import redact_url
from distill.tasks import prompt_template

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATS = "stats.json"
CHUNK_RE = re.compile(r"^chunk-(\d{5,})\.jsonl$")
SHARD_DIR_RE = re.compile(r"^shard-(\d+)-of-(\d+)$")


# ---------------------------------------------------------------- options


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """'I/N' → (I, N) with 0 <= I < N."""
    if spec is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not int(m.group(1)) < int(m.group(2)):
        raise DistillError(f"--shard {spec!r}: expected I/N with 0 <= I < N, e.g. 0/8")
    return int(m.group(1)), int(m.group(2))


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process and on every machine (unlike hash())."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def in_shard(problem_id: str, shard: tuple[int, int] | None) -> bool:
    """Partition by problem id, not row order: N jobs agree on the split whatever order they read rows in."""
    return shard is None or stable_hash(problem_id) % shard[1] == shard[0]


def output_dir(cfg: GenerateConfig) -> Path:
    """DIR, or DIR/shard-I-of-N for --shard I/N, so N jobs writing into one DIR never touch each other's files."""
    shard = parse_shard(cfg.shard)
    return Path(cfg.out) if shard is None else Path(cfg.out) / f"shard-{shard[0]}-of-{shard[1]}"


def validate(cfg: Any) -> None:
    """Sampling options every generating stage shares (generate, eval): all errors at once."""
    errors = []
    for name in ("n", "max_tokens", "chunk_size", "concurrency"):
        if getattr(cfg, name) < 1:
            errors.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if not 0 < cfg.top_p <= 1:
        errors.append(f"--top-p must be in (0, 1], got {cfg.top_p}")
    if cfg.temperature < 0:
        errors.append(f"--temperature must be >= 0, got {cfg.temperature}")
    if cfg.limit is not None and cfg.limit < 1:
        errors.append(f"--limit must be >= 1, got {cfg.limit}")
    if cfg.backend == "openai" and not cfg.base_url:
        errors.append("--backend openai needs --base-url, e.g. http://127.0.0.1:8000/v1")
    if errors:
        raise DistillError("; ".join(errors))
    parse_shard(getattr(cfg, "shard", None))


def problem_seed(seed: int, problem_id: str) -> int:
    """Per-problem seed (sample i uses seed + i): a problem's samples do not depend on chunking, sharding or resume."""
    return (seed * 1_000_003 + stable_hash(problem_id)) % (2**31 - (1 << 20))


def clamp_max_tokens(problems: list[Problem], prompt_lens: list[int], max_tokens: int,
                     max_model_len: int | None) -> tuple[list[int], int]:
    """max_tokens per prompt, cut to what the context leaves; one warning for all; a prompt that alone fills the
    context is an error, never a silently empty sample. An engine that does not say its context (a server) is
    not clamped."""
    if max_model_len is None:
        return [max_tokens] * len(problems), 0
    out, clamped, smallest = [], 0, max_tokens
    for p, n in zip(problems, prompt_lens):
        room = max_model_len - n
        if room < 1:
            raise DistillError(f"problem {p.id}: the prompt is {n} tokens, the context is {max_model_len} "
                               f"(max_model_len); shorten the problem or raise --max-model-len")
        if max_tokens > room:
            clamped += 1
            smallest = min(smallest, room)
        out.append(min(max_tokens, room))
    if clamped:
        log.warning("%d of %d prompts: --max-tokens %d does not fit the context (%d); clamped to what is left "
                    "(down to %d tokens)", clamped, len(problems), max_tokens, max_model_len, smallest)
    return out, clamped


# ---------------------------------------------------------------- manifest and resume


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dataset_fingerprint(problems: list[Problem]) -> str:
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.problem, p.answer], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def build_manifest(cfg: GenerateConfig, source: str, problems: list[Problem], template: str,
                   fingerprint: str | None, chat_template: str | None, chat_note: str = "") -> dict[str, Any]:
    """`resume_key` holds everything that changes outputs: a resume must match it exactly."""
    return {
        "resume_key": {
            "teacher": cfg.teacher,
            "teacher_revision": fingerprint,  # content hash of a local folder, else the pinned Hub revision
            "source": source,
            "n": cfg.n, "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
            "seed": cfg.seed,
            "think_prefill": cfg.think_prefill,
            "prompt_template_sha256": _sha256(template),
            "chat_template_sha256": _sha256(chat_template) if chat_template else None,
            "dataset_sha256": dataset_fingerprint(problems),
            "problems": len(problems),
            "shard": cfg.shard,
            "chunk_size": cfg.chunk_size,
            "dtype": cfg.dtype,
            "max_model_len": cfg.max_model_len,
            "deterministic": cfg.deterministic,
            "thinking_budget": cfg.thinking_budget,
        },
        "dataset": cfg.dataset,
        "chat_template_note": chat_note,
        "backend": cfg.backend,
        "base_url": redact_url(cfg.base_url),
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k} {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def prepare_out_dir(cfg: GenerateConfig, out_dir: Path, manifest: dict[str, Any]) -> None:
    """Start, resume (same resume_key) or, with --overwrite, clear this run's own files; refuse anything else."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shard = parse_shard(cfg.shard)
    root = Path(cfg.out)
    if shard is None:
        if any(SHARD_DIR_RE.match(p.name) for p in root.iterdir() if p.is_dir()):
            raise DistillError(f"--out {root}: holds --shard outputs (shard-I-of-N/); use another --out for an "
                               f"unsharded run")
    else:
        if (root / MANIFEST).is_file():
            raise DistillError(f"--out {root}: holds an unsharded run; use another --out for --shard runs")
        others = {int(m.group(2)) for p in root.iterdir() if p.is_dir() and (m := SHARD_DIR_RE.match(p.name))}
        if others - {shard[1]}:
            raise DistillError(f"--out {root}: holds shards of a {sorted(others - {shard[1]})[0]}-way split; all jobs "
                               f"writing into one --out must use the same N in --shard I/N")
    ours = [p for p in out_dir.iterdir() if p.is_file() and (CHUNK_RE.match(p.name) or p.name in (MANIFEST, STATS))]
    if cfg.overwrite:
        for p in ours:
            p.unlink()
        if ours:
            log.info("--overwrite: removed %d files from %s", len(ours), out_dir)
        return
    path = out_dir / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))["resume_key"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DistillError(f"{path}: not a distill manifest; pass --overwrite to start over") from None
        diffs = _differences(old, manifest["resume_key"])
        if diffs:
            raise DistillError(f"--out {out_dir}: cannot resume, the config differs from the first run: "
                               f"{'; '.join(diffs)}; rerun with the same options, or pass --overwrite to start over")
    elif any(CHUNK_RE.match(p.name) for p in ours):
        raise DistillError(f"--out {out_dir}: holds chunk files but no {MANIFEST}; pass --overwrite to start over")


def chunk_path(out_dir: Path, k: int) -> Path:
    return out_dir / f"chunk-{k:05d}.jsonl"


def expected_ids(source: str, chunk: list[Problem], n: int) -> list[str]:
    return [Record.make_id(source, p.id, i) for p in chunk for i in range(n)]


def read_chunk(path: Path, expected: list[str]) -> list[dict[str, Any]]:
    """A finished chunk's rows, verified to hold exactly the expected record ids."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DistillError(f"{path}:{lineno}: not valid JSON ({e.msg}); delete the file to regenerate it") from None
    ids = [r.get("id") for r in rows]
    if sorted(ids) != sorted(expected):
        missing, extra = set(expected) - set(ids), set(ids) - set(expected)
        raise DistillError(f"{path}: holds {len(ids)} records, expected {len(expected)} (missing {len(missing)}, "
                           f"unexpected {len(extra)}, duplicated {len(ids) - len(set(ids))}); delete the file to "
                           f"regenerate it, or pass --overwrite")
    return rows


# ---------------------------------------------------------------- the run


def sample_records(cfg: Any, model: str, source: str, problem: Problem, samples: list[Sample], prefilled: bool,
                   max_tokens: int) -> list[Record]:
    """Engine samples → Records, the completion stored whole ('<think>' included)."""
    out = []
    for i, s in enumerate(samples):
        if s.reasoning is not None:
            completion = prompts.join_reasoning(s.reasoning, s.text, s.finish_reason)
        else:
            completion = prompts.with_think_prefix(s.text, prefilled)
        out.append(Record(id=Record.make_id(source, problem.id, i), problem_id=problem.id, problem=problem.problem,
                          answer=problem.answer, completion=completion, finish_reason=s.finish_reason,
                          num_tokens=s.num_tokens, sample_index=i, model=model, source=source, max_tokens=max_tokens,
                          meta={"prompt_tokens": s.prompt_tokens}))
    return out


def run(cfg: GenerateConfig, engine: Engine | None = None) -> dict[str, Any]:
    """Generate cfg.n samples per problem into cfg.out; resumes a previous run of the same config.

    `engine`: an already-started engine to reuse (eval, tests); otherwise one is started (and closed) here.
    With --data-parallel-size N, N replicas run instead (distill/replicas.py) and `engine` is not used.
    Returns the stats written to stats.json.
    """
    if cfg.data_parallel_size != 1:  # N engine replicas in child processes, each on its own partition
        from distill import replicas

        return replicas.run(cfg)
    t0 = time.monotonic()
    validate(cfg)
    shard = parse_shard(cfg.shard)
    template = prompt_template(cfg.dataset, cfg.prompt_template, code=bool(cfg.tests_key))  # code: a code block
    source = source_name(cfg.dataset, cfg.source)
    all_problems = read_problems(cfg.dataset, **data_options(cfg), limit=cfg.limit)
    problems = [p for p in all_problems if in_shard(p.id, shard)]
    chunks = [problems[i:i + cfg.chunk_size] for i in range(0, len(problems), cfg.chunk_size)]
    out_dir = output_dir(cfg)

    # The resume key is checked before an engine starts: a refused resume costs seconds, not an engine start.
    ident = engine.identity() if engine is not None else model_identity(cfg.teacher, cfg, "--teacher")
    manifest = build_manifest(cfg, source, problems, template, ident.fingerprint, ident.chat_template,
                              ident.chat_template_note)
    prepare_out_dir(cfg, out_dir, manifest)

    stats: dict[str, Any] = {
        "teacher": cfg.teacher, "backend": cfg.backend, "shard": cfg.shard, "problems_in_dataset": len(all_problems),
        "problems": len(problems), "samples": len(problems) * cfg.n, "chunks": len(chunks), "chunks_resumed": 0,
        "chunks_written": 0, "samples_resumed": 0, "samples_written": 0, "finish_reasons": Counter(),
        "completion_tokens": 0, "clamped_prompts": 0, "retries": 0,
    }
    pending = []
    for k, chunk in enumerate(chunks):
        path = chunk_path(out_dir, k)
        if path.is_file():
            rows = read_chunk(path, expected_ids(source, chunk, cfg.n))
            stats["chunks_resumed"] += 1
            stats["samples_resumed"] += len(rows)
            for r in rows:
                stats["finish_reasons"][r.get("finish_reason", "")] += 1
                stats["completion_tokens"] += int(r.get("num_tokens") or 0)
        else:
            pending.append(k)
    if stats["chunks_resumed"]:
        log.info("resuming %s: %d of %d chunks already written (%d samples)", out_dir, stats["chunks_resumed"],
                 len(chunks), stats["samples_resumed"])
    if not problems:
        log.warning("--shard %s: no problem of %d falls in this partition", cfg.shard, len(all_problems))

    resumed_tokens = stats["completion_tokens"]
    t_gen = time.monotonic()
    if pending:
        own = engine is None
        engine = engine or make_engine(cfg.teacher, cfg, "--teacher")
        try:
            _generate(cfg, engine, template, source, chunks, pending, out_dir, stats, manifest)
        finally:
            stats["retries"] = getattr(engine, "retries", 0)
            if getattr(engine, "server_requests", None) is not None:  # a fleet of servers: the load each took
                stats["server_requests"] = engine.server_requests
            if own:
                engine.close()
    else:
        atomic_write_json(out_dir / MANIFEST, manifest)
        save_config(cfg, out_dir)
    gen_s = time.monotonic() - t_gen
    new_tokens = stats["completion_tokens"] - resumed_tokens
    stats.update(
        finish_reasons=dict(stats["finish_reasons"]),
        completion_tokens_written=new_tokens,
        generation_s=round(gen_s, 3),
        wall_s=round(time.monotonic() - t0, 3),
        tokens_per_s=round(new_tokens / gen_s, 2) if pending and gen_s > 0 else 0.0,
        samples_per_s=round(stats["samples_written"] / gen_s, 3) if pending and gen_s > 0 else 0.0,
        out=str(out_dir),
    )
    atomic_write_json(out_dir / STATS, stats)
    log.info("generate: %d problems x %d = %d samples in %s (%d written, %d resumed); %d completion tokens written "
             "at %.1f tok/s, %.2f samples/s; finish %s; %d clamped, %d retries; %.1fs",
             len(problems), cfg.n, stats["samples"], out_dir, stats["samples_written"], stats["samples_resumed"],
             new_tokens, stats["tokens_per_s"], stats["samples_per_s"], stats["finish_reasons"],
             stats["clamped_prompts"], stats["retries"], stats["wall_s"])
    return stats


def _generate(cfg: GenerateConfig, engine: Engine, template: str, source: str, chunks: list[list[Problem]],
              pending: list[int], out_dir: Path, stats: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Every pending chunk's requests go to the engine in one stream; each chunk is written when it is complete.
    The manifest (which pins the config for resumes) is written with the first chunk: a run that fails before
    writing anything pins nothing."""
    todo = [p for k in pending for p in chunks[k]]
    rendered = [engine.render(p.problem, template, cfg.think_prefill) for p in todo]
    lens = [len(r.ids) if r.ids is not None else 0 for r in rendered]
    limits, stats["clamped_prompts"] = clamp_max_tokens(todo, lens, cfg.max_tokens, engine.max_model_len)
    plan = {p.id: (r, m) for p, r, m in zip(todo, rendered, limits)}
    requests = (Request(key=(k, j), prompt=plan[p.id][0], n=cfg.n, max_tokens=plan[p.id][1],
                        seed=problem_seed(cfg.seed, p.id))
                for k in pending for j, p in enumerate(chunks[k]))
    parts: dict[int, dict[int, list[Record]]] = {}
    bar = tqdm(total=stats["samples"], initial=stats["samples_resumed"], unit="sample", desc=f"generate {source}",
               dynamic_ncols=True, smoothing=0.1)
    start, tokens = time.monotonic(), 0
    try:
        for req, samples in engine.generate(requests, Sampling(cfg.temperature, cfg.top_p, cfg.thinking_budget)):
            k, j = req.key
            problem = chunks[k][j]
            prompt, limit = plan[problem.id]
            got = parts.setdefault(k, {})
            got[j] = sample_records(cfg, cfg.teacher, source, problem, samples, prompt.prefilled, limit)
            if len(got) == len(chunks[k]):
                if not (out_dir / MANIFEST).is_file() or not stats["chunks_written"]:
                    atomic_write_json(out_dir / MANIFEST, manifest)
                    save_config(cfg, out_dir)
                records = [r for i in range(len(chunks[k])) for r in got[i]]
                write_jsonl(chunk_path(out_dir, k), records)  # temp file + fsync + rename: whole or nothing
                del parts[k]
                stats["chunks_written"] += 1
                stats["samples_written"] += len(records)
                for r in records:
                    stats["finish_reasons"][r.finish_reason] += 1
                    stats["completion_tokens"] += r.num_tokens
            tokens += sum(s.num_tokens for s in samples)
            elapsed = max(time.monotonic() - start, 1e-9)
            bar.set_postfix({"tok/s": f"{tokens / elapsed:.1f}"}, refresh=False)
            bar.update(len(samples))
    finally:
        bar.close()
