"""results.json (scores in percent + provenance), the results table, and the compare plots."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import sys
from pathlib import Path
from typing import Any

from distill.config import config_dict


def pct(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 4)


def build_results(cfg, scores: dict[str, dict], tasks: dict[str, dict], generation: dict[str, dict],
                  grader_version: str) -> dict[str, Any]:
    """results.json: results[<task>]["pass@1"] in percent with its CI and every other metric, plus provenance."""
    results = {}
    for name, s in scores.items():
        p1 = s["pass@1"]
        gen = generation.get(name) or {}
        results[name] = {
            "pass@1": pct(p1["mean"]),
            "pass@1_ci95": None if p1["ci95"] is None else [pct(v) for v in p1["ci95"]],
            "pass@1_ci_halfwidth": pct(p1["ci_halfwidth"]),
            **{f"pass@{k}": pct(v) for k, v in s["pass@k"].items() if k != 1},
            **{f"cons@{k}": pct(v) for k, v in s["cons@k"].items()},
            "n": s["n"],
            "problems": s["problems"],
            "samples": s["samples"],
            "truncated_pct": pct(s["truncated"]),
            "tokens": s["tokens"],
            "reasons": s["reasons"],
            "extracted_by": s["extracted_by"],
            "answer_type": s["answer_type"],
            "verifier": s.get("verifier"),
            "verifier_version": s.get("verifier_version"),
            "clamped_prompts": gen.get("clamped_prompts"),
            **({"budget": gen["budget"]} if gen.get("budget") else {}),
            **({"audit": s["audit"]} if "audit" in s else {}),  # --audit (verify/math_audit.py)
        }
    return {"results": results, "provenance": provenance(cfg, tasks, generation, grader_version),
            "config": config_dict(cfg),
            "ci_method": "normal approximation over per-problem mean accuracies: mean ± 1.96·sd/sqrt(problems)"}


def versions() -> dict[str, str | None]:
    from distill.engine import package_versions

    return {**package_versions(), "math-verify": _version("math-verify"), "sympy": _version("sympy")}


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(cfg, tasks: dict[str, dict], generation: dict[str, dict], grader_version: str) -> dict[str, Any]:
    manifests = {name: g.get("manifest") for name, g in generation.items() if g.get("manifest")}
    prov: dict[str, Any] = {
        "versions": versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "grader_version": grader_version,
        "answer_extraction": cfg.answer_extraction,
        "mode": "completions" if cfg.completions else "generate",
        "model": cfg.model,
        "seed": cfg.seed,
        "n": cfg.n,
        "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens},
        "thinking": {"budget": cfg.thinking_budget, "min_tokens": cfg.min_thinking_tokens},
        "dtype": cfg.dtype,
        "deterministic": cfg.deterministic,
        "parallelism": {"tensor": cfg.tensor_parallel_size, "data": cfg.data_parallel_size,
                        "pipeline": cfg.pipeline_parallel_size},
        "backend": cfg.backend,
        "prompt": {"template": cfg.prompt_template or "task (a bundled task's own template, else r1)",
                   "think_prefill": cfg.think_prefill,
                   "template_sha256": sha256_file(cfg.prompt_template)},
        "chat_template_sha256": _chat_template_hash(cfg.model, manifests),
        "tasks": {name: {k: v for k, v in t.items() if k != "dataset"} for name, t in tasks.items()},
        "generate_manifests": manifests,
    }
    if cfg.completions:
        prov["completions"] = {"path": str(cfg.completions), "sha256": sha256_file(cfg.completions)}
        for key in ("n", "sampling", "dtype", "parallelism", "backend", "seed", "chat_template_sha256"):
            prov[key] = None  # the file's generator decided these; we don't know them
    return prov


def sha256_file(path: str | Path | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _chat_template_hash(model: str | None, manifests: dict[str, dict]) -> str | None:
    """From generate's manifest when it recorded one, else from a local model folder's tokenizer files."""
    for m in manifests.values():
        for key, value in _walk(m):
            if "chat_template" in key and isinstance(value, str) and len(value) == 64:
                return value
    if not model or not Path(model).is_dir():
        return None
    jinja = Path(model) / "chat_template.jinja"
    if jinja.is_file():
        return hashlib.sha256(jinja.read_bytes()).hexdigest()
    tok_cfg = Path(model) / "tokenizer_config.json"
    if tok_cfg.is_file():
        template = json.loads(tok_cfg.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return hashlib.sha256(template.encode("utf-8")).hexdigest()
    return None


def _walk(obj: Any, prefix: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, obj


# ---------------------------------------------------------------- table


def _cell(r: dict | None) -> str:
    if not r or r.get("pass@1") is None:
        return "-"
    half = r.get("pass@1_ci_halfwidth")
    return f"{r['pass@1']:.1f} ± {half:.1f}" if half is not None else f"{r['pass@1']:.1f}"


def format_table(runs: dict[str, dict]) -> str:
    """One run: a row per task with its metrics. Several runs: tasks × runs, pass@1 ± 95% CI half-width."""
    if len(runs) == 1:
        (results,) = runs.values()
        header = ["task", "problems", "n", "pass@1 ± CI95", "cons@n", "pass@n", "truncated %", "mean tokens"]
        rows = []
        for task, r in results["results"].items():
            n = r["n"] if isinstance(r["n"], int) else min(r["n"])
            rows.append([task, str(r["problems"]), str(r["n"]), _cell(r), _fmt(r.get(f"cons@{n}")),
                         _fmt(r.get(f"pass@{n}") if n > 1 else r["pass@1"]), _fmt(r["truncated_pct"]),
                         _fmt(r["tokens"]["all"]["mean"], 0)])
    else:
        tasks = list(dict.fromkeys(t for res in runs.values() for t in res["results"]))
        header = ["task", *runs]
        rows = [[t, *(_cell(res["results"].get(t)) for res in runs.values())] for t in tasks]
    return _markdown(header, rows)


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


# ---------------------------------------------------------------- plots


def plot_compare(runs: dict[str, dict], samples: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    """accuracy_vs_tokens.png (pass@1 vs mean output tokens, a point per run × task) and
    length_hist.png (output-token histograms of correct vs wrong samples, a panel per run)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 5))
    for run, res in runs.items():
        xs, ys, labels = [], [], []
        for task, r in res["results"].items():
            if r.get("pass@1") is None or r["tokens"]["all"]["mean"] is None:
                continue  # no token counts (graded from a file that had none): no x to place it at
            xs.append(r["tokens"]["all"]["mean"])
            ys.append(r["pass@1"])
            labels.append(task)
        ax.scatter(xs, ys, label=_short(run))
        for x, y, t in zip(xs, ys, labels):
            ax.annotate(t, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("mean output tokens")
    ax.set_ylabel("pass@1 (%)")
    ax.set_title("accuracy vs output length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "accuracy_vs_tokens.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        rows = samples.get(run) or []
        right = [r["num_tokens"] for r in rows if r.get("correct") and r.get("num_tokens")]
        wrong = [r["num_tokens"] for r in rows if not r.get("correct") and r.get("num_tokens")]
        bins = 30
        if right:
            ax.hist(right, bins=bins, alpha=0.6, label=f"correct ({len(right)})")
        if wrong:
            ax.hist(wrong, bins=bins, alpha=0.6, label=f"wrong ({len(wrong)})")
        ax.set_title(_short(run), fontsize=9)
        ax.set_xlabel("output tokens")
        ax.set_ylabel("samples")
        if right or wrong:
            ax.legend(fontsize=8)
        else:  # graded from a file without token counts
            ax.text(0.5, 0.5, "no token counts", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    paths.append(out_dir / "length_hist.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def _short(run: str) -> str:
    return run if len(run) <= 40 else "…" + run[-39:]
