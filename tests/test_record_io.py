"""Record round trips, readers' errors (file and line), atomic writers."""

from __future__ import annotations

import json

import pytest

from distill.data.io import atomic_open, iter_rows, read_records, write_jsonl, write_parquet, write_records
from distill.data.reader import Problem, read_problems
from distill.data.record import Record, content_id
from distill.errors import DistillError


def _records():
    return [
        Record(id="aime24/60/0", problem_id="60", problem="Find x.", answer="025",
               completion="<think>\nx is 25\n</think>\n\n\\boxed{25}", finish_reason="stop", num_tokens=12,
               sample_index=0, model="tiny", source="aime24", meta={"seed": 1, "nested": {"a": [1, 2]}}),
        Record(id="aime24/60/1", problem_id="60", problem="Find x.", answer="025", completion="<think>\nhm",
               finish_reason="length", num_tokens=4, sample_index=1, model="tiny", source="aime24", meta={}),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_record_round_trip(tmp_path, suffix):
    path = tmp_path / f"records{suffix}"
    assert write_records(path, _records()) == 2
    back = list(read_records(path))
    assert back == _records()
    assert back[0].meta["nested"]["a"] == [1, 2]


def test_record_id_is_stable():
    assert Record.make_id("aime24", "60", 3) == "aime24/60/3"


def test_missing_record_field_names_file_line_and_columns(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "a/1/0", "problem_id": "1", "problem": "p", "answer": "1"}) + "\n"
                    + json.dumps({"id": "a/2/0", "problem_id": "2", "question": "p", "answer": "1"}) + "\n")
    with pytest.raises(DistillError, match=r"bad\.jsonl:2: missing field\(s\) problem.*question"):
        list(read_records(path))


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": \n')
    with pytest.raises(DistillError, match=r"p\.jsonl:2: not valid JSON"):
        read_problems(path)


def test_skip_invalid_counts_bad_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"problem": "a", "answer": "1"}\nnot json\n\xff\xfe\n[1]\n{"problem": "b", "answer": "2"}\n')
    stats: dict[str, int] = {}
    rows = [row for _, row in iter_rows(path, skip_invalid=True, stats=stats)]
    assert [r["problem"] for r in rows] == ["a", "b"]
    assert stats["invalid"] == 3


def test_non_utf8_line_is_an_error_with_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"problem": "a", "answer": "1"}\n{"problem": "\xff", "answer": "2"}\n')
    with pytest.raises(DistillError, match=r"p\.jsonl:2: not UTF-8"):
        read_problems(path)


def test_missing_column_lists_existing_columns(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "a", "solution": "1"}\n')
    with pytest.raises(DistillError) as e:
        read_problems(path)
    msg = str(e.value)
    assert "p.jsonl:1: no column 'problem'" in msg and "question, solution" in msg and "--problem-key" in msg
    assert "\n" not in msg


def test_column_mapping_and_ids(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"q": "one", "a": 27.0, "k": "x1"}\n{"q": "two", "a": "b", "k": "x2"}\n')
    assert read_problems(path, problem_key="q", answer_key="a", id_key="k") == [
        Problem("x1", "one", "27"), Problem("x2", "two", "b")]
    # Without an id column: the problem text's content id, the same wherever the problem is read.
    assert [p.id for p in read_problems(path, problem_key="q", answer_key="a")] == [content_id("one"),
                                                                                     content_id("two")]
    assert content_id("one") == content_id("one") != content_id("one ")


def test_repeated_problem_without_ids_is_read_once_with_a_warning(tmp_path, caplog):
    path = tmp_path / "p.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": "2"}\n{"problem": "a", "answer": "1"}\n')
    assert [p.problem for p in read_problems(path)] == ["a", "b"]
    assert "p.jsonl:3: the same problem as" in caplog.text and "1 repeated problems" in caplog.text


def test_duplicate_ids_and_empty_problems_are_errors(tmp_path):
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"problem": "a", "answer": "1", "k": 1}\n{"problem": "b", "answer": "1", "k": 1}\n')
    with pytest.raises(DistillError, match=r"dup\.jsonl:2: duplicate id '1' \(first at .*dup\.jsonl:1\)"):
        read_problems(dup, id_key="k")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"problem": "  ", "answer": "1"}\n')
    with pytest.raises(DistillError, match=r"empty\.jsonl:1: field 'problem' is empty"):
        read_problems(empty)
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text("")
    with pytest.raises(DistillError, match="no problems found"):
        read_problems(nothing)


def test_csv_and_parquet_and_json_array(tmp_path):
    (tmp_path / "p.csv").write_text("problem,answer\n\"What, exactly?\",5\n")
    assert read_problems(tmp_path / "p.csv") == [Problem(content_id("What, exactly?"), "What, exactly?", "5")]
    write_parquet(tmp_path / "p.parquet", [{"problem": "a", "answer": "1"}, {"problem": "b", "answer": "2"}])
    assert [p.answer for p in read_problems(tmp_path / "p.parquet")] == ["1", "2"]
    (tmp_path / "p.json").write_text('[{"problem": "a", "answer": 3}]')
    assert read_problems(tmp_path / "p.json")[0].answer == "3"


def test_csv_with_a_byte_order_mark(tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufeffproblem,answer\nWhat?,5\n".encode("utf-8"))
    assert read_problems(tmp_path / "bom.csv")[0].problem == "What?"


def test_limit_and_bundled_task_name():
    rows = read_problems("aime24", limit=3)
    assert len(rows) == 3 and rows[0].answer == "204" and rows[0].id == "60"  # a task keeps its own ids


def test_folder_of_shards_reads_every_file_in_order(tmp_path):
    write_jsonl(tmp_path / "shard-00001.jsonl", [{"problem": "b", "answer": "2"}])
    write_jsonl(tmp_path / "shard-00000.jsonl", [{"problem": "a", "answer": "1"}])
    (tmp_path / "manifest.json").write_text("{}")
    assert [p.problem for p in read_problems(tmp_path)] == ["a", "b"]


def test_hub_loader_reads_a_local_dataset_folder(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"question": ["p1", "p2"], "gold": ["1", "2"]})
    folder = tmp_path / "arrow"
    folder.mkdir()
    ds.to_parquet(str(folder / "train.parquet"))
    rows = read_problems(str(folder), problem_key="question", answer_key="gold")
    assert [r.answer for r in rows] == ["1", "2"]
    arrow_dir = tmp_path / "arrow_only"
    arrow_dir.mkdir()
    import pyarrow as pa

    with pa.OSFile(str(arrow_dir / "data.arrow"), "wb") as sink, pa.ipc.new_stream(sink, ds.data.schema) as w:
        w.write_table(ds.data.table)
    rows = read_problems(str(arrow_dir), problem_key="question", answer_key="gold")
    assert [r.problem for r in rows] == ["p1", "p2"]


def test_unreachable_hub_id_is_one_line_error():
    with pytest.raises(DistillError) as e:
        read_problems("nobody-org/no-such-dataset-xyz")
    assert "nobody-org/no-such-dataset-xyz" in str(e.value) and "\n" not in str(e.value)


def test_missing_local_file_is_an_error(tmp_path):
    with pytest.raises(DistillError, match="file not found"):
        read_problems(tmp_path / "nope.jsonl")


def test_atomic_writer_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert path.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left behind
    with atomic_open(tmp_path / "x.txt") as f:
        f.write("ok")
    assert (tmp_path / "x.txt").read_text() == "ok"


def test_filter_eval_and_sft_give_one_file_the_same_ids(tmp_path):
    """The one reader's id rule: a file without ids gets the same problem ids and sample ids in every stage."""
    from distill.config import EvalConfig, FilterConfig, build_config
    from distill.eval.run import run as evaluate
    from distill.filters.run import run as filter_
    from distill.train.data import load_examples

    done = "<think>\nso {x}\n</think>\n\n\\boxed{{{x}}}"
    rows = [{"problem": "What is 1+1?", "answer": "2", "completion": done.format(x=2)},
            {"problem": "What is 2+2?", "answer": "4", "completion": done.format(x=4)},
            {"problem": "What is 1+1?", "answer": "2", "completion": done.format(x=3)}]
    data = tmp_path / "samples.jsonl"
    write_jsonl(data, rows)
    expected = {f"samples/{content_id('What is 1+1?')}/0", f"samples/{content_id('What is 2+2?')}/0",
                f"samples/{content_id('What is 1+1?')}/1"}
    filter_(build_config(FilterConfig, {"input": str(data), "out": str(tmp_path / "f"), "steps": "finished"}))
    filtered = {row["id"] for _, row in iter_rows(tmp_path / "f" / "kept")}
    evaluate(build_config(EvalConfig, {"completions": str(data), "out": str(tmp_path / "e"), "workers": 1}))
    evaluated = {json.loads(line)["id"] for line in (tmp_path / "e" / "samples.jsonl").read_text().splitlines()}
    trained = {ex["id"] for ex in load_examples(str(data))}
    assert filtered == evaluated == trained == expected
