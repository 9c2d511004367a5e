"""Child processes of distill (vLLM's inspection subprocess, the OpenAI server) inherit the parent's decision
to treat CUDA-only torch extensions as absent (see distill/_compat.py), then run any other sitecustomize."""

import importlib.machinery
import importlib.util
import os
import sys

for _name in filter(None, os.environ.get("DISTILL_BLOCKED_MODULES", "").split(",")):
    sys.modules.setdefault(_name, None)

_here = os.path.dirname(os.path.abspath(__file__))
_rest = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
