"""What is left running after a sandboxed run, read from /proc (shared by the sandbox tests; not a test module)."""

from __future__ import annotations

import os

from distill.verify import sandbox


def _status_line(pid: str) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def live_processes() -> list[dict[str, str]]:
    """/proc/PID/status of every process but zombies: a zombie runs nothing and holds no memory (one killed after
    its parent ended is reparented to pid 1, which reaps it in its own time)."""
    procs = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                st = _status_line(name)
            except OSError:
                continue
            if not st.get("State", "Z").startswith(("Z", "X")):
                procs.append(st)
    return procs


def sandbox_processes() -> list[dict[str, str]]:
    """Live processes running as a sandbox uid."""
    lo, hi = sandbox.UID_BASE, sandbox.UID_BASE + sandbox.UID_COUNT
    return [p for p in live_processes() if lo <= int(p["Uid"].split()[0]) < hi]
