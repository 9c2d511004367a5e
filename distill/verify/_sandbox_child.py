"""The child half of distill.verify.sandbox, run as `python -I -S -B _sandbox_child.py --zygote FD`: stdlib only.

The zygote (root, warm, no untrusted code) reads jobs (marshal, from the trusted parent) on a unix socket and
forks one launcher per job. The launcher isolates itself, then runs every test case in a forked process with
its own limits and an unprivileged uid, and writes one line per event on the job's stdout pipe: the repr()
of a dict of plain values, which the parent reads with ast.literal_eval (no code runs). The parent trusts
nothing here beyond those lines; untrusted code only ever runs in the forked case processes.

This file is the zygote, the launcher and the harness loop; the harness's side of one case is _sandbox_watch.py
and the case process itself _sandbox_case.py. Both are loaded by path (no distill package is on this interpreter's
path) before any job, so a case process starts as a fork of all three, which import as little as they can (no
json, no re, no traceback).

Process layout with namespaces: zygote -> fork per job -> launcher (root) -> unshare(net, mount, pid, ipc) ->
fork -> harness (pid 1 of the new pid namespace, root) -> fork per case -> the case (sandbox uid, rlimits).
When the harness dies the kernel kills everything left in its pid namespace; the harness dies with the
launcher, the launcher with the zygote (parent-death signals), the zygote when the parent goes away.
Without namespaces the launcher is the harness itself.
"""

import ctypes
import marshal
import os
import signal
import stat
import sys
import time
import types


def _load(name: str) -> types.ModuleType:
    """A sibling file as a module, by path: with `-I` this folder is not on sys.path, and putting it there would let
    its other files (code.py, math.py) shadow the standard library."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    module = types.ModuleType(name)
    module.__file__ = path
    with open(path, "rb") as f:
        exec(compile(f.read(), path, "exec", dont_inherit=True), module.__dict__)
    return module


_wire = _load("_sandbox_wire")
_case = _load("_sandbox_case")
_watch = _load("_sandbox_watch")
_tester = _load("_sandbox_tester")
_watch._case = _tester._case = _case
_case._wire = _tester._wire = _wire
_watch._tester = _tester
_c, _check, _prctl, _last_line = _case._c, _case._check, _case._prctl, _case._last_line
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = (
    _case.PR_SET_PDEATHSIG, _case.PR_SET_DUMPABLE, _case.PR_SET_CHILD_SUBREAPER)

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_NOATIME, MS_NODIRATIME, MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 16384, 1 << 18, 1 << 21, 1 << 24
MNT_DETACH = 2

# Mounts left as they are: /proc is replaced, /dev holds /dev/null and friends, /sys is not writable by the uid.
_KEEP_MOUNTS = ("/proc", "/dev", "/sys")
# Common modules imported before the uid drop when the interpreter's own files are unreadable to that uid
# (fallback mode only: with a mount namespace the interpreter's folder is re-exposed instead).
_PRELOAD = (
    "array", "bisect", "collections", "copy", "dataclasses", "datetime", "decimal", "fractions", "functools",
    "hashlib", "heapq", "itertools", "json", "math", "operator", "random", "re", "statistics", "string",
    "typing", "enum", "numbers", "textwrap", "unicodedata", "cmath", "queue", "abc", "contextlib", "traceback",
)


def _mount(src, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_c().mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _emit(obj: dict) -> None:
    data = (repr(obj) + "\n").encode("utf-8", "surrogatepass")
    view = memoryview(data)
    while view:
        n = os.write(1, view)
        view = view[n:]


# --- isolation ------------------------------------------------------------------------------------


def _mount_points() -> list[tuple[str, int]]:
    """(mount point, per-mount flags worth keeping) from /proc/self/mountinfo, parents first."""
    # In a user namespace these flags are locked: a remount that drops one is refused.
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "relatime": MS_RELATIME,
            "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "strictatime": MS_STRICTATIME}
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            point = parts[4].encode().decode("unicode_escape")  # \040 for spaces
            flags = sum(keep.get(o, 0) for o in parts[5].split(","))
            out.append((point, flags))
    return out


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _setup_mounts(job: dict) -> dict:
    """Read-only view of the machine, fresh /proc, private tmpfs for /tmp and /dev/shm, /root and /home hidden."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    points = _mount_points()
    for point, flags in points:
        if any(_under(point, k) for k in _KEEP_MOUNTS):
            continue
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | flags)
        except OSError:
            if point == "/":
                raise  # the one that matters; others (an already read-only bind) may refuse harmlessly
    tmp_size = max(16, 4 * job["limits"]["file_bytes"] // (1 << 20))
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_size}m,mode=0755")
    if os.path.isdir("/dev/shm"):
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=16m,mode=1777")
    hidden = []
    keep = sorted(set(job["keep"]))
    for i, root in enumerate(job["hide"]):
        if not os.path.isdir(root) or os.path.islink(root):
            continue
        inside = [p for p in keep if _under(p, root) and os.path.isdir(p)]
        inside = [p for p in inside if not any(q != p and _under(p, q) for q in inside)]
        staged = []
        for j, path in enumerate(inside):  # park what must stay visible before covering its parent
            stage = f"/tmp/.keep-{i}-{j}"
            os.mkdir(stage)
            _mount(path, stage, None, MS_BIND | MS_REC)
            staged.append((path, stage))
        _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for path, stage in staged:
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(stage, path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
            _check(_c().umount2(os.fsencode(stage), MNT_DETACH), f"umount {stage}")
            os.rmdir(stage)
        _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        hidden.append(root)
    return {"read_only": True, "hidden": hidden}


def _readable_by_others(path: str) -> bool:
    """Whether a uid with no special rights can reach and list `path` (mode bits of every component)."""
    path = os.path.realpath(path)
    parts = path.split("/")
    for k in range(1, len(parts) + 1):
        sub = "/".join(parts[:k]) or "/"
        try:
            mode = os.stat(sub).st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH or (sub == path and not mode & stat.S_IROTH):
            return False
    return True


def _make_workdir(path: str, uid, gid) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    if uid is not None:
        os.chown(path, uid, gid)
    os.chmod(path, 0o700)


# --- the harness -----------------------------------------------------------------------------------


def _harness(job: dict, info: dict) -> None:
    deadline = time.monotonic() + job["limits"]["total_timeout_s"]
    if job["isolation"] == "fallback":
        import socket  # noqa: F401  (the guard needs it, and the case's uid may not be able to read it)
    if job["uid"] is not None and job["isolation"] == "fallback" and not _readable_by_others(
        os.path.dirname(os.__file__)
    ):
        preloaded = 0
        for name in _PRELOAD:
            try:
                __import__(name)
                preloaded += 1
            except ImportError:
                pass
        info["preloaded_modules"] = preloaded
    _make_workdir(job["workdir"], job["uid"], job["gid"])
    _emit({"event": "setup", "info": info})
    if job.get("probe"):
        _emit({"event": "done"})
        return
    compile_failed = None
    for i, case in enumerate(job["cases"]):
        if compile_failed is not None:
            res = {"status": "compile_error", "detail": compile_failed, "stdout": "", "stderr": "", "time_s": 0.0}
        elif time.monotonic() >= deadline:
            res = {"status": "timeout", "detail": "the problem's total time limit ran out before this case",
                   "stdout": "", "stderr": "", "time_s": 0.0}
        else:
            res = _watch._run_case(job, case, deadline)
            if res["status"] == "compile_error":
                compile_failed = res["detail"]
        _emit({"event": "case", "i": i, **res})
    _emit({"event": "done"})


def _run_job(job: dict) -> None:
    """The launcher's part: isolate (or not), run the harness, exit. Never returns."""
    info: dict = {"isolation": job["isolation"]}
    if job["isolation"] == "namespaces":
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC
        uid, gid = os.getuid(), os.getgid()
        try:
            # Not root: a user namespace of our own, in which we are root (and the case, without capabilities).
            _check(_c().unshare(flags | (CLONE_NEWUSER if job["userns"] else 0)), "unshare")
            if job["userns"]:
                for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
        except OSError as e:
            _emit({"event": "error", "detail": str(e)})
            os._exit(0)
        job["pidns"] = True
        pid = os.fork()
        if pid == 0:
            try:
                _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # (getppid() is 0 here: the parent is outside)
                # /proc is still the parent namespace's here, so this is our pid as the caller sees it.
                _emit({"event": "init", "pid": int(os.readlink("/proc/self"))})
                _prctl(PR_SET_DUMPABLE, 0)
                info.update(_setup_mounts(job))
                info.update(network="namespace", processes="pid namespace")
                _harness(job, info)
            except BaseException:  # noqa: BLE001 - tell the parent what failed, in one line
                _emit({"event": "error", "detail": _last_line(sys.exc_info()[1])})
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        os._exit(0 if status == 0 else 1)
    job["pidns"] = False
    try:
        _prctl(PR_SET_DUMPABLE, 0)
        # Orphans (a daemonised grandchild) come to us, not to the machine's init: we kill and reap them.
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        info.update(network="audit hook", processes="uid sweep" if job["uid"] is not None else "process group")
        _harness(job, info)
    except BaseException:  # noqa: BLE001
        _emit({"event": "error", "detail": _last_line(sys.exc_info()[1])})
    os._exit(0)


def _recv_exact(sock, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _serve(control_fd: int) -> None:
    """The zygote: a warm interpreter that forks one launcher per job, so no job pays Python's start-up.

    Request: 8-byte length + marshal(job), with the job's stdout and stderr pipe ends attached (SCM_RIGHTS).
    Reply: b"ok" with a pidfd of the launcher attached; the caller watches and kills the launcher through it.
    The zygote itself never runs untrusted code and ends when the caller closes the socket (or dies).
    """
    import socket

    sock = socket.socket(fileno=control_fd)
    zygote = os.getpid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # launchers are reaped by the kernel; pidfds still report exit
    while True:
        try:
            header, fds, _, _ = socket.recv_fds(sock, 8, 3)
            if not header:
                os._exit(0)
            header += _recv_exact(sock, 8 - len(header))
            job = marshal.loads(_recv_exact(sock, int.from_bytes(header, "big")))
        except (EOFError, OSError):
            os._exit(0)
        if len(fds) not in (2, 3):
            for fd in fds:
                os.close(fd)
            socket.send_fds(sock, [b"no"], [])
            continue
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() != zygote:
                    os._exit(1)
                os.setsid()
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(fds[0], 1)
                os.dup2(fds[1], 2)
                if len(fds) == 3:  # the tests: read only by the test processes, never by us
                    os.dup2(fds[2], 3)
                os.closerange(len(fds) + 1, 1 << 16)
                job["tests_fd"] = 3 if len(fds) == 3 else None
                os.environ.update(HOME=job["workdir"], TMPDIR=job["workdir"])
            except BaseException:  # noqa: BLE001
                os._exit(1)
            _run_job(job)
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        try:
            socket.send_fds(sock, [b"ok"], [pidfd])
        finally:
            os.close(pidfd)


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] != "--zygote":
        sys.exit("usage: _sandbox_child.py --zygote FD (started by distill.verify.sandbox)")
    _serve(int(sys.argv[2]))


if __name__ == "__main__":
    main()
