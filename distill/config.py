"""Dataclass configs for every stage: YAML recipe + CLI overrides, all errors at once, "did you mean"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distill.data.code_tests import TESTS_FORMATS
# The loading machinery lives in recipe.py; its names are re-exported here so stages import one module.
from distill.recipe import (build_config, coerce, config_dict, load_config, opt,  # noqa: F401
                            read_recipe, save_config)


# ---------------------------------------------------------------- stage configs
# Field names are the recipe keys; the CLI flag is the name with "-" for "_".


@dataclass
class DataSourceMixin:
    """How a dataset of problems or records is read (local JSONL/Parquet/CSV or a Hub id)."""

    split: str = opt("train", "split to read when DATA is a Hub dataset id or a local dataset folder")
    subset: str | None = opt(None, "Hub dataset config/subset name")
    revision: str | None = opt(None, "Hub dataset revision (branch, tag or commit) to pin")
    problem_key: str = opt("problem", "column holding the problem text")
    answer_key: str = opt("answer", "column holding the gold answer")
    id_key: str | None = opt(None, "column holding a stable problem id (default: a hash of the problem text)")
    tests_key: str | None = opt(None, "code datasets: column holding each problem's tests (input_output, "
                                      "verification_info, test_cases, ...); they become the gold answer, a test spec")
    tests_format: str = opt("auto", "format of --tests-key: auto (from the column's name, else its content) | spec | "
                                    "apps | open_r1 | livecodebench | humaneval | mbpp", choices=TESTS_FORMATS)
    skip_invalid: bool = opt(False, "count malformed input lines instead of failing on the first")


@dataclass
class EngineMixin:
    """How a model is sampled: R1 sampling, the prompt, the vLLM engine or an OpenAI-compatible server.
    Shared by generate and eval; distill.engine.make_engine reads the engine fields."""

    n: int = opt(4, "samples per problem")
    temperature: float = opt(0.6, "sampling temperature (R1: 0.6)")
    top_p: float = opt(0.95, "nucleus sampling top-p (R1: 0.95)")
    max_tokens: int = opt(32768, "max new tokens per sample (R1: 32768)")
    seed: int = opt(0, "sampling seed")
    limit: int | None = opt(None, "only the first K problems")
    overwrite: bool = opt(False, "discard existing output in --out and start over")
    chunk_size: int = opt(64, "problems per engine call; the unit of resume")
    prompt_template: str | None = opt(None, "file with a prompt template containing {problem} (default: R1)")
    think_prefill: str = opt("auto", "start the assistant turn with '<think>\\n': auto|on|off", choices=("auto", "on", "off"))
    backend: str = opt("vllm", "vllm (in-process engine) or openai (any OpenAI-compatible server)", choices=("vllm", "openai"))
    base_url: str | None = opt(None, "server URL for --backend openai, e.g. http://127.0.0.1:8000/v1; several "
                                     "comma-separated URLs: a fleet, each request to the least-loaded server")
    api_key_env: str = opt("OPENAI_API_KEY", "name of the environment variable holding the API key (never the key)")
    concurrency: int = opt(64, "in-flight requests for --backend openai (over all --base-url servers)")
    request_timeout: float = opt(3600.0, "--backend openai: seconds before one request is abandoned and retried")
    max_retries: int = opt(8, "--backend openai: retries per request on 429, 5xx, timeouts and dropped connections")
    tensor_parallel_size: int = opt(1, "vLLM tensor parallel size")
    data_parallel_size: int = opt(1, "engine replicas, each a child process on its own partition of the problems "
                                     "(restarted if it dies); --backend vllm")
    pipeline_parallel_size: int = opt(1, "vLLM pipeline parallel size")
    distributed_executor_backend: str | None = opt(None, "vLLM executor: ray (multi-node TP/PP) or mp (one node)", choices=("ray", "mp"))
    gpu_memory_utilization: float = opt(0.9, "vLLM fraction of GPU memory to use")
    max_model_len: int | None = opt(None, "vLLM context length (default: the model's)")
    dtype: str = opt("auto", "vLLM dtype: auto|bfloat16|float16|float32")
    enforce_eager: bool = opt(False, "vLLM: disable CUDA graphs / compilation")
    thinking_budget: int | None = opt(None, "cap the thought at B tokens, then force the answer after '</think>'")
    deterministic: bool = opt(False, "vLLM batch-invariant kernels (VLLM_BATCH_INVARIANT=1): the same samples whatever "
                                     "the batch; slower; recorded in provenance")


@dataclass
class GenerateConfig(EngineMixin, DataSourceMixin):
    teacher: str = opt("", "teacher model: local path or Hub id (vllm) / served model name (openai)", required=True)
    dataset: str = opt("", "problems: JSONL/Parquet/CSV file, dataset folder, bundled task name or Hub id", required=True)
    out: str = opt("", "output directory for shards, manifest.json and stats.json", required=True)
    source: str | None = opt(None, "source name used in record ids (default: dataset file stem)")
    shard: str | None = opt(None, "I/N: process only partition I of N (by problem id), e.g. 0/8")
    teacher_revision: str | None = opt(None, "Hub revision (branch, tag or commit) of the teacher to pin")

    @property
    def model_revision(self) -> str | None:  # the engine's name for it (engine.vllm_kwargs)
        return self.teacher_revision


# The default filter pipeline, for math traces (the steps themselves: filters/run.py FILTERS and VERIFIED_STEPS).
DEFAULT_FILTER_STEPS = ("finished", "think_format", "answer_correct", "length", "repetition", "language", "dedup",
                        "decontaminate", "select")
LANGUAGE_CHOICES = ("auto", "latin", "cyrillic", "arabic", "hebrew", "devanagari", "thai", "cjk", "hangul")


@dataclass
class FilterConfig(DataSourceMixin):
    input: str = opt("", "generate output dir, or a JSONL/Parquet/Hub dataset of records", positional=True, required=True)
    out: str = opt("", "output directory (kept/, rejected/, stats.json)", required=True)
    steps: list[str] = opt(list(DEFAULT_FILTER_STEPS), "comma-separated filter steps, in order (code datasets: "
                                                       "code_correct in place of answer_correct)")
    completion_key: str = opt("completion", "column holding the model completion")
    format: str | None = opt(None, "input format of a published dataset (default: detect)")
    workers: int | None = opt(None, "grader worker processes (default: all cores)")
    answer_timeout: float = opt(5.0, "hard per-record grading timeout in seconds")
    answer_type: str = opt("auto", "how answers compare: auto|integer|number|expression",
                           choices=("auto", "integer", "number", "expression"))
    answer_extraction: str = opt("boxed", "which answers count: boxed (only a \\boxed{} answer; kept traces teach "
                                 "the format) | chain (boxed, else 'final answer is', else the final line's math)",
                                 choices=("boxed", "chain"))
    audit: bool = opt(False, "answer_correct: also grade every record by plain math-verify; disagreements to "
                             "OUT/audit.jsonl, counted by category in stats.json (math only)")
    min_tokens: int = opt(0, "length: drop completions shorter than this many tokens")
    max_tokens: int = opt(16384, "length: drop completions longer than this, 0: no limit (default = sft's max_length)")
    tokenizer: str | None = opt(None, "length: count tokens with this tokenizer (default: num_tokens, else chars/4)")
    repetition_ngram: int = opt(20, "repetition: word n-gram size of the loop detector")
    repetition_max_repeats: int = opt(10, "repetition: drop when one n-gram occurs this many times")
    language: str = opt("auto", "language: expected script of the reasoning (auto = the problem's)",
                        choices=LANGUAGE_CHOICES)
    language_max_foreign: float = opt(0.05, "language: max share of words/characters in another script")
    dedup_threshold: float = opt(0.8, "dedup: MinHash Jaccard similarity at which a completion is a near-duplicate")
    decontam_ngram: int = opt(8, "decontaminate: word n-gram size matched against the eval sets")
    decontam_min_overlap: float = opt(0.2, "decontaminate: share of an eval problem's n-grams a problem must "
                                           "contain (0: any shared n-gram)")
    decontam_tasks: list[str] = opt([], "decontaminate: bundled eval sets to check problems against (default: every "
                                        "bundled math task)")
    select_k: int = opt(4, "select: keep at most this many correct traces per problem")
    select_strategy: str = opt("random", "select: which k to keep: shortest|random|all",
                               choices=("shortest", "random", "all"))
    seed: int = opt(0, "select: seed of the random strategy")
    chunk_size: int = opt(10000, "records per processing chunk and per output Parquet file")


@dataclass
class TrainMixin:
    """What every training stage (sft, kd, grpo) shares: LoRA, the seed, resume and overwrite."""

    lora: bool = opt(False, "train a LoRA adapter instead of all weights")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha")
    lora_dropout: float = opt(0.05, "LoRA dropout")
    lora_target_modules: list[str] = opt(["all-linear"], "LoRA target modules (comma-separated), or all-linear")
    merge_lora: bool = opt(True, "with --lora, also save the merged full model in OUT/merged (loadable by vLLM)")
    seed: int = opt(42, "training seed (and the seed of the samples a stage draws while training)")
    resume: str = opt("auto", "auto: continue from the newest complete checkpoint in --out (refused when the config "
                              "changed); never: train from the start", choices=("auto", "never"))
    overwrite: bool = opt(False, "delete --out's checkpoints and model and start over")


@dataclass
class SftConfig(TrainMixin, DataSourceMixin):
    student: str = opt("", "student model: local path or Hub id", required=True)
    data: str = opt("", "filter output, records JSONL/Parquet, or a messages/ShareGPT dataset", required=True)
    format: str | None = opt(None, "input format of a published dataset (default: detect)")
    completion_key: str = opt("completion", "column holding the completion to train on")
    out: str = opt("", "output directory for the model, checkpoints and stats.json", required=True)
    epochs: float = opt(3.0, "training epochs")
    learning_rate: float = opt(1e-5, "peak learning rate")
    max_length: int = opt(16384, "max tokens per sample; longer samples are dropped, not truncated")
    max_steps: int = opt(-1, "stop after N optimizer steps (-1: run all epochs)")
    preflight_only: bool = opt(False, "run the preflight checks, print them and exit")
    chat_template: str = opt("auto", "auto (own if it keeps <think>, else a template that does), own, chatml, deepseek-r1, llama3 or a .jinja file")
    max_dropped_share: float = opt(0.1, "fail the preflight if more than this share of samples is longer than max_length")
    load_in_4bit: bool = opt(False, "QLoRA: load the student in 4-bit (needs --lora, bitsandbytes and a CUDA GPU)")
    trl: dict[str, Any] = opt({}, "extra TRL SFTConfig fields, passed through as-is (recipe only)")


@dataclass
class EvalConfig(EngineMixin, DataSourceMixin):
    model: str | None = opt(None, "model to evaluate: local path or Hub id (vllm) / served model name (openai)")
    model_revision: str | None = opt(None, "Hub revision (branch, tag or commit) of --model to pin")
    tasks: list[str] = opt(["aime24", "aime25", "math500", "amc23"], "comma-separated task names or data files")
    out: str = opt("", "output directory (samples.jsonl, results.json)", required=True)
    completions: str | None = opt(None, "grade existing completions from this file instead of generating")
    completion_key: str = opt("completion", "--completions: column holding the model completion")
    format: str | None = opt(None, "--completions: format of a published dataset (default: detect)")
    task: str | None = opt(None, "with --completions: take the gold answers from this task")
    n: int = opt(16, "samples per problem; pass@1 is their mean accuracy")
    limit: int | None = opt(None, "only the first K problems of each task")
    answer_type: str = opt("task", "grading mode; task: the task's own (auto for custom tasks)",
                           choices=("task", "auto", "integer", "number", "expression"))
    verifier: str = opt("task", "how samples are graded: task (the task's own; math for data files) | math | code",
                        choices=("task", "math", "code"))
    answer_extraction: str = opt("chain", "which answers count: chain (boxed, else 'final answer is', else the "
                                 "final line's math) | boxed (only a \\boxed{} answer)", choices=("chain", "boxed"))
    audit: bool = opt(False, "also grade every sample by plain math-verify; disagreements to OUT/audit.jsonl, "
                             "counted by category in results.json (math tasks only)")
    workers: int | None = opt(None, "grader worker processes (default: all cores)")
    answer_timeout: float = opt(5.0, "hard per-record grading timeout in seconds")
    split: str = opt("test", "custom tasks: split to read from a Hub dataset id")
    min_thinking_tokens: int | None = opt(None, "s1 forcing: a thought ending before N tokens gets 'Wait', goes on (vllm)")
    shard: str | None = opt(None, "I/N: evaluate only partition I of N of every task's problems (by problem id) "
                                  "into OUT/shard-I-of-N; `distill eval merge OUT` combines the N shards")


@dataclass
class PublishConfig:
    dir: str = opt("", "curated dataset directory (a filter output)", positional=True, required=True)
    repo: str = opt("", "Hub dataset repo, ORG/NAME", required=True)
    private: bool = opt(False, "create the Hub repo as private")
    dry_run: bool = opt(False, "write what would be uploaded into DIR/hub/ and upload nothing")
    license: str = opt("other", "Hub license id for the card (e.g. apache-2.0, mit); check the teacher's and problems' terms")
    shard_rows: int = opt(20000, "rows per uploaded Parquet shard")


@dataclass
class DemoConfig:
    out: str = opt("demo-out", "output directory for every stage of the demo")
    cache_dir: str = opt("~/.cache/distill/demo", "where the toy teacher is cached between runs")
    teacher_problems: int = opt(6000, "gold traces the toy teacher is trained on")
    teacher_steps: int = opt(1200, "optimizer steps for the toy teacher (8 packs of 256 tokens each)")
    train_problems: int = opt(3000, "problems the teacher writes traces for")
    n: int = opt(2, "teacher samples per problem")
    heldout_problems: int = opt(100, "held-out problems for the three evals")
    eval_n: int = opt(4, "samples per held-out problem; pass@1 is their mean accuracy")
    student_steps: int = opt(1000, "optimizer steps for the student on the kept traces (8 packs each)")
    fit_target: float = opt(0.8, "each model trains in further rounds until sampling reproduces its check traces this "
                                 "often (see distill/demo.py)")
    max_rounds: int = opt(3, "further training rounds (half the steps each) before the demo stops with an error")
    seed: int = opt(0, "seed for the toy data, the models and sampling")


@dataclass
class KdConfig(TrainMixin, DataSourceMixin):
    student: str = opt("", "student model (usually a `distill sft` output): local path or Hub id", required=True)
    teacher: str = opt("", "teacher model sharing the student's tokenizer: local path or Hub id", required=True)
    data: str = opt("", "problems: JSONL/Parquet/CSV file, dataset folder, bundled task name or Hub id", required=True)
    out: str = opt("", "output directory for the model, checkpoints and stats.json", required=True)
    lmbda: float = opt(1.0, "on-policy fraction λ: share of steps on which the student writes the samples; the rest "
                            "train on samples the teacher writes (sequence-level KD)")
    beta: float = opt(1.0, "generalised JSD β: 0 forward KL, 0.5 JSD, 1 reverse KL (student‖teacher, mode-seeking)")
    temperature: float = opt(1.0, "sampling temperature of the on-policy (and teacher) samples")
    max_new_tokens: int = opt(4096, "max tokens per sample the student (or teacher) writes during training")
    epochs: float = opt(1.0, "passes over the problems")
    learning_rate: float = opt(1e-6, "peak learning rate")
    max_steps: int = opt(-1, "stop after N optimizer steps (-1: run all epochs)")
    limit: int | None = opt(None, "only the first K problems")
    chat_template: str = opt("auto", "template the prompts are rendered (and the model saved) with: auto, own, "
                                     "chatml, deepseek-r1, llama3 or a .jinja file (as for sft)")
    trl: dict[str, Any] = opt({}, "extra TRL GKDConfig fields, passed through as-is (recipe only)")


@dataclass
class GrpoConfig(TrainMixin, DataSourceMixin):
    model: str = opt("", "policy to train: an SFT'd student (R1) or a base model (R1-Zero); folder or Hub id", required=True)
    data: str = opt("", "problems with gold answers: bundled task, JSONL/Parquet/CSV file, folder or Hub id", required=True)
    out: str = opt("", "output directory for the model, checkpoints, steps.jsonl and stats.json", required=True)
    limit: int | None = opt(None, "only the first K problems (after the difficulty selection)")
    pass_rate_from: str | None = opt(None, "difficulty selection: a `distill eval` output dir (or its samples.jsonl); "
                                           "keep problems with pass rate in [pass_rate_min, pass_rate_max]")
    pass_rate_min: float = opt(0.0, "difficulty selection: lowest pass rate kept (inclusive)")
    pass_rate_max: float = opt(1.0, "difficulty selection: highest pass rate kept (inclusive)")
    verifier: str = opt("task", "what grades a completion: task (the task's own; math for data files) | math | code",
                        choices=("task", "math", "code"))
    answer_type: str = opt("task", "math grading mode; task: the task's own (auto for data files)",
                           choices=("task", "auto", "integer", "number", "expression"))
    answer_extraction: str = opt("boxed", "which answers earn the reward: boxed (only a \\boxed{} answer) | chain",
                                 choices=("boxed", "chain"))
    answer_timeout: float = opt(5.0, "hard per-completion grading timeout in seconds; a timeout scores 0")
    workers: int | None = opt(None, "grader worker processes (default: half the cores, at least 1)")
    correctness_weight: float = opt(1.0, "weight of the verifier's reward (1/0, or the code pass fraction)")
    format_weight: float = opt(0.1, "weight of the format reward: 1 when filter's think_format passes, else 0")
    language_weight: float = opt(0.0, "weight of R1's language reward: share of words in the problem's script (0: off)")
    language: str = opt("auto", "language reward: expected script (auto = the problem's)", choices=LANGUAGE_CHOICES)
    length_weight: float = opt(0.0, "weight of DAPO's overlong penalty: 0 up to max_completion_length - overlong_buffer "
                                    "tokens, then linearly to -1; truncated: -1 (0: off)")
    overlong_buffer: int = opt(1024, "length penalty: the tokens before max_completion_length over which it ramps")
    num_generations: int = opt(8, "G: completions sampled per problem; rewards are normalised within the group")
    prompts_per_step: int = opt(16, "problems per optimizer step (each with G completions)")
    max_completion_length: int = opt(8192, "max new tokens per completion (DeepScaleR: 8k, then 16k, then 24k)")
    temperature: float = opt(1.0, "rollout sampling temperature")
    top_p: float = opt(1.0, "rollout nucleus sampling top-p")
    learning_rate: float = opt(1e-6, "peak learning rate")
    beta: float = opt(0.0, "KL coefficient to the reference model (DeepSeekMath 0.04, R1 0.001; 0: no reference model)")
    epochs: float = opt(1.0, "passes over the problems")
    max_steps: int = opt(-1, "stop after N optimizer steps (-1: run all epochs)")
    save_steps: int = opt(50, "save a checkpoint every N steps (the unit of resume)")
    rollout: str = opt("auto", "who samples: vllm (TRL drives it; the CPU build too) | transformers (model.generate) | "
                               "auto (vllm when installed)", choices=("auto", "vllm", "transformers"))
    vllm_mode: str = opt("colocate", "vllm rollouts: colocate (in this process) | server (`trl vllm-serve`)",
                         choices=("colocate", "server"))
    vllm_server_url: str | None = opt(None, "vllm_mode server: base URL of `trl vllm-serve`, e.g. http://127.0.0.1:8000")
    chat_template: str = opt("auto", "auto (the model's inference template; its family's for a base model without "
                                     "one), own, chatml, deepseek-r1, llama3 or a .jinja file; saved with the model")
    prompt_template: str | None = opt(None, "file with a user-turn template containing {problem} (default: R1)")
    think_prefill: str = opt("auto", "start the assistant turn with '<think>\\n': auto|on|off", choices=("auto", "on", "off"))
    trl: dict[str, Any] = opt({}, "extra TRL GRPOConfig fields, passed through as-is (recipe only)")


@dataclass
class RunConfig:
    recipe: str = opt("", "pipeline YAML: `stages:` in order, each `{name, stage, <that stage's options>}`",
                      positional=True, required=True)
    force: list[str] = opt([], "rerun these stages (comma-separated names) even when complete")
    dry_run: bool = opt(False, "print which stages would run or be skipped, and run nothing")


STAGE_CONFIGS: dict[str, type] = {
    "generate": GenerateConfig,
    "filter": FilterConfig,
    "sft": SftConfig,
    "kd": KdConfig,
    "eval": EvalConfig,
    "publish": PublishConfig,
    "demo": DemoConfig,
    "grpo": GrpoConfig,
    "run": RunConfig,
}
