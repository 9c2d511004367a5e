"""The dataset card (README.md with Hub YAML metadata) and its token-length histogram, from collected facts."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import yaml

HISTOGRAM = "assets/token_lengths.png"
DATA_GLOB = "data/train-*.parquet"


def size_category(n: int) -> str:
    """The Hub's size_categories bucket for n rows."""
    bounds = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))
    for bound, name in bounds:
        if n < bound:
            return name
    return "n>1T" if n > 10**12 else "1B<n<10B"


def write_histogram(path: Path, lengths: list[int], unit: str) -> None:
    # Figure() without pyplot: no global backend switch, no GUI, safe in threads and headless CI.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), dpi=100)
    ax = fig.subplots()
    ax.hist(lengths, bins=min(50, max(10, len(set(lengths)))), color="#4C72B0")
    ax.set_xlabel(f"completion length ({unit})")
    ax.set_ylabel("samples")
    ax.set_title(f"Completion lengths of {len(lengths)} samples")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, default=str)
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _length_summary(lengths: list[int], unit: str) -> str:
    if not lengths:
        return "No completions."
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (f"{unit}: min {ordered[0]}, median {int(statistics.median(ordered))}, "
            f"mean {statistics.fmean(ordered):.0f}, p95 {p95}, max {ordered[-1]}")


def render_card(f: dict[str, Any]) -> str:
    """f: repo, license, rows, teacher, settings [(key, value)], sources [(source, rows)], no_gold, provenance
    [(key, value)], steps [{name, in, out, reasons}], rejected {reason: n}, decontamination {benchmark: hits} | None,
    other_stats [(key, value)], lengths, length_unit, columns, versions [(package, version)]."""
    repo, name = f["repo"], f["repo"].split("/")[-1]
    header = {
        "license": f["license"],
        "language": ["en"],
        "pretty_name": name,
        "task_categories": ["text-generation"],
        "tags": ["reasoning", "chain-of-thought", "distillation", "math", "synthetic", "distill"],
        "size_categories": [size_category(f["rows"])],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_GLOB}]}],
    }
    teacher = f.get("teacher") or "unknown (no generate manifest and no `model` in the records)"
    out = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
           f"# {name}", "",
           f"{f['rows']} long chain-of-thought samples (`<think>` reasoning, then a final answer) written by "
           f"**{teacher}** and curated with distill's `filter`"
           + (f" (steps: {', '.join(s['name'] for s in f['steps'])})." if f["steps"] else " (no funnel recorded).")
           + " The counts of every step are below.", ""]

    out += ["## Teacher and sampling", ""]
    if f["settings"]:
        out += [_table(("setting", "value"), f["settings"]), ""]
    else:
        out += ["No generate manifest was found beside the filter output (or the samples came from a published "
                "dataset), so the sampling settings are unknown.", ""]
    if f.get("models"):
        out += [_table(("model recorded in the samples", "samples"), f["models"]), ""]

    out += ["## Sources", "", _table(("source", "samples"), f["sources"]), ""]
    if f.get("no_gold"):
        out += [f"**{f['no_gold']} samples have no gold answer in their source dataset** (ShareGPT-style sets such "
                "as Bespoke-Stratos or OpenThoughts publish none): their `answer` is the teacher's own boxed answer, "
                "so an answer check on them only tests self-consistency.", ""]
    if f["provenance"]:
        out += [_table(("input", "value"), f["provenance"]), ""]

    out += ["## Filter funnel", ""]
    if f["steps"]:
        rows = []
        for s in f["steps"]:
            by_count = sorted((s.get("reasons") or {}).items(), key=lambda kv: -_num(kv[1]))
            reasons = ", ".join(f"{k}: {v}" for k, v in by_count)
            dropped = s["in"] - s["out"] if isinstance(s.get("in"), int) and isinstance(s.get("out"), int) else ""
            rows.append((s["name"], s.get("in", ""), s.get("out", ""), dropped, reasons))
        out += [_table(("step", "in", "out", "dropped", "reasons"), rows), ""]
    else:
        out += ["The filter's stats.json has no per-step funnel.", ""]
    if f["rejected"]:
        out += ["Rejected samples on disk, by reason:", "",
                _table(("reason", "samples"), sorted(f["rejected"].items(), key=lambda kv: -kv[1])), ""]
    if f["other_stats"]:
        out += [_table(("statistic", "value"), f["other_stats"]), ""]

    out += ["## Decontamination", ""]
    if f["decontamination"] is None:
        out += ["**No decontamination report**: the filter ran without the `decontaminate` step, so samples may "
                "overlap evaluation benchmarks. Do not report benchmark scores of models trained on this set "
                "without checking.", ""]
    elif not f["decontamination"]:
        out += ["The `decontaminate` step ran but recorded no per-benchmark counts.", ""]
    else:
        rows = [(bench, hits) for bench, hits in f["decontamination"].items()]
        total = sum(_num(h) for _, h in rows)
        out += [f"Samples whose problem matched a benchmark problem were dropped ({total} in all):", "",
                _table(("benchmark", "samples dropped"), rows), ""]
    if f.get("decontam_method"):
        out += [f["decontam_method"], ""]

    out += ["## Completion lengths", "", f"![completion length histogram]({HISTOGRAM})", "",
            _length_summary(f["lengths"], f["length_unit"]), ""]

    out += ["## Use", "", "```python", "from datasets import load_dataset", "",
            f'ds = load_dataset("{repo}", split="train")',
            'print(ds[0]["messages"])  # [{"role": "user", ...}, {"role": "assistant", "content": "<think>\\n..."}]',
            "```", "", "Train a student on it and score it the R1 way:", "", "```bash",
            f"distill sft --student Qwen/Qwen2.5-1.5B-Instruct --data {repo} --out runs/sft",
            "distill eval --model runs/sft --tasks aime24,math500 --out runs/eval", "```", ""]

    out += ["## Fields", "",
            "`messages` is the SFT conversation (the R1 user turn, then the completion as the assistant turn); "
            "the other columns are distill's record: `id` (`<source>/<problem_id>/<sample_index>`), "
            "`problem`, gold `answer`, `completion` (with `<think>`), `finish_reason`, `num_tokens`, `model`, "
            "`source`, and `meta` (provenance, as JSON text).", "",
            "Columns: " + ", ".join(f"`{c}`" for c in f["columns"]), ""]
    if f["versions"]:
        out += ["## Reproducibility", "", _table(("package", "version"), f["versions"]), "",
                "The full filter config, filter stats and generate manifest are in `provenance/`.", ""]
    return "\n".join(out)


def _num(value: Any) -> float:
    if isinstance(value, dict):
        value = value.get("hits", value.get("count", 0))
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
