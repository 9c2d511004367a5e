"""The child half of distill.verify.sandbox, run as `python -I -S -B _sandbox_child.py --zygote FD`: stdlib only.

The zygote (root, warm, no untrusted code) reads jobs (marshal, from the trusted parent) on a unix socket and
forks one launcher per job. The launcher isolates itself, then runs every test case in a forked process with
its own limits and an unprivileged uid, and writes one line per event on the job's stdout pipe: the repr()
of a dict of plain values, which the parent reads with ast.literal_eval (no code runs). The parent trusts
nothing here beyond those lines; untrusted code only ever runs in the forked case processes. This module
imports as little as it can (no json, no re, no traceback): a case process starts as a fork of it.

Process layout with namespaces: zygote -> fork per job -> launcher (root) -> unshare(net, mount, pid, ipc) ->
fork -> harness (pid 1 of the new pid namespace, root) -> fork per case -> the case (sandbox uid, rlimits).
When the harness dies the kernel kills everything left in its pid namespace; the harness dies with the
launcher, the launcher with the zygote (parent-death signals), the zygote when the parent goes away.
Without namespaces the launcher is the harness itself.
"""

import ctypes
import io
import marshal
import math
import os
import resource
import select
import signal
import stat
import sys
import time
import types

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38

# Mounts left as they are: /proc is replaced, /dev holds /dev/null and friends, /sys is not writable by the uid.
_KEEP_MOUNTS = ("/proc", "/dev", "/sys")
# Common modules imported before the uid drop when the interpreter's own files are unreadable to that uid
# (fallback mode only: with a mount namespace the interpreter's folder is re-exposed instead).
_PRELOAD = (
    "array", "bisect", "collections", "copy", "dataclasses", "datetime", "decimal", "fractions", "functools",
    "hashlib", "heapq", "itertools", "json", "math", "operator", "random", "re", "statistics", "string",
    "typing", "enum", "numbers", "textwrap", "unicodedata", "cmath", "queue", "abc", "contextlib", "traceback",
)

# What a case process may report about itself (with the nonce); timeouts and limits are decided here.
_CASE_STATUSES = ("ok", "compile_error", "runtime_error", "assertion_failed", "memory", "sandbox_error")

_libc = None


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(src, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_c().mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _prctl(option: int, arg: int) -> None:
    _check(_c().prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl {option}")


def _emit(obj: dict) -> None:
    data = (repr(obj) + "\n").encode("utf-8", "surrogatepass")
    view = memoryview(data)
    while view:
        n = os.write(1, view)
        view = view[n:]


# --- isolation ------------------------------------------------------------------------------------


def _mount_points() -> list[tuple[str, int]]:
    """(mount point, per-mount flags worth keeping) from /proc/self/mountinfo, parents first."""
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "relatime": MS_RELATIME}
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


# --- the fallback guard (no namespaces): refuse what the kernel would otherwise allow ---------------


def _install_guard(workdir: str) -> None:
    """An audit hook in the case process: no sockets but AF_UNIX ones, no writes outside `workdir`, no exec/ctypes.

    Weaker than namespaces (C extensions that make syscalls directly are not seen), hence only a fallback.
    """
    import socket as _socket

    root = os.path.realpath(workdir)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    path_events = {
        "os.remove", "os.rename", "os.replace", "os.mkdir", "os.rmdir", "os.chmod", "os.chown", "os.link",
        "os.symlink", "os.truncate", "os.utime", "os.chflags", "os.lchflags", "os.mkfifo", "os.mknod",
        "shutil.rmtree", "shutil.copyfile", "shutil.move",
    }
    refused = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.forkpty",
               "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.setuid", "pty.spawn"}
    realpath, fspath = os.path.realpath, os.fspath

    def inside(p) -> bool:
        if isinstance(p, int):
            return True  # an fd already open
        try:
            full = realpath(fspath(p))
        except (TypeError, ValueError):
            return False
        if isinstance(full, bytes):
            full = os.fsdecode(full)
        return full == root or full.startswith(root + "/") or full in ("/dev/null",)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(flags, int) and flags & write_flags) or (
                isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing outside the working directory is refused: {path!r}")
        elif event in path_events:
            for p in args[:2]:
                if isinstance(p, (str, bytes, os.PathLike)) and not inside(p):
                    raise PermissionError(f"sandbox: {event} outside the working directory is refused")
        elif event == "socket.__new__":
            if args[1] != _socket.AF_UNIX:
                raise PermissionError("sandbox: network access is refused (no network namespace on this machine)")
        elif event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"):
            addr = args[1]
            if isinstance(addr, (str, bytes)) and addr[:1] not in ("\0", b"\0"):
                raise PermissionError("sandbox: unix sockets on the filesystem are refused")
        elif event in refused:
            raise PermissionError(f"sandbox: {event} is refused (no namespaces on this machine)")

    sys.addaudithook(hook)


# --- one test case ---------------------------------------------------------------------------------


def _case_main(job: dict, case: dict, fds: dict, nonce: str) -> None:
    """In the forked case process: drop to the sandbox uid under rlimits, run the program, report."""
    lim = job["limits"]
    os.setpgid(0, 0)
    for target, fd in ((0, fds["stdin"]), (1, fds["stdout"]), (2, fds["stderr"]), (3, fds["result"])):
        os.dup2(fd, target)
    os.closerange(4, 1 << 16)
    try:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError:
        pass
    cpu = max(1, math.ceil(lim["timeout_s"]))
    memory = lim["memory_mb"] << 20
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_bytes"], lim["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if job["uid"] is None and os.getuid() != 0:
        # Not root: RLIMIT_NPROC counts all of our uid's processes, so allow what runs already plus the limit.
        nproc = len(_uid_processes(os.getuid())) + lim["processes"]
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if job["uid"] is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["processes"], lim["processes"]))
        os.setgroups([])
        os.setgid(job["gid"])
        os.setuid(job["uid"])
        _prctl(PR_SET_DUMPABLE, 1)  # /proc/self (and so /dev/stdin) belongs to the case again
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # set after the uid change, which clears it: dies with the harness
    os.chdir(job["workdir"])
    os.umask(0o077)

    # Fresh text streams on the new fds (the inherited ones buffer the harness's own stdin/stdout).
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8", errors="replace")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "w", closefd=False), 1 << 16), encoding="utf-8", errors="replace")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True)
    stdout = sys.stdout
    # Pre-encoded: after a MemoryError there may be no room to build a message.
    memory_msg = f"{nonce} memory MemoryError\n".encode()

    def report(status: str, detail: str = "") -> None:
        try:
            for s in {id(stdout): stdout, id(sys.stdout): sys.stdout}.values():
                s.flush()
        except BaseException:  # noqa: BLE001 - a closed or replaced stdout must not hide the verdict
            pass
        one_line = " ".join(detail[:500].split())
        msg = memory_msg if status == "memory" else f"{nonce} {status} {one_line}\n".encode("utf-8", "replace")
        try:
            os.write(3, msg)
        finally:
            os._exit(0)

    if job["isolation"] == "fallback":
        _install_guard(job["workdir"])
    main = types.ModuleType("__main__")
    main.__file__ = "solution.py"
    sys.modules["__main__"] = main
    sys.argv = ["solution.py"]
    sys.path[:] = job["sys_path"]
    then = case.get("then")
    try:
        code = compile(job["program"], "solution.py", "exec", dont_inherit=True)
    except MemoryError:
        report("memory")
    except SyntaxError as e:
        report("compile_error", f"{type(e).__name__}: {e.msg} (line {e.lineno})")
    except (ValueError, OverflowError, RecursionError) as e:
        report("compile_error", f"{type(e).__name__}: {e}")
    try:
        then_code = compile(then, "test.py", "exec", dont_inherit=True) if then else None
    except BaseException as e:  # noqa: BLE001 - the test is the gold's, not the model's
        report("sandbox_error", f"test code does not compile: {type(e).__name__}: {e}")
    phase = "program"
    try:
        exec(code, main.__dict__)
        if then_code is not None:
            phase = "test"
            exec(then_code, main.__dict__)
    except SystemExit as e:
        if then_code is None and e.code in (None, 0):
            report("ok")
        # A program that exits before its tests ran has not passed them (sys.exit(0) is a known reward hack).
        report("runtime_error", f"SystemExit({e.code!r}) during the {phase}")
    except MemoryError:
        report("memory")
    except AssertionError as e:
        _print_exception(e)
        report("assertion_failed" if phase == "test" else "runtime_error", f"AssertionError: {e}"[:300])
    except BaseException as e:  # noqa: BLE001 - anything the program raises is its verdict
        _print_exception(e)
        report("runtime_error", f"{type(e).__name__}: {e}"[:300])
    report("ok")


def _print_exception(e: BaseException) -> None:
    try:  # the interpreter's own printer: no traceback module to import (or to be unable to read)
        sys.__excepthook__(type(e), e, e.__traceback__)
    except BaseException:  # noqa: BLE001 - a broken stderr must not hide the verdict
        pass


def _last_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip().splitlines()[-1][:300]


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


def _uid_processes(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is `uid`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"State:") and line.split()[1] in (b"Z", b"X"):
                        break  # dead already; its parent reaps it
                    if line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid:
                            found.append(int(name))
                        break
        except (OSError, ValueError):
            continue
    return found


def _sweep_uid(uid: int) -> None:
    """SIGKILL every process whose real uid is `uid` until none is left (they may have left our group).

    Not kill(-1) as that uid: it reports success even when every target refused, so it cannot say "done".
    """
    for _ in range(2000):
        found = _uid_processes(uid)
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
            _case_main(job, case, {"stdin": stdin_fd, "stdout": out_w, "stderr": err_w, "result": res_w}, nonce)
        except BaseException:  # noqa: BLE001 - our own setup failed: say so on the result pipe (fd 3 by now)
            try:
                os.write(3, f"{nonce} sandbox_error case setup: {_last_line(sys.exc_info()[1])}\n".encode())
            except BaseException:  # noqa: BLE001
                pass
        os._exit(70)
    for fd in (stdin_fd, out_w, err_w, res_w):
        os.close(fd)
    wall = min(2 * lim["timeout_s"] + 1, max(0.0, deadline - start))
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
    message = None
    for line in bytes(res).decode("utf-8", "replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[0] == nonce and parts[1] in _CASE_STATUSES:
            message = {"status": parts[1], "detail": parts[2] if len(parts) > 2 else ""}
            break
    if killed == "output_limit":
        return result | {"status": "output_limit", "detail": f"printed more than {out_cap} bytes"}
    if killed == "timeout":
        return result | {"status": "timeout", "detail": f"ran past the {wall:.1f} s wall clock"}
    if message is not None and os.WIFEXITED(status):
        return result | {"status": message["status"], "detail": message.get("detail", "")}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= math.ceil(lim["timeout_s"]) - 0.05):
            limit = math.ceil(lim["timeout_s"])
            return result | {"status": "timeout", "detail": f"hit the CPU time limit ({limit} s)"}
        if sig == signal.SIGKILL:  # not ours, not the CPU limit: the kernel's OOM killer
            return result | {"status": "memory", "detail": "killed (out of memory)"}
        return result | {"status": "runtime_error", "detail": f"killed by {_signal_name(sig)}"}
    code = os.WEXITSTATUS(status)
    return result | {"status": "runtime_error", "detail": f"exited with status {code} before finishing"}


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
            res = _run_case(job, case, deadline)
            if res["status"] == "compile_error":
                compile_failed = res["detail"]
        _emit({"event": "case", "i": i, **res})
    _emit({"event": "done"})


def _run_job(job: dict) -> None:
    """The launcher's part: isolate (or not), run the harness, exit. Never returns."""
    info: dict = {"isolation": job["isolation"]}
    if job["isolation"] == "namespaces":
        try:
            _check(_c().unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
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
            header, fds, _, _ = socket.recv_fds(sock, 8, 2)
            if not header:
                os._exit(0)
            header += _recv_exact(sock, 8 - len(header))
            job = marshal.loads(_recv_exact(sock, int.from_bytes(header, "big")))
        except (EOFError, OSError):
            os._exit(0)
        if len(fds) != 2:
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
                os.closerange(3, 1 << 16)
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
