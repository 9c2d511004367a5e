"""Published-dataset adapters: each schema's fixture → the expected Records; detection; errors with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.data.adapters import FORMATS, detect_format
from distill.data.io import iter_rows
from distill.data.reader import read_samples, source_name
from distill.data.record import content_id
from distill.errors import DistillError

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


def _load(name: str, **kwargs):
    return list(read_samples(FIXTURES / f"{name}.jsonl", answer_key=None, **kwargs))


def _ids(name: str, problems: list[str]) -> list[str]:
    """The reader's id rule for rows without an id column: the problem text's content id."""
    return [f"{name}/{content_id(p)}/0" for p in problems]


@pytest.mark.parametrize("name", ["openr1", "s1k", "limo", "sharegpt", "numina", "messages", "records"])
def test_each_fixture_is_detected_as_its_format(name):
    _, row = next(iter_rows(FIXTURES / f"{name}.jsonl"))
    assert detect_format(set(row)) == name


def test_filter_output_with_messages_column_is_records_not_messages():
    assert detect_format({"id", "problem_id", "problem", "answer", "completion", "messages"}) == "records"


def _load_path(path, **kwargs):
    return list(read_samples(path, answer_key=None, **kwargs))


def test_unknown_schema_is_one_line_error_listing_columns_and_formats(tmp_path):
    path = tmp_path / "weird.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(DistillError) as e:
        _load_path(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "chosen, prompt, rejected" in msg
    for name in FORMATS:
        assert name in msg


def test_openr1_one_record_per_generation_with_finish_reason_and_flags():
    recs = _load("openr1")
    assert [r.id for r in recs] == ["openr1/5b3c1f2e-1a2b-5c3d-9e8f-0a1b2c3d4e5f/0",
                                    "openr1/5b3c1f2e-1a2b-5c3d-9e8f-0a1b2c3d4e5f/1",
                                    "openr1/0f1e2d3c-4b5a-5968-8776-655443322110/0"]
    assert [r.finish_reason for r in recs] == ["stop", "length", ""]  # None in finish_reasons = unknown
    assert [r.answer for r in recs] == ["2", "2", "58"]
    assert [r.sample_index for r in recs] == [0, 1, 0]
    assert recs[0].completion.startswith("<think>\n") and "</think>" in recs[0].completion
    assert recs[0].meta["correctness_math_verify"] is True and recs[1].meta["correctness_math_verify"] is False
    assert recs[0].meta["correctness_llama"] is None and recs[2].meta["correctness_llama"] is True
    assert recs[1].meta["is_reasoning_complete"] is False
    assert recs[0].meta["origin"] == "olympiads" and recs[0].source == "openr1"
    assert recs[0].meta["format"] == "openr1" and recs[0].meta["row"].endswith("openr1.jsonl:1")
    assert recs[0].model == "deepseek-ai/DeepSeek-R1"


def test_openr1_from_parquet_keeps_list_shapes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [row for _, row in iter_rows(FIXTURES / "openr1.jsonl")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000-of-00001.parquet")
    recs = list(read_samples(tmp_path, name="OpenR1-Math-220k"))
    assert len(recs) == 3
    assert recs[0].id.startswith("OpenR1-Math-220k/5b3c1f2e")
    assert [r.finish_reason for r in recs] == ["stop", "length", ""]


def test_s1k_builds_think_completion_and_takes_boxed_gold_from_solution():
    recs = _load("s1k")
    assert [r.id for r in recs] == _ids("s1k", [r.problem for r in recs])
    r = recs[0]
    assert r.completion.startswith("<think>\nOkay, so I need x^2+y^2.")
    assert "\n</think>\n\nUsing $(x+y)^2" in r.completion
    assert r.answer == "58" and r.answer_from == "solution_boxed"
    # AIME rows of s1K have the bare answer as the solution: kept as text, and answer_from says so
    assert recs[1].answer == "128" and recs[1].answer_from == "solution_text"
    assert r.meta["has_think"] is True and r.model == "deepseek-ai/DeepSeek-R1"


def test_limo_keeps_solution_verbatim_without_inventing_think():
    recs = _load("limo")
    raw = [row for _, row in iter_rows(FIXTURES / "limo.jsonl")]
    assert [r.completion for r in recs] == [row["solution"] for row in raw]
    assert [r.answer for r in recs] == ["2", "58"]
    assert recs[0].meta["has_think"] is False


def test_sharegpt_markers_become_think_and_answers_come_from_the_box():
    recs = _load("sharegpt")
    assert [r.id for r in recs] == _ids("sharegpt", [r.problem for r in recs])
    a, code, cut = recs
    assert a.problem == "Find the remainder when $2^{10}$ is divided by $7$."  # boxed-instruction prefix removed
    assert a.completion == ("<think>\nOkay, 2^3 = 8 is 1 mod 7, so 2^10 is 2 mod 7.\n</think>\n\n"
                            "Since $2^3 \\equiv 1 \\pmod 7$, $2^{10} \\equiv 2$. The remainder is $\\boxed{2}$.")
    assert "<|" not in a.completion
    assert a.answer == "2" and a.answer_from == "completion_boxed"
    assert code.answer == "" and code.answer_from == "none"
    assert code.completion.endswith("```") and code.completion.startswith("<think>\n")
    assert cut.completion.startswith("<think>\n") and "</think>" not in cut.completion  # never closed: stays unclosed
    assert cut.answer == ""


def test_numina_solution_is_completion_without_think_and_gold_is_last_box():
    recs = _load("numina")
    assert recs[0].completion.startswith("We use") and recs[0].meta["has_think"] is False
    assert recs[0].answer == "58" and recs[0].meta["origin"] == "synthetic_math"
    assert recs[1].answer == "" and recs[1].answer_from == "none"  # a proof: no box, no gold


def test_messages_takes_the_last_user_turn_and_its_reply():
    recs = _load("messages")
    assert recs[0].problem.startswith("Find the remainder") and recs[0].answer == "2"
    assert recs[0].answer_from == "completion_boxed"
    assert recs[1].problem.startswith("Let $x+y=10$") and recs[1].completion.endswith("$\\boxed{58}$")
    assert recs[1].answer == "58" and recs[1].answer_from == ""  # the dataset's own gold column


def test_records_round_trip():
    recs = _load("records")
    assert [r.id for r in recs] == ["aime24/60/0", "aime24/60/1"]
    assert recs[0].meta == {"seed": 1}


def test_format_override_reads_openr1_as_messages():
    recs = _load("openr1", format="messages")
    assert [r.id for r in recs] == _ids("openr1", [r.problem for r in recs])
    assert recs[0].meta["format"] == "messages"


def test_unknown_format_name_suggests():
    with pytest.raises(DistillError, match="did you mean 'sharegpt'"):
        _load("sharegpt", format="sharegtp")


def test_forced_format_missing_column_names_file_line(tmp_path):
    with pytest.raises(DistillError, match=r"limo\.jsonl:1: format 'openr1' needs column 'problem'"):
        _load("limo", format="openr1")


def test_malformed_row_error_has_file_line_and_skip_invalid_counts(tmp_path):
    path = tmp_path / "openr1.jsonl"
    lines = (FIXTURES / "openr1.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    bad["generations"] = "not a list"
    path.write_text("\n".join([lines[0], json.dumps(bad), "{not json"]) + "\n")
    with pytest.raises(DistillError, match=r"openr1\.jsonl:2: column 'generations' must be a list"):
        _load_path(path)
    stats: dict[str, int] = {}
    recs = _load_path(path, skip_invalid=True, stats=stats)
    assert len(recs) == 2 and stats["invalid"] == 2  # the bad row and the bad JSON line


def test_source_name_of_file_folder_and_hub_id(tmp_path):
    assert source_name(FIXTURES / "s1k.jsonl") == "s1k"
    assert source_name(tmp_path) == tmp_path.name
    assert source_name("open-r1/OpenR1-Math-220k") == "OpenR1-Math-220k"


def test_filter_output_dir_reads_only_kept(tmp_path):
    from distill.data.io import write_parquet

    recs = _load("records")
    write_parquet(tmp_path / "kept" / "part-00000.parquet", recs[:1])
    write_parquet(tmp_path / "rejected" / "part-00000.parquet", [{**recs[1].to_dict(), "reason": "length_over_max"}])
    assert [r.id for r in read_samples(tmp_path)] == ["aime24/60/0"]


def test_two_rows_of_one_problem_become_its_samples_0_and_1(tmp_path):
    row = json.loads((FIXTURES / "limo.jsonl").read_text().splitlines()[0])
    path = tmp_path / "twice.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "solution": row["solution"] + " Again."}) + "\n")
    recs = _load_path(path)
    assert [r.sample_index for r in recs] == [0, 1] and len({r.problem_id for r in recs}) == 1
