"""The test process of a functional case: it runs the gold's test code, the program runs in another process.

Loaded by path by _sandbox_child.py, which sets `_case` (the _sandbox_case module). The test code reads the program's
names through proxies: a call goes over a pipe as plain data (marshal of exact built-in types, checked again here)
and its result comes back the same way, so nothing the program defines ever runs in this process and the test's
expected values never reach the program's. An object that is not plain data comes back as an `Opaque` stand-in: it
equals only itself, has the truthiness the program reported, and does nothing else. The case passes only when the
test code runs to its end here; the program's process has no way to say so.
"""

import builtins
import os
import sys

_case = None  # the _sandbox_case module; set by _sandbox_child._load
_wire = None  # the _sandbox_wire module; set by _sandbox_child._load

_PLAIN = (type(None), bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset)


class ProgramGone(BaseException):
    """The program's process ended or broke the protocol (a BaseException: test code's `except Exception` must not
    swallow it)."""


def _check_plain(value):
    """`value` if it is plain data all the way down (marshal can also build code objects: refused)."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        t = type(v)
        if t not in _PLAIN:
            raise ProgramGone(f"the program sent a {t.__name__}")
        if t in (tuple, list, set, frozenset) and id(v) not in seen:
            seen.add(id(v))
            stack.extend(v)
        elif t is dict and id(v) not in seen:
            seen.add(id(v))
            stack.extend(v.keys())
            stack.extend(v.values())
    return value


class Opaque:
    """An object of the program's that is not plain data: truthiness only, equal only to itself."""

    __slots__ = ("ref", "truthy", "type_name")

    def __init__(self, ref: int, truthy: bool, type_name: str):
        self.ref, self.truthy, self.type_name = ref, truthy, type_name

    def __bool__(self) -> bool:
        return self.truthy

    def __repr__(self) -> str:
        return f"<{self.type_name} object of the program>"


class _Channel:
    def __init__(self, fd: int):
        self.fd = fd

    def ask(self, request):
        try:
            _wire.send_msg(self.fd, request)
            reply = _wire.recv_msg(self.fd)
        except (EOFError, OSError, ValueError, TypeError) as e:
            raise ProgramGone(f"the program's process ended ({type(e).__name__})") from None
        if not isinstance(reply, tuple) or not reply or not isinstance(reply[0], str):
            raise ProgramGone("the program broke the protocol")
        return reply


def _arg(value, channel):
    if isinstance(value, Opaque):
        return ("r", value.ref)
    if isinstance(value, Remote):
        return ("n", value.name)
    try:
        return ("v", _check_plain(value))
    except ProgramGone:
        raise TypeError(f"a {type(value).__name__} cannot be passed to the program (plain data only)") from None


def _result(reply):
    kind = reply[0]
    if kind == "v" and len(reply) == 2:
        return _check_plain(reply[1])
    if kind == "o" and len(reply) == 4 and type(reply[1]) is int and type(reply[2]) is bool:
        return Opaque(reply[1], reply[2], str(reply[3])[:100])
    if kind == "i" and len(reply) == 2 and type(reply[1]) is list:
        return iter(_check_plain(reply[1]))
    if kind == "g" and len(reply) == 4 and all(type(x) is int for x in reply[1:]):
        return range(reply[1], reply[2], reply[3] or 1)
    if kind == "e" and len(reply) == 3 and all(type(x) is str for x in reply[1:]):
        exc = getattr(builtins, reply[1], None)
        if isinstance(exc, type) and issubclass(exc, Exception) and exc.__module__ == "builtins":
            raise exc(reply[2])
        if reply[1] == "MemoryError":
            raise MemoryError(reply[2])
        raise RuntimeError(f"{reply[1]}: {reply[2]}")
    raise ProgramGone("the program broke the protocol")


class Remote:
    """One of the program's functions or classes, called over the pipe."""

    __slots__ = ("name", "channel")

    def __init__(self, name: str, channel: _Channel):
        self.name, self.channel = name, channel

    def __call__(self, *args, **kwargs):
        return _result(self.channel.ask(("call", self.name, [_arg(a, self.channel) for a in args],
                                         {str(k): _arg(v, self.channel) for k, v in kwargs.items()})))

    def __repr__(self) -> str:
        return f"<the program's {self.name}>"


def _names(code) -> set:
    out = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            out |= _names(const)
    return out


def _tester_main(job: dict, case: dict, fds: dict) -> None:
    """In the forked test process: read this case's test, confine ourselves, run it against the program's proxies,
    and tell the harness on our own pipe (fd 3) how it ended."""
    offset, length = case["test"]
    source = os.pread(fds["tests"], length, offset).decode("utf-8")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.dup2(fds["stderr"], 2)
    os.dup2(fds["result"], 3)
    os.dup2(fds["chan"], 4)
    os.closerange(5, 1 << 16)
    os.setpgid(0, 0)
    _case._confine(job, extra_processes=6)
    _case._prctl(_case.PR_SET_DUMPABLE, 0)  # the program may not read our memory (its expected values)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.path[:] = job["sys_path"]

    def report(status: str, detail: str = "") -> None:
        try:
            os.write(3, f"{status} {' '.join(detail[:500].split())}\n".encode("utf-8", "replace"))
        finally:
            os._exit(0)

    try:
        code = compile(source, "test.py", "exec", dont_inherit=True)
        prelude = compile(job["prelude"], "prompt.py", "exec", dont_inherit=True) if job["prelude"] else None
    except BaseException as e:  # noqa: BLE001 - the test is the gold's, not the model's
        report("sandbox_error", f"test code does not compile: {type(e).__name__}: {e}")
    channel = _Channel(4)
    ns = {"__name__": "__main__", "__builtins__": builtins}
    try:
        hello = _wire.recv_msg(4)
        if hello != ("ready",):
            raise ProgramGone("the program broke the protocol")
        if prelude is not None:
            exec(prelude, ns)  # the prompt's own helpers (HumanEval/32's poly): trusted, they win over the program's
        entry = job["entry_point"]
        wanted = sorted(n for n in _names(code) if n == entry or (n not in ns and not hasattr(builtins, n)))
        for name, kind in (_result(channel.ask(("describe", wanted))) if wanted else {}).items():
            if kind == ("c",):
                ns[name] = Remote(name, channel)
            elif type(kind) is tuple and len(kind) == 2 and kind[0] == "m" and type(kind[1]) is str:
                ns[name] = __import__(kind[1], fromlist=["_"])  # a module it imported (math): our own copy
            elif type(kind) is tuple and kind:
                ns[name] = _result(kind)
        exec(code, ns)
    except (EOFError, ProgramGone) as e:
        report("runtime_error", f"program_gone: {e}")
    except SystemExit as e:
        report("runtime_error", f"SystemExit({e.code!r}) during the test")
    except MemoryError:
        report("memory", "MemoryError")
    except AssertionError as e:
        _case._print_exception(e)
        report("assertion_failed", f"AssertionError: {e}"[:300])
    except BaseException as e:  # noqa: BLE001 - the test's exception is the case's verdict
        _case._print_exception(e)
        report("runtime_error", f"{type(e).__name__}: {e}"[:300])
    report("ok")
