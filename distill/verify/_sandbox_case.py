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


# --- privileges and the seccomp filter -------------------------------------------------------------

SECBIT_NOROOT, SECBIT_NOROOT_LOCKED, SECBIT_NO_SETUID_FIXUP, SECBIT_NO_SETUID_FIXUP_LOCKED = 1, 2, 4, 8
PR_SET_SECUREBITS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 28, 24, 47, 4
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """As root of our own user namespace: give up every capability for good (exec of a root-owned file included)."""
    _prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP
           | SECBIT_NO_SETUID_FIXUP_LOCKED)
    for cap in range(64):
        if _c().prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    _c().prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3, all zero
    _check(_c().capset(ctypes.byref(header), data), "capset")


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _load_seccomp(bpf: bytes) -> None:
    """Install the filter the parent compiled with libseccomp (sandbox_host._seccomp_program); needs no_new_privs."""
    n = len(bpf) // 8
    prog = (_SockFilter * n).from_buffer_copy(bpf)
    fprog = _SockFprog(n, ctypes.cast(prog, ctypes.POINTER(_SockFilter)))
    _check(_c().prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0), "seccomp")


def _set_limits(job: dict, extra_processes: int) -> None:
    lim = job["limits"]
    cpu = max(1, math.ceil(lim["timeout_s"]))
    memory = lim["memory_mb"] << 20
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_bytes"], lim["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["open_files"], lim["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if job["uid"] is not None:  # root: the leased uid runs nothing but this case
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["processes"], lim["processes"]))
    elif job["userns"]:  # our own user namespace: counts its processes only (harness, test process, the case's init)
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["processes"] + extra_processes,) * 2)
    elif os.getuid() != 0:  # fallback: RLIMIT_NPROC counts all of our uid's processes
        nproc = len(_uid_processes(os.getuid())) + lim["processes"]
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _confine(job: dict, extra_processes: int) -> None:
    """Limits, then the unprivileged uid (root) or no capabilities (our own user namespace), then seccomp."""
    try:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError:
        pass
    _set_limits(job, extra_processes)
    if job["uid"] is not None:
        os.setgroups([])
        os.setgid(job["gid"])
        os.setuid(job["uid"])
        _prctl(PR_SET_DUMPABLE, 1)  # /proc/self (and so /dev/stdin) belongs to the case again
    elif job["userns"]:
        _drop_capabilities()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # set after the uid change, which clears it: dies with its parent
    if job.get("seccomp") and not job.get("no_seccomp"):
        _load_seccomp(job["seccomp"])


_wire = None  # the _sandbox_wire module (plain data over a pipe); set by _sandbox_child


# --- one test case ---------------------------------------------------------------------------------


def _case_main(job: dict, case: dict, fds: dict) -> None:
    """In the forked case process: its own pid and mount namespace (with namespaces), then the program."""
    os.setpgid(0, 0)
    for target, name in ((0, "stdin"), (1, "stdout"), (2, "stderr"), (3, "result"), (4, "chan")):
        if name in fds:
            os.dup2(fds[name], target)
    os.closerange(5 if "chan" in fds else 4, 1 << 16)
    if not job["pidns"] or not job.get("case_pidns", True):
        _program(job, case)
    # A pid namespace of its own: the program sees no other process (not the test, not the harness), and
    # every process it starts dies with its first one.
    _check(_c().unshare(CLONE_NEWPID | CLONE_NEWNS), "unshare")
    pid = os.fork()
    if pid == 0:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        tmp_size = max(16, 4 * job["limits"]["file_bytes"] // (1 << 20))
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_size}m,mode=0755")
        if os.path.isdir("/dev/shm"):
            _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=16m,mode=1777")
        os.makedirs(job["workdir"], mode=0o700, exist_ok=True)
        if job["uid"] is not None:
            os.chown(job["workdir"], job["uid"], job["gid"])
        # We are the namespace's init, which ignores signals it has no handler for (SIGXCPU, a SIGTERM the program
        # sends itself): the program runs in a child of ours, whose end ends the namespace.
        program = os.fork()
        if program == 0:
            _program(job, case)
        status = _wait_for(program, any_child=True)
        os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    code = os.WEXITSTATUS(_wait_for(pid, any_child=False))
    if code > 128:  # end the way the program ended, so that the harness can tell a CPU limit from a crash
        signal.signal(code - 128, signal.SIG_DFL)
        os.kill(os.getpid(), code - 128)
    os._exit(code)


def _wait_for(pid: int, any_child: bool) -> int:
    """`pid`'s wait status (as init, also reaping the orphans that come to us meanwhile)."""
    while True:
        try:
            got, status = os.waitpid(-1 if any_child else pid, 0)
        except ChildProcessError:
            os._exit(70)
        except InterruptedError:
            continue
        if got == pid:
            return status


def _mount(src, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_c().mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _program(job: dict, case: dict) -> None:
    """Confine this process, run the program and, for a functional case, serve the test process's calls. Exit
    status 0 means it ran to its end; a failure is also told on fd 3 (one line; only ever a failure: this process
    can say nothing that makes a case pass)."""
    _confine(job, extra_processes=6)
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
    memory_msg = b"memory MemoryError\n"  # pre-encoded: after a MemoryError there may be no room to build one
    served = case.get("test") is not None

    def end(status: str, detail: str = "") -> None:
        try:
            for s in {id(stdout): stdout, id(sys.stdout): sys.stdout}.values():
                s.flush()
        except BaseException:  # noqa: BLE001 - a closed or replaced stdout must not hide the verdict
            pass
        if status == "ok":
            os._exit(0)
        one_line = " ".join(detail[:500].split())
        msg = memory_msg if status == "memory" else f"{status} {one_line}\n".encode("utf-8", "replace")
        try:
            os.write(3, msg)
        finally:
            os._exit(1)

    if job["isolation"] == "fallback":
        _install_guard(job["workdir"])
    main = types.ModuleType("__main__")
    main.__file__ = "solution.py"
    sys.modules["__main__"] = main
    sys.argv = ["solution.py"]
    sys.path[:] = job["sys_path"]
    try:
        code = compile(job["program"], "solution.py", "exec", dont_inherit=True)
    except MemoryError:
        end("memory")
    except SyntaxError as e:
        end("compile_error", f"{type(e).__name__}: {e.msg} (line {e.lineno})")
    except (ValueError, OverflowError, RecursionError) as e:
        end("compile_error", f"{type(e).__name__}: {e}")
    try:
        exec(code, main.__dict__)
    except SystemExit as e:
        if not served and e.code in (None, 0):
            end("ok")
        # A program that exits before its tests ran has not passed them (sys.exit(0) is a known reward hack).
        end("runtime_error", f"SystemExit({e.code!r}) during the program")
    except MemoryError:
        end("memory")
    except BaseException as e:  # noqa: BLE001 - anything the program raises is its verdict
        _print_exception(e)
        end("runtime_error", f"{type(e).__name__}: {e}"[:300])
    if not served:
        end("ok")
    try:
        stdout.flush()
    except BaseException:  # noqa: BLE001
        pass
    try:
        _wire._Server(main.__dict__, job["entry_point"], 4).serve()
    except BaseException:  # noqa: BLE001 - the test process sees the pipe close and fails the case
        pass
    os._exit(0)


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
