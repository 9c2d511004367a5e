"""distill generate on the real vLLM engine (CPU build): records, resume, refusal, shards, clamping, crash safety."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill import prompts
from distill.config import GenerateConfig
from distill.data.io import read_records
from distill.data.reader import Problem
from distill.errors import DistillError
from distill.generate import (clamp_max_tokens, in_shard, parse_shard, run)

REPO = Path(__file__).resolve().parents[1]


def write_problems(path: Path, n: int, prefix: str = "p") -> Path:
    rows = [{"uid": f"{prefix}{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_cfg(tiny_qwen_dir, data: Path, out: Path, **kw) -> GenerateConfig:
    base = dict(teacher=str(tiny_qwen_dir), dataset=str(data), out=str(out), n=2, max_tokens=8, chunk_size=2,
                temperature=1.0, id_key="uid")
    return GenerateConfig(**{**base, **kw})


def ids_in(out: Path) -> list[str]:
    return [r.id for r in read_records(out)]


# ---------------------------------------------------------------- unit


def test_parse_shard_and_partition_is_by_id_not_order():
    assert parse_shard("3/8") == (3, 8) and parse_shard(None) is None
    for bad in ("8/8", "-1/2", "1", "a/b"):
        with pytest.raises(DistillError, match="--shard"):
            parse_shard(bad)
    ids = [f"q{i}" for i in range(200)]
    parts = [{i for i in ids if in_shard(i, (k, 4))} for k in range(4)]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == len(ids)
    assert all(parts)  # every partition gets some of 200 ids
    assert {i for i in reversed(ids) if in_shard(i, (1, 4))} == parts[1]


def test_generation_prompt_prefill_modes(tiny_tokenizer):
    text, prefilled = prompts.generation_prompt(tiny_tokenizer, "1+1?", think_prefill="auto")
    assert prefilled and text.endswith("<|im_start|>assistant\n<think>\n")
    assert prompts.R1_INSTRUCTION in text and "system" not in text
    text, prefilled = prompts.generation_prompt(tiny_tokenizer, "1+1?", think_prefill="off")
    assert not prefilled and text.endswith("<|im_start|>assistant\n")

    class R1Template:  # a template that opens the thought itself must not get a second <think>
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "<|user|>" + messages[0]["content"] + "<|assistant|><think>\n"

        def get_vocab(self):
            return {}

    text, prefilled = prompts.generation_prompt(R1Template(), "1+1?", think_prefill="on")
    assert prefilled and text.count("<think>") == 1


def test_clamp_counts_and_refuses_a_prompt_that_fills_the_context(caplog):
    problems = [Problem(str(i), "p", "a") for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="distill.generate"):
        limits, clamped = clamp_max_tokens(problems, [10, 90, 95], 20, 100)
    assert limits == [20, 10, 5] and clamped == 2
    assert len(caplog.records) == 1 and "2 of 3 prompts" in caplog.text and "down to 5" in caplog.text
    with pytest.raises(DistillError, match="problem 1: the prompt is 100 tokens"):
        clamp_max_tokens(problems[:2], [10, 100], 20, 100)
    assert clamp_max_tokens(problems, [10, 90, 95], 20, None) == ([20, 20, 20], 0)  # a server: no context known


# ---------------------------------------------------------------- bad input: one-line errors, nothing written


@pytest.mark.parametrize("case", ["missing_model", "missing_column", "empty_dataset", "empty_problem"])
def test_bad_input_is_one_line_error(case, tmp_path, tiny_qwen_dir):
    data = tmp_path / "probs.jsonl"
    teacher = str(tiny_qwen_dir)
    if case == "missing_model":
        write_problems(data, 2)
        teacher, match = str(tmp_path / "no-such-model"), "no such model folder"
    elif case == "missing_column":
        data.write_text(json.dumps({"uid": "a", "question": "1+1?", "answer": "2"}) + "\n")
        match = "no column 'problem'.*--problem-key"
    elif case == "empty_dataset":
        data.write_text("")
        match = "no problems found"
    else:
        data.write_text(json.dumps({"uid": "a", "problem": "  ", "answer": "2"}) + "\n")
        match = "field 'problem' is empty"
    cfg = make_cfg(teacher, data, tmp_path / "out")
    with pytest.raises(DistillError, match=match) as e:
        run(cfg)
    assert "\n" not in str(e.value)
    assert not list((tmp_path).rglob("chunk-*.jsonl"))


# ---------------------------------------------------------------- real engine


@pytest.mark.slow
def test_n_samples_per_problem_with_ids_and_fields(tmp_path, tiny_qwen_dir, vllm_engine):
    data = write_problems(tmp_path / "probs.jsonl", 5)
    out = tmp_path / "out"
    stats = run(make_cfg(tiny_qwen_dir, data, out), engine=vllm_engine)
    records = list(read_records(out))
    assert len(records) == 10 and len({r.id for r in records}) == 10
    assert {r.id for r in records} == {f"probs/p{i}/{j}" for i in range(5) for j in range(2)}
    assert sorted(p.name for p in out.glob("chunk-*.jsonl")) == ["chunk-00000.jsonl", "chunk-00001.jsonl",
                                                                 "chunk-00002.jsonl"]
    for r in records:
        assert r.completion.startswith("<think>\n")
        assert r.finish_reason in ("stop", "length") and 0 < r.num_tokens <= 8
        assert r.model == str(tiny_qwen_dir) and r.source == "probs"
        assert r.answer == str(2 * int(r.problem_id[1:])) and r.problem == f"What is {r.problem_id[1:]} + {r.problem_id[1:]}?"
        assert r.meta["prompt_tokens"] > 0 and r.id.endswith(f"/{r.sample_index}")
    manifest = json.loads((out / "manifest.json").read_text())
    key = manifest["resume_key"]
    assert key["n"] == 2 and key["teacher_revision"].startswith("sha256:") and key["chat_template_sha256"]
    assert set(manifest["versions"]) >= {"distill", "vllm", "torch", "transformers"}
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["samples_written"] == stats["samples_written"] == 10 and on_disk["problems"] == 5
    assert sum(on_disk["finish_reasons"].values()) == 10
    assert on_disk["completion_tokens"] == sum(r.num_tokens for r in records)
    assert (out / "config.yaml").is_file()


@pytest.mark.slow
def test_resume_refuse_and_overwrite(tmp_path, tiny_qwen_dir, vllm_engine):
    data = write_problems(tmp_path / "probs.jsonl", 5)
    out = tmp_path / "out"
    cfg = make_cfg(tiny_qwen_dir, data, out)
    run(cfg, engine=vllm_engine)
    before = {r.id: r.completion for r in read_records(out)}
    (out / "chunk-00001.jsonl").unlink()  # as if the run had died while chunk 1 was in flight

    stats = run(cfg, engine=vllm_engine)
    assert stats["samples_written"] == 4 and stats["samples_resumed"] == 6 and stats["chunks_resumed"] == 2
    assert sorted(ids_in(out)) == sorted(before)  # none lost, none duplicated

    stats = run(cfg, engine=vllm_engine)
    assert stats["samples_written"] == 0 and stats["samples_resumed"] == 10

    changed = make_cfg(tiny_qwen_dir, data, out, n=3, temperature=0.7)
    with pytest.raises(DistillError, match=r"cannot resume.*n 2 → 3; .*temperature 1.0 → 0.7.*--overwrite") as e:
        run(changed, engine=vllm_engine)
    assert "\n" not in str(e.value)

    stats = run(make_cfg(tiny_qwen_dir, data, out, n=3, temperature=0.7, overwrite=True), engine=vllm_engine)
    assert stats["samples_written"] == 15 and stats["samples_resumed"] == 0
    assert len(set(ids_in(out))) == len(ids_in(out)) == 15


@pytest.mark.slow
def test_shards_cover_the_dataset_exactly_once(tmp_path, tiny_qwen_dir, vllm_engine):
    data = write_problems(tmp_path / "probs.jsonl", 9)
    out = tmp_path / "out"
    parts = []
    for i in range(3):
        run(make_cfg(tiny_qwen_dir, data, out, n=1, max_tokens=2, shard=f"{i}/3"), engine=vllm_engine)
        parts.append(set(ids_in(out / f"shard-{i}-of-3")))
    assert set().union(*parts) == {f"probs/p{i}/0" for i in range(9)}
    assert sum(map(len, parts)) == 9  # pairwise disjoint
    assert all((out / f"shard-{i}-of-3" / "manifest.json").is_file() for i in range(3))
    assert len(ids_in(out)) == 9  # the merged folder reads as one dataset
    with pytest.raises(DistillError, match="holds --shard outputs"):
        run(make_cfg(tiny_qwen_dir, data, out, n=1, max_tokens=2), engine=vllm_engine)
    with pytest.raises(DistillError, match="same N"):
        run(make_cfg(tiny_qwen_dir, data, out, n=1, max_tokens=2, shard="0/2"), engine=vllm_engine)


@pytest.mark.slow
def test_max_tokens_past_the_context_is_clamped_with_one_warning(tmp_path, tiny_qwen_dir, vllm_engine, caplog):
    data = tmp_path / "long.jsonl"
    # ~2040 and ~2000 prompt tokens in a 2048 context: only the first leaves less than --max-tokens 24
    rows = [{"problem": "7 " * 1000 + "?", "answer": "7"}, {"problem": "7 " * 980 + "?", "answer": "7"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(tiny_qwen_dir, data, tmp_path / "out", id_key=None, n=1, max_tokens=24)
    with caplog.at_level(logging.WARNING, logger="distill.generate"):
        stats = run(cfg, engine=vllm_engine)
    warnings = [r for r in caplog.records if "clamped" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 2 prompts" in warnings[0].getMessage()
    assert stats["clamped_prompts"] == 1
    long = next(r for r in read_records(tmp_path / "out") if r.problem == rows[0]["problem"])
    assert long.max_tokens == 2048 - long.meta["prompt_tokens"] < 24
    assert long.num_tokens <= long.max_tokens

    too_long = tmp_path / "too_long.jsonl"
    too_long.write_text(json.dumps({"problem": "7 " * 2100, "answer": "7"}) + "\n")
    with pytest.raises(DistillError, match="the prompt is .* tokens, the context is 2048"):
        run(make_cfg(tiny_qwen_dir, too_long, tmp_path / "out2", id_key=None, n=1), engine=vllm_engine)


@pytest.mark.slow
def test_bundled_task_name_carries_ids_and_answers(tmp_path, tiny_qwen_dir, vllm_engine):
    cfg = GenerateConfig(teacher=str(tiny_qwen_dir), dataset="aime24", out=str(tmp_path / "out"), n=1, limit=2,
                         max_tokens=2)
    run(cfg, engine=vllm_engine)
    records = sorted(read_records(tmp_path / "out"), key=lambda r: r.id)
    assert [(r.id, r.answer) for r in records] == [("aime24/60/0", "204"), ("aime24/61/0", "113")]


@pytest.mark.timeout(300)  # 25 s alone on the Intel VM (runs in child processes); 3x on a 2.3x slower CPU: 172 s
@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path, tiny_qwen_dir):
    data = write_problems(tmp_path / "probs.jsonl", 24)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "distill", "generate", "--teacher", str(tiny_qwen_dir), "--dataset", str(data),
           "--out", str(out), "--n", "2", "--max-tokens", "48", "--chunk-size", "1", "--id-key", "uid",
           "--temperature", "1.0", "--dtype", "float32", "--max-model-len", "2048"]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("chunk-*.jsonl")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    written = list(out.glob("chunk-*.jsonl"))
    assert 1 <= len(written) < 24, "the kill must land mid-run"
    assert not (out / "stats.json").exists()
    for path in written:  # every finished chunk is whole
        assert len(path.read_text().splitlines()) == 2

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    ids = ids_in(out)
    assert sorted(ids) == sorted(f"probs/p{i}/{j}" for i in range(24) for j in range(2))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["samples_resumed"] == 2 * len(written) and stats["samples_written"] == 48 - 2 * len(written)


def test_a_teacher_whose_weights_change_is_refused_on_resume(tmp_path, tiny_qwen_dir):
    """The teacher's identity is a content hash of its weights: retrained in place (same names, same sizes), it is
    refused, before any engine starts."""
    import shutil

    from distill.engine import model_identity
    from distill.generate import build_manifest, chunk_path, prepare_out_dir

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_qwen_dir, teacher)
    data = write_problems(tmp_path / "probs.jsonl", 2)
    cfg = make_cfg(teacher, data, tmp_path / "out")
    ident = model_identity(str(teacher), cfg, "--teacher")
    assert ident.fingerprint.startswith("sha256:")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps(build_manifest(cfg, "probs", [], "t", ident.fingerprint, None)))
    chunk_path(out, 0).write_text("")
    weights = teacher / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1  # one bit of one weight: same file name, same size
    weights.write_bytes(bytes(raw))
    again = build_manifest(cfg, "probs", [], "t", model_identity(str(teacher), cfg, "--teacher").fingerprint, None)
    with pytest.raises(DistillError, match=r"cannot resume.*teacher_revision 'sha256:"):
        prepare_out_dir(cfg, out, again)


def _children(pid: int) -> set[int]:
    """Every live descendant of `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                state, ppid = stat.rsplit(")", 1)[1].split()[:2]
                if state not in ("Z", "X"):
                    parents[int(entry)] = int(ppid)
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


@pytest.mark.timeout(300)  # 29 s alone on the Intel VM (a vLLM engine process started and killed); 3x on a 2.3x slower CPU: 200 s
@pytest.mark.slow
def test_kill_9_leaves_no_engine_process_behind(tmp_path, tiny_qwen_dir):
    """vLLM's default multiprocess engine runs its core in child processes; a SIGKILL of `distill generate` must
    take them along (they would otherwise keep ~GBs of memory and a CPU busy)."""
    data = write_problems(tmp_path / "probs.jsonl", 200)
    cmd = [sys.executable, "-m", "distill", "generate", "--teacher", str(tiny_qwen_dir), "--dataset", str(data),
           "--out", str(tmp_path / "out"), "--n", "2", "--max-tokens", "64", "--chunk-size", "1", "--id-key", "uid",
           "--dtype", "float32", "--max-model-len", "1024"]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "out").glob("chunk-*.jsonl")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no chunk within 300 s"
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        children = _children(proc.pid)
        assert children, "the multiprocess engine runs in child processes"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while alive := {p for p in children if _alive(p)}:
            assert time.monotonic() < deadline, f"still running after the parent's kill -9: {sorted(alive)}"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
