"""Bundled benchmark tasks: counts, ids, hand-checked answers, tamper detection, reproducible build."""

import shutil
from pathlib import Path

import pytest

from distill import tasks
from distill.errors import DistillError
from distill.tasks import MATH_TASKS, TASKS, get_task, load_task

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external"

EXPECTED_ROWS = {
    "aime24": 30, "aime25": 30, "math500": 500, "amc23": 40,
    "gsm8k": 1319, "minerva": 272, "olympiadbench": 675,
}


def test_tasks_are_discovered_from_their_yaml_files():
    assert set(MATH_TASKS) == set(EXPECTED_ROWS)
    assert {p.stem for p in Path(get_task("aime24").path).parent.glob("*.yaml")} == set(TASKS)


@pytest.mark.parametrize("name", MATH_TASKS)
def test_task_loads_with_expected_rows(name):
    rows = load_task(name)
    assert len(rows) == EXPECTED_ROWS[name] == get_task(name).rows
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == {"id", "problem", "answer"}
        assert all(isinstance(r[k], str) for k in r)
        assert r["problem"].strip() and r["answer"].strip()


@pytest.mark.parametrize("name", MATH_TASKS)
def test_spec_has_provenance(name):
    task = get_task(name)
    assert Path(task.path).is_absolute() and Path(task.path).name == f"{name}.jsonl"
    assert task.answer_type in {"integer", "number", "expression"} and task.verifier == "math"
    assert len(task.source["commit"]) == 40 and len(task.source["sha256"]) == 64 and len(task.yaml_sha256) == 64


# (task, id, answer), each checked by hand against the source file.
SPOT_CHECKS = [
    ("aime24", "60", "204"),  # first row
    ("aime24", "67", "025"),  # zero padding kept
    ("aime25", "2025-I-1", "70"),
    ("aime25", "2025-II-15", "240"),
    ("math500", "test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("amc23", "0", "27"),  # source 27.0
    ("amc23", "17", "-1"),  # source -1.0
    ("gsm8k", "0", "18"),
    ("gsm8k", "146", "2125"),  # source "#### 2,125"
    ("gsm8k", "201", "114200"),  # source "#### 114,200"
    ("minerva", "0", "1.6"),
    ("minerva", "9", "9.6"),  # source ["9.6\n"]
    ("minerva", "17", "0.01"),  # source ["0.01\n", "0.02\n"]: first kept
    ("olympiadbench", "1606", "2"),
    ("olympiadbench", "2419", "166"),  # source "$166$"
    ("olympiadbench", "2349", "221,8"),  # source "$221,$8$"
]


@pytest.mark.parametrize("name,id_,answer", SPOT_CHECKS)
def test_spot_check_answers(name, id_, answer):
    by_id = {r["id"]: r for r in load_task(name)}
    assert by_id[id_]["answer"] == answer


def test_first_rows_in_source_order():
    assert load_task("aime24")[0]["problem"].startswith("Every morning Aya goes for a $9$-kilometer")
    assert load_task("aime25")[15]["id"] == "2025-II-1"
    assert [r["id"] for r in load_task("minerva")[:3]] == ["0", "1", "2"]


def test_no_dollar_delimiters_left_in_olympiadbench():
    assert not [r["id"] for r in load_task("olympiadbench") if "$" in r["answer"]]


def test_unknown_task_lists_names():
    with pytest.raises(DistillError, match="did you mean 'aime24'") as err:
        get_task("aime2024")
    message = str(err.value)
    assert "\n" not in message
    assert all(name in message for name in TASKS)


def _copy_task(name: str, folder: Path) -> Path:
    real = Path(get_task(name).path)
    for suffix in (".jsonl", ".yaml"):
        shutil.copyfile(real.with_suffix(suffix), folder / f"{name}{suffix}")
    return folder / f"{name}.jsonl"


def test_tampered_data_is_refused(tmp_path):
    copy = _copy_task("amc23", tmp_path)
    copy.write_bytes(copy.read_bytes().replace(b'"answer": "27"', b'"answer": "28"', 1))
    fix = r"re-run `python -m distill\.tasks\.build`"
    with pytest.raises(DistillError, match=rf"amc23\.jsonl.*sha256.*{fix}"):
        tasks.discover(tmp_path)["amc23"].load()


def test_untampered_copy_loads_and_a_new_task_is_two_files(tmp_path):
    # The tamper test must fail because of the edit, not because the file moved.
    _copy_task("amc23", tmp_path)
    found = tasks.discover(tmp_path)
    assert list(found) == ["amc23"] and len(found["amc23"].load()) == 40


def test_build_reproduces_bundled_files(tmp_path):
    if not (SHARED / "benchmarks").is_dir():
        pytest.skip(f"shared source copies not found at {SHARED}")
    from distill.tasks import build

    build.main(["--shared", str(SHARED), "--out", str(tmp_path)])
    bundled = Path(get_task("aime24").path).parent
    for name in MATH_TASKS:
        for suffix in (".jsonl", ".yaml"):
            fresh = tmp_path / f"{name}{suffix}"
            assert fresh.read_bytes() == (bundled / fresh.name).read_bytes(), fresh.name
