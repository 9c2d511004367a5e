"""`distill publish`: hand-built filter output → DIR/hub/ (card field by field, loadable Parquet); no token leaks."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from distill.config import PublishConfig
from distill.data.io import write_parquet
from distill.data.publish import run
from distill.data.record import Record
from distill.errors import DistillError
from distill.prompts import sft_messages

SECRET = "hf_secret_xyz"
STATS = {
    "input": 6, "kept": 3, "grader_version": "distill-answer/1",
    "steps": [
        {"name": "finished", "in": 6, "out": 5, "reasons": {"length_over_max": 1}},
        {"name": "answer_correct", "in": 5, "out": 4, "reasons": {"answer_wrong": 1}},
        {"name": "decontaminate", "in": 4, "out": 3, "reasons": {"decontaminated": 1}},
    ],
    "decontamination": {"aime24": 1, "math500": 0},
}
MANIFEST = {"teacher": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "teacher_revision": "abc123",
            "sampling": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 32768, "n": 4, "seed": 0},
            "prompt_template_sha256": "d00dfeed", "dataset": "aime-train.jsonl", "dataset_fingerprint": "f1f2",
            "versions": {"vllm": "0.32.0", "distill": "0.1.0"}}


def _record(pid: str, i: int, tokens: int, reason: str | None = None) -> dict:
    rec = Record(id=f"toy/{pid}/{i}", problem_id=pid, problem=f"What is {pid}+{pid}?", answer=str(2 * int(pid)),
                 completion=f"<think>\n{pid}+{pid}={2 * int(pid)}\n</think>\n\n\\boxed{{{2 * int(pid)}}}",
                 finish_reason="stop", num_tokens=tokens, sample_index=i, model=MANIFEST["teacher"], source="toy",
                 meta={"dataset": "aime-train.jsonl", "chunk": 0})
    row = rec.to_dict()
    if reason:
        row["reason"] = reason
    else:
        row["messages"] = sft_messages(rec.problem, rec.completion)
    return row


@pytest.fixture
def filter_out(tmp_path) -> Path:
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "manifest.json").write_text(json.dumps(MANIFEST))
    d = tmp_path / "filtered"
    write_parquet(d / "kept" / "part-00000.parquet", [_record("1", 0, 120), _record("2", 0, 340), _record("3", 1, 900)])
    write_parquet(d / "rejected" / "part-00000.parquet",
                  [_record("4", 0, 32768, "length_over_max"), _record("5", 0, 50, "answer_wrong"),
                   _record("6", 0, 70, "decontaminated")])
    (d / "stats.json").write_text(json.dumps(STATS))
    (d / "config.yaml").write_text(yaml.safe_dump({"input": str(gen), "out": str(d), "steps": ["finished"],
                                                   "decontam_ngram": 8, "decontam_min_overlap": 0.2,
                                                   "decontam_tasks": ["aime24", "math500"]}))
    return d


def _card(d: Path) -> tuple[dict, str]:
    text = (d / "hub" / "README.md").read_text()
    m = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert m, "card must start with a YAML block"
    return yaml.safe_load(m.group(1)), m.group(2)


def test_dry_run_writes_card_data_and_histogram(filter_out):
    stats = run(PublishConfig(dir=str(filter_out), repo="my-org/toy-r1", dry_run=True, license="apache-2.0"))
    hub = filter_out / "hub"
    assert stats["rows"] == 3 and stats["url"] is None
    assert sorted(stats["files"]) == sorted(str(p.relative_to(hub)) for p in hub.rglob("*") if p.is_file())
    meta, body = _card(filter_out)
    assert meta["license"] == "apache-2.0"
    assert meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train-*.parquet"}
    # teacher and sampling, from the generate manifest found through the filter config's `input`
    assert "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" in body
    assert "| sampling.temperature | 0.6 |" in body and "| sampling.max_tokens | 32768 |" in body
    assert "| prompt_template_sha256 | d00dfeed |" in body and "| vllm | 0.32.0 |" in body
    # the funnel equals stats.json
    for s in STATS["steps"]:
        reason, n = next(iter(s["reasons"].items()))
        assert f"| {s['name']} | {s['in']} | {s['out']} | {s['in'] - s['out']} | {reason}: {n} |" in body
    assert "| answer_wrong | 1 |" in body  # rejected/ counted by reason
    # decontamination report
    assert "## Decontamination" in body and "| aime24 | 1 |" in body and "| math500 | 0 |" in body
    # the rule the filter actually ran with (decontam_min_overlap 0.2), not the classic any-8-gram rule
    assert "contains at least 20% of the word 8-grams of one problem of" in body and "aime24, math500" in body
    # histogram exists, is a PNG, and the card shows it
    png = hub / "assets" / "token_lengths.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](assets/token_lengths.png)" in body and "tokens: min 120" in body
    # how to load and train
    assert 'load_dataset("my-org/toy-r1", split="train")' in body
    assert "distill sft --student" in body and "--data my-org/toy-r1" in body
    assert (hub / "provenance" / "filter_stats.json").is_file()
    assert yaml.safe_load((filter_out / "publish" / "config.yaml").read_text())["repo"] == "my-org/toy-r1"
    assert json.loads((filter_out / "publish" / "stats.json").read_text())["rows"] == 3


def test_published_parquet_loads_with_datasets(filter_out):
    import datasets

    run(PublishConfig(dir=str(filter_out), repo="my-org/toy-r1", dry_run=True, shard_rows=2))
    files = sorted((filter_out / "hub" / "data").glob("*.parquet"))
    assert [f.name for f in files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    ds = datasets.load_dataset("parquet", data_files=str(filter_out / "hub" / "data" / "*.parquet"), split="train")
    assert ds.num_rows == 3
    assert ds[0]["messages"][-1]["role"] == "assistant" and ds[0]["messages"][-1]["content"].startswith("<think>\n")
    assert set(ds.column_names) >= {"id", "problem", "answer", "completion", "messages"}
    # and distill's own reader takes the published set back as records (the `records` format)
    from distill.data.reader import read_samples
    assert [r.id for r in read_samples(filter_out / "hub" / "data")] == ["toy/1/0", "toy/2/0", "toy/3/1"]


def _filter_stats(d: Path, kept: int, decontaminate: bool = False) -> None:
    steps = [{"name": "finished", "in": kept, "out": kept, "reasons": {}}]
    if decontaminate:
        steps.append({"name": "decontaminate", "in": kept, "out": kept, "reasons": {}})
    (d / "stats.json").write_text(json.dumps({"input": kept, "kept": kept, "steps": steps, "decontamination": {}}))


def test_missing_manifest_still_publishes_and_says_so(tmp_path):
    d = tmp_path / "f"
    row = _record("1", 0, 0)
    del row["messages"]  # built from problem + completion when the filter did not write it
    write_parquet(d / "kept" / "a.parquet", [row])
    with pytest.raises(DistillError, match=r"f/stats\.json: not found; pass the output folder of `distill filter`"):
        run(PublishConfig(dir=str(d), repo="o/n", dry_run=True))
    _filter_stats(d, 1)
    run(PublishConfig(dir=str(d), repo="o/n", dry_run=True))
    _, body = _card(d)
    assert "No decontamination report" in body
    assert "characters; num_tokens not recorded" in body
    import pyarrow.parquet as pq
    assert "messages" in pq.read_table(next((d / "hub" / "data").glob("*.parquet"))).column_names


@pytest.mark.parametrize("repo", ["noslash", "a/b/c", "a/"])
def test_bad_repo_is_one_line_error(filter_out, repo):
    with pytest.raises(DistillError, match="expected ORG/NAME"):
        run(PublishConfig(dir=str(filter_out), repo=repo, dry_run=True))


def test_not_a_filter_output(tmp_path):
    with pytest.raises(DistillError, match="no kept/ folder"):
        run(PublishConfig(dir=str(tmp_path), repo="o/n", dry_run=True))


def test_no_token_is_one_line_error_saying_how_to_log_in(filter_out, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr("distill.data.publish._token", lambda: None)
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)
    with pytest.raises(DistillError, match="hf auth login"):
        run(PublishConfig(dir=str(filter_out), repo="o/n"))


def test_offline_is_one_line_error(filter_out, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with pytest.raises(DistillError, match="offline"):  # conftest sets HF_HUB_OFFLINE=1
        run(PublishConfig(dir=str(filter_out), repo="o/n"))


class _FakeApi:
    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        _FakeApi.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kwargs):
        _FakeApi.calls.append(("upload_folder", kwargs))
        return type("CommitInfo", (), {"oid": "c0ffee"})()


def test_token_never_written_or_logged(filter_out, monkeypatch, caplog):
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(huggingface_hub.constants, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    _FakeApi.calls = []
    caplog.set_level(logging.DEBUG)
    # a token pasted into the filter config by mistake must not travel to the Hub either
    cfg = yaml.safe_load((filter_out / "config.yaml").read_text())
    (filter_out / "config.yaml").write_text(yaml.safe_dump({**cfg, "note": f"token {SECRET}"}))

    run(PublishConfig(dir=str(filter_out), repo="my-org/toy-r1", dry_run=True))
    stats = run(PublishConfig(dir=str(filter_out), repo="my-org/toy-r1", private=True))

    assert [c[0] for c in _FakeApi.calls] == ["create_repo", "upload_folder"]
    assert _FakeApi.calls[0][2] == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert _FakeApi.calls[1][1]["folder_path"] == str(filter_out / "hub")
    assert SECRET not in json.dumps(_FakeApi.calls, default=str)
    assert stats["commit"] == "c0ffee"
    written = [p for d in ("hub", "publish") for p in (filter_out / d).rglob("*") if p.is_file()]
    assert len(written) >= 7
    for p in written:
        assert SECRET.encode() not in p.read_bytes(), p
    assert "<redacted>" in (filter_out / "hub" / "provenance" / "filter_config.yaml").read_text()
    for rec in caplog.records:
        assert SECRET not in rec.getMessage()


def test_cli_publish_dry_run(filter_out):
    from distill.cli import main

    assert main(["publish", str(filter_out), "--repo", "my-org/toy-r1", "--dry-run"]) == 0
    assert (filter_out / "hub" / "README.md").is_file()


def test_rows_that_disagree_with_the_stats_are_refused(filter_out):
    """A filter killed mid-write (or two runs mixed in one folder) must not be published under the old counts."""
    (filter_out / "stats.json").write_text(json.dumps({**STATS, "kept": 15007}))
    with pytest.raises(DistillError, match=r"kept/ holds 3 rows but its stats.json counts 15007.*re-run `distill "
                                           r"filter`"):
        run(PublishConfig(dir=str(filter_out), repo="o/n", dry_run=True))
    assert not (filter_out / "hub").exists()
    (filter_out / "stats.json").write_text(json.dumps({"kept": 3, "funnel": {}}))
    with pytest.raises(DistillError, match="not the stats.json of `distill filter`"):
        run(PublishConfig(dir=str(filter_out), repo="o/n", dry_run=True))


def test_card_warns_when_gold_answers_are_missing(tmp_path):
    from distill.data.reader import read_samples

    fixtures = Path(__file__).parent / "fixtures" / "datasets"
    d = tmp_path / "f"
    write_parquet(d / "kept" / "a.parquet", read_samples(fixtures / "sharegpt.jsonl", answer_key=None))
    _filter_stats(d, 3)
    run(PublishConfig(dir=str(d), repo="o/n", dry_run=True))
    _, body = _card(d)
    assert "**3 samples have no gold answer in their source dataset**" in body


def test_shards_share_one_schema_when_a_column_is_null_in_one_shard(tmp_path):
    import datasets

    d = tmp_path / "f"
    rows = [{**_record(str(i), 0, 10), "extracted": None if i < 3 else str(2 * i)} for i in range(1, 5)]
    write_parquet(d / "kept" / "a.parquet", rows)
    _filter_stats(d, 4)
    run(PublishConfig(dir=str(d), repo="o/n", dry_run=True, shard_rows=2))
    ds = datasets.load_dataset("parquet", data_files=str(d / "hub" / "data" / "*.parquet"), split="train")
    assert ds["extracted"] == [None, None, "6", "8"]


def test_empty_decontamination_without_the_step_is_reported_missing(filter_out):
    stats = {**STATS, "steps": STATS["steps"][:2], "decontamination": {}}  # what filter writes with the step off
    (filter_out / "stats.json").write_text(json.dumps(stats))
    run(PublishConfig(dir=str(filter_out), repo="o/n", dry_run=True))
    _, body = _card(filter_out)
    assert "**No decontamination report**" in body and "| aime24 |" not in body
