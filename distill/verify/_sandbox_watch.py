"""The harness's side of one test case: fork it (_sandbox_case.py), watch its time, output and exit, classify it,
and kill whatever it left behind.

Loaded by path by _sandbox_child.py, which sets `_case` (the _sandbox_case module) right after loading it.
"""

import math
import os
import select
import signal
import sys
import time

_case = None  # the _sandbox_case module; set by _sandbox_child._load
_tester = None  # the _sandbox_tester module; likewise

# What the test process may report (on its own pipe; the program has no way to it); timeouts and limits are
# decided here. The program's process may only report failures.
_CASE_STATUSES = ("ok", "compile_error", "runtime_error", "assertion_failed", "memory", "sandbox_error")
_PROGRAM_STATUSES = ("compile_error", "runtime_error", "memory", "sandbox_error")


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _kill_others(job: dict, pgids: list) -> None:
    """Kill whatever the case left behind: everyone else in our pid namespace, or else its uid and group."""
    if job["pidns"]:
        try:
            os.kill(-1, signal.SIGKILL)  # as pid 1 of the namespace: every other process in it
        except ProcessLookupError:
            pass
        return
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if job["uid"] is not None:
        _sweep_uid(job["uid"])


def _sweep_uid(uid: int) -> None:
    """SIGKILL every process whose real uid is `uid` until none is left (they may have left our group).

    Not kill(-1) as that uid: it reports success even when every target refused, so it cannot say "done".
    """
    for _ in range(2000):
        found = _case._uid_processes(uid)
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap({"pidns": False})
        time.sleep(0.001)


def _reap(job: dict) -> None:
    """Reap exited children (orphans come to us as pid 1 of the namespace)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, 0 if job["pidns"] else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _pidfd(pid: int):
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _fork(body) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            body()
        except BaseException:  # noqa: BLE001 - our own setup failed: say so on fd 3 (the result pipe by now)
            try:
                os.write(3, f"sandbox_error case setup: {_case._last_line(sys.exc_info()[1])}\n".encode())
            except BaseException:  # noqa: BLE001
                pass
        os._exit(70)
    return pid


def _run_case(job: dict, case: dict, deadline: float) -> dict:
    """One case: the program in its own process (and pid namespace); for a functional case the test code in a second
    process that calls it through a pipe. The verdict is the test process's, or for a stdin case the program's exit
    status (its output is compared by the parent); the program's own words on fd 3 can only make it fail."""
    lim = job["limits"]
    stdin_fd = os.memfd_create("stdin")
    data = case.get("stdin", "").encode("utf-8")
    view = memoryview(data)
    while view:
        view = view[os.write(stdin_fd, view):]
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    fds = {"stdin": stdin_fd, "stdout": out_w, "stderr": err_w, "result": res_w}
    parent_fds = [stdin_fd, out_w, err_w, res_w]
    tested = case.get("test") is not None
    if tested:
        import socket

        prog_end, test_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        tres_r, tres_w = os.pipe()
        fds["chan"] = prog_end.fileno()
        parent_fds += [tres_w]
    start = time.monotonic()
    prog = _fork(lambda: _case._case_main(job, case, fds))
    procs = {prog: {"name": "program", "pidfd": _pidfd(prog), "status": None, "usage": None}}
    if tested:
        test_fds = {"tests": job["tests_fd"], "stderr": err_w, "result": tres_w, "chan": test_end.fileno()}
        tester = _fork(lambda: _tester._tester_main(job, case, test_fds))
        procs[tester] = {"name": "test", "pidfd": _pidfd(tester), "status": None, "usage": None}
        prog_end.close()
        test_end.close()
    for fd in parent_fds:
        os.close(fd)
    wall = min(lim["case_wall_s"], max(0.0, deadline - start))
    cut_by_total = wall < lim["case_wall_s"]
    out, err, res, tres = bytearray(), bytearray(), bytearray(), bytearray()
    out_cap, err_keep = lim["output_bytes"], 4096
    killed = ""
    open_fds = {out_r: out, err_r: err, res_r: res}
    if tested:
        open_fds[tres_r] = tres
    elapsed = 0.0

    def kill_all() -> None:
        for pid, p in procs.items():
            if p["status"] is None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    while any(p["status"] is None for p in procs.values()) or open_fds:
        running = [pid for pid, p in procs.items() if p["status"] is None]
        now = time.monotonic()
        if running and now - start > wall and not killed:
            killed = "timeout"
            kill_all()
        watch = list(open_fds) + [procs[pid]["pidfd"] for pid in running if procs[pid]["pidfd"] is not None]
        if not running:  # the case is over: leftovers were killed, drain what is buffered and stop
            timeout = 0.2
        else:
            polling = any(procs[pid]["pidfd"] is None for pid in running)
            timeout = max(0.0, min(wall - (now - start), 0.05 if polling else 1.0))
        ready, _, _ = select.select(watch, [], [], timeout)
        for pid in running:
            got, status, usage = os.wait4(pid, os.WNOHANG if not killed else 0)
            if got != pid:
                continue
            procs[pid].update(status=status, usage=usage)
            if procs[pid]["name"] == "test":
                kill_all()  # the test is over: the program is not needed any more
        if running and all(p["status"] is not None for p in procs.values()):
            elapsed = time.monotonic() - start
            _kill_others(job, [pid for pid in procs])
            _reap(job)
            continue
        if not running and not ready:
            break
        for fd in ready:
            if fd not in open_fds:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                os.close(fd)
                del open_fds[fd]
                continue
            buf = open_fds[fd]
            buf += chunk
            if fd == out_r and len(buf) > out_cap and not killed:
                killed = "output_limit"
                del buf[out_cap:]
                kill_all()
            elif fd == out_r and len(buf) > out_cap:
                del buf[out_cap:]
            elif fd == err_r and len(buf) > 2 * err_keep:
                del buf[:-err_keep]
            elif fd in (res_r, tres_r if tested else -1) and len(buf) > 1 << 16:
                del buf[1 << 16:]
    for fd in open_fds:
        os.close(fd)
    for p in procs.values():
        if p["pidfd"] is not None:
            os.close(p["pidfd"])
    result = {"stdout": out.decode("utf-8", "replace"), "stderr": bytes(err[-err_keep:]).decode("utf-8", "replace"),
              "time_s": round(elapsed, 4),
              "cpu_s": round(sum(p["usage"].ru_utime + p["usage"].ru_stime for p in procs.values()
                                 if p["usage"] is not None), 4)}
    if killed == "output_limit":
        return result | {"status": "output_limit", "detail": f"printed more than {out_cap} bytes"}
    if killed == "timeout" and cut_by_total:
        return result | {"status": "timeout", "detail": f"the problem's total time limit ran out during this case "
                                                        f"(after {wall:.1f} s of it)"}
    if killed == "timeout":
        return result | {"status": "timeout", "detail": f"ran past the {wall:.1f} s wall clock "
                                                        f"(CPU limit {lim['cpu_in_force']})"}
    program = procs[prog]
    said = _message(res, _PROGRAM_STATUSES)
    if not tested:
        if said is None and os.WIFEXITED(program["status"]) and os.WEXITSTATUS(program["status"]) == 0:
            return result | {"status": "ok", "detail": ""}
        return result | _failure(program, said, lim, "before finishing")
    test = procs[tester]
    verdict = _message(tres, _CASE_STATUSES)
    if verdict is not None and os.WIFEXITED(test["status"]):
        if verdict["status"] == "ok":
            return result | verdict
        if not verdict["detail"].startswith("program_gone"):
            return result | verdict
        return result | _failure(program, said, lim, "before its tests ended")
    if os.WIFSIGNALED(test["status"]):  # the test process itself hit a limit
        return result | _failure(test, None, lim, "")
    return result | {"status": "sandbox_error", "detail": "the test process ended without a verdict"}


def _message(buf: bytearray, allowed: tuple):
    for line in bytes(buf).decode("utf-8", "replace").splitlines():
        parts = line.split(" ", 1)
        if parts[0] in allowed:
            return {"status": parts[0], "detail": parts[1] if len(parts) > 1 else ""}
    return None


def _failure(proc: dict, said, lim: dict, when: str) -> dict:
    """Why a process failed: its own message (a failure only), else how it ended."""
    status, usage = proc["status"], proc["usage"]
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        cpu_used = usage.ru_utime + usage.ru_stime
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= math.ceil(lim["timeout_s"]) - 0.05):
            return {"status": "timeout", "detail": f"hit the CPU time limit ({lim['cpu_in_force']})"}
        if said is not None:
            return said
        if sig == signal.SIGKILL:  # not ours, not the CPU limit: the kernel's OOM killer
            return {"status": "memory", "detail": "killed (out of memory)"}
        return {"status": "runtime_error", "detail": f"killed by {_signal_name(sig)}"}
    if said is not None:
        return said
    code = os.WEXITSTATUS(status)
    return {"status": "runtime_error", "detail": f"exited with status {code} {when}".strip()}
