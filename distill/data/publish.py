"""`distill publish DIR --repo ORG/NAME`: a filter output → a `load_dataset`-ready Hub dataset with a provenance card.

Reads DIR (a `distill filter` output):
  kept/*.parquet      records (+ `messages`; built with prompts.sft_messages when absent) → data/train-*.parquet
  rejected/*.parquet  records with `reason`: counted per reason for the card (not uploaded)
  stats.json          the filter's stats (filters/run.py `_stats`): "steps" [{name, in, out, reasons}], "kept" (must
                      equal the rows in kept/, else the folder is refused), "decontamination" {benchmark: hits},
                      any other scalar key (input, grader_version, ...) → a statistics table
  config.yaml         the filter's resolved config; its `input` locates the generate output
  manifest.json       generate provenance (teacher, revision, sampling params, prompt template hash, versions,
                      dataset fingerprint): DIR/manifest.json, else <filter input>/manifest.json; every key rendered.

Writes DIR/hub/ (exactly what is uploaded, same paths): README.md (card), data/train-XXXXX-of-YYYYY.parquet,
assets/token_lengths.png, provenance/{filter_stats.json, filter_config.yaml, generate_manifest.json};
and DIR/publish/{stats.json, config.yaml} for this run (not uploaded).

The token comes only from HF_TOKEN or the Hub login, resolved by huggingface_hub; it is never written or logged,
and any text file that would contain it is redacted before it is written.
"""

from __future__ import annotations

import collections
import importlib.metadata
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from distill.config import PublishConfig, save_config
from distill.data.card import HISTOGRAM, render_card, write_histogram
from distill.data.io import atomic_write_json, atomic_write_text, iter_rows, write_parquet
from distill.data.record import Record
from distill.errors import DistillError
from distill.prompts import sft_messages

log = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
LOGIN_HINT = "run `hf auth login` or set HF_TOKEN in the environment (or pass --dry-run to write DIR/hub/ only)"
PACKAGES = ("distill", "vllm", "transformers", "trl", "datasets", "math-verify", "huggingface_hub")


def run(cfg: PublishConfig) -> dict[str, Any]:
    root = Path(cfg.dir)
    if not REPO_ID.match(cfg.repo):
        raise DistillError(f"--repo {cfg.repo!r}: expected ORG/NAME (letters, digits, '-', '_', '.'), "
                           "e.g. my-org/r1-math-sft")
    if not (root / "kept").is_dir():
        raise DistillError(f"{root}: no kept/ folder; pass the output directory of `distill filter`")
    if cfg.shard_rows < 1:
        raise DistillError(f"--shard-rows {cfg.shard_rows}: must be at least 1")
    token = _token()
    hub = root / "hub"
    if hub.exists():  # a stale file from an earlier run would otherwise be uploaded too
        shutil.rmtree(hub)

    stats_in = _filter_stats(root)
    facts = _write_data(root, hub, cfg.shard_rows)
    if facts["rows"] != stats_in["kept"]:
        shutil.rmtree(hub)
        raise DistillError(f"{root}: kept/ holds {facts['rows']} rows but its stats.json counts {stats_in['kept']} "
                           f"(an interrupted or mixed filter output); re-run `distill filter` into this folder")
    filter_cfg = _read_yaml(root / "config.yaml")
    manifest, manifest_path = _find_manifest(root, filter_cfg)

    write_histogram(hub / HISTOGRAM, facts["lengths"], facts["length_unit"])
    for name, src in (("filter_stats.json", root / "stats.json"), ("filter_config.yaml", root / "config.yaml"),
                      ("generate_manifest.json", manifest_path)):
        if src is not None and src.is_file():
            atomic_write_text(hub / "provenance" / name, _redact(src.read_text(encoding="utf-8"), token))

    teacher = _teacher(manifest, facts["models"])
    card = render_card({
        "repo": cfg.repo, "license": cfg.license, "rows": facts["rows"], "teacher": teacher,
        "settings": _flatten(manifest), "sources": facts["sources"].most_common(), "no_gold": facts["no_gold"],
        "models": [(m or "unknown", n) for m, n in facts["models"].most_common()],
        "provenance": _inputs(filter_cfg, facts["datasets"]),
        "steps": _steps(stats_in), "rejected": _rejected(root / "rejected"),
        "decontamination": _decontamination(stats_in), "other_stats": _other_stats(stats_in),
        "decontam_method": _decontam_method(filter_cfg),
        "lengths": facts["lengths"], "length_unit": facts["length_unit"], "columns": facts["columns"],
        "versions": _versions(manifest),
    })
    atomic_write_text(hub / "README.md", _redact(card, token))

    files = sorted(str(p.relative_to(hub)) for p in hub.rglob("*") if p.is_file())
    stats = {"repo": cfg.repo, "dry_run": cfg.dry_run, "private": cfg.private, "rows": facts["rows"],
             "shards": facts["shards"], "files": files, "bytes": sum((hub / f).stat().st_size for f in files),
             "teacher": teacher, "url": None, "commit": None}
    if not cfg.dry_run:
        stats.update(_upload(hub, cfg, token))
    out = root / "publish"
    save_config(cfg, out)
    atomic_write_json(out / "stats.json", stats)
    if cfg.dry_run:
        log.info("publish (dry run): %d samples in %d shard(s), card and histogram written to %s; nothing uploaded",
                 facts["rows"], facts["shards"], hub)
    else:
        log.info("publish: %d samples in %d shard(s) uploaded to %s", facts["rows"], facts["shards"], stats["url"])
    return stats


# ---------------------------------------------------------------- data


def _write_data(root: Path, hub: Path, shard_rows: int) -> dict[str, Any]:
    data = hub / "data"
    facts: dict[str, Any] = {"rows": 0, "shards": 0, "lengths": [], "chars": [], "models": collections.Counter(),
                             "sources": collections.Counter(), "datasets": collections.Counter(), "columns": [],
                             "no_gold": 0}
    buffer: list[dict[str, Any]] = []
    tmp_names: list[Path] = []

    def flush() -> None:
        tmp = data / f".train-{len(tmp_names):05d}.parquet"
        write_parquet(tmp, buffer)
        tmp_names.append(tmp)
        buffer.clear()

    for where, row in tqdm(iter_rows(root / "kept"), desc="publish", unit="sample"):
        rec = Record.from_dict(row, where)  # validates the row; the row itself is written, extra columns and all
        if not row.get("messages"):
            row = {**row, "messages": sft_messages(rec.problem, rec.completion)}
        if not facts["columns"]:
            facts["columns"] = list(row)
        facts["rows"] += 1
        facts["lengths"].append(rec.num_tokens)
        facts["chars"].append(len(rec.completion))
        facts["models"][rec.model] += 1
        facts["sources"][rec.source or "unknown"] += 1
        facts["no_gold"] += rec.answer_from in ("completion_boxed", "none")
        for key in ("dataset", "revision"):
            if rec.meta.get(key):
                facts["datasets"][f"{key}: {rec.meta[key]}"] += 1
        buffer.append(row)
        if len(buffer) >= shard_rows:
            flush()
    if buffer:
        flush()
    if not facts["rows"]:
        raise DistillError(f"{root / 'kept'}: no kept records; there is nothing to publish")
    _unify_schemas(tmp_names)
    for i, tmp in enumerate(tmp_names):
        tmp.rename(data / f"train-{i:05d}-of-{len(tmp_names):05d}.parquet")
    facts["shards"] = len(tmp_names)
    # The histogram shows tokens when the records carry counts; characters (and says so) when they do not.
    if not any(facts["lengths"]):
        facts["lengths"], facts["length_unit"] = facts["chars"], "characters; num_tokens not recorded"
    else:
        facts["length_unit"] = "tokens"
    del facts["chars"]
    return facts


def _unify_schemas(paths: list[Path]) -> None:
    """Each shard's schema is inferred from its own rows (a column all null in one shard, text in the next);
    `load_dataset` needs one schema, so shards that differ from the union are cast to it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = [pq.read_schema(p) for p in paths]
    if len(paths) < 2 or all(s.equals(schemas[0]) for s in schemas):
        return
    try:
        unified = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DistillError(f"kept records disagree on a column's type across shards ({e}); "
                           "re-run `distill filter` or pass a larger --shard-rows") from None
    for path, schema in zip(paths, schemas):
        if not schema.equals(unified):
            table = pq.read_table(path)
            table = table.select([n for n in unified.names if n in table.column_names])
            for name in unified.names:
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(len(table), unified.field(name).type))
            pq.write_table(table.select(unified.names).cast(unified), path)


def _rejected(folder: Path) -> dict[str, int]:
    counts: collections.Counter = collections.Counter()
    if folder.is_dir():
        for where, row in iter_rows(folder):
            counts[str(row.get("reason") or "unknown")] += 1
    return dict(counts)


# ---------------------------------------------------------------- provenance


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DistillError(f"{path}: not found; pass the output folder of `distill filter`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DistillError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fix or remove it") from None
    if not isinstance(data, dict):
        raise DistillError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DistillError(f"{path}: not valid YAML ({getattr(e, 'problem', e)}); fix or remove it") from None
    return data if isinstance(data, dict) else {}


def _find_manifest(root: Path, filter_cfg: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    candidates = [root / "manifest.json"]
    if isinstance(filter_cfg.get("input"), str):
        candidates.append(Path(filter_cfg["input"]) / "manifest.json")
    for path in candidates:
        if path.is_file():
            return _read_json(path), path
    log.warning("no generate manifest.json in %s; the card will not list sampling settings",
                " or ".join(str(c.parent) for c in candidates))
    return {}, None


def _teacher(manifest: dict[str, Any], models: collections.Counter) -> str:
    for key in ("teacher", "model"):
        value = manifest.get(key)
        if isinstance(value, dict):
            value = value.get("name") or value.get("id") or value.get("model")
        if value:
            return str(value)
    named = [m for m, _ in models.most_common() if m]
    return ", ".join(named)


def _flatten(obj: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Manifest keys as (dotted key, value) rows; package versions get their own table."""
    rows = []
    for key, value in obj.items():
        if not prefix and key in ("versions", "packages", "package_versions"):
            continue
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _versions(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    for key in ("versions", "packages", "package_versions"):
        if isinstance(manifest.get(key), dict):
            return [(str(k), str(v)) for k, v in manifest[key].items()]
    out = []
    for name in PACKAGES:
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return [(f"{name} (at publish time)", v) for name, v in out]


def _inputs(filter_cfg: dict[str, Any], datasets: collections.Counter) -> list[tuple[str, Any]]:
    rows = [(f"filter {k}", filter_cfg[k]) for k in ("input", "split", "subset", "revision", "format", "steps")
            if filter_cfg.get(k) not in (None, "", [])]
    return rows + [(key, f"{n} samples") for key, n in datasets.most_common()]


def _filter_stats(root: Path) -> dict[str, Any]:
    """DIR/stats.json as `distill filter` writes it; anything else is refused in one line."""
    path = root / "stats.json"
    stats = _read_json(path)
    steps = stats.get("steps")
    if not isinstance(stats.get("kept"), int) or not isinstance(steps, list) or not all(
            isinstance(s, dict) and {"name", "in", "out", "reasons"} <= set(s) for s in steps):
        raise DistillError(f"{path}: not the stats.json of `distill filter` (needs 'kept' and 'steps'); pass a "
                           f"filter output folder, or re-run `distill filter` into it")
    return stats


def _steps(stats: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: s[k] for k in ("name", "in", "out", "reasons")} for s in stats["steps"]]


def _decontamination(stats: dict[str, Any]) -> dict[str, Any] | None:
    """{benchmark: hits}, or None when the step did not run."""
    if not any(s["name"] == "decontaminate" for s in stats["steps"]):
        return None
    return dict(stats.get("decontamination") or {})


def _decontam_method(filter_cfg: dict[str, Any]) -> str:
    """The rule the filter ran with (filters/dataset.py Decontaminator), in words."""
    from distill.tasks import MATH_TASKS

    n, share = filter_cfg.get("decontam_ngram"), filter_cfg.get("decontam_min_overlap")
    if not n or share is None:
        return ""
    tasks = ", ".join(map(str, filter_cfg.get("decontam_tasks") or MATH_TASKS))
    if float(share) == 0:
        rule = f"its problem shares any word {n}-gram with a problem of"
    else:
        rule = (f"its problem contains at least {float(share):.0%} of the word {n}-grams of one problem of (a "
                f"benchmark problem shorter than {n} words: its whole text)")
    return f"Method: a sample is dropped when {rule} {tasks} (distill's bundled eval sets)."


def _other_stats(stats: dict[str, Any]) -> list[tuple[str, Any]]:
    skip = {"steps", "funnel", "decontamination", "decontaminate"}
    return [(k, v) for k, v in stats.items() if k not in skip and isinstance(v, (str, int, float, bool))]


# ---------------------------------------------------------------- the Hub


def _token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _redact(text: str, token: str | None) -> str:
    if token and token in text:
        log.warning("a Hugging Face token appeared in a file to publish; it was replaced by <redacted>")
        return text.replace(token, "<redacted>")
    return text


def _upload(hub: Path, cfg: PublishConfig, token: str | None) -> dict[str, Any]:
    import huggingface_hub

    if huggingface_hub.constants.is_offline_mode():
        raise DistillError("the Hugging Face Hub is offline (HF_HUB_OFFLINE is set): unset it to upload, "
                           "or pass --dry-run to write DIR/hub/ only")
    if not token:
        raise DistillError(f"no Hugging Face token found; {LOGIN_HINT}")
    api = huggingface_hub.HfApi()  # resolves the token itself (HF_TOKEN or the login); it is never passed around
    try:
        url = api.create_repo(cfg.repo, repo_type="dataset", private=cfg.private, exist_ok=True)
        commit = api.upload_folder(repo_id=cfg.repo, folder_path=str(hub), repo_type="dataset",
                                   commit_message="distill publish: curated reasoning traces with provenance card")
    except Exception as e:  # network, auth, permission: many types from huggingface_hub/httpx; one line for all
        msg = _redact(str(e).splitlines()[0] if str(e) else type(e).__name__, token)
        raise DistillError(f"upload to {cfg.repo} failed ({type(e).__name__}: {msg}); check the repo name, that "
                           f"your token has write access, and the network; {LOGIN_HINT}") from None
    return {"url": str(url), "commit": getattr(commit, "oid", None) or str(commit)}
