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

# What a case process may report about itself (with the nonce); timeouts and limits are decided here.
_CASE_STATUSES = ("ok", "compile_error", "runtime_error", "assertion_failed", "memory", "sandbox_error")


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _kill_others(job: dict, pgid: int) -> None:
    """Kill whatever the case left behind: everyone else in our pid namespace, or else its uid and group."""
    if job["pidns"]:
        try:
            os.kill(-1, signal.SIGKILL)  # as pid 1 of the namespace: every other process in it
        except ProcessLookupError:
            pass
        return
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


def _run_case(job: dict, case: dict, deadline: float) -> dict:
    lim = job["limits"]
    nonce = os.urandom(16).hex()
    stdin_fd = os.memfd_create("stdin")
    data = case.get("stdin", "").encode("utf-8")
    view = memoryview(data)
    while view:
        view = view[os.write(stdin_fd, view):]
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(out_r), os.close(err_r), os.close(res_r)
            _case._case_main(job, case, {"stdin": stdin_fd, "stdout": out_w, "stderr": err_w, "result": res_w}, nonce)
        except BaseException:  # noqa: BLE001 - our own setup failed: say so on the result pipe (fd 3 by now)
            try:
                os.write(3, f"{nonce} sandbox_error case setup: {_case._last_line(sys.exc_info()[1])}\n".encode())
            except BaseException:  # noqa: BLE001
                pass
        os._exit(70)
    for fd in (stdin_fd, out_w, err_w, res_w):
        os.close(fd)
    wall = min(lim["case_wall_s"], max(0.0, deadline - start))
    out, err, res = bytearray(), bytearray(), bytearray()
    out_cap, err_keep = lim["output_bytes"], 4096
    killed = ""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    open_fds = {out_r: out, err_r: err, res_r: res}
    exited = False
    status = None
    while not exited or open_fds:
        now = time.monotonic()
        if not exited and now - start > wall:
            killed = "timeout"
            os.kill(pid, signal.SIGKILL)
        watch = list(open_fds) + ([pidfd] if pidfd is not None and not exited else [])
        if exited:  # the case is over: leftovers were killed, drain what is buffered and stop
            timeout = 0.2
        else:
            timeout = max(0.0, min(wall - (now - start), 0.05 if pidfd is None else 1.0))
        ready, _, _ = select.select(watch, [], [], timeout)
        if not exited and (pidfd in ready or pidfd is None or killed):
            got, status, usage = os.wait4(pid, os.WNOHANG if not killed else 0)
            if got == pid:
                exited = True
                elapsed = time.monotonic() - start
                _kill_others(job, pid)
                _reap(job)
                continue
        if exited and not ready:
            break
        for fd in ready:
            if fd == pidfd:
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
                os.kill(pid, signal.SIGKILL)
            elif fd == out_r and len(buf) > out_cap:
                del buf[out_cap:]
            elif fd == err_r and len(buf) > 2 * err_keep:
                del buf[:-err_keep]
            elif fd == res_r and len(buf) > 1 << 16:
                del buf[1 << 16:]
    for fd in open_fds:
        os.close(fd)
    if pidfd is not None:
        os.close(pidfd)
    result = {"stdout": out.decode("utf-8", "replace"), "stderr": bytes(err[-err_keep:]).decode("utf-8", "replace"),
              "time_s": round(elapsed, 4)}
    cpu_used = usage.ru_utime + usage.ru_stime
    result["cpu_s"] = round(cpu_used, 4)
    message = None
    for line in bytes(res).decode("utf-8", "replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[0] == nonce and parts[1] in _CASE_STATUSES:
            message = {"status": parts[1], "detail": parts[2] if len(parts) > 2 else ""}
            break
    if killed == "output_limit":
        return result | {"status": "output_limit", "detail": f"printed more than {out_cap} bytes"}
    if killed == "timeout":
        return result | {"status": "timeout", "detail": f"ran past the {wall:.1f} s wall clock "
                                                        f"(CPU limit {lim['cpu_in_force']})"}
    if message is not None and os.WIFEXITED(status):
        return result | {"status": message["status"], "detail": message.get("detail", "")}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= math.ceil(lim["timeout_s"]) - 0.05):
            return result | {"status": "timeout", "detail": f"hit the CPU time limit ({lim['cpu_in_force']})"}
        if sig == signal.SIGKILL:  # not ours, not the CPU limit: the kernel's OOM killer
            return result | {"status": "memory", "detail": "killed (out of memory)"}
        return result | {"status": "runtime_error", "detail": f"killed by {_signal_name(sig)}"}
    code = os.WEXITSTATUS(status)
    return result | {"status": "runtime_error", "detail": f"exited with status {code} before finishing"}
