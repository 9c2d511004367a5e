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
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from distill.config import EvalConfig, save_config
from distill.data.io import atomic_write_json, iter_rows, read_problems, read_records, require_columns, write_jsonl
from distill.data.record import Record
from distill.errors import DistillError
from distill.eval import metrics, report
from distill.tasks import TASK_NAMES, task_spec
from distill.filters.answer import GRADER_VERSION, Grader

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
RESULTS_FILE = "results.json"


# ---------------------------------------------------------------- tasks


def resolve_task(name: str, cfg: EvalConfig) -> dict[str, Any]:
    """What eval needs to know about a task: its name, what to hand generate, answer_type and data hashes."""
    if name in TASK_NAMES:
        spec = task_spec(name)
        yaml_bytes = resources.files("distill.tasks").joinpath(f"{name}.yaml").read_bytes()
        return {"name": name, "dataset": name, "bundled": True, "answer_type": _answer_type(cfg) or spec["answer_type"],
                "version": spec.get("version"), "rows": spec.get("rows"), "data_sha256": spec["sha256"],
                "yaml_sha256": hashlib.sha256(yaml_bytes).hexdigest(), "source": spec.get("source")}
    path = Path(name)
    if path.is_file():
        return {"name": path.stem, "dataset": str(path), "bundled": False, "answer_type": _answer_type(cfg) or "auto",
                "data_sha256": report.sha256_file(path), "path": str(path.resolve())}
    if path.suffix or name.startswith((".", "/", "~")) or "/" not in name:
        hint = "; bundled tasks: " + ", ".join(TASK_NAMES)
        raise DistillError(f"task {name!r}: not a bundled task and no such file{hint}")
    # A Hub dataset id: pinned by --revision, hashed by nobody (the revision is the provenance).
    return {"name": name.replace("/", "__"), "dataset": name, "bundled": False,
            "answer_type": _answer_type(cfg) or "auto", "hub_id": name, "split": cfg.split, "subset": cfg.subset,
            "revision": cfg.revision}


def _answer_type(cfg: EvalConfig) -> str | None:
    return None if cfg.answer_type == "task" else cfg.answer_type


def _task_problems(task: dict, cfg: EvalConfig, limit: int | None = None) -> list[dict[str, str]]:
    if task["bundled"]:
        return read_problems(task["dataset"], id_key="id", limit=limit)  # bundled tasks keep their ids (as generate)
    return read_problems(task["dataset"], cfg.problem_key, cfg.answer_key, cfg.id_key, cfg.split, cfg.subset,
                         cfg.revision, limit=limit)


# ---------------------------------------------------------------- inputs: existing completions


def completions_records(cfg: EvalConfig) -> tuple[dict, list[Record]]:
    """Records from --completions: rows with `completion` and a gold `answer` (or, with --task, the task's gold
    matched by problem_id). problem_id defaults to the problem text's first appearance, sample_index to the row's
    position among its problem's rows. With --format, a published dataset read through distill.data.adapters."""
    if cfg.task:
        task = resolve_task(cfg.task, cfg)
        gold = {p["id"]: p for p in _task_problems(task, cfg)}
    else:
        task = {"name": Path(cfg.completions).stem, "dataset": None, "bundled": False,
                "answer_type": _answer_type(cfg) or "auto",
                "data_sha256": report.sha256_file(cfg.completions)}
        gold = None
    task["completions"] = str(cfg.completions)
    records: list[Record] = []
    by_text: dict[str, str] = {}
    per_problem: dict[str, int] = defaultdict(int)
    kept_problems: list[str] = []
    seen: dict[tuple[str, int], str] = {}
    if cfg.format:  # a published dataset (OpenR1, s1K, …): its adapter makes the records
        from distill.data.adapters import iter_format_records

        rows = ((f"{cfg.completions}:record {i}", r.to_dict()) for i, r in
                enumerate(iter_format_records(cfg.completions, cfg.format, cfg.split, cfg.subset, cfg.revision)))
    else:
        rows = iter_rows(cfg.completions, cfg.split, cfg.subset, cfg.revision)
    for where, row in rows:
        require_columns(where, row, {"completion": "completion"})
        if row.get("problem_id") is not None:
            pid = str(row["problem_id"])
        elif row.get("problem"):
            pid = by_text.setdefault(str(row["problem"]), str(len(by_text)))
        else:
            raise DistillError(f"{where}: no 'problem_id' or 'problem' field; "
                               f"each completion needs the problem it answers")
        if pid not in per_problem:
            if cfg.limit is not None and len(kept_problems) >= cfg.limit:
                continue
            kept_problems.append(pid)
        if gold is not None:
            if pid not in gold:
                raise DistillError(f"{where}: problem_id {pid!r} is not in task {cfg.task}; "
                                   f"pass the matching --task or drop --task and give each row its 'answer'")
            answer, problem = gold[pid]["answer"], row.get("problem") or gold[pid]["problem"]
        else:
            if row.get("answer") is None:
                raise DistillError(f"{where}: no gold 'answer' field; "
                                   f"add it or pass --task to take the gold from a task")
            answer, problem = row["answer"], row.get("problem") or ""
        index = int(row["sample_index"]) if row.get("sample_index") is not None else per_problem[pid]
        per_problem[pid] += 1
        if (pid, index) in seen:
            raise DistillError(f"{where}: problem {pid!r} sample {index} appears twice (first at {seen[pid, index]}); "
                               f"give each sample of a problem its own sample_index")
        seen[pid, index] = where
        source = str(row.get("source") or task["name"])
        records.append(Record.from_dict({
            **{k: v for k, v in row.items() if k in ("finish_reason", "num_tokens", "model", "meta")},
            "id": Record.make_id(source, pid, index), "problem_id": pid, "problem": problem, "answer": answer,
            "completion": row["completion"], "sample_index": index, "source": source}, where))
    if not records:
        raise DistillError(f"{cfg.completions}: no completions found; the file is empty")
    return task, records


# ---------------------------------------------------------------- generation


def _generate_config(cfg: EvalConfig, task: dict, out: Path):
    from distill.config import GenerateConfig, fields_of

    shared = {name: getattr(cfg, name) for name in fields_of(GenerateConfig) if name in fields_of(EvalConfig)}
    shared.pop("out", None)
    return GenerateConfig(**{**shared, "teacher": cfg.model, "dataset": task["dataset"], "out": str(out),
                             "source": task["name"]})


def generate_task(cfg: EvalConfig, task: dict, llm=None) -> tuple[list[Record], dict]:
    """Generate (or resume) the task's samples under DIR/generations/<task> with distill.generate."""
    from distill import generate

    out = Path(cfg.out) / "generations" / task["name"]
    gcfg = _generate_config(cfg, task, out)
    if cfg.thinking_budget:  # the thought runs until the budget; budget_force writes the answers
        gcfg = dataclasses.replace(gcfg, max_tokens=cfg.thinking_budget)
    gen_stats = generate.run(gcfg, llm=llm) or {}
    records = list(read_records(out))
    budget = None
    if check_budget(cfg):
        records, budget = budget_force(cfg, task["name"], records, llm)
    # Counted from the records (generate stores each sample's effective max_tokens), so a resumed run counts too.
    limit = cfg.thinking_budget or cfg.max_tokens
    clamped = {r.problem_id for r in records if int(r.meta.get("max_tokens") or limit) < limit}
    return records, {"stats": gen_stats, "manifest": _read_json(out / "manifest.json"),
                     "clamped_prompts": len(clamped), "budget": budget}


# ---------------------------------------------------------------- thinking-budget control

FORCE_ANSWER = "\n</think>\n\n"  # what a capped thought is closed with, so the model writes its answer now
WAIT = "Wait"  # s1 budget forcing: replaces an early </think> so the thought goes on


def check_budget(cfg: EvalConfig) -> bool:
    """Whether budget control is on; one-line errors for settings that cannot work."""
    budget, least = cfg.thinking_budget, cfg.min_thinking_tokens
    if budget is None and least is None:
        return False
    errors = []
    if cfg.backend != "vllm":
        errors.append("--thinking-budget/--min-thinking-tokens need --backend vllm (the engine continues each thought)")
    if budget is not None and not 1 <= budget < cfg.max_tokens:
        errors.append(f"--thinking-budget must be >= 1 and < --max-tokens {cfg.max_tokens} (the answer gets the rest), "
                      f"got {budget}")
    if least is not None and (least < 1 or (budget is not None and least > budget)):
        errors.append(f"--min-thinking-tokens must be >= 1 and <= --thinking-budget, got {least}")
    if errors:
        raise DistillError("; ".join(errors))
    return True


def budget_force(cfg: EvalConfig, task_name: str, records: list[Record], llm) -> tuple[list[Record], dict[str, int]]:
    """Budget forcing on generated records, through the engine (see README "thinking budget").

    1. --min-thinking-tokens N (s1): a thought that closed before N tokens loses its `</think>` and everything after,
       gets "Wait", and is continued once (up to the thinking budget, else --max-tokens in all).
    2. --thinking-budget B: generation ran with max_tokens = B; a sample cut there has its thought closed with
       "\n</think>\n\n" (if still open) and is continued for the answer with the remaining max_tokens - B tokens.
    Continuations re-tokenize the text so far (a token boundary may differ from the sampled ids). The result is
    saved to DIR/generations/<task>.budget-B-N.jsonl and reused when the same records come back (resume).
    """
    from distill import engine, generate, prompts

    # Named by the settings, so a rerun with another budget never picks up these continuations.
    name = f"{task_name}.budget-{cfg.thinking_budget}-{cfg.min_thinking_tokens}.jsonl"
    path = Path(cfg.out) / "generations" / name
    if path.is_file():
        done = {r.id: r for r in read_records(path)}
        if set(done) == {r.id for r in records}:
            return [done[r.id] for r in records], _budget_counts(done.values())
    tok = engine.engine_tokenizer(llm)
    template = prompts.load_template(cfg.prompt_template)
    prompt_ids: dict[str, list[int]] = {}
    prefilled = False
    for r in records:
        if r.problem_id not in prompt_ids:
            ids, prefilled = generate.render_prompts(tok, [{"problem": r.problem}], template, cfg.think_prefill)
            prompt_ids[r.problem_id] = ids[0]
    max_len = engine.engine_max_model_len(llm)
    encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    state = [{"text": r.completion, "tokens": r.num_tokens, "finish": r.finish_reason, "waits": 0, "forced": False}
             for r in records]

    def body(text: str) -> str:  # what follows the prompt (the prefill is part of the prompt)
        return text[len(prompts.THINK_PREFILL):] if prefilled and text.startswith(prompts.THINK_PREFILL) else text

    def extend(todo: list[int], budget_of) -> None:
        if not todo:
            return
        ids = [prompt_ids[records[i].problem_id] + encode(body(state[i]["text"])) for i in todo]
        limits = [max(1, min(budget_of(state[i]), max_len - len(x))) for i, x in zip(todo, ids)]
        seeds = [generate.problem_seed(cfg.seed, records[i].problem_id) + 7919 * (records[i].sample_index + 1)
                 for i in todo]
        outs = engine.vllm_generate(llm, ids, 1, cfg.temperature, cfg.top_p, limits, seeds)
        for i, (sample,) in zip(todo, outs):
            state[i]["text"] += sample.text
            state[i]["tokens"] += sample.num_tokens
            state[i]["finish"] = sample.finish_reason

    close = prompts.THINK_CLOSE
    if cfg.min_thinking_tokens:
        early = [i for i, st in enumerate(state) if st["finish"] == "stop" and close in st["text"]
                 and len(encode(body(st["text"]).split(close)[0])) < cfg.min_thinking_tokens]
        for i in early:
            st = state[i]
            st["text"] = st["text"][:st["text"].index(close)].rstrip() + "\n" + WAIT
            st["tokens"] = len(encode(body(st["text"])))
            st["waits"] += 1
        extend(early, lambda st: (cfg.thinking_budget or cfg.max_tokens) - st["tokens"])
    if cfg.thinking_budget:
        cut = [i for i, st in enumerate(state) if st["finish"] == "length" and st["tokens"] < cfg.max_tokens]
        for i in cut:
            st = state[i]
            if close not in st["text"]:
                st["text"] += FORCE_ANSWER
                st["tokens"] += len(encode(FORCE_ANSWER))
                st["forced"] = True
        extend(cut, lambda st: cfg.max_tokens - st["tokens"])
    out = [dataclasses.replace(r, completion=st["text"], num_tokens=st["tokens"], finish_reason=st["finish"],
                               meta={**r.meta, "budget": {"forced": st["forced"], "waits": st["waits"]}})
           for r, st in zip(records, state)]
    write_jsonl(path, out)
    return out, _budget_counts(out)


def _budget_counts(records) -> dict[str, int]:
    records = list(records)
    return {"forced_answers": sum(bool(r.meta.get("budget", {}).get("forced")) for r in records),
            "wait_extensions": sum(int(r.meta.get("budget", {}).get("waits", 0)) for r in records)}


def _make_engine(cfg: EvalConfig):
    """One engine for every task (generate would start one per call), with generate's engine settings."""
    from distill import engine, generate

    gcfg = _generate_config(cfg, {"dataset": "-", "name": "-"}, Path(cfg.out))
    try:
        return engine.make_llm(cfg.model, **generate.engine_kwargs(gcfg))
    except (OSError, ValueError) as e:
        raise DistillError(f"--model {cfg.model}: vLLM could not load it ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:300]})") from None


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DistillError(f"{path}: not valid JSON ({e.msg}); delete it or rerun with --overwrite") from None


# ---------------------------------------------------------------- grading and scoring


def grade_records(records: list[Record], grader: Grader, desc: str) -> list[dict]:
    """Record fields + extracted, correct, reason, graded by the one definition of correct."""
    verdicts = list(tqdm(grader.grade_many((r.completion, r.answer) for r in records), total=len(records),
                         desc=f"grade {desc}", unit="sample"))
    return [{**r.to_dict(), "task": desc, "extracted": v.extracted, "extracted_by": v.extracted_by,
             "correct": v.correct, "reason": v.reason} for r, v in zip(records, verdicts)]


def by_problem(samples: list[dict]) -> list[list[dict]]:
    """Samples grouped per problem (first-appearance order), each group in sample_index order."""
    groups: dict[str, list[dict]] = {}
    for s in samples:
        groups.setdefault(s["problem_id"], []).append(s)
    return [sorted(g, key=lambda s: s["sample_index"]) for g in groups.values()]


def equivalence_table(answers_per_problem: list[list[str]], grader: Grader) -> dict:
    """{(answer, representative): equivalent?} for exactly the comparisons `metrics.vote` makes.

    Greedy clustering runs in rounds over all problems at once: each round compares every problem's next distinct
    answer with that problem's current class representatives through the Grader (worker processes, hard timeout),
    so a pathological answer can't hang the vote and comparisons stay ~(distinct answers × classes).
    """
    table: dict[tuple[str, str], bool] = {}
    todo = [list(dict.fromkeys(a for a in answers if a)) for answers in answers_per_problem]
    reps: list[list[str]] = [[] for _ in todo]
    pos = [0] * len(todo)
    while True:
        active = [p for p, uniq in enumerate(todo) if pos[p] < len(uniq)]
        if not active:
            break
        pairs = [(p, todo[p][pos[p]], r) for p in active for r in reps[p]]
        verdicts = list(grader.grade_many(("\\boxed{" + a + "}", r) for _, a, r in pairs))
        joined = set()
        for (p, a, r), v in zip(pairs, verdicts):
            table[(a, r)] = v.correct
            if v.correct:
                joined.add(p)
        for p in active:
            if p not in joined:
                reps[p].append(todo[p][pos[p]])
            pos[p] += 1
    return table


def score_task(samples: list[dict], grader: Grader) -> dict[str, Any]:
    """Every metric of one task (fractions; report.py shows percent)."""
    groups = by_problem(samples)
    correct = [[bool(s["correct"]) for s in g] for g in groups]
    ns = sorted({len(g) for g in groups})
    n_min = ns[0] if ns else 0
    answers = [[s["extracted"] or "" for s in g[:n_min]] for g in groups]
    table = equivalence_table(answers, grader) if n_min else {}
    reasons: dict[str, int] = defaultdict(int)
    extracted_by: dict[str, int] = defaultdict(int)
    for s in samples:
        reasons[s["reason"] or "correct"] += 1
        extracted_by[s["extracted_by"]] += 1
    return {
        "pass@1": metrics.pass_at_1(correct),
        "pass@k": {k: metrics.mean_pass_at_k(correct, k) for k in metrics.default_ks(n_min)} if n_min else {},
        "cons@k": {n_min: metrics.cons_at_k(answers, correct, n_min, lambda a, b: table.get((a, b), False))}
        if n_min else {},
        "n": n_min if len(ns) == 1 else ns,
        "problems": len(groups),
        "samples": len(samples),
        "truncated": metrics.truncated_share([s["finish_reason"] for s in samples]),
        "tokens": metrics.length_stats([s["num_tokens"] for s in samples], [s["correct"] for s in samples]),
        "reasons": dict(sorted(reasons.items())),
        "extracted_by": dict(sorted(extracted_by.items())),
        "answer_type": grader.answer_type,
    }


def grade_and_score(records: list[Record], task: dict, cfg: EvalConfig) -> tuple[list[dict], dict[str, Any]]:
    with Grader(workers=cfg.workers, timeout=cfg.answer_timeout, answer_type=task["answer_type"],
                extraction=cfg.answer_extraction) as grader:
        samples = grade_records(records, grader, task["name"])
        return samples, score_task(samples, grader)


# ---------------------------------------------------------------- the stage


def run(cfg: EvalConfig, llm=None) -> dict[str, Any]:
    """Evaluate; returns results.json's content. `llm`: an engine to reuse (tests pass the session's)."""
    started = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    samples: list[dict] = []
    tasks: dict[str, dict] = {}
    generation: dict[str, dict] = {}
    scores: dict[str, dict] = {}
    if cfg.completions:
        if cfg.model:
            raise DistillError("pass either --model (generate, then grade) or --completions (grade only), not both")
        task, records = completions_records(cfg)
        tasks[task["name"]] = task
        graded, scores[task["name"]] = grade_and_score(records, task, cfg)
        samples.extend(graded)
    else:
        if not cfg.model:
            raise DistillError("nothing to evaluate: pass --model MODEL to generate and grade, "
                               "or --completions FILE to grade existing outputs")
        resolved = [resolve_task(t, cfg) for t in cfg.tasks]
        names = [t["name"] for t in resolved]
        if len(set(names)) != len(names):
            raise DistillError(f"--tasks: duplicate task name in {', '.join(names)}; list each task once")
        check_budget(cfg)
        if llm is None and cfg.backend == "vllm":
            llm = _make_engine(cfg)
        for task in resolved:
            records, generation[task["name"]] = generate_task(cfg, task, llm)
            tasks[task["name"]] = task
            graded, scores[task["name"]] = grade_and_score(records, task, cfg)
            samples.extend(graded)
    write_jsonl(out / SAMPLES_FILE, samples)
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
    samples = {d: list(_iter_samples(Path(d) / SAMPLES_FILE)) for d in dirs}
    plots = report.plot_compare(runs, samples, out_dir)
    from distill.data.io import atomic_write_text

    atomic_write_text(out_dir / "compare.md", table + "\n")
    for line in table.splitlines():
        log.info("%s", line)
    log.info("compare: %d runs; wrote %s", len(runs), ", ".join(str(p) for p in [out_dir / "compare.md", *plots]))
    return {"table": table, "plots": [str(p) for p in plots]}


def _iter_samples(path: Path):
    if not path.is_file():
        return
    for _, row in iter_rows(path):
        yield row

