"""Inside one test case's process (a fork of the harness, _sandbox_child.py): limits, uid drop, guard, run, report.

Loaded by path by _sandbox_child.py (the child runs as `python -I -S -B` without distill on its path); stdlib only,
and as few imports as it can: every case process is a fork of the interpreter that loaded it.
"""

import ctypes
import io
import math
import os
import resource
import signal
import sys
import types

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38

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


def _prctl(option: int, arg: int) -> None:
    _check(_c().prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl {option}")


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
