"""Child processes of distill (vLLM's engine core, workers and inspection subprocess) inherit the parent's decision
to treat CUDA-only torch extensions as absent (see distill/_compat.py); under the CLI they also ask the kernel to
kill them when their parent dies (PR_SET_PDEATHSIG), so a `kill -9` of distill leaves no engine running and
holding memory. Then any other sitecustomize runs."""

import importlib.machinery
import importlib.util
import os
import sys

for _name in filter(None, os.environ.get("DISTILL_BLOCKED_MODULES", "").split(",")):
    sys.modules.setdefault(_name, None)


def _die_with_parent():
    """PR_SET_PDEATHSIG: the kernel sends SIGKILL when the parent exits. It is cleared by fork, so forked children
    set it again (os.register_at_fork)."""
    try:
        import ctypes
        import signal

        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    except (OSError, AttributeError):
        pass


if os.environ.get("DISTILL_DIE_WITH_PARENT") == "1" and sys.platform.startswith("linux"):
    _die_with_parent()
    os.register_at_fork(after_in_child=_die_with_parent)

_here = os.path.dirname(os.path.abspath(__file__))
_rest = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
