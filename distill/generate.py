"""Problems → n samples each → resumable shards: one atomic JSONL file per finished chunk, a manifest, stats."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from distill import engine, prompts
from distill.config import GenerateConfig, save_config
from distill.data.io import atomic_write_json, read_problems, write_jsonl
from distill.data.record import Record
from distill.errors import DistillError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATS = "stats.json"
CHUNK_RE = re.compile(r"^chunk-(\d{5,})\.jsonl$")
SHARD_DIR_RE = re.compile(r"^shard-(\d+)-of-(\d+)$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


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


def source_name(cfg: GenerateConfig) -> str:
    """The record-id prefix: --source, else the dataset's file stem / task name / Hub dataset name."""
    if cfg.source:
        name = cfg.source
    else:
        name = Path(cfg.dataset.rstrip("/")).name
        for suffix in (".jsonl", ".json", ".parquet", ".csv"):
            name = name.removesuffix(suffix)
    if not name or "/" in name:
        raise DistillError(f"--source {name!r}: must be a non-empty name without '/' (it prefixes record ids)")
    return name


def engine_kwargs(cfg: GenerateConfig) -> dict[str, Any]:
    """GenerateConfig → vllm.LLM arguments (eval builds a GenerateConfig and reuses this)."""
    kw: dict[str, Any] = dict(tensor_parallel_size=cfg.tensor_parallel_size,
                              pipeline_parallel_size=cfg.pipeline_parallel_size,
                              gpu_memory_utilization=cfg.gpu_memory_utilization, dtype=cfg.dtype, seed=cfg.seed)
    if cfg.data_parallel_size != 1:
        kw["data_parallel_size"] = cfg.data_parallel_size
    if cfg.max_model_len:
        kw["max_model_len"] = cfg.max_model_len
    if cfg.enforce_eager:
        kw["enforce_eager"] = True
    if cfg.distributed_executor_backend:
        kw["distributed_executor_backend"] = cfg.distributed_executor_backend
    if cfg.teacher_revision:
        kw["revision"] = cfg.teacher_revision
    return kw


def _validate(cfg: GenerateConfig) -> None:
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
    parse_shard(cfg.shard)


def _check_teacher_path(teacher: str) -> None:
    p = Path(teacher).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise DistillError(f"--teacher {teacher}: no config.json in that folder; pass a saved model folder")
        return
    if p.exists() or teacher.startswith((".", "/", "~")) or teacher.count("/") > 1:
        raise DistillError(f"--teacher {teacher}: no such model folder; pass a local model folder or a Hub id ORG/NAME")


# ---------------------------------------------------------------- problems and prompts


def load_problems(cfg: GenerateConfig) -> list[dict[str, str]]:
    """The dataset's problems ({id, problem, answer}); bundled tasks keep their own ids."""
    from distill.tasks import TASK_NAMES

    id_key = cfg.id_key or ("id" if cfg.dataset in TASK_NAMES else None)
    return read_problems(cfg.dataset, cfg.problem_key, cfg.answer_key, id_key, cfg.split, cfg.subset, cfg.revision,
                         cfg.limit)


def problem_seed(seed: int, problem_id: str) -> int:
    """Per-problem seed (sample i uses seed + i): a problem's samples do not depend on chunking, sharding or resume."""
    return (seed * 1_000_003 + stable_hash(problem_id)) % (2**31 - (1 << 20))


def render_prompts(tokenizer, problems: list[dict[str, str]], template: str, think_prefill: str
                   ) -> tuple[list[list[int]], bool]:
    """Token ids of each problem's generation prompt (rendered by distill.prompts), and whether they are prefilled."""
    ids, prefilled = [], False
    for p in problems:
        text, prefilled = prompts.generation_prompt(tokenizer, p["problem"], template, think_prefill)
        ids.append(tokenizer.encode(text, add_special_tokens=False))  # the template already holds BOS if any
    return ids, prefilled


def clamp_max_tokens(problems: list[dict[str, str]], prompt_ids: list[list[int]], max_tokens: int,
                     max_model_len: int) -> tuple[list[int], int]:
    """max_tokens per prompt, cut to what the context leaves; one warning for all; a prompt that alone fills the
    context is an error, never a silently empty sample."""
    out, clamped, smallest = [], 0, max_tokens
    for p, ids in zip(problems, prompt_ids):
        room = max_model_len - len(ids)
        if room < 1:
            raise DistillError(f"problem {p['id']}: the prompt is {len(ids)} tokens, the context is {max_model_len} "
                               f"(max_model_len); shorten the problem or raise --max-model-len")
        if max_tokens > room:
            clamped += 1
            smallest = min(smallest, room)
        out.append(min(max_tokens, room))
    if clamped:
        log.warning("%d of %d prompts: --max-tokens %d does not fit the context (%d); clamped to what is left "
                    "(down to %d tokens)", clamped, len(problems), max_tokens, max_model_len, smallest)
    return out, clamped


# ---------------------------------------------------------------- manifest


def _sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def teacher_fingerprint(cfg: GenerateConfig) -> str | None:
    """A local folder: sha256 of config.json and the weight files' names and sizes; a Hub id: the pinned revision."""
    p = Path(cfg.teacher).expanduser()
    if cfg.backend == "vllm" and p.is_dir():
        h = hashlib.sha256((p / "config.json").read_bytes() if (p / "config.json").is_file() else b"")
        for f in sorted(p.iterdir()):
            if f.suffix in WEIGHT_SUFFIXES:
                h.update(f"{f.name}:{f.stat().st_size}\n".encode())
        return "sha256:" + h.hexdigest()
    return cfg.teacher_revision


def dataset_fingerprint(problems: list[dict[str, str]]) -> str:
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p["id"], p["problem"], p["answer"]], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def build_manifest(cfg: GenerateConfig, source: str, problems: list[dict[str, str]], template: str,
                   chat_template: str | None) -> dict[str, Any]:
    """`resume_key` holds everything that changes outputs: a resume must match it exactly."""
    return {
        "resume_key": {
            "teacher": cfg.teacher,
            "teacher_revision": teacher_fingerprint(cfg),
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
        },
        "dataset": cfg.dataset,
        "backend": cfg.backend,
        "base_url": cfg.base_url,
        "max_model_len": cfg.max_model_len,
        "versions": engine.package_versions(),
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


def expected_ids(source: str, chunk: list[dict[str, str]], n: int) -> list[str]:
    return [Record.make_id(source, p["id"], i) for p in chunk for i in range(n)]


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


class _Progress:
    """tqdm over samples with tokens/s; counts finish reasons and tokens for stats.json."""

    def __init__(self, total: int, initial: int, desc: str):
        self.bar = tqdm(total=total, initial=initial, unit="sample", desc=desc, dynamic_ncols=True, smoothing=0.1)
        self.start = time.monotonic()
        self.samples = 0
        self.tokens = 0

    def update(self, samples: int, tokens: int) -> None:
        self.samples += samples
        self.tokens += tokens
        elapsed = max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix({"tok/s": f"{self.tokens / elapsed:.1f}", "samples/s": f"{self.samples / elapsed:.2f}"},
                             refresh=False)
        self.bar.update(samples)

    def close(self) -> None:
        self.bar.close()


def _records(cfg: GenerateConfig, source: str, problem: dict[str, str], samples: list[engine.Sample],
             prefilled: bool, max_tokens: int) -> list[Record]:
    out = []
    for i, s in enumerate(samples):
        if s.reasoning is not None:
            completion = prompts.join_reasoning(s.reasoning, s.text, s.finish_reason)
        else:
            completion = prompts.with_think_prefix(s.text, prefilled)
        out.append(Record(id=Record.make_id(source, problem["id"], i), problem_id=problem["id"],
                          problem=problem["problem"], answer=problem["answer"], completion=completion,
                          finish_reason=s.finish_reason, num_tokens=s.num_tokens, sample_index=i, model=cfg.teacher,
                          source=source, meta={"prompt_tokens": s.prompt_tokens, "max_tokens": max_tokens}))
    return out


def _write_chunk(path: Path, records: list[Record], stats: dict[str, Any]) -> None:
    write_jsonl(path, records)  # temp file + fsync + rename: a crash leaves the whole chunk or nothing
    stats["chunks_written"] += 1
    stats["samples_written"] += len(records)
    for r in records:
        stats["finish_reasons"][r.finish_reason] += 1
        stats["completion_tokens"] += r.num_tokens


def _load_tokenizer(cfg: GenerateConfig):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(cfg.teacher, revision=cfg.teacher_revision)
    except (OSError, ValueError) as e:
        raise DistillError(f"--teacher {cfg.teacher}: cannot load its tokenizer ({' '.join(str(e).split())[:200]})"
                           ) from None


def run(cfg: GenerateConfig, llm: Any = None) -> dict[str, Any]:
    """Generate cfg.n samples per problem into cfg.out; resumes a previous run of the same config.

    `llm`: an already-started vllm.LLM to reuse (tests, eval); otherwise the vllm backend starts its own.
    Returns the stats written to stats.json.
    """
    t0 = time.monotonic()
    _validate(cfg)
    shard = parse_shard(cfg.shard)
    if cfg.backend == "vllm" and llm is None:
        _check_teacher_path(cfg.teacher)
    template = prompts.load_template(cfg.prompt_template)
    source = source_name(cfg)
    all_problems = load_problems(cfg)
    problems = [p for p in all_problems if in_shard(p["id"], shard)]
    chunks = [problems[i:i + cfg.chunk_size] for i in range(0, len(problems), cfg.chunk_size)]
    out_dir = output_dir(cfg)

    tokenizer = None
    if cfg.backend == "vllm":
        tokenizer = engine.engine_tokenizer(llm) if llm is not None else _load_tokenizer(cfg)
    chat_template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    manifest = build_manifest(cfg, source, problems, template, chat_template if isinstance(chat_template, str) else
                              json.dumps(chat_template, sort_keys=True) if chat_template else None)
    prepare_out_dir(cfg, out_dir, manifest)
    atomic_write_json(out_dir / MANIFEST, manifest)
    save_config(cfg, out_dir)

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
        progress = _Progress(stats["samples"], stats["samples_resumed"], f"generate {source}")
        try:
            if cfg.backend == "vllm":
                _run_vllm(cfg, llm, tokenizer, template, source, chunks, pending, out_dir, stats, progress)
            else:
                _run_openai(cfg, template, source, chunks, pending, out_dir, stats, progress)
        finally:
            progress.close()
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


def _run_vllm(cfg, llm, tokenizer, template, source, chunks, pending, out_dir, stats, progress) -> None:
    todo = [p for k in pending for p in chunks[k]]
    prompt_ids, prefilled = render_prompts(tokenizer, todo, template, cfg.think_prefill)
    if llm is None:
        try:
            llm = engine.make_llm(cfg.teacher, **engine_kwargs(cfg))
        except (OSError, ValueError) as e:
            raise DistillError(f"--teacher {cfg.teacher}: vLLM could not load it ({type(e).__name__}: "
                               f"{' '.join(str(e).split())[:300]})") from None
    max_tokens, stats["clamped_prompts"] = clamp_max_tokens(todo, prompt_ids, cfg.max_tokens,
                                                            engine.engine_max_model_len(llm))
    ids_of = {p["id"]: (ids, m) for p, ids, m in zip(todo, prompt_ids, max_tokens)}
    for k in pending:
        chunk = chunks[k]
        ids = [ids_of[p["id"]][0] for p in chunk]
        limits = [ids_of[p["id"]][1] for p in chunk]
        outs = engine.vllm_generate(llm, ids, cfg.n, cfg.temperature, cfg.top_p, limits,
                                    [problem_seed(cfg.seed, p["id"]) for p in chunk])
        records = [r for p, samples, m in zip(chunk, outs, limits) for r in _records(cfg, source, p, samples,
                                                                                     prefilled, m)]
        _write_chunk(chunk_path(out_dir, k), records, stats)
        progress.update(len(records), sum(r.num_tokens for r in records))


def _run_openai(cfg, template, source, chunks, pending, out_dir, stats, progress) -> None:
    asyncio.run(_openai_main(cfg, template, source, chunks, pending, out_dir, stats, progress))


async def _openai_main(cfg, template, source, chunks, pending, out_dir, stats, progress) -> None:
    teacher = engine.OpenAITeacher(cfg.base_url, cfg.teacher, cfg.api_key_env, cfg.request_timeout, cfg.max_retries)
    try:
        await teacher.check()
        requests = asyncio.Semaphore(cfg.concurrency)
        # Enough chunks in flight to keep `concurrency` requests busy across chunk boundaries, no more (memory).
        chunk_slots = asyncio.Semaphore(max(2, -(-cfg.concurrency // (cfg.chunk_size * cfg.n)) + 1))
        prefilled = cfg.think_prefill != "off"  # a server's R1 template opens the thought itself

        async def sample(p: dict[str, str], i: int) -> engine.Sample:
            async with requests:
                s = await teacher.complete(prompts.chat_messages(p["problem"], template), cfg.temperature, cfg.top_p,
                                           cfg.max_tokens, problem_seed(cfg.seed, p["id"]) + i)
            progress.update(1, s.num_tokens)
            return s

        async def do_chunk(k: int) -> None:
            try:
                chunk = chunks[k]
                results = await asyncio.gather(*(sample(p, i) for p in chunk for i in range(cfg.n)))
                records = []
                for j, p in enumerate(chunk):
                    records += _records(cfg, source, p, results[j * cfg.n:(j + 1) * cfg.n], prefilled, cfg.max_tokens)
                _write_chunk(chunk_path(out_dir, k), records, stats)
            finally:
                chunk_slots.release()

        try:
            async with asyncio.TaskGroup() as tg:  # the first failure cancels the rest; finished chunks stay written
                for k in pending:
                    await chunk_slots.acquire()
                    tg.create_task(do_chunk(k))
        except BaseExceptionGroup as group:
            first = group.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
    finally:
        stats["retries"] = teacher.retries
        await teacher.close()
