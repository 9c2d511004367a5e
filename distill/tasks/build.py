"""Maintainer script: rebuild the bundled <task>.jsonl and <task>.yaml from the shared source copies.

Run `python -m distill.tasks.build [--shared PATH] [--out DIR]`; the output is deterministic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

DEFAULT_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "external"
DEFAULT_OUT = Path(__file__).resolve().parent

_QWEN_MATH = {
    "repo": "QwenLM/Qwen2.5-Math",
    "commit": "a45202bd16f1ec06f433442dc1152d0074773465",
    "licence": "MIT (evaluation/LICENSE, Copyright 2024 Zhibin Gou); repo has no top-level license",
}
_MAA = "; AIME/AMC statements are MAA material that the repo redistributes"

# Provenance as recorded in SOURCES.md. `pin` is the sha256 prefix recorded there: if the shared
# copy ever changes, the build stops instead of silently bundling different data.
SOURCES = {
    "qwen_aime24": {
        **_QWEN_MATH, "licence": _QWEN_MATH["licence"] + _MAA,
        "path": "evaluation/data/aime24/test.jsonl",
        "file": "benchmarks/qwen25-math/aime24_test.jsonl", "pin": "af2b8bd2aa911b63",
    },
    "matharena_aime25": {
        "repo": "eth-sri/matharena",
        "path": "data/aime/aime_2025_{I,II}/{problems/N.tex,answers.csv}",
        "commit": "81f103e38b1df076afa65ee0a3ffbe148d42e6d2",
        "licence": "MIT" + _MAA,
        "file": "benchmarks/matharena/aime25_derived.jsonl", "pin": "4213712e99507f03",
    },
    "qwq_aime25": {
        "repo": "QwenLM/QwQ", "path": "eval/data/aime25.jsonl",
        "commit": "620a5eadc89ff464d339367dd9c9973a93215c81", "licence": "Apache-2.0",
        "file": "benchmarks/qwq-eval/aime25.jsonl", "pin": "9da6005713538868",
    },
    "math500": {
        "repo": "ZubinGou/math-evaluation-harness", "path": "data/math_oai/test.jsonl",
        "commit": "db77bc6bb2a17c90ed2d63e88ebd8c40a82858c5", "licence": "MIT",
        "file": "benchmarks/math-evaluation-harness/math500_test.jsonl", "pin": "35dc41080a368085",
    },
    "qwen_amc23": {
        **_QWEN_MATH, "licence": _QWEN_MATH["licence"] + _MAA,
        "path": "evaluation/data/amc23/test.jsonl",
        "file": "benchmarks/qwen25-math/amc23_test.jsonl", "pin": "43707e1ca784602d",
    },
    "gsm8k": {
        "repo": "openai/grade-school-math", "path": "grade_school_math/data/test.jsonl",
        "commit": "3101c7d5072418e28b9008a6636bde82a006892c", "licence": "MIT",
        "file": "benchmarks/openai-grade-school-math/gsm8k_test.jsonl", "pin": "3730d312f6e34405",
    },
    "qwen_minerva": {
        **_QWEN_MATH, "path": "evaluation/data/minerva_math/test.jsonl",
        "file": "benchmarks/qwen25-math/minerva_math_test.jsonl", "pin": "0e656b430d3a0a1d",
    },
    "rllm_minerva": {
        "repo": "agentica-project/rllm", "path": "rllm/data/test/math/minerva.json",
        "commit": "874daa4acb7f451dc2a4b2b6e8ce28f5aa88d1f5", "licence": "MIT",
        "file": "benchmarks/rllm/minerva.json", "pin": "ba6147602d8b2f90",
    },
    "qwen_olympiadbench": {
        **_QWEN_MATH, "path": "evaluation/data/olympiadbench/test.jsonl",
        "file": "benchmarks/qwen25-math/olympiadbench_test.jsonl", "pin": "bb8c1e38a16ea9ea",
    },
}


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class _Sources:
    """Reads shared source copies, checking each against its pin and remembering its sha256."""

    def __init__(self, root: Path):
        self.root = root

    def provenance(self, key: str) -> dict:
        meta = SOURCES[key]
        path = self.root / meta["file"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(meta["pin"]):
            raise SystemExit(f"error: {path}: sha256 {digest[:16]} != pinned {meta['pin']} (see SOURCES.md)")
        return {k: meta[k] for k in ("repo", "path", "commit", "licence", "file")} | {"sha256": digest}

    def rows(self, key: str) -> list[dict]:
        self.provenance(key)
        path = self.root / SOURCES[key]["file"]
        if path.suffix == ".json":
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        return _read_jsonl(path)


def _row(id_, problem: str, answer: str) -> dict:
    return {"id": str(id_), "problem": problem, "answer": answer}


def _aime24(src: _Sources) -> tuple[list[dict], str]:
    rows = [_row(r["id"], r["problem"], r["answer"]) for r in src.rows("qwen_aime24")]
    return rows, (
        "problem and answer verbatim; answers keep the source's zero padding (\"025\"), "
        "graders compare integers."
    )


def _aime25(src: _Sources) -> tuple[list[dict], str]:
    rows = [_row(r["id"], r["problem"], r["answer"]) for r in src.rows("matharena_aime25")]
    qwq = src.rows("qwq_aime25")
    # Two independent transcriptions must agree, in order, before we trust the gold answers.
    ours, theirs = [int(r["answer"]) for r in rows], [int(r["answer"]) for r in qwq]
    assert ours == theirs, f"aime25 answers differ from QwQ: {ours} != {theirs}"
    return rows, (
        "one row per MathArena problem (I-1..15 then II-1..15): problem = .tex text stripped, "
        "answer = answers.csv; "
        "I-2 carries a TikZ figure. Answers equal QwQ's aime25.jsonl (as integers, same order)."
    )


def _math500(src: _Sources) -> tuple[list[dict], str]:
    rows = [_row(r["unique_id"], r["problem"], r["answer"]) for r in src.rows("math500")]
    return rows, "problem and answer verbatim (answers are LaTeX, a few keep \\$); id = unique_id."


def _amc23(src: _Sources) -> tuple[list[dict], str]:
    rows, n_int = [], 0
    for r in src.rows("qwen_amc23"):
        x = float(r["answer"])
        n_int += x.is_integer()
        rows.append(_row(r["id"], r["problem"], str(int(x)) if x.is_integer() else str(x)))
    return rows, (
        "source answers are floats (27.0): integer-valued ones written as integer strings "
        f"(\"27\"; {n_int} of "
        f"{len(rows)}), others as str(float). ids are the source's (with gaps)."
    )


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _gsm8k(src: _Sources) -> tuple[list[dict], str]:
    rows, n_commas = [], 0
    for i, r in enumerate(src.rows("gsm8k")):
        raw = r["answer"].split("####")[-1].strip()
        answer = _THOUSANDS.sub("", raw)
        n_commas += answer != raw
        assert re.fullmatch(r"-?\d+(\.\d+)?", answer), f"gsm8k row {i}: unexpected answer {raw!r}"
        rows.append(_row(i, r["question"], answer))
    return rows, (
        f"problem = question; answer = text after the final '####', stripped, thousands commas removed "
        f"({n_commas} rows, e.g. 2,125 -> 2125); id = 0-based row index."
    )


def _minerva(src: _Sources) -> tuple[list[dict], str]:
    problems = src.rows("qwen_minerva")
    answers = {r["idx"]: r for r in src.rows("rllm_minerva")}
    assert sorted(answers) == sorted(r["idx"] for r in problems), "minerva: idx sets differ"
    rows, n_multi, n_differ = [], 0, 0
    for p in problems:
        a = answers[p["idx"]]
        assert a["problem"] == p["problem"], f"minerva idx {p['idx']}: problem text differs between copies"
        options = [s.strip() for s in a["answer"]]
        n_multi += len(options) > 1
        n_differ += len(set(options)) > 1
        rows.append(_row(p["idx"], p["problem"], options[0]))
    return rows, (
        "problems from Qwen2.5-Math (its idx order; the Qwen copy has no answer field), answers from rllm: "
        f"first list element, stripped (trailing newlines). {n_multi} rows list several answers, first kept; "
        f"in {n_differ} they differ after stripping (mostly LaTeX spelling; e.g. idx 17 0.01 vs 0.02)."
    )


def _olympiadbench(src: _Sources) -> tuple[list[dict], str]:
    rows, n_spans = [], 0
    for r in src.rows("qwen_olympiadbench"):
        # Dropping `context` is only safe while no row has one.
        shape_ok = r["context"] is None and len(r["final_answer"]) == 1
        assert shape_ok, f"olympiadbench {r['id']}: unexpected context or several final answers"
        raw = r["final_answer"][0]
        assert "\\$" not in raw, f"olympiadbench {r['id']}: literal dollar in answer"
        # Remove every $, not just the outer pair: multi-part answers are "$69$,$84$", and
        # stripping only the ends would leave "69$,$84".
        n_spans += raw.count("$") > 2
        rows.append(_row(r["id"], r["question"], raw.replace("$", "").strip()))
    return rows, (
        "problem = question (context is null in every row); answer = final_answer[0] with all $ delimiters "
        f"removed and stripped ({n_spans} answers had several $...$ parts, e.g. $69$,$84$ -> 69,84; "
        "id 2349's unbalanced $221,$8$ -> 221,8). The unit field (8 rows) is not appended."
    )


# name → (builder, expected rows, answer_type, version, provenance keys)
BUILDERS = {
    "aime24": (_aime24, 30, "integer", 1, {"source": "qwen_aime24"}),
    "aime25": (_aime25, 30, "integer", 1, {"source": "matharena_aime25", "checked_against": "qwq_aime25"}),
    "math500": (_math500, 500, "expression", 1, {"source": "math500"}),
    "amc23": (_amc23, 40, "number", 1, {"source": "qwen_amc23"}),
    "gsm8k": (_gsm8k, 1319, "number", 1, {"source": "gsm8k"}),
    "minerva": (_minerva, 272, "expression", 1, {"source": "qwen_minerva", "answers_from": "rllm_minerva"}),
    "olympiadbench": (_olympiadbench, 675, "expression", 1, {"source": "qwen_olympiadbench"}),
}

_HEADER = (
    "# Generated by `python -m distill.tasks.build` from shared/data/external; edit that, not this.\n"
)


def build_task(name: str, src: _Sources, out: Path) -> str:
    """Write <name>.jsonl and <name>.yaml into `out`; return the JSONL's sha256."""
    builder, expected, answer_type, version, prov = BUILDERS[name]
    rows, notes = builder(src)
    assert len(rows) == expected, f"{name}: {len(rows)} rows, expected {expected}"
    assert len({r["id"] for r in rows}) == len(rows), f"{name}: duplicate ids"
    assert all(r["problem"].strip() and r["answer"] for r in rows), f"{name}: empty problem or answer"
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    (out / f"{name}.jsonl").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    source = src.provenance(prov["source"])
    for key in ("checked_against", "answers_from"):
        if key in prov:
            source[key] = src.provenance(prov[key])
    spec = {
        "name": name, "version": version, "data": f"{name}.jsonl", "sha256": digest, "rows": len(rows),
        "answer_type": answer_type, "verifier": "math", "source": source, "notes": notes,
    }
    text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=110)
    (out / f"{name}.yaml").write_bytes((_HEADER + text).encode("utf-8"))
    return digest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared data/external folder")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where to write (default: this package's folder)"
    )
    args = parser.parse_args(argv)
    if not (args.shared / "benchmarks").is_dir():
        raise SystemExit(f"error: no benchmarks/ under {args.shared}; pass --shared PATH to data/external")
    args.out.mkdir(parents=True, exist_ok=True)
    src = _Sources(args.shared)
    for name in BUILDERS:
        digest = build_task(name, src, args.out)
        logger.info("%s: %d rows, sha256 %s", name, BUILDERS[name][1], digest)
    logger.info("wrote %d tasks to %s", len(BUILDERS), args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
