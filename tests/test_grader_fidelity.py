"""Our grader against published, labelled model outputs: >= 99% agreement, every disagreement on file.

The responses are graded from scratch (not from the sources' pre-extracted `pred`) as eval grades them: the
answer_type the matching eval task uses and eval's extraction policy ("chain": boxed, phrase, last math).
tests/fixtures/grader_disagreements.yaml lists each disagreement with why; a grader change that moves any verdict
shows up here. To see the current list: python tests/test_grader_fidelity.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from distill.verify.math_pool import MathGrader as Grader

EXTERNAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "external"
FIXTURE = Path(__file__).parent / "fixtures" / "grader_disagreements.yaml"
GSM_MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def _jsonl(relpath: str):
    with open(EXTERNAL / "generations" / relpath, encoding="utf-8") as f:
        yield from (json.loads(line) for line in f)


def qwen_math_cot():
    """100 MATH problems x 8 responses, labelled by Qwen2.5-Math's harness (`score`)."""
    for r in _jsonl("qwen25-math/math_cot_100.jsonl"):
        for k, (response, score) in enumerate(zip(r["code"], r["score"], strict=True)):
            yield r["idx"], k, response, r["gt"], bool(score)


def tora_gsm8k():
    """ToRA-70B on GSM8K; label = their numeric `pred` == `gt`, which is how their 84.3% was scored."""
    for r in _jsonl("tora/tora-70b-v1.0_gsm8k_test_tora_-1_seed0_t0.0_s0_e1319.jsonl"):
        gold = r["gt"].replace(",", "")
        try:
            label = abs(float(r["pred"][0]) - float(gold)) < 1e-4
        except ValueError:
            label = False
        yield r["idx"], 0, r["code"][0], gold, label


def openai_gsm8k_solutions():
    """GPT-3 6B/175B solutions on GSM8K with OpenAI's `is_correct`; the gold is the reference's final "A: N"."""
    for i, r in enumerate(_jsonl("openai-grade-school-math/example_model_solutions.jsonl")):
        gold = re.search(r"A:\s*(\S+)\s*$", r["ground_truth"]).group(1)
        for model in GSM_MODELS:
            yield i, model, r[model]["solution"], gold, bool(r[model]["is_correct"])


# source → (rows, answer_type of the matching eval task, the source's published accuracy in %)
SOURCES = {
    "qwen25-math/math_cot_100": (qwen_math_cot, "expression", 91.0),
    "tora/tora-70b-gsm8k": (tora_gsm8k, "number", 84.3),
    "openai-grade-school-math/example_model_solutions": (openai_gsm8k_solutions, "number", None),
}


def compare(source: str, workers: int | None = 2) -> dict:
    rows_of, answer_type, _ = SOURCES[source]
    rows = list(rows_of())
    with Grader(workers=workers, timeout=5.0, answer_type=answer_type, extraction="chain") as grader:
        verdicts = list(grader.grade_many((response, gold) for _, _, response, gold, _ in rows))
    disagreements = [
        {"source": source, "row": row, "sample": sample, "gold": gold, "extracted": v.extracted,
         "theirs": theirs, "ours": v.correct, "reason": v.reason}
        for (row, sample, _, gold, theirs), v in zip(rows, verdicts, strict=True)
        if v.correct != theirs
    ]
    return {
        "n": len(rows),
        "agree": len(rows) - len(disagreements),
        "theirs_correct": sum(r[4] for r in rows),
        "ours_correct": sum(v.correct for v in verdicts),
        "disagreements": disagreements,
    }


def _key(d: dict) -> tuple:
    return d["source"], d["row"], d["sample"], d["gold"], d["extracted"], d["theirs"], d["ours"], d["reason"]


@pytest.fixture(scope="module")
def fixture_entries() -> list[dict]:
    return yaml.safe_load(FIXTURE.read_text(encoding="utf-8"))


def test_fixture_entries_are_explained(fixture_entries):
    for entry in fixture_entries:
        assert entry["source"] in SOURCES, entry
        assert entry.get("why", "").strip(), f"no one-line reason: {entry}"
        assert isinstance(entry.get("known_miss", False), bool), entry


@pytest.mark.parametrize("source", SOURCES)
def test_agreement_with_published_labels(source, fixture_entries):
    if not EXTERNAL.is_dir():
        pytest.skip(f"{EXTERNAL} is absent")
    result = compare(source)
    n, published = result["n"], SOURCES[source][2]
    if published is not None:  # the labels we compare with are the ones behind the published figure
        assert round(100 * result["theirs_correct"] / n, 1) == published
    assert result["agree"] / n >= 0.99, f"{source}: {result['agree']}/{n}"
    expected = {_key(e) for e in fixture_entries if e["source"] == source}
    found = {_key(d) for d in result["disagreements"]}
    assert found == expected, (
        f"{source}: disagreements changed; new: {sorted(found - expected)}, gone: {sorted(expected - found)}"
    )


if __name__ == "__main__":  # print the current disagreements as fixture entries (add `why` by hand)
    if not EXTERNAL.is_dir():
        sys.exit(f"{EXTERNAL} is absent")
    for name in SOURCES:
        res = compare(name, workers=None)
        print(f"# {name}: n={res['n']} agree={res['agree']} ({100 * res['agree'] / res['n']:.2f}%) "
              f"ours={100 * res['ours_correct'] / res['n']:.1f}% theirs={100 * res['theirs_correct'] / res['n']:.1f}%")
        if res["disagreements"]:
            print(yaml.safe_dump(res["disagreements"], sort_keys=False, allow_unicode=True, width=200))
