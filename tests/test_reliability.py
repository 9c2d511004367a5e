"""Nothing lost, nothing silently wrong: each defect of the reliability issue, reproduced and shown fixed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from distill.cli import INTERRUPTED, main
from distill.config import EvalConfig, FilterConfig, GenerateConfig, SftConfig, build_config, save_config
from distill.data.io import atomic_write_text, write_parquet
from distill.data.io import write_jsonl as _write_jsonl
from distill.data.reader import read_samples
from distill.errors import DistillError
from distill.filters import run as filter_run
from distill.redact import redact_url

GOOD = "<think>\nTwo plus two is four, as we add the units.\n</think>\n\nThe answer is \\boxed{4}."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    _write_jsonl(path, rows)
    return path


def rec(i: int, completion: str = GOOD, answer: str = "4", problem: str | None = None) -> dict:
    problem = problem or f"What is 2 + 2 (case {i})?"
    return {"id": f"toy/p{i}/0", "problem_id": f"p{i}", "problem": problem, "answer": answer,
            "completion": completion, "finish_reason": "stop", "sample_index": 0, "source": "toy"}


def filter_cfg(src: Path, out: Path, **kw) -> FilterConfig:
    return build_config(FilterConfig, {"input": str(src), "out": str(out), "steps": "finished,think_format",
                                       "workers": 1, **kw})


def error_lines(stderr: str) -> list[str]:
    """The `error:` lines of a command's stderr (progress bars share it)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error: ")]


def kept_ids(out: Path) -> list[str]:
    return sorted(r.id for r in read_samples(out))


# ---------------------------------------------------------------- 1. filter is transactional


def test_a_failed_filter_run_leaves_the_previous_result_and_its_stats(tmp_path):
    out = tmp_path / "curated"
    good = write_jsonl(tmp_path / "good.jsonl", [rec(i) for i in range(5)])
    filter_run.run(filter_cfg(good, out))
    before = (out / "stats.json").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(rec(i)) + "\n" for i in range(3)) + "{not json\n")
    with pytest.raises(DistillError, match=r"bad\.jsonl:4: not valid JSON"):
        filter_run.run(filter_cfg(bad, out))
    assert kept_ids(out) == [f"toy/p{i}/0" for i in range(5)]  # the previous good output, whole
    assert (out / "stats.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "curated", "good.jsonl"]  # no staging left


def test_a_filter_killed_mid_write_never_mixes_parts_with_old_stats(tmp_path, monkeypatch):
    """kill -9 after some Parquet parts are written: simulated by a crash inside the sink, and by the leftovers a
    kill leaves beside OUT (a staging folder; a swap cut between its two renames)."""
    out = tmp_path / "curated"
    filter_run.run(filter_cfg(write_jsonl(tmp_path / "a.jsonl", [rec(i) for i in range(4)]), out))
    big = write_jsonl(tmp_path / "b.jsonl", [rec(i) for i in range(40)])
    real_flush = filter_run.PartWriter.flush
    calls = []

    def flush_then_die(self, force=False):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies with two parts written
        return real_flush(self, force)

    monkeypatch.setattr(filter_run.PartWriter, "flush", flush_then_die)
    with pytest.raises(KeyboardInterrupt):
        filter_run.run(filter_cfg(big, out, chunk_size=10))
    monkeypatch.undo()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["kept"] == len(kept_ids(out)) == 4  # the old output and the stats that count it

    # What a kill -9 leaves: a staging folder, or the old output moved aside before the new one arrived.
    (tmp_path / ".curated.filter-new-999").mkdir()
    out.rename(tmp_path / ".curated.filter-old-999")
    filter_run.recover(out)
    assert kept_ids(out) == [f"toy/p{i}/0" for i in range(4)]
    assert not list(tmp_path.glob(".curated.filter-*"))


def test_filter_refuses_to_replace_a_folder_that_is_not_its_output(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes")
    with pytest.raises(DistillError, match=r"holds files that are not a filter output \(notes\.txt\)"):
        filter_run.run(filter_cfg(write_jsonl(tmp_path / "a.jsonl", [rec(0)]), tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "my notes"


def test_sft_refuses_a_filter_output_whose_rows_disagree_with_its_stats(tmp_path, tiny_qwen_dir):
    from distill.train.sft import run as sft

    out = tmp_path / "curated"
    filter_run.run(filter_cfg(write_jsonl(tmp_path / "a.jsonl", [rec(i) for i in range(4)]), out))
    stats = json.loads((out / "stats.json").read_text())
    (out / "stats.json").write_text(json.dumps({**stats, "kept": 15007}))
    cfg = build_config(SftConfig, {"student": str(tiny_qwen_dir), "data": str(out), "out": str(tmp_path / "s"),
                                   "max_length": 256, "preflight_only": True})
    with pytest.raises(DistillError, match=r"kept/ holds 4 rows but its stats.json counts 15007"):
        sft(cfg)


# ---------------------------------------------------------------- 3. a filter output as input: kept/ only


def test_refiltering_a_filter_output_reads_kept_only_even_after_publish(tmp_path):
    from distill.config import PublishConfig
    from distill.data.publish import run as publish

    rows = [rec(0), rec(1), rec(2, completion="<think>\nhm\n</think>\n\n\\boxed{5}"), rec(3)]
    out = tmp_path / "curated"
    stats = filter_run.run(filter_cfg(write_jsonl(tmp_path / "a.jsonl", rows), out,
                                      steps="finished,think_format,answer_correct"))
    assert stats["kept"] == 3 and stats["rejected"] == 1
    publish(PublishConfig(dir=str(out), repo="o/n", dry_run=True))  # writes out/hub/provenance/filter_stats.json
    again = filter_run.run(filter_cfg(out, tmp_path / "again", steps="finished"))
    assert again["input"] == 3 and kept_ids(tmp_path / "again") == ["toy/p0/0", "toy/p1/0", "toy/p3/0"]


# ---------------------------------------------------------------- 6. a column option naming a missing column


def test_filter_key_options_are_honoured_when_rows_also_have_record_columns(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{**rec(0), "response": GOOD}])
    with pytest.raises(DistillError, match=r"no column 'questionX'.*--problem-key"):
        filter_run.run(filter_cfg(src, tmp_path / "o", problem_key="questionX"))
    with pytest.raises(DistillError, match=r"no column 'resp'.*--completion-key"):
        filter_run.run(filter_cfg(src, tmp_path / "o", completion_key="resp"))
    stats = filter_run.run(filter_cfg(src, tmp_path / "o", completion_key="response"))
    assert stats["kept"] == 1


# ---------------------------------------------------------------- 8. credentials in --base-url


def test_credentials_in_base_url_are_redacted_everywhere(tmp_path, capsys):
    url = "http://alice:s3cr3t@127.0.0.1:9/v1"
    assert redact_url(url) == "http://***@127.0.0.1:9/v1"
    assert redact_url(f"cannot reach {url} now") == "cannot reach http://***@127.0.0.1:9/v1 now"
    cfg = build_config(GenerateConfig, {"teacher": "t", "dataset": "d.jsonl", "out": str(tmp_path), "backend": "openai",
                                        "base_url": url})
    save_config(cfg, tmp_path)
    assert "s3cr3t" not in (tmp_path / "config.yaml").read_text()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["base_url"] == "http://***@127.0.0.1:9/v1"
    from distill.generate import build_manifest

    manifest = build_manifest(cfg, "d", [], "{problem}", None, None)
    assert "s3cr3t" not in json.dumps(manifest)
    data = write_jsonl(tmp_path / "p.jsonl", [{"problem": "1+1?", "answer": "2"}])
    assert main(["generate", "--teacher", "t", "--dataset", str(data), "--out", str(tmp_path / "g"), "--backend",
                 "openai", "--base-url", url, "--n", "1", "--max-tokens", "4"]) == 1
    err = capsys.readouterr().err
    assert "s3cr3t" not in err
    (line,) = error_lines(err)
    assert "cannot connect" in line and "http://***@127.0.0.1:9/v1" in line
    assert not (tmp_path / "g" / "manifest.json").exists()  # a run that wrote nothing pins nothing


# ---------------------------------------------------------------- 9. filesystem errors are one line


@pytest.mark.parametrize("stage", ["filter", "eval", "publish"])
def test_filesystem_errors_are_one_line_naming_the_path(stage, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    data = write_jsonl(tmp_path / "c.jsonl", [rec(0)])
    if stage == "filter":
        argv = ["filter", str(data), "--out", str(blocker / "out")]
    elif stage == "eval":
        argv = ["eval", "--completions", str(data), "--out", str(blocker / "out"), "--workers", "1"]
    else:
        filter_run.run(filter_cfg(data, tmp_path / "curated"))
        (tmp_path / "curated" / "hub").write_text("a file where publish writes its folder")
        argv = ["publish", str(tmp_path / "curated"), "--repo", "o/n", "--dry-run"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert "Traceback" not in err and str(tmp_path) in line


def test_disk_full_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "kept" / "part-00000.parquet"))

    monkeypatch.setattr(filter_run, "atomic_open", full)
    assert main(["filter", str(write_jsonl(tmp_path / "c.jsonl", [rec(0)])), "--out", str(tmp_path / "out")]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "No space left on device; free some space or choose another --out" in line
    assert "part-00000.parquet" in line


# ---------------------------------------------------------------- 10. wrong-typed columns


def test_a_list_column_is_an_error_naming_the_column_not_a_stringified_list(tmp_path):
    write_parquet(tmp_path / "p.parquet", [{**rec(0), "answer": [1, 2, 3]}])
    with pytest.raises(DistillError, match=r"p\.parquet:row 0: column 'answer' must hold text, got list"):
        list(read_samples(tmp_path / "p.parquet"))
    write_parquet(tmp_path / "q.parquet", [{**rec(0), "completion": b"\\boxed{4}"}])
    with pytest.raises(DistillError, match=r"column 'completion' must hold text, got bytes"):
        list(read_samples(tmp_path / "q.parquet"))


# ---------------------------------------------------------------- 12. sft checks its options first


def test_sft_option_errors_come_before_any_work(tmp_path, tiny_qwen_dir):
    from distill.train.sft import run as sft

    data = write_jsonl(tmp_path / "d.jsonl", [{"problem": "q", "completion": GOOD}])
    base = {"student": str(tiny_qwen_dir), "data": str(data), "out": str(tmp_path / "s"), "max_length": 256}
    with pytest.raises(DistillError, match="unknown format 's1kk' \\(did you mean 's1k'\\?\\)"):
        sft(build_config(SftConfig, {**base, "format": "s1kk"}))
    with pytest.raises(DistillError, match=r"trl: 'gradient_accumulation_steps' must be int, got str 'four'"):
        sft(build_config(SftConfig, {**base, "trl": {"gradient_accumulation_steps": "four"}}))
    assert not (tmp_path / "s").exists()
    # problem + completion suffice: no id, problem_id or answer columns needed
    stats = sft(build_config(SftConfig, {**base, "preflight_only": True}))
    assert stats["preflight"]["kept"] == 1


def test_sft_format_s1k_reads_s1k_rows(tmp_path, tiny_qwen_dir):
    from distill.train.data import load_examples

    fixtures = Path(__file__).parent / "fixtures" / "datasets"
    examples = load_examples(str(fixtures / "s1k.jsonl"), format="s1k")
    assert len(examples) == 2 and examples[0]["completion"][0]["content"].startswith("<think>\nOkay, so I need")
    # the same rows without --format are also detected as s1K; a wrong --format is refused, not ignored
    with pytest.raises(DistillError, match="format 'openr1' needs column 'problem'"):
        load_examples(str(fixtures / "s1k.jsonl"), format="openr1")


# ---------------------------------------------------------------- 13. empty and null input


def test_empty_input_and_null_completions_are_errors_or_counted_rejections(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DistillError, match=r"empty\.jsonl: no records to filter \(it is empty\)"):
        filter_run.run(filter_cfg(empty, tmp_path / "o"))
    src = write_jsonl(tmp_path / "n.jsonl", [rec(0), {**rec(1), "completion": None}])
    stats = filter_run.run(filter_cfg(src, tmp_path / "o2"))
    assert stats["null_completions"] == 1 and stats["steps"][0]["reasons"] == {"completion_empty": 1}


def test_null_gold_is_called_null_not_missing(tmp_path):
    from distill.data.io import read_records

    path = write_jsonl(tmp_path / "r.jsonl", [{**rec(0), "answer": None}])
    with pytest.raises(DistillError, match=r"r\.jsonl:1: field\(s\) answer present but null"):
        list(read_records(path))


# ---------------------------------------------------------------- 14. the small ones


def test_skip_invalid_exists_where_the_message_suggests_it(tmp_path):
    bad = tmp_path / "c.jsonl"
    bad.write_text(json.dumps({**rec(0), "completion": "\\boxed{4}"}) + "\n{broken\n")
    with pytest.raises(DistillError, match="pass --skip-invalid"):
        from distill.eval.run import run as evaluate

        evaluate(build_config(EvalConfig, {"completions": str(bad), "out": str(tmp_path / "e"), "workers": 1}))
    results = evaluate(build_config(EvalConfig, {"completions": str(bad), "out": str(tmp_path / "e"), "workers": 1,
                                                 "skip_invalid": True}))
    assert results["results"]["c"]["samples"] == 1
    assert "skip_invalid" in {f for f in SftConfig.__dataclass_fields__}


def test_outputs_follow_the_umask(tmp_path):
    from distill.data.io import apply_umask

    path = atomic_write_text(tmp_path / "x.txt", "x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    saved = tmp_path / "model" / "model.safetensors"  # what transformers' own atomic save leaves
    saved.parent.mkdir()
    saved.write_bytes(b"")
    saved.chmod(0o600)
    apply_umask(saved.parent)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_interrupted_says_that_rerunning_resumes():
    assert "resume" in INTERRUPTED and "run the same command again" in INTERRUPTED
