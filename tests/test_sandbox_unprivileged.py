"""The attack suite again, as a user who is not root (issue 22): most users are not, and CI runs as root.

Root drops to uid/gid 65534 (nobody) for a child that runs tests/test_sandbox_attacks.py with a world-readable
interpreter (CI's own venv python lives under /root, which nobody may enter). The files it needs — distill's source,
the attack tests, pytest and pyseccomp — are staged in a 0755 folder, so the run sees only what any user could.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
# Pure-Python packages the staged run imports (pytest and its dependencies, the timeout plugin, the seccomp binding).
PACKAGES = ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments", "py", "pytest_timeout", "pyseccomp")
CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3", "/usr/bin/python3.12", "/usr/bin/python3.11")

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid (run as a user, the attack suite "
                                                 "itself already is the unprivileged run)"),
]


def _as_nobody(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, text=True, **kw)


def _interpreter() -> str | None:
    """A CPython >= 3.11 that nobody can run (the venv's may sit under a private home)."""
    for path in CANDIDATES:
        if os.path.exists(path) and _as_nobody([path, "-c", "import sys; assert sys.version_info >= (3, 11)"],
                                               cwd="/", timeout=60).returncode == 0:
            return path
    return None


def _stage() -> Path:
    root = Path(tempfile.mkdtemp(prefix="distill-unprivileged-"))
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "distill", root / "distill", ignore=skip)
    (root / "tests").mkdir()
    for name in ("test_sandbox_attacks.py", "sandbox_procs.py"):
        shutil.copy(REPO / "tests" / name, root / "tests")
    site = root / "site"
    site.mkdir()
    for name in PACKAGES:
        src = Path(importlib.import_module(name).__file__)
        if src.name == "__init__.py":
            shutil.copytree(src.parent, site / src.parent.name, ignore=skip)
        else:
            shutil.copy(src, site / src.name)
    os.chmod(root, 0o755)
    for where, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(where, d), 0o755)
        for f in files:
            os.chmod(os.path.join(where, f), 0o644)
    return root


@pytest.mark.timeout(600)  # alone: ~20 s on the 2-core Intel VM
def test_every_attack_is_stopped_without_root():
    python = _interpreter()
    if python is None:
        pytest.skip(f"no world-readable Python >= 3.11 among {', '.join(CANDIDATES)}")
    root = _stage()
    try:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": f"{root}{os.pathsep}{root / 'site'}"}
        info = _as_nobody([python, "-c", "import json; from distill.verify.sandbox import sandbox_info; "
                                         "print(json.dumps(sandbox_info()))"], cwd=root, env=env, timeout=120)
        assert info.returncode == 0, info.stderr[-2000:]
        info = json.loads(info.stdout)
        # Not root: the caller's own uid, in a user namespace of its own, with the seccomp filter on.
        assert info["isolation"] == "namespaces" and info["fallbacks"] == [], info
        assert str(NOBODY) in info["uid"] and info["syscalls"].startswith("seccomp: EPERM"), info
        run = _as_nobody([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pytest_timeout", "-c",
                          os.devnull, "--rootdir", str(root), "-o", "timeout=180", "-W", "ignore::pytest.PytestWarning",
                          str(root / "tests")], cwd=root, env=env, timeout=540)
        tail = (run.stdout + run.stderr)[-3000:]
        assert run.returncode == 0, tail
        assert " passed" in tail and "failed" not in tail and "skipped" not in tail, tail
    finally:
        shutil.rmtree(root, ignore_errors=True)
