"""The parent's side of the sandbox (verify/sandbox.py): the warm launcher, uid leases, what the child may see.

`_launch(job)` hands one job to the warm launcher (`_sandbox_child.py --zygote`, started once per caller process),
reads the sandbox's event lines back with a deadline and an output cap, and kills the sandbox, and with it everything
it started, when the job is done or over its time.
"""

from __future__ import annotations

import ast
import atexit
import logging
import marshal
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from distill.errors import DistillError

logger = logging.getLogger(__name__)

_CHILD = str(Path(__file__).with_name("_sandbox_child.py"))
# Sandbox uids/gids: far above any real account. One is leased per concurrent run (see _UidLease).
UID_BASE, UID_COUNT = 1_800_000, 4096
_NS_WORKDIR = "/tmp/work"


# --- uids -----------------------------------------------------------------------------------------


class _UidLease:
    """An unprivileged uid no other sandbox on this machine uses right now.

    The lease is an abstract unix socket bound to a name per uid: the kernel frees it when this process
    dies, so a crashed run never leaks a uid and two processes (two pytest runs, a benchmark) never share one.
    """

    _next = 0
    _lock = threading.Lock()

    def __init__(self):
        self.uid, self._sock = None, None

    def __enter__(self) -> int:
        with _UidLease._lock:
            start = _UidLease._next
            _UidLease._next = (start + 1) % UID_COUNT
        for k in range(UID_COUNT):
            n = (start + k) % UID_COUNT
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(f"\0distill-sandbox-uid-{UID_BASE + n}")
            except OSError:
                sock.close()
                continue
            self.uid, self._sock = UID_BASE + n, sock
            return self.uid
        raise DistillError(f"sandbox: all {UID_COUNT} sandbox uids are in use; run fewer verifiers at once")

    def __exit__(self, *exc):
        if self._sock is not None:
            self._sock.close()


def _sweep_uid(uid: int, timeout: float = 5.0) -> int:
    """SIGKILL every process whose real uid is `uid`, until none is left; returns how many were killed."""
    killed, end = 0, time.monotonic() + timeout
    while True:
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"State:") and line.split()[1] in (b"Z", b"X"):
                            break  # dead already (a zombie runs nothing); its parent reaps it
                        if line.startswith(b"Uid:"):
                            if int(line.split()[1]) == uid:
                                found.append(int(entry.name))
                            break
            except (OSError, ValueError):
                continue
        if not found:
            return killed
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        if time.monotonic() > end:
            logger.warning("sandbox: processes of uid %d survive SIGKILL (uninterruptible sleep?)", uid)
            return killed
        time.sleep(0.005)


# --- what the child may see -----------------------------------------------------------------------


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _child_sys_path() -> list[str]:
    """The interpreter's stdlib and site-packages, not the caller's source tree or cwd."""
    prefixes = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix}
    return [p for p in sys.path if p and os.path.isdir(p) and any(_under(os.path.abspath(p), q) for q in prefixes)]


def _hidden_roots() -> list[str]:
    """Folders replaced by an empty tmpfs in the child: homes, and the caller's working directory (a project
    checkout with its .env files) unless it is a system folder. The interpreter's folders inside them stay."""
    roots = ["/root", "/home"]
    cwd = os.path.realpath(os.getcwd())
    top = cwd.split("/")[1] if cwd != "/" else ""
    if top and top not in _SYSTEM_TOPS and cwd not in roots:
        roots.append(cwd)
    return roots


_SYSTEM_TOPS = {"usr", "etc", "lib", "lib32", "lib64", "bin", "sbin", "opt", "var", "dev", "sys", "proc", "run",
                "boot", "snap", "tmp", "nix", "gnu"}


def _child_env(workdir: str) -> dict[str, str]:
    # Built from nothing: the parent's variables (tokens, keys, proxies) never reach the child.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "HOME": workdir, "TMPDIR": workdir,
        "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }


# --- the seccomp filter ---------------------------------------------------------------------------

# Refused with EPERM in every case process (and test process): reading or steering other processes, new namespaces
# or mounts, kernel-wide state, and the interfaces that bypass seccomp or widen the attack surface.
_REFUSED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp", "perf_event_open", "bpf",
    "userfaultfd", "keyctl", "add_key", "request_key", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
    "mount_setattr", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl", "name_to_handle_at", "open_by_handle_at",
    "lookup_dcookie", "vhangup", "syslog",
)
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET: clone() with any of them is refused.
_NAMESPACE_BITS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
_seccomp_cache: dict = {}


def seccomp_program() -> tuple[bytes | None, str]:
    """The case processes' seccomp filter as BPF (compiled here by libseccomp through pyseccomp), and what it does;
    (None, why) where libseccomp is missing."""
    if "bpf" not in _seccomp_cache:
        _seccomp_cache["bpf"] = _compile_seccomp()
    return _seccomp_cache["bpf"]


def _compile_seccomp() -> tuple[bytes | None, str]:
    import errno
    import tempfile

    try:
        import pyseccomp as sc

        f = sc.SyscallFilter(sc.ALLOW)
        for name in _REFUSED_SYSCALLS:
            try:
                f.add_rule(sc.ERRNO(errno.EPERM), name)
            except (OSError, ValueError, RuntimeError):
                pass  # not a syscall on this architecture
        for bit in _NAMESPACE_BITS:
            f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, bit, bit))
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # its flags are out of reach: libc falls back to clone
        for call in ("socket", "socketpair"):
            f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), call, sc.Arg(0, sc.NE, 1))  # AF_UNIX only
        with tempfile.TemporaryFile() as tmp:
            f.export_bpf(tmp)
            tmp.seek(0)
            bpf = tmp.read()
    except (ImportError, OSError, RuntimeError, AttributeError) as e:
        return None, f"unavailable ({type(e).__name__}: {e}; pip install pyseccomp, and libseccomp2 from the OS)"
    return bpf, ("seccomp: EPERM for " + ", ".join(("ptrace", "process_vm_*", "unshare", "setns", "mount", "bpf",
                                                      "io_uring", "namespace flags of clone")) + "; socket families "
                 "other than AF_UNIX refused")


# --- one child ------------------------------------------------------------------------------------


@dataclass
class _Outcome:
    events: list[dict]
    stderr: str
    killed: str  # "" | "deadline" | "output_cap"
    error: str  # our side failed to start or talk to the child


class _Zygote:
    """The warm launcher (`_serve` in _sandbox_child.py): forks one sandbox per job, so that a job does not pay
    for an interpreter's start-up. One per caller process, shared by its threads, started on first use; it
    runs no untrusted code and exits when this process closes the socket or dies."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._owner = 0

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", _CHILD, "--zygote", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()], cwd="/", env=_child_env(_NS_WORKDIR), start_new_session=True,
            )
        finally:
            theirs.close()
        ours.settimeout(30.0)  # a launcher that stops answering is replaced, not waited on forever
        self._sock, self._owner = ours, os.getpid()

    def _stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._sock = self._proc = None

    def spawn(self, data: bytes, fds: list[int]) -> int:
        """Start one sandbox with this job; its stdout/stderr go to the given pipe ends (and the test processes read
        their tests from the third fd, if any). Returns its pidfd."""
        with self._lock:
            if self._owner != os.getpid():  # a forked copy of us: the zygote belongs to our parent
                self._sock = self._proc = None
            for _ in range(2):  # a zygote that died is replaced once
                if self._proc is None or self._proc.poll() is not None:
                    self._stop()
                    self._start()
                try:
                    socket.send_fds(self._sock, [len(data).to_bytes(8, "big")], fds)
                    self._sock.sendall(data)
                    reply, fds, _, _ = socket.recv_fds(self._sock, 16, 1)
                except OSError:
                    self._stop()
                    continue
                if reply == b"ok" and len(fds) == 1:
                    return fds[0]
                for fd in fds:
                    os.close(fd)
                self._stop()
            raise OSError("the sandbox launcher did not answer")

    @property
    def pid(self) -> int | None:
        """The zygote's pid while it runs (tests tell it apart from leftovers)."""
        return self._proc.pid if self._proc is not None and self._owner == os.getpid() else None

    def close(self) -> None:
        with self._lock:
            if self._owner == os.getpid():
                self._stop()


_ZYGOTE = _Zygote()
atexit.register(_ZYGOTE.close)


def _launch(job: dict, deadline_s: float, stdout_cap: int, tests: bytes = b"") -> _Outcome:
    """Run one job; `tests` (the test code of its cases, which job["cases"][i]["test"] locate) travels in a memfd
    that only the test processes read: the launcher, and so the program's processes forked from it, never do."""
    data = marshal.dumps(job)  # plain values only; the child decodes it without importing json
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    fds = [out_w, err_w]
    if tests:
        fds.append(os.memfd_create("tests"))
        view = memoryview(tests)
        while view:
            view = view[os.write(fds[-1], view):]
    try:
        pidfd = _ZYGOTE.spawn(data, fds)
    except OSError as e:
        os.close(out_r), os.close(err_r)
        return _Outcome([], "", "", f"cannot start the sandbox ({sys.executable}): {e}")
    finally:
        for fd in fds:
            os.close(fd)
    out, err, killed, init_fd = bytearray(), bytearray(), "", None
    try:
        end = time.monotonic() + deadline_s
        with selectors.DefaultSelector() as sel:
            sel.register(out_r, selectors.EVENT_READ, out)
            sel.register(err_r, selectors.EVENT_READ, err)
            while sel.get_map():
                left = end - time.monotonic()
                if left <= 0:
                    killed = "deadline"
                    break
                for key, _ in sel.select(timeout=left):
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    buf = key.data
                    buf += chunk
                    if len(err) > 1 << 16:
                        del err[:-(1 << 14)]
                if init_fd is None and b"\n" in out:
                    init_fd = _open_init(out)
                if len(out) > stdout_cap:
                    killed = "output_cap"
                    break
    finally:
        _end(pidfd, init_fd)
        os.close(out_r), os.close(err_r)
    return _Outcome(_parse_events(out), bytes(err[-4096:]).decode("utf-8", "replace"), killed, "")


def _open_init(out: bytearray) -> int | bool:
    """A pidfd of the pid-namespace init named by the first event (False when there is none or it is gone)."""
    first = _parse_events(out[:out.index(b"\n") + 1])
    if first and first[0].get("event") == "init" and isinstance(first[0].get("pid"), int):
        try:
            return os.pidfd_open(first[0]["pid"])
        except OSError:
            return False
    return False


def _end(pidfd: int, init_fd: int | bool | None) -> None:
    """Kill the launcher (done or not) and wait for it; then wait for the pid-namespace init, whose end means
    every process of that namespace is gone (the kernel kills them all when it dies)."""
    for fd in (pidfd, init_fd):
        if isinstance(fd, bool) or fd is None:
            continue
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            if not select.select([fd], [], [], 10.0)[0]:
                logger.warning("sandbox: a launcher survived SIGKILL for 10 s")
        finally:
            os.close(fd)


def _parse_events(out: bytes | bytearray) -> list[dict]:
    """The child's event lines: repr() of plain dicts, read back with literal_eval (which runs no code)."""
    events = []
    for line in bytes(out).split(b"\n"):
        if not line:
            continue
        try:
            event = ast.literal_eval(line.decode("utf-8", "surrogatepass"))
        except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError, TypeError):
            continue  # a torn last line after a kill
        if isinstance(event, dict):
            events.append(event)
    return events
