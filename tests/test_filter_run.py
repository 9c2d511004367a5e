"""The filter stage end to end on a hand-written generate dir: exact kept ids, rejected reasons, stats, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from distill.cli import main
from distill.config import DEFAULT_FILTER_STEPS, FilterConfig, build_config, load_config
from distill.errors import DistillError
from distill.filters.run import funnel_table, run
from distill.prompts import sft_messages
from distill.tasks import load_task

P1 = "What is $2+3$? Give the sum of two and three as one integer."
P2 = "Compute $7 \\times 6$ and write the product of seven and six."
P4 = "How many sides does a hexagon have? Count the edges of a regular hexagon."
AIME = load_task("aime24")[0]


def _long_reasoning(changed: str = "carefully") -> str:
    body = " ".join(f"Step {i}: we check that {i} plus {i} equals {2 * i} and record it." for i in range(60))
    return f"<think>\nWe add two and three {changed}. {body}\n</think>\nThe sum is \\boxed{{5}}."


def rec(pid: str, i: int, problem: str, answer: str, completion: str, finish: str = "stop", num_tokens: int = 0):
    return {"id": f"toy/{pid}/{i}", "problem_id": pid, "problem": problem, "answer": answer, "completion": completion,
            "finish_reason": finish, "num_tokens": num_tokens, "sample_index": i, "model": "teacher", "source": "toy",
            "meta": {"shard": 0}}


RECORDS = [
    rec("p1", 0, P1, "5", _long_reasoning()),
    rec("p1", 1, P1, "5", "<think>\nTwo plus three is", finish="length"),
    rec("p1", 2, P1, "5", "  " + _long_reasoning().replace(" ", "   ")),  # same text, other whitespace
    rec("p1", 3, P1, "5", _long_reasoning(changed="slowly")),  # one word differs
    rec("p1", 4, P1, "5", "<think>\nTwo plus three is five, surely.\n</think>\n\\boxed{5}", num_tokens=5000),
    rec("p2", 0, P2, "42", "<think>\nSeven sixes are forty-one.\n</think>\nThe product is \\boxed{41}."),
    rec("p2", 1, P2, "42", "<think>\nSeven times six is forty-two. \\boxed{42}"),
    rec("p2", 2, P2, "42", "<think>\n七乘以六等于四十二。我们来验证一下：六个七相加得四十二。\n</think>\n\\boxed{42}"),
    rec("p2", 3, P2, "42", "<think>\nSeven times six is forty-two.\n</think>\nThe product is \\boxed{42}."),
    rec("p3", 0, AIME["problem"], AIME["answer"],
        "<think>\nLet the speed be s; solving the two equations gives the time.\n</think>\n\\boxed{204}"),
    rec("p4", 0, P4, "6", "<think>\nA hexagon has six sides, by definition of the polygon.\n</think>\n\\boxed{6}"),
    rec("p4", 1, P4, "6", "<think>\nHexa means six.\n</think>\n\\boxed{6}"),
    rec("p4", 2, P4, "6", "<think>\nDraw it and count the edges: one, two, three, four, five.\n</think>\n\\boxed{6}"),
    rec("p4", 3, P4, "6", "<think>\nSix edges.\n</think>\n\\boxed{6}"),
    rec("p4", 4, P4, "6", "<think>\n" + "Let me count again. " * 50 + "\n</think>\n\\boxed{6}"),
    rec("p4", 5, P4, "6", "The answer is \\boxed{6}."),
]
KEPT = ["toy/p1/0", "toy/p2/3", "toy/p4/1", "toy/p4/3"]
REJECTED = {
    "toy/p1/1": ("finished", "truncated"),
    "toy/p1/2": ("dedup", "duplicate_exact"),
    "toy/p1/3": ("dedup", "duplicate_near"),
    "toy/p1/4": ("length", "length_over_max"),
    "toy/p2/0": ("answer_correct", "answer_wrong"),
    "toy/p2/1": ("think_format", "format_unclosed_think"),
    "toy/p2/2": ("language", "language_mixed"),
    "toy/p3/0": ("decontaminate", "contaminated"),
    "toy/p4/0": ("select", "select_over_k"),
    "toy/p4/2": ("select", "select_over_k"),
    "toy/p4/4": ("repetition", "repetition_loop"),
    "toy/p4/5": ("think_format", "format_no_think"),
}


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("generate-out")
    with open(d / "shard-00000.jsonl", "w", encoding="utf-8") as f:
        for r in RECORDS[:8]:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(d / "shard-00001.jsonl", "w", encoding="utf-8") as f:
        for r in RECORDS[8:]:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (d / "manifest.json").write_text(json.dumps({"teacher": "teacher", "n": 4}))
    return d


def _read(folder: Path) -> list[dict]:
    return [row for part in sorted(folder.glob("part-*.parquet")) for row in pq.read_table(part).to_pylist()]


@pytest.fixture(scope="module")
def full_run(gen_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("filter-out")
    cfg = build_config(FilterConfig, {"input": str(gen_dir), "out": str(out), "max_tokens": 4096, "select_k": 2,
                                      "select_strategy": "shortest", "workers": 2, "chunk_size": 5})
    stats = run(cfg)
    return out, stats


def test_exact_kept_ids_and_rejected_reasons(full_run):
    out, _ = full_run
    kept = _read(out / "kept")
    assert sorted(r["id"] for r in kept) == KEPT
    rejected = {r["id"]: (r["step"], r["reason"]) for r in _read(out / "rejected")}
    assert rejected == REJECTED


def test_kept_rows_carry_messages_extracted_and_meta(full_run):
    out, _ = full_run
    by_id = {r["id"]: r for r in _read(out / "kept")}
    row = by_id["toy/p2/3"]
    assert row["messages"] == sft_messages(P2, RECORDS[8]["completion"])
    assert row["extracted"] == "42"
    assert json.loads(row["meta"]) == {"shard": 0}
    wrong = {r["id"]: r for r in _read(out / "rejected")}["toy/p2/0"]
    assert wrong["extracted"] == "41" and "messages" not in wrong


def test_stats_funnel_is_consistent(full_run):
    out, stats = full_run
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["input"] == len(RECORDS) and on_disk["kept"] == len(KEPT) and on_disk["invalid"] == 0
    assert [s["name"] for s in on_disk["steps"]] == list(DEFAULT_FILTER_STEPS)
    prev_out = on_disk["input"]
    for step in on_disk["steps"]:
        assert step["in"] == prev_out
        assert step["in"] == step["out"] + sum(step["reasons"].values())
        prev_out = step["out"]
    assert prev_out == on_disk["kept"]
    by_name = {s["name"]: s for s in on_disk["steps"]}
    assert by_name["dedup"]["reasons"] == {"duplicate_exact": 1, "duplicate_near": 1}
    assert by_name["select"] == {"name": "select", "in": 6, "out": 4, "reasons": {"select_over_k": 2}}
    assert on_disk["decontamination"]["aime24"] == 1
    assert sum(on_disk["decontamination"].values()) == 1
    table = funnel_table(on_disk)
    assert "answer_correct" in table and "answer_wrong 1" in table


def test_config_yaml_written_and_reloads(full_run):
    out, _ = full_run
    cfg = load_config(FilterConfig, out / "config.yaml")
    assert cfg.select_k == 2 and cfg.max_tokens == 4096
    assert yaml.safe_load((out / "config.yaml").read_text())["steps"][0] == "finished"
    assert not (out / ".select_pending").exists()


def test_cli_with_two_steps(gen_dir, tmp_path):
    out = tmp_path / "cli-out"
    assert main(["filter", str(gen_dir), "--out", str(out), "--steps", "finished,think_format"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert [s["name"] for s in stats["steps"]] == ["finished", "think_format"]
    rejected = {r["id"]: r["reason"] for r in _read(out / "rejected")}
    assert rejected == {"toy/p1/1": "truncated", "toy/p2/1": "format_unclosed_think", "toy/p4/5": "format_no_think"}
    assert len(_read(out / "kept")) == len(RECORDS) - 3


def test_cli_bad_step_is_one_line(gen_dir, tmp_path, capsys):
    assert main(["filter", str(gen_dir), "--out", str(tmp_path / "o"), "--steps", "finishd"]) == 1
    err = capsys.readouterr().err
    assert "unknown step 'finishd' (did you mean 'finished'?)" in err and err.count("\n") == 1


def test_missing_completion_column_lists_columns(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"problem": "p", "answer": "1", "response": "x"}) + "\n")
    cfg = build_config(FilterConfig, {"input": str(src), "out": str(tmp_path / "o"), "steps": "finished"})
    with pytest.raises(DistillError, match=r"rows\.jsonl:1: no column 'completion' \(columns: answer, problem, "
                                           r"response\); pass --completion-key"):
        run(cfg)


def test_column_mapping_groups_samples_by_problem(tmp_path):
    src = tmp_path / "rows.jsonl"
    rows = [{"question": "Q one?", "gt": "1", "response": f"<think>\nr{i}\n</think>\n\\boxed{{1}}"} for i in range(3)]
    rows.append({"question": "Q two?", "gt": "2", "response": "<think>\nr\n</think>\n\\boxed{2}"})
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = build_config(FilterConfig, {"input": str(src), "out": str(tmp_path / "o"), "steps": "think_format,select",
                                      "problem_key": "question", "answer_key": "gt", "completion_key": "response",
                                      "select_k": 2})
    stats = run(cfg)
    assert stats["kept"] == 3  # 2 of Q one + 1 of Q two
    kept = _read(tmp_path / "o" / "kept")
    assert {r["sample_index"] for r in kept if r["problem"] == "Q one?"} <= {0, 1, 2}
    assert len({r["problem_id"] for r in kept}) == 2


def test_non_utf8_line_fails_with_file_and_line_or_is_counted(gen_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = json.dumps(RECORDS[0]).encode()
    (src / "shard.jsonl").write_bytes(good + b"\n" + b'{"id": "\xff\xfe"}\n' + b"not json\n")
    cfg = build_config(FilterConfig, {"input": str(src), "out": str(tmp_path / "o"), "steps": "finished"})
    with pytest.raises(DistillError, match=r"shard\.jsonl:2: not UTF-8"):
        run(cfg)
    cfg = build_config(FilterConfig, {"input": str(src), "out": str(tmp_path / "o"), "steps": "finished",
                                      "skip_invalid": True})
    stats = run(cfg)
    assert (stats["input"], stats["invalid"], stats["kept"]) == (1, 2, 1)


def test_empty_result_still_writes_schema(tmp_path):
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps(RECORDS[1]) + "\n")
    stats = run(build_config(FilterConfig, {"input": str(src), "out": str(tmp_path / "o"), "steps": "finished"}))
    assert stats["kept"] == 0
    schema = pq.read_schema(next((tmp_path / "o" / "kept").glob("part-*.parquet")))
    assert "messages" in schema.names and "extracted" in schema.names


def test_select_must_be_last(tmp_path):
    cfg = build_config(FilterConfig, {"input": "x.jsonl", "out": str(tmp_path), "steps": "select,finished"})
    with pytest.raises(DistillError, match="'select' must be the last step"):
        run(cfg)


def test_parquet_output_is_valid_input(full_run, tmp_path):
    out, _ = full_run
    stats = run(build_config(FilterConfig, {"input": str(out / "kept"), "out": str(tmp_path / "again"),
                                            "steps": "finished,think_format,dedup"}))
    assert (stats["input"], stats["kept"]) == (len(KEPT), len(KEPT))


def test_published_format_goes_through_the_adapters(tmp_path):
    src = tmp_path / "openr1.jsonl"
    row = {"problem": P2, "answer": "42", "uuid": "u1", "finish_reasons": ["stop", "length"],
           "generations": ["<think>\nSeven sixes.\n</think>\n\\boxed{42}", "<think>\nSeven times six is"]}
    src.write_text(json.dumps(row) + "\n")
    stats = run(build_config(FilterConfig, {"input": str(src), "out": str(tmp_path / "o"),
                                            "steps": "finished,think_format"}))
    assert (stats["input"], stats["kept"]) == (2, 1)
    assert stats["steps"][0]["reasons"] == {"truncated": 1}


def test_out_inside_input_is_refused(gen_dir):
    cfg = build_config(FilterConfig, {"input": str(gen_dir), "out": str(gen_dir / "filtered"), "steps": "finished"})
    with pytest.raises(DistillError, match="inside INPUT"):
        run(cfg)
