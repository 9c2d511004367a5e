"""`distill eval merge`: N `eval --shard I/N` folders → one results.json, the one a single run would have written.

Each shard folder holds its graded samples and `shard.json`, the unsharded run's sample order per task. The merge
checks that the shards are one split (the same N, every I once, the same config but for the shard) and that together
they hold every expected sample exactly once, puts the samples back in the single run's order and scores them with
the same code (eval/score.py), so the metrics are the single run's, not an average of shard averages.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from distill.config import EvalConfig, build_config, read_recipe, save_config
from distill.data.io import atomic_write_json, iter_rows, write_jsonl
from distill.errors import DistillError
from distill.eval import report
from distill.eval.score import score_graded
from distill.verify.math import GRADER_VERSION
from distill.verify.math_audit import AUDIT_FILE, combine, write_rows

log = logging.getLogger(__name__)


def shard_folders(dirs: list[str]) -> list[Path]:
    """Each argument: a shard folder (holding shard.json), or an eval --out holding shard-I-of-N folders."""
    from distill.eval.run import SHARD_FILE
    from distill.generate import SHARD_DIR_RE

    found: list[Path] = []
    for d in map(Path, dirs):
        if (d / SHARD_FILE).is_file():
            found.append(d)
        elif d.is_dir() and (inner := sorted(p for p in d.iterdir() if p.is_dir() and SHARD_DIR_RE.match(p.name))):
            found.extend(inner)
        else:
            raise DistillError(f"{d}: no {SHARD_FILE} and no shard-I-of-N folders; pass the --out of "
                               f"`distill eval --shard I/N` runs (or their shard folders)")
    return found


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DistillError(f"{path}: missing; rerun that shard (it did not finish)") from None
    except json.JSONDecodeError as e:
        raise DistillError(f"{path}: not valid JSON ({e.msg}); rerun that shard") from None


def _one_split(folders: list[Path]) -> tuple[list[dict], EvalConfig]:
    """The shards' files, checked to be one complete split of one eval; the config of the merged run."""
    from distill.eval.run import RESULTS_FILE, SHARD_FILE
    from distill.generate import parse_shard

    shards = []
    for f in folders:
        meta = _read(f / SHARD_FILE)
        recipe = read_recipe(f / "config.yaml")
        shards.append({"dir": f, "shard": parse_shard(meta.get("shard")), "order": meta.get("order") or {},
                       "config": recipe, "results": _read(f / RESULTS_FILE)})
    sizes = {s["shard"][1] for s in shards}
    if len(sizes) != 1:
        raise DistillError(f"eval merge: the folders are shards of different splits (N = {sorted(sizes)}); merge "
                           f"the shards of one split")
    n = sizes.pop()
    seen: dict[int, Path] = {}
    for s in shards:
        i = s["shard"][0]
        if i in seen:
            raise DistillError(f"eval merge: shard {i}/{n} given twice ({seen[i]}, {s['dir']})")
        seen[i] = s["dir"]
    missing = sorted(set(range(n)) - set(seen))
    if missing:
        raise DistillError(f"eval merge: shard {missing[0]}/{n} is missing ({len(missing)} of {n}); run `distill "
                           f"eval … --shard {missing[0]}/{n}` and merge again")
    shards.sort(key=lambda s: s["shard"][0])
    first = {k: v for k, v in shards[0]["config"].items() if k not in ("shard", "out")}
    for s in shards[1:]:
        other = {k: v for k, v in s["config"].items() if k not in ("shard", "out")}
        diffs = [f"{k} {first.get(k)!r} → {other.get(k)!r}" for k in sorted(set(first) | set(other))
                 if first.get(k) != other.get(k)]
        if diffs:
            raise DistillError(f"eval merge: {s['dir']} was run with another config than {shards[0]['dir']}: "
                               f"{'; '.join(diffs)}; merge shards of one eval")
        if s["order"] != shards[0]["order"]:
            raise DistillError(f"eval merge: {s['dir']} saw other problems than {shards[0]['dir']} (the data "
                               f"changed between shards); rerun the shards on the same data")
    return shards, build_config(EvalConfig, {**first, "out": str(shards[0]["config"].get("out") or "")})


def merge(dirs: list[str], out: str | None = None) -> dict[str, Any]:
    """Merge eval shards into OUT (default: the folder holding them); returns results.json's content."""
    from distill.eval.run import RESULTS_FILE, SAMPLES_FILE

    started = time.time()
    folders = shard_folders(dirs)
    shards, cfg = _one_split(folders)
    parents = {f.parent for f in folders}
    if out is None and len(parents) != 1:
        raise DistillError("eval merge: the shards are in different folders; pass --out for the merged results")
    target = Path(out) if out else parents.pop()
    cfg.out = str(target)
    rows: dict[str, dict[str, dict]] = {}  # task → sample id → graded sample
    for s in shards:
        for where, row in iter_rows(s["dir"] / SAMPLES_FILE):
            task = row.get("task")
            if task not in s["order"]:
                raise DistillError(f"{where}: task {task!r} is not one of this eval's tasks")
            if row["id"] in rows.setdefault(task, {}):
                raise DistillError(f"{where}: sample {row['id']} is also in another shard; rerun the shards "
                                   f"with one split")
            rows[task][row["id"]] = row
    order, first = shards[0]["order"], shards[0]["results"]
    samples: list[dict] = []
    scores: dict[str, dict] = {}
    tasks, generation = {}, {}
    for task, ids in order.items():
        got = rows.get(task, {})
        lost = [i for i in ids if i not in got]
        extra = set(got) - set(ids)
        if lost or extra:
            raise DistillError(f"eval merge: task {task}: {len(lost)} expected samples missing (first: "
                               f"{(lost or sorted(extra))[0]}), {len(extra)} unexpected; rerun the shard that "
                               f"holds them")
        graded = [got[i] for i in ids]  # the single run's order: its per-problem groups, its float sums
        prov = first["provenance"]["tasks"][task]
        tasks[task] = prov
        scores[task] = score_graded(graded, prov["verifier"], prov["answer_type"], cfg)
        if cfg.audit:  # every shard ran with it (one config); its counts are summed, its rows joined below
            scores[task]["audit"] = combine([s["results"]["results"][task]["audit"] for s in shards])
        samples.extend(graded)
        generation[task] = _generation(task, shards)
    target.mkdir(parents=True, exist_ok=True)
    save_config(cfg, target)
    write_jsonl(target / SAMPLES_FILE, samples)
    if cfg.audit:
        rank = {i: k for ids in order.values() for k, i in enumerate(ids)}
        audit_rows = [row for s in shards for _, row in iter_rows(s["dir"] / AUDIT_FILE)]
        write_rows(target, sorted(audit_rows, key=lambda r: (list(order).index(r["task"]), rank[r["id"]])))
    results = report.build_results(cfg, scores, tasks, generation, grader_version=GRADER_VERSION)
    results["provenance"]["merged_from"] = [str(s["dir"]) for s in shards]
    atomic_write_json(target / RESULTS_FILE, results)
    stats = {"samples": len(samples), "shards": len(shards),
             "tasks": {name: {"problems": s["problems"], "samples": s["samples"], "reasons": s["reasons"],
                              "extracted_by": s["extracted_by"]} for name, s in scores.items()},
             "clamped_prompts": {name: r.get("clamped_prompts") for name, r in results["results"].items()},
             "wall_s": round(time.time() - started, 3)}
    atomic_write_json(target / "stats.json", stats)
    for line in report.format_table({str(target): results}).splitlines():
        log.info("%s", line)
    log.info("eval merge: %d shards, %d samples; wrote %s", len(shards), len(samples), target / RESULTS_FILE)
    return results


def _generation(task: str, shards: list[dict]) -> dict[str, Any]:
    """What build_results reads per task, summed over the shards: clamped prompts, budget counts, a manifest."""
    parts = [s["results"]["results"].get(task) or {} for s in shards]
    clamped = [p.get("clamped_prompts") for p in parts if p.get("clamped_prompts") is not None]
    budgets = [p["budget"] for p in parts if p.get("budget")]
    merged_budget = None
    if budgets:
        merged_budget = {k: (sum(b.get(k) or 0 for b in budgets) if isinstance(v, int) and not isinstance(v, bool)
                             else v) for k, v in budgets[0].items()}
        if "thinking_budget" in merged_budget:
            merged_budget["thinking_budget"] = budgets[0]["thinking_budget"]
    manifests = shards[0]["results"]["provenance"].get("generate_manifests") or {}
    return {"clamped_prompts": sum(clamped) if clamped else None, "budget": merged_budget,
            "manifest": manifests.get(task)}
