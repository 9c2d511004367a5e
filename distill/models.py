"""Model arguments: what a model argument names (a folder, a Hub id, or a `.gguf` file dequantised once into a cached
folder), and its identity (a content hash of the weights, or a Hub revision)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from distill.errors import DistillError

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Hashing tens of GB takes minutes: a file's digest is reused while its path, size and mtime are unchanged.
HASH_CACHE = Path(os.environ.get("DISTILL_CACHE", "~/.cache/distill")).expanduser() / "file-hashes.json"
_BLOCK = 1 << 22


GGUF_CACHE = Path(os.environ.get("DISTILL_CACHE", "~/.cache/distill")).expanduser() / "gguf"


def resolve_model(model: str, option: str = "--model") -> str:
    """A `.gguf` file → a Hugging Face model folder converted from it once (transformers + the `gguf` package
    dequantise it; cached by the file's content hash); anything else is returned unchanged."""
    path = Path(model).expanduser()
    if path.suffix != ".gguf":
        return model
    if not path.is_file():
        raise DistillError(f"{option} {model}: no such GGUF file")
    out = GGUF_CACHE / f"{path.stem}-{file_sha256(path)[:16]}"
    if (out / "config.json").is_file():
        return str(out)
    log.info("%s: dequantising %s into %s (once; cached)", option, path.name, out)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    try:
        _convert_gguf(path, tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _convert_gguf(path: Path, out: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise DistillError(f"{path}: reading GGUF files needs the `gguf` package; pip install gguf")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The dequantised weights go into a plain model built from the same config: transformers refuses to save a
    # model it loaded from GGUF ("not serializable"), and a plain folder is what vLLM and TRL load.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if [k for k in missing if "lm_head" not in k] or unexpected:
        raise DistillError(f"{path}: dequantised weights do not match the architecture (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(str(out))
    from distill.data.io import apply_umask

    apply_umask(out)


def is_local(model: str) -> bool:
    return Path(model).expanduser().exists() or model.startswith((".", "/", "~")) or model.count("/") > 1


def check_model_dir(model: str, option: str) -> None:
    """A local model argument must be a saved model folder; anything else is taken as a Hub id."""
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise DistillError(f"{option} {model}: no config.json in that folder; pass a saved model folder")
        return
    if is_local(model):
        raise DistillError(f"{option} {model}: no such model folder; pass a local model folder or a Hub id ORG/NAME")


def file_sha256(path: Path) -> str:
    """sha256 of a file's content, cached by (absolute path, size, mtime_ns)."""
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    cache = _read_cache()
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    digest = h.hexdigest()
    cache[key] = digest
    _write_cache(cache)
    return digest


def fingerprint(model: str, revision: str | None = None) -> str | None:
    """A local folder: sha256 over config.json and the content of every weight file; a Hub id: the pinned revision
    (None when unpinned: the Hub may move under a resumed run, which the manifest then cannot tell)."""
    p = Path(model).expanduser()
    if not p.is_dir():
        return revision
    h = hashlib.sha256()
    config = p / "config.json"
    h.update(config.read_bytes() if config.is_file() else b"")
    for f in sorted(p.iterdir()):
        if f.is_file() and f.suffix in WEIGHT_SUFFIXES:
            h.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return "sha256:" + h.hexdigest()


def _read_cache() -> dict[str, str]:
    try:
        return json.loads(HASH_CACHE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict[str, str]) -> None:
    from distill.data.io import atomic_write_text

    try:
        atomic_write_text(HASH_CACHE, json.dumps(dict(list(cache.items())[-10000:])))
    except OSError as e:  # a read-only home: hashing again next time is slower, not wrong
        log.debug("cannot write %s (%s)", HASH_CACHE, e)
