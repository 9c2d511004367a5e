"""Scaling out: data parallel replicas (a killed one restarts and resumes), eval shards merged into a single run's
results, multi-process SFT through accelerate (gloo on CPU), DeepSpeed's own check of the ZeRO configs, Ray, and the
Slurm/Ray launchers rendered with their distill command lines parsed."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from distill import replicas
from distill.config import EvalConfig, GenerateConfig, build_config
from distill.data.io import read_records
from distill.errors import DistillError

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = REPO / "distill" / "train" / "accelerate"


def write_problems(path: Path, n: int) -> Path:
    rows = [{"uid": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gen_cfg(teacher, data: Path, out: Path, **kw) -> GenerateConfig:
    base = dict(teacher=str(teacher), dataset=str(data), out=str(out), n=2, max_tokens=8, chunk_size=2,
                temperature=1.0, id_key="uid", dtype="float32", max_model_len=1024)
    return GenerateConfig(**{**base, **kw})


# ---------------------------------------------------------------- replicas: unit


def test_replicas_partition_the_work_and_split_devices(tmp_path, monkeypatch):
    cfg = gen_cfg("t", tmp_path / "d.jsonl", tmp_path / "o", data_parallel_size=3, tensor_parallel_size=2)
    configs = replicas.replica_configs(cfg)
    assert [(c.shard, c.data_parallel_size) for c in configs] == [("0/3", 1), ("1/3", 1), ("2/3", 1)]
    gpus = {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6"}
    assert [replicas.replica_env(r, cfg, gpus)["CUDA_VISIBLE_DEVICES"] for r in range(3)] == ["0,1", "2,3", "4,5"]
    with pytest.raises(DistillError, match="needs 6 GPUs, 4 visible"):
        replicas.replica_env(0, cfg, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    ray = gen_cfg("t", tmp_path / "d.jsonl", tmp_path / "o", data_parallel_size=2, distributed_executor_backend="ray")
    assert replicas.replica_env(1, ray, gpus)["CUDA_VISIBLE_DEVICES"] == gpus["CUDA_VISIBLE_DEVICES"]  # Ray places
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    cpu = gen_cfg("t", tmp_path / "d.jsonl", tmp_path / "o", data_parallel_size=2)
    envs = [replicas.replica_env(r, cpu, {"CUDA_VISIBLE_DEVICES": ""}) for r in range(2)]
    assert [(e["OMP_NUM_THREADS"], e["VLLM_CPU_OMP_THREADS_BIND"]) for e in envs] == [("2", "0,1"), ("2", "2,3")]
    tp = gen_cfg("t", tmp_path / "d.jsonl", tmp_path / "o", data_parallel_size=2, tensor_parallel_size=2)
    envs = [replicas.replica_env(r, tp, {"CUDA_VISIBLE_DEVICES": ""}) for r in range(2)]  # a core per TP worker
    assert [(e["OMP_NUM_THREADS"], e["VLLM_CPU_OMP_THREADS_BIND"]) for e in envs] == [("1", "0|1"), ("1", "2|3")]


def test_cpu_workers_get_disjoint_cores():
    from distill.engine.vllm_engine import cpu_bind

    assert cpu_bind([0, 1, 2, 3, 4], 2) == "0,1|2,3" and cpu_bind([0, 1], 1) == "0,1"
    assert cpu_bind([0], 2) == "nobind"  # fewer cores than workers: vLLM leaves its threads unbound


@pytest.mark.parametrize("kw,match", [
    ({"backend": "openai", "base_url": "http://h/v1"}, "comma-separated"),
    ({"shard": "0/2"}, "pick one"),
    ({"data_parallel_size": 0}, ">= 1"),
])
def test_data_parallel_refuses_what_cannot_combine(tmp_path, kw, match):
    cfg = gen_cfg("t", tmp_path / "d.jsonl", tmp_path / "o", **{"data_parallel_size": 2, **kw})
    with pytest.raises(DistillError, match=match):
        replicas.check(cfg)


def test_a_folder_of_another_layout_is_refused(tmp_path, tiny_qwen_dir):
    data = write_problems(tmp_path / "d.jsonl", 2)
    (tmp_path / "o" / "shard-0-of-3").mkdir(parents=True)
    with pytest.raises(DistillError, match=r"--data-parallel-size \(or --shard I/N\) 3; rerun with that size"):
        replicas.run(gen_cfg(tiny_qwen_dir, data, tmp_path / "o", data_parallel_size=2))
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "manifest.json").write_text("{}")
    with pytest.raises(DistillError, match="holds a run without --data-parallel-size"):
        replicas.run(gen_cfg(tiny_qwen_dir, data, tmp_path / "o2", data_parallel_size=2))


FAKE_REPLICA = """
import os, signal, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
r = int(cfg["shard"].split("/")[0])
mark = os.path.join(cfg["out"], f"started-{r}")
first = not os.path.exists(mark)
open(mark, "a").write("x")
mode = os.environ["FAKE_MODE"]
if mode == "error" and r == 0:
    print("error: --out x: cannot resume, the config differs", file=sys.stderr); sys.exit(1)
if (mode == "die_once" and r == 0 and first) or (mode == "always" and r == 0):
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("mode", ["die_once", "error", "always"])
def test_supervisor_restarts_the_dead_and_stops_on_user_errors(tmp_path, monkeypatch, mode):
    script = tmp_path / "fake.py"
    script.write_text(FAKE_REPLICA)
    monkeypatch.setattr(replicas, "command", lambda config: [sys.executable, str(script), str(config)])
    monkeypatch.setattr(replicas, "POLL_S", 0.05)
    monkeypatch.setenv("FAKE_MODE", mode)
    cfg = gen_cfg("t", tmp_path / "d.jsonl", tmp_path, data_parallel_size=2)
    configs = replicas.replica_configs(cfg)
    dirs = [tmp_path / f"shard-{r}-of-2" for r in range(2)]
    envs = [dict(os.environ) for _ in dirs]
    if mode == "die_once":
        restarts = replicas.supervise(configs, envs, dirs, max_restarts=2)
        assert restarts == {0: 1}
        assert (tmp_path / "started-0").read_text() == "xx" and (tmp_path / "started-1").read_text() == "x"
        assert (dirs[0] / replicas.LOG_FILE).read_text().count("--- ") == 2  # one log, both runs
    elif mode == "error":
        with pytest.raises(DistillError, match=r"replica 0 \(.*shard-0-of-2\): --out x: cannot resume") as e:
            replicas.supervise(configs, envs, dirs, max_restarts=2)
        assert "\n" not in str(e.value) and (tmp_path / "started-0").read_text() == "x"  # not restarted
    else:
        with pytest.raises(DistillError, match=r"replica 0 died 3 times \(last exit signal SIGKILL\)"):
            replicas.supervise(configs, envs, dirs, max_restarts=2)


# ---------------------------------------------------------------- replicas: real vLLM (CPU), one killed


def _replica_pid(parent: int, r: int) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and any(arg.endswith(f"replica-{r}.yaml".encode()) for arg in cmd):
            return int(entry)
    return None


@pytest.mark.timeout(300)  # 34 s alone on the Intel VM (two vLLM replica processes); 3x on a 2.3x slower CPU: 235 s
@pytest.mark.slow
def test_two_replicas_one_killed_mid_run_lose_and_duplicate_nothing(tmp_path, tiny_qwen_dir):
    # 512 tokens: the random model ends its samples at scattered lengths (EOS is ~1 token in 384), so problems
    # complete one by one and the kill at the first chunk lands mid-run; at 32 tokens all end at once, together.
    data = write_problems(tmp_path / "probs.jsonl", 16)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "distill", "generate", "--teacher", str(tiny_qwen_dir), "--dataset", str(data),
           "--out", str(out), "--n", "2", "--max-tokens", "512", "--chunk-size", "1", "--id-key", "uid",
           "--temperature", "1.0", "--dtype", "float32", "--max-model-len", "1024", "--data-parallel-size", "2"]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not list((out / "shard-0-of-2").glob("chunk-*.jsonl")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "replica 0 wrote no chunk within 300 s"
            time.sleep(0.05)
        pid = _replica_pid(proc.pid, 0)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        at_kill = len(list((out / "shard-0-of-2").glob("chunk-*.jsonl")))
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    ids = [r.id for r in read_records(out)]
    assert sorted(ids) == sorted(f"probs/p{i}/{j}" for i in range(16) for j in range(2))  # each exactly once
    own = [r.id for r in read_records(out / "shard-0-of-2")]
    assert at_kill < len(own) // 2, "the kill must land mid-run"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["restarts"] == {"0": 1, "1": 0} and stats["data_parallel_size"] == 2
    assert stats["samples"] == stats["samples_written"] == 32 and stats["samples_resumed"] == 0
    assert stats["completion_tokens_written"] == stats["completion_tokens"] == sum(r.num_tokens
                                                                                   for r in read_records(out))
    resumed = json.loads((out / "shard-0-of-2" / "stats.json").read_text())
    assert resumed["chunks_resumed"] >= at_kill  # the restarted replica skipped what its first run wrote
    assert (out / "shard-0-of-2" / replicas.LOG_FILE).read_text().count("--- ") == 2


@pytest.mark.slow
def test_eval_with_two_replicas_grades_every_sample_in_the_parent(tmp_path, tiny_qwen_dir):
    from distill.eval.run import run

    task = tmp_path / "sums.jsonl"
    task.write_text("".join(json.dumps({"id": f"s{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                            for i in range(6)))
    out = tmp_path / "eval"
    results = run(build_config(EvalConfig, {"model": str(tiny_qwen_dir), "tasks": [str(task)], "n": 2,
                                            "max_tokens": 8, "out": str(out), "workers": 1, "dtype": "float32",
                                            "max_model_len": 1024, "data_parallel_size": 2, "id_key": "id"}))
    r = results["results"]["sums"]
    assert r["problems"] == 6 and r["samples"] == 12
    assert results["provenance"]["parallelism"]["data"] == 2
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == [f"sums/s{i}/{j}" for i in range(6) for j in range(2)]  # task order
    gen = out / "generations" / "sums"
    assert {p.name for p in gen.iterdir() if p.is_dir()} == {"shard-0-of-2", "shard-1-of-2"}
    assert json.loads((gen / "stats.json").read_text())["samples"] == 12


@pytest.mark.skipif(not os.environ.get("DISTILL_TEST_PARALLEL"), reason="set DISTILL_TEST_PARALLEL=1: tensor and "
                    "pipeline parallel vLLM workers on CPU take ~2 min each on 2 cores (not in CI)")
@pytest.mark.parametrize("flag", ["--tensor-parallel-size", "--pipeline-parallel-size"])
def test_tensor_and_pipeline_parallel_on_cpu(tmp_path, tiny_qwen_dir, flag):
    """Two vLLM CPU workers (mp executor) on a one-NUMA-node machine: distill splits the cores between them."""
    data = write_problems(tmp_path / "probs.jsonl", 2)
    cmd = [sys.executable, "-m", "distill", "generate", "--teacher", str(tiny_qwen_dir), "--dataset", str(data),
           "--out", str(tmp_path / "out"), "--n", "1", "--max-tokens", "2", "--id-key", "uid", "--dtype", "float32",
           "--max-model-len", "1024", flag, "2"]
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_ENABLE_V1_MULTIPROCESSING",
                                                            "VLLM_CPU_OMP_THREADS_BIND")}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(r.id for r in read_records(tmp_path / "out")) == ["probs/p0/0", "probs/p1/0"]


# ---------------------------------------------------------------- eval shards → one results.json


def _completions(tmp_path: Path) -> Path:
    rng = random.Random(0)
    rows = [{"problem_id": f"q{p}", "answer": str(p), "num_tokens": rng.randint(5, 50), "finish_reason":
             rng.choice(["stop", "stop", "length"]),
             "completion": f"<think>\nx\n</think>\n\n\\boxed{{{p if rng.random() < 0.5 else p + 1}}}"}
            for p in range(20) for _ in range(4)]
    rng.shuffle(rows)  # interleaved problems: the merge must restore the file's order, not sort it
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_shards_merge_into_the_single_runs_results(tmp_path):
    from distill.cli import main
    from distill.eval.merge import merge
    from distill.eval.run import run

    data = _completions(tmp_path)
    cfg = {"completions": str(data), "workers": 1}
    single = run(build_config(EvalConfig, {**cfg, "out": str(tmp_path / "single")}))
    for i in range(3):
        part = run(build_config(EvalConfig, {**cfg, "out": str(tmp_path / "sharded"), "shard": f"{i}/3"}))
        assert 0 < part["results"]["c"]["problems"] < 20
    with pytest.raises(DistillError, match=r"shard 0/3 given twice"):
        merge([str(tmp_path / "sharded"), str(tmp_path / "sharded" / "shard-0-of-3")], str(tmp_path / "x"))
    assert main(["eval", "merge", str(tmp_path / "sharded")]) == 0
    merged = json.loads((tmp_path / "sharded" / "results.json").read_text())
    assert merged["results"] == single["results"]  # every metric, CI, pass@k, cons@k, token stats: equal
    assert merged["provenance"]["merged_from"] == [str(tmp_path / "sharded" / f"shard-{i}-of-3") for i in range(3)]
    one = (tmp_path / "single" / "samples.jsonl").read_text()
    assert (tmp_path / "sharded" / "samples.jsonl").read_text() == one

    (tmp_path / "sharded" / "shard-2-of-3" / "shard.json").unlink()
    with pytest.raises(DistillError, match=r"shard 2/3 is missing"):
        merge([str(tmp_path / "sharded" / f"shard-{i}-of-3") for i in range(2)], str(tmp_path / "x"))
    run(build_config(EvalConfig, {**cfg, "out": str(tmp_path / "sharded"), "shard": "2/3", "n": 2}))
    with pytest.raises(DistillError, match=r"another config.*n 16 → 2"):
        merge([str(tmp_path / "sharded")])


# ---------------------------------------------------------------- multi-process SFT (accelerate, gloo on CPU)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sft_recipe(tmp_path: Path, student: Path, data: Path, accumulation: int) -> Path:
    recipe = {"student": str(student), "data": str(data), "max_length": 512, "learning_rate": 1e-3, "max_steps": 3,
              "trl": {"logging_steps": 1, "per_device_train_batch_size": 1,
                      "gradient_accumulation_steps": accumulation, "save_strategy": "steps", "save_steps": 1}}
    path = tmp_path / f"sft-{accumulation}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _launch(recipe: Path, out: Path, *distill_args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--main_process_port",
           str(_free_port()), "--config_file", str(ACCELERATE / "ddp.yaml"), "-m", "distill.cli", "sft",
           "--config", str(recipe), "--out", str(out), *distill_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _losses(out: Path) -> list[float]:
    return [x["loss"] for x in json.loads((out / "stats.json").read_text())["loss"]]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_doubled_accumulation_and_resumes(tmp_path, tiny_qwen_dir):
    """8 samples pack into 2 packs: one optimizer step is the whole set, 1 process x 2 micro-batches or 2 processes x
    1 each, so every step's loss must agree; then a checkpoint written by 2 processes resumes in 2 processes."""
    from test_sft import records

    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records(8)))
    from distill.train.sft import run

    one = run(build_config_sft(_sft_recipe(tmp_path, tiny_qwen_dir, data, 2), tmp_path / "one"))
    two = tmp_path / "two"
    (two / "checkpoint-9").mkdir(parents=True)  # a stale run that --overwrite must clear, not resume
    (two / "checkpoint-9" / "model.safetensors").write_bytes(b"stale")
    done = _launch(_sft_recipe(tmp_path, tiny_qwen_dir, data, 1), two, "--overwrite")
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads((two / "stats.json").read_text())
    assert stats["processes"] == 2 and one["processes"] == 1
    assert stats["resumed_from"] is None and not (two / "checkpoint-9").exists()
    assert stats["steps"] == 3 and len(_losses(two)) == 3
    for a, b in zip([x["loss"] for x in one["loss"]], _losses(two)):
        assert abs(a - b) < 1e-3 * abs(a), (one["loss"], stats["loss"])
    # As if both processes had died after saving step 2: the rerun resumes there and step 3 comes out the same.
    uninterrupted = _losses(two)[2]
    import shutil

    shutil.rmtree(two / "checkpoint-3")
    again = _launch(_sft_recipe(tmp_path, tiny_qwen_dir, data, 1), two)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((two / "stats.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 3
    assert abs(_losses(two)[-1] - uninterrupted) < 1e-4 * abs(uninterrupted)


def build_config_sft(recipe: Path, out: Path):
    from distill.config import SftConfig, load_config

    return load_config(SftConfig, recipe, {"out": str(out)})


def _deepspeed_dict(name: str) -> dict:
    """The DeepSpeed config accelerate builds from one of our YAMLs, with the 'auto' values the Trainer fills."""
    from accelerate.utils import DeepSpeedPlugin

    ds = yaml.safe_load((ACCELERATE / name).read_text())["deepspeed_config"]
    plugin = DeepSpeedPlugin(zero_stage=ds["zero_stage"], offload_optimizer_device=ds["offload_optimizer_device"],
                             offload_param_device=ds["offload_param_device"], zero3_init_flag=ds["zero3_init_flag"],
                             zero3_save_16bit_model=ds.get("zero3_save_16bit_model", False),
                             gradient_accumulation_steps=8, gradient_clipping=1.0)
    config = json.loads(json.dumps(plugin.deepspeed_config))
    fill = {"train_micro_batch_size_per_gpu": 2, "train_batch_size": 16, "gradient_accumulation_steps": 8,
            "gradient_clipping": 1.0}
    for key, value in fill.items():
        if config.get(key) in ("auto", None):
            config[key] = value
    zero = config["zero_optimization"]
    for key in list(zero):
        if zero[key] == "auto":
            zero[key] = int(1e8)
    config["bf16"] = {"enabled": True}
    return config


@pytest.mark.parametrize("name,stage", [("zero2.yaml", 2), ("zero3.yaml", 3)])
def test_zero_configs_pass_deepspeeds_own_parser(name, stage):
    pytest.importorskip("deepspeed", reason="pip install --no-build-isolation -e '.[deepspeed]' (not in the CI extras)")
    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = DeepSpeedConfig(_deepspeed_dict(name))
    assert parsed.zero_optimization_stage == stage and parsed.zero_enabled
    assert parsed.train_batch_size == 16 and parsed.gradient_accumulation_steps == 8 and parsed.bfloat16_config.enabled
    if stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save  # zero3_save_16bit_model: a loadable model


# ---------------------------------------------------------------- Ray


def _ray_generate(tmp_path: Path, teacher: Path) -> subprocess.CompletedProcess:
    data = write_problems(tmp_path / "probs.jsonl", 4)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.setdefault("RAY_ADDRESS", "local")  # a GPU machine's own one-node cluster, unless one is running
    cmd = [sys.executable, "-m", "distill", "generate", "--teacher", str(teacher), "--dataset", str(data),
           "--out", str(tmp_path / "out"), "--n", "1", "--max-tokens", "4", "--id-key", "uid", "--dtype",
           "float32", "--max-model-len", "1024", "--distributed-executor-backend", "ray"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_ray_on_cpu_is_a_one_line_error_before_any_engine(tmp_path, tiny_qwen_dir):
    """vLLM's CPU build has no Ray executor ("current platform cpu does not support ray", deep in its engine core):
    distill says so in one line, before starting anything."""
    pytest.importorskip("ray", reason="pip install -e '.[ray]' (Ray is not in the CI extras)")
    from distill.engine.vllm_engine import cuda_available

    if cuda_available():
        pytest.skip("a GPU machine runs Ray (test_ray_backed_generate)")
    done = _ray_generate(tmp_path, tiny_qwen_dir)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: --distributed-executor-backend ray: vLLM on cpu")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("chunk-*"))


@pytest.mark.gpu
def test_ray_backed_generate(tmp_path, tiny_qwen_dir):
    pytest.importorskip("ray", reason="pip install -e '.[ray]'")
    done = _ray_generate(tmp_path, tiny_qwen_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(r.id for r in read_records(tmp_path / "out")) == [f"probs/p{i}/0" for i in range(4)]


# ---------------------------------------------------------------- launchers: rendered, their command lines parsed


LAUNCHERS = sorted(p for d in ("slurm", "ray") for p in (REPO / "recipes" / d).glob("*.sh"))
STUBS = {
    "sbatch": 'cat > "$CALLS.job.$$"; echo "$CALLS.job.$$" >> "$CALLS.jobs"; echo 7',  # keeps the job script
    "srun": 'while [[ "${1:-}" == -* ]]; do shift; done; "$@"',  # runs the step here, once
    "scontrol": "echo node1; echo node2",
    "ray": 'if [ "${1:-}" = status ]; then echo " 1 node_1"; echo " 1 node_2"; fi',
    "distill": ":", "accelerate": ":", "sleep": ":",
}


def _stub_bin(tmp_path: Path) -> Path:
    """Stand-ins for Slurm, Ray, accelerate and distill that record their arguments in $CALLS."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text(
            f"#!/bin/bash\n{sys.executable} -c 'import json,sys; print(json.dumps(sys.argv[1:]))' {name} \"$@\" "
            f">> \"$CALLS\"\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _distill_argv(call: list[str]) -> list[str] | None:
    """The distill arguments in one recorded call (distill …, accelerate launch … -m distill.cli …, srun …)."""
    if call[0] == "distill":
        return call[1:]
    for i in range(len(call) - 1):
        if call[i] == "-m" and call[i + 1] in ("distill", "distill.cli"):
            return call[i + 2:]
        if call[i] == "distill" and i > 0:
            return call[i + 1:]
    return None


def _parse_distill(argv: list[str]) -> object:
    """Parse a distill command line with the real CLI (stage options → the stage's config), running nothing."""
    from distill.cli import cli
    from distill.config import STAGE_CONFIGS, load_config

    stage, rest = argv[0], argv[1:]
    command = cli.commands[stage]
    if stage == "eval" and rest and rest[0] in command.commands:  # eval merge / compare
        sub = command.commands[rest[0]]
        return sub.make_context(rest[0], list(rest[1:])).params
    ctx = command.make_context(stage, list(rest), resilient_parsing=False)
    flags = {k: v for k, v in ctx.params.items() if v is not None and k != "config"}
    config = ctx.params.get("config")
    if config:
        assert (REPO / config).is_file(), f"{config}: the recipe the launcher names does not exist"
    return load_config(STAGE_CONFIGS[stage], REPO / config if config else None, flags)


@pytest.mark.parametrize("script", LAUNCHERS, ids=[str(p.relative_to(REPO)) for p in LAUNCHERS])
def test_launchers_render_and_their_distill_command_lines_parse(tmp_path, script):
    first = script.read_text().splitlines()[0]
    assert first.startswith("# ") and script.name in first, "the first line is the command that runs the file"
    words = shlex.split(first[2:])
    env_vars = {}
    while "=" in words[0]:
        key, value = words.pop(0).split("=", 1)
        env_vars[key] = value
    assert words[0] == "bash" and (REPO / words[1]) == script
    bin_dir = _stub_bin(tmp_path)
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, **env_vars, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls)}
    work = tmp_path / "work"  # the scripts make logs/ where they run
    work.mkdir()
    done = subprocess.run(["bash", str(script), *words[2:]], cwd=work, env=env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    jobs = Path(f"{calls}.jobs").read_text().split()
    assert jobs, "the script submits its job(s) with sbatch"
    for job in jobs:  # each submitted job script, run as array task 1 on the first of two nodes
        assert Path(job).read_text().startswith("#!/bin/bash\n#SBATCH ")
        job_env = {**env, "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NODEID": "0",
                   "SLURM_JOB_ID": "7"}
        ran = subprocess.run(["bash", job], cwd=work, env=job_env, capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
        assert ran.returncode == 0, ran.stderr
    made = [json.loads(line) for line in calls.read_text().splitlines()]
    lines = [argv for c in made if (argv := _distill_argv(c))]
    assert lines, f"{script.name}: no distill command line was run ({made})"
    for argv in lines:
        cfg = _parse_distill(argv)
        if getattr(cfg, "shard", None):
            assert cfg.shard.startswith("1/"), "the array task id picks the shard"
    for call in made:
        if call[0] == "accelerate":
            config = call[call.index("--config_file") + 1]
            assert (REPO / config).is_file(), f"{config}: no such accelerate config"
