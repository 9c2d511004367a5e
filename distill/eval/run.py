"""`distill eval`: generate n samples per problem (or read existing completions), grade, score, record provenance.

Generation goes through `distill.generate.run` into DIR/generations/<task>, so an interrupted eval resumes
exactly like generate; grading and scoring are redone from the shards each time (seconds, not hours).
`compare` puts several eval output dirs side by side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.config import EngineMixin, EvalConfig, GenerateConfig, save_config
from distill.data.io import atomic_write_json, atomic_write_text, iter_rows, read_records, write_jsonl
from distill.data.reader import Problem, data_options, read_problems, read_samples
from distill.data.record import Record, content_id
from distill.engine import Engine, make_engine
from distill.errors import DistillError
from distill.eval import budget, report
from distill.eval.score import grade_and_score
from distill.verify.math import GRADER_VERSION
from distill.verify.math_audit import AUDIT_FILE, NOT_FOR_CODE, Audit, write_rows
from distill.tasks import TASKS, get_task, prompt_template

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
RESULTS_FILE = "results.json"
SHARD_FILE = "shard.json"


# ---------------------------------------------------------------- tasks


@dataclass(frozen=True)
class EvalTask:
    """What eval evaluates: a bundled task, a data file or a Hub dataset; `provenance` goes into results.json."""

    name: str
    dataset: str  # what the reader reads (a task name, a path, a Hub id)
    bundled: bool
    answer_type: str
    verifier: str = "math"
    provenance: dict[str, Any] = field(default_factory=dict)


def resolve_task(name: str, cfg: EvalConfig) -> EvalTask:
    answer_type = None if cfg.answer_type == "task" else cfg.answer_type
    verifier = None if cfg.verifier == "task" else cfg.verifier
    if name in TASKS and not Path(name).exists():
        task = get_task(name)
        return EvalTask(name, name, True, answer_type or task.answer_type, verifier or task.verifier, {
            "bundled": True, "version": task.version, "rows": task.rows, "data_sha256": task.sha256,
            "yaml_sha256": task.yaml_sha256, "source": task.source,
            "prompt_template_sha256": _sha256_text(prompt_template(name, cfg.prompt_template))})
    verifier = verifier or ("code" if cfg.tests_key else "math")  # tests in a column: a code data set
    path = Path(name)
    if path.is_file():
        return EvalTask(path.stem, str(path), False, answer_type or "auto", verifier, {
            "bundled": False, "data_sha256": report.sha256_file(path), "path": str(path.resolve())})
    if path.suffix or name.startswith((".", "/", "~")) or "/" not in name:
        raise DistillError(f"task {name!r}: not a bundled task and no such file; bundled tasks: {', '.join(TASKS)}")
    # A Hub dataset id: pinned by --revision, hashed by nobody (the revision is the provenance).
    return EvalTask(name.replace("/", "__"), name, False, answer_type or "auto", verifier, {
        "bundled": False, "hub_id": name, "split": cfg.split, "subset": cfg.subset, "revision": cfg.revision})


def task_problems(task: EvalTask, cfg: EvalConfig, limit: int | None = None) -> list[Problem]:
    options = {} if task.bundled else data_options(cfg)
    problems = read_problems(task.dataset, **options, limit=limit)
    empty = [p.id for p in problems if not p.answer.strip()]
    if empty:
        raise DistillError(f"task {task.name}: {len(empty)} problems have an empty gold answer (first: id {empty[0]}); "
                           f"fill them in or drop those rows (an empty gold would be scored as wrong)")
    return problems


# ---------------------------------------------------------------- inputs: existing completions


def completions_records(cfg: EvalConfig) -> tuple[EvalTask, list[Record]]:
    """Records from --completions, read by the one reader (data/reader.py: ids, columns, published formats). The
    gold is the rows' --answer-key column, or with --task the task's gold, matched by problem_id or problem text."""
    gold: dict[str, Problem] | None = None
    by_text: dict[str, Problem] = {}
    if cfg.task:
        task = resolve_task(cfg.task, cfg)
        problems = task_problems(task, cfg)
        gold = {p.id: p for p in problems}
        by_text = {content_id(p.problem): p for p in problems}
    else:
        task = EvalTask(Path(cfg.completions).stem, "", False,
                        "auto" if cfg.answer_type == "task" else cfg.answer_type,
                        ("code" if cfg.tests_key else "math") if cfg.verifier == "task" else cfg.verifier,
                        {"bundled": False, "data_sha256": report.sha256_file(cfg.completions)})
    task.provenance["completions"] = str(cfg.completions)
    options = data_options(cfg)
    options["answer_key"] = None if gold is not None else cfg.answer_key
    if gold is not None:
        options["tests_key"] = None  # the task's tests are the gold
    records: list[Record] = []
    kept: set[str] = set()
    for r in read_samples(cfg.completions, format=cfg.format, completion_key=cfg.completion_key,
                          problem_optional=True, skip_invalid=cfg.skip_invalid, **options):
        if gold is not None:
            match = gold.get(r.problem_id) or by_text.get(content_id(r.problem))
            if match is None:
                raise DistillError(f"{r.meta.get('row') or 'sample ' + r.id}: problem_id {r.problem_id!r} is not in task {cfg.task} "
                                   f"(by id or text); pass the matching --task, or drop --task and give each row "
                                   f"its gold in --answer-key")
            r = dataclasses.replace(r, problem_id=match.id, answer=match.answer, problem=r.problem or match.problem,
                                    id=Record.make_id(r.source, match.id, r.sample_index))
        elif not r.answer.strip():
            raise DistillError(f"{r.meta.get('row', r.id)}: empty gold answer in column '{cfg.answer_key}'; fill it "
                               f"in, pass --answer-key with the gold column, or --task to take the task's gold")
        if r.problem_id not in kept:
            if cfg.limit is not None and len(kept) >= cfg.limit:
                continue
            kept.add(r.problem_id)
        records.append(r)
    if not records:
        raise DistillError(f"{cfg.completions}: no completions found; the file is empty")
    return task, records


# ---------------------------------------------------------------- generation


def generate_config(cfg: EvalConfig, task: EvalTask) -> GenerateConfig:
    """The generate run of one task: eval's engine and sampling options, the task's data, DIR/generations/<task>."""
    engine_opts = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(EngineMixin)}
    data = {} if task.bundled else data_options(cfg)
    return GenerateConfig(**engine_opts, **data, teacher=cfg.model, teacher_revision=cfg.model_revision,
                          dataset=task.dataset, source=task.name, out=str(Path(cfg.out) / "generations" / task.name),
                          shard=cfg.shard)


def _native(cfg: EvalConfig, engine: Engine | None) -> bool:
    # No engine here: data parallel replicas generate, each a vLLM engine started with the budget (vllm_kwargs).
    return budget.native(cfg, engine) if engine is not None else bool(cfg.thinking_budget)


def generate_task(cfg: EvalConfig, task: EvalTask, engine: Engine | None) -> tuple[list[Record], dict]:
    """Generate (or resume) the task's samples under DIR/generations/<task> with distill.generate (its shard
    folder with --shard; replicas with --data-parallel-size, when `engine` is None)."""
    from distill import generate

    problems = task_problems(task, cfg, cfg.limit)  # empty golds fail before any generation
    gcfg = generate_config(cfg, task)
    native = _native(cfg, engine)
    if cfg.thinking_budget and not native:  # the thought runs to the budget; force() answers
        gcfg = dataclasses.replace(gcfg, max_tokens=cfg.thinking_budget, thinking_budget=None)
    gen_stats = generate.run(gcfg, engine=engine) or {}
    where = generate.output_dir(gcfg)
    # The task's problem order whatever the layout (replica shard folders read one after another).
    rank = {p.id: k for k, p in enumerate(problems)}
    records = sorted(read_records(where), key=lambda r: (rank.get(r.problem_id, len(rank)), r.sample_index))
    forced = None
    if budget.check(cfg):
        if native:
            forced = {"mode": "engine (vLLM thinking_token_budget)", "thinking_budget": cfg.thinking_budget}
        else:
            name = task.name + (f".{where.name}" if cfg.shard else "")  # shards never share a continuation file
            records, counts = budget.force(cfg, name, records, engine, dataset=task.dataset)
            forced = {"mode": "continuation (eval/budget.py)", **counts}
    limit = cfg.thinking_budget if cfg.thinking_budget and not native else cfg.max_tokens
    clamped = {r.problem_id for r in records if 0 < r.max_tokens < limit}
    manifest = _read_json(where / "manifest.json")
    if manifest is None:  # replicas: each shard folder has its manifest, alike but for the shard
        manifest = next((_read_json(p / "manifest.json") for p in sorted(where.glob("shard-*-of-*"))), None)
    return records, {"stats": gen_stats, "manifest": manifest, "clamped_prompts": len(clamped), "budget": forced,
                     "order": [Record.make_id(task.name, p.id, i) for p in problems for i in range(cfg.n)]}


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DistillError(f"{path}: not valid JSON ({e.msg}); delete it or rerun with --overwrite") from None


# ---------------------------------------------------------------- the stage


def _task_provenance(task: EvalTask, score: dict[str, Any]) -> dict[str, Any]:
    """results.json provenance of one task: its data, and the verifier that graded it (code: what the sandbox did)."""
    prov = {**task.provenance, "answer_type": task.answer_type, "verifier": task.verifier,
            "verifier_version": score["verifier_version"]}
    if task.verifier == "code":
        from distill.verify.sandbox import sandbox_info

        prov["sandbox"] = sandbox_info()
    return prov


def check_audit(cfg: EvalConfig, tasks: list[EvalTask]) -> None:
    """--audit needs a math task to audit; code tasks among math ones are noted as not audited, not skipped silently."""
    if not cfg.audit:
        return
    code = [t.name for t in tasks if t.verifier != "math"]
    if len(code) == len(tasks):
        raise DistillError(f"--audit: {', '.join(code)} {'is' if len(code) == 1 else 'are'} graded by the code "
                           f"verifier; {NOT_FOR_CODE}; drop --audit")
    if code:
        log.warning("--audit: %s not audited (%s); results.json says so per task", ", ".join(code), NOT_FOR_CODE)


def _grade_task(records: list[Record], task: EvalTask, cfg: EvalConfig, audit_rows: list[dict]
                ) -> tuple[list[dict], dict[str, Any]]:
    """One task's graded samples and score; under --audit, its disagreements appended to `audit_rows`."""
    audit = Audit() if cfg.audit and task.verifier == "math" else None
    graded, score = grade_and_score(records, task.name, task.verifier, task.answer_type, cfg, audit)
    if audit is not None:
        audit_rows.extend(audit.rows)
        log.info("audit %s: %s", task.name, audit.describe())
    elif cfg.audit:
        score["audit"] = {"applies": False, "why": NOT_FOR_CODE}
    return graded, score


def run(cfg: EvalConfig, engine: Engine | None = None) -> dict[str, Any]:
    """Evaluate; returns results.json's content. `engine`: one to reuse (tests pass the session's)."""
    from distill import replicas
    from distill.generate import in_shard, parse_shard

    started = time.time()
    shard = parse_shard(cfg.shard)
    replicas.check(cfg)
    if cfg.data_parallel_size > 1 and cfg.min_thinking_tokens:
        raise DistillError("--min-thinking-tokens continues samples on one engine; drop --data-parallel-size")
    # A shard's results go to OUT/shard-I-of-N (`distill eval merge OUT` combines them); generations stay in
    # OUT/generations/<task>/shard-I-of-N, generate's layout.
    out = Path(cfg.out) / f"shard-{shard[0]}-of-{shard[1]}" if shard else Path(cfg.out)
    samples: list[dict] = []
    tasks: dict[str, dict] = {}
    generation: dict[str, dict] = {}
    scores: dict[str, dict] = {}
    order: dict[str, list[str]] = {}
    audit_rows: list[dict] = []
    if cfg.completions:
        if cfg.model:
            raise DistillError("pass either --model (generate, then grade) or --completions (grade only), not both")
        task, records = completions_records(cfg)
        check_audit(cfg, [task])
        order[task.name] = [r.id for r in records]
        records = [r for r in records if in_shard(r.problem_id, shard)]
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        graded, scores[task.name] = _grade_task(records, task, cfg, audit_rows)
        tasks[task.name] = _task_provenance(task, scores[task.name])
        samples.extend(graded)
    else:
        if not cfg.model:
            raise DistillError("nothing to evaluate: pass --model MODEL to generate and grade, "
                               "or --completions FILE to grade existing outputs")
        resolved = [resolve_task(t, cfg) for t in cfg.tasks]
        names = [t.name for t in resolved]
        if len(set(names)) != len(names):
            raise DistillError(f"--tasks: duplicate task name in {', '.join(names)}; list each task once")
        budget.check(cfg)
        check_audit(cfg, resolved)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        own = engine is None and cfg.data_parallel_size == 1  # replicas start their own engines
        engine = make_engine(cfg.model, cfg, "--model") if own else engine  # one engine for every task
        try:
            for task in resolved:
                records, generation[task.name] = generate_task(cfg, task, engine)
                order[task.name] = generation[task.name].pop("order")
                graded, scores[task.name] = _grade_task(records, task, cfg, audit_rows)
                tasks[task.name] = _task_provenance(task, scores[task.name])
                samples.extend(graded)
        finally:
            if own:
                engine.close()
    write_jsonl(out / SAMPLES_FILE, samples)
    if cfg.audit:
        write_rows(out, audit_rows)
    elif (out / AUDIT_FILE).is_file():  # an earlier --audit run's: it does not describe these samples
        (out / AUDIT_FILE).unlink()
    if shard:  # what `eval merge` needs to rebuild the unsharded run's order and check that no sample is missing
        atomic_write_json(out / SHARD_FILE, {"shard": cfg.shard, "order": order})
    results = report.build_results(cfg, scores, tasks, generation, grader_version=GRADER_VERSION)
    atomic_write_json(out / RESULTS_FILE, results)
    stats = {"samples": len(samples), "tasks": {name: {"problems": s["problems"], "samples": s["samples"],
                                                        "reasons": s["reasons"], "extracted_by": s["extracted_by"]}
                                                 for name, s in scores.items()},
             "clamped_prompts": {name: r.get("clamped_prompts") for name, r in results["results"].items()},
             "wall_s": round(time.time() - started, 3)}
    atomic_write_json(out / "stats.json", stats)
    for line in report.format_table({str(out): results}).splitlines():
        log.info("%s", line)
    summary = ", ".join(f"{t} pass@1 {r['pass@1']:.1f}" for t, r in results["results"].items())
    log.info("eval: %d samples generated and graded in %.1fs; %s; wrote %s", len(samples), time.time() - started,
             summary, out / RESULTS_FILE)
    return results


def compare(dirs: list[str], out: str | None = None) -> dict[str, Any]:
    """Side-by-side table (tasks × runs, pass@1 ± CI) and plots of several eval output dirs.

    Plots and compare.md go to `out`, by default DIR1/compare/ (next to the first run, never the working dir).
    """
    if not dirs:
        raise DistillError("compare: pass at least one eval output directory")
    runs: dict[str, dict] = {}
    for d in dirs:
        results = _read_json(Path(d) / RESULTS_FILE)
        if results is None:
            raise DistillError(f"{d}: no {RESULTS_FILE}; pass directories written by `distill eval --out`")
        runs[str(d)] = results
    out_dir = Path(out) if out else Path(dirs[0]) / "compare"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = report.format_table(runs)
    samples = {d: [row for _, row in iter_rows(Path(d) / SAMPLES_FILE)] if (Path(d) / SAMPLES_FILE).is_file() else []
               for d in dirs}
    plots = report.plot_compare(runs, samples, out_dir)
    atomic_write_text(out_dir / "compare.md", table + "\n")
    for line in table.splitlines():
        log.info("%s", line)
    log.info("compare: %d runs; wrote %s", len(runs), ", ".join(str(p) for p in [out_dir / "compare.md", *plots]))
    return {"table": table, "plots": [str(p) for p in plots]}
