"""Plain data between a case's program process and its test process: length-prefixed marshal messages, and the
server in the program's process that answers the test process's calls (values reduced to exact built-in types).

Loaded by path by _sandbox_child.py (stdlib only), like its siblings; _sandbox_case and _sandbox_tester use it."""

import marshal
import os
import types


# --- plain data over a pipe ------------------------------------------------------------------------

_MAX_MESSAGE = 64 << 20


def send_msg(fd: int, obj) -> None:
    data = marshal.dumps(obj)
    view = memoryview(len(data).to_bytes(4, "big") + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def recv_msg(fd: int):
    n = int.from_bytes(_read_exact(fd, 4), "big")
    if n > _MAX_MESSAGE:
        raise ValueError(f"a message of {n} bytes (over {_MAX_MESSAGE})")
    return marshal.loads(_read_exact(fd, n))


_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_BASES = (int, float, complex, str, bytes, tuple, list, dict, set, frozenset)


def _to_plain(v, depth: int = 0):
    """`v` as plain data of exact built-in types: a subclass of one becomes that type (its own __eq__ is gone)."""
    if depth > 100:
        raise ValueError("nested too deep")
    t = type(v)
    if t in _SCALARS:
        return v
    if t is list or t is tuple or t is set or t is frozenset:
        return t(_to_plain(x, depth + 1) for x in v)
    if t is dict:
        return {_to_plain(k, depth + 1): _to_plain(x, depth + 1) for k, x in v.items()}
    for base in _BASES:
        if isinstance(v, base):
            if base is dict:
                return {_to_plain(k, depth + 1): _to_plain(x, depth + 1) for k, x in dict.items(v)}
            return _to_plain(base(v), depth + 1)
    raise TypeError(t.__name__)


class _Server:
    """The program's side of a functional case: answers the test process's calls with plain data.

    Requests: ("describe", names) and ("call", name, args, kwargs); an argument is ("v", value), ("r", ref) (an
    object an earlier call returned) or ("n", name) (one of the program's functions). Replies: ("v", value),
    ("o", ref, truthy, type name) for an object that is not plain data, ("i", items) for an iterator, ("g", start,
    stop, step) for a range, ("e", exception type name, message).
    """

    def __init__(self, ns: dict, entry: str, chan: int):
        self.ns, self.entry, self.chan, self.refs = ns, entry, chan, []

    def resolve(self, name: str):
        target = self.ns.get(name)
        if name == self.entry and not callable(target) and isinstance(self.ns.get("Solution"), type):
            target = getattr(self.ns["Solution"](), name)  # LeetCode style
        return target

    def describe(self, names) -> dict:
        out = {}
        for name in names:
            if not isinstance(name, str) or (name not in self.ns and name != self.entry):
                continue
            obj = self.resolve(name)
            if isinstance(obj, types.ModuleType):
                out[name] = ("m", obj.__name__)
            elif callable(obj):
                out[name] = ("c",)
            elif obj is not None or name in self.ns:
                out[name] = self.encode(obj)
        return out

    def arg(self, a):
        if a[0] == "r":
            return self.refs[a[1]]
        if a[0] == "n":
            return self.resolve(a[1])
        return a[1]

    def encode(self, v):
        try:
            plain = _to_plain(v)
            marshal.dumps(plain)
            return ("v", plain)
        except (TypeError, ValueError, RecursionError):
            pass
        t = type(v)
        if t is range:
            return ("g", v.start, v.stop, v.step)
        if hasattr(t, "__next__") and t.__module__ in ("builtins", "itertools"):  # map, filter, a generator, ...
            items = []
            for x in v:
                items.append(_to_plain(x))
                if len(items) > 1_000_000:
                    raise ValueError("an iterator of over a million items")
            return ("i", items)
        self.refs.append(v)
        try:
            truthy = bool(v)
        except Exception:  # noqa: BLE001
            truthy = True
        return ("o", len(self.refs) - 1, truthy, t.__name__[:100])

    def serve(self) -> None:
        send_msg(self.chan, ("ready",))
        while True:
            try:
                msg = recv_msg(self.chan)
            except (EOFError, OSError):
                return
            try:
                if msg[0] == "describe":
                    reply = ("v", self.describe(msg[1]))
                else:
                    target = self.resolve(msg[1])
                    reply = self.encode(target(*[self.arg(a) for a in msg[2]],
                                               **{k: self.arg(a) for k, a in msg[3].items()}))
            except BaseException as e:  # noqa: BLE001 - the test process decides what an exception means
                if isinstance(e, MemoryError):
                    reply = ("e", "MemoryError", "")
                else:
                    try:
                        reply = ("e", type(e).__name__[:100], str(e)[:300])
                    except BaseException:  # noqa: BLE001
                        reply = ("e", "Exception", "")
            send_msg(self.chan, reply)
