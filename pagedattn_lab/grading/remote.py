"""One end of the grader's channel: requests to the other process, answers to its requests.

Under the grader, a check runs in the judge (the grader's own process) and the learner's
code runs in the submission's sandbox. The check holds `Remote` stand-ins (proxies.py) for
the learner's class, function or instance; using one sends a request that the sandbox's
`Peer` answers by running the learner's code there, with plain data (wire.py) or a handle
when the answer is not data. When a check hands the learner one of its own objects (a
BlockAllocator, a PagedKVCache, the `kv_for` callback), the learner gets a stand-in, and
its calls come back to the judge, which shares only what `proxies.shareable` allows
(`Peer(strict=True)`). Lists, dicts, records and arrays passed to a learner's function
are copied there and, if the learner changed them in place, copied back, so
`table.extend(...)` works as in the notebook.
Exceptions travel as (type name, message, plain-data attributes) and come back as the
same class when it is a builtin or one of the package's, else as a same-named subclass of
the nearest one; an exception the judge raised keeps its identity across the round trip.
"""
from __future__ import annotations

import builtins
import contextlib
import itertools
import keyword
import signal
import threading
import time
import types

import numpy as np

from . import wire
from .proxies import SPECIALS, Remote, RemoteCallable, copy_back, shareable
from .wire import ChannelClosed, ProtocolError

MAX_HANDLES = 200_000
MAX_TEXT = 20_000
_BUILTIN_ERRORS = [c for c in vars(builtins).values()
                   if isinstance(c, type) and issubclass(c, Exception)
                   and c not in (StopIteration, StopAsyncIteration)]


def _package_errors() -> list[type]:
    from ..cpu import errors  # noqa: PLC0415 - pure Python, no compiler involved
    from ..paging import OutOfPagesError  # noqa: PLC0415
    from .report import CaseTimeout, Mismatch, NotAttempted  # noqa: PLC0415
    return [OutOfPagesError, CaseTimeout, Mismatch, NotAttempted,
            *(getattr(errors, name) for name in errors.__all__)]


class RemoteError(Exception):
    """Base of the same-named stand-ins for exception classes that only the sender knows."""


def _text(value) -> str:
    text = str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + " [...]"


class Peer:
    """One end of the conversation: answers the other end's requests, sends its own."""

    def __init__(self, channel, *, strict: bool, call_timeout: float | None = None,
                 services: dict | None = None):
        self.channel, self.strict, self.call_timeout = channel, strict, call_timeout
        self.own_key, self.peer_key = ("$g", "$s") if strict else ("$s", "$g")
        self.handles: dict[int, tuple[object, bool]] = {}   # handle -> (object, instance?)
        self.services = dict(services or {})   # op -> fn(peer, header, blobs) -> value
        # around running the other side's request: guard(seconds the requester still waits)
        self.guard = lambda limit: contextlib.nullcontext()
        self.on_event = lambda header, blobs: None
        self.queue: list = []       # requests that arrived while a call of ours was running
        self.busy = 0
        self._ids = itertools.count(1)
        self._handle_ids = itertools.count(1)
        self._raised: dict[int, BaseException] = {}
        self._classes: dict[str, type] = {}
        self._registry = {c.__name__: c for c in _BUILTIN_ERRORS + _package_errors()}

    # -- handles ---------------------------------------------------------------------------
    def export(self, obj) -> dict:
        """The handle marker for one of our objects (the judge refuses what it keeps)."""
        instance = True
        if self.strict:
            kind = shareable(obj)
            if kind is None:
                raise TypeError(f"the grader does not share {type(obj).__name__} objects")
            instance = kind == "instance"
        if len(self.handles) >= MAX_HANDLES:
            raise ProtocolError("too many objects")
        handle = next(self._handle_ids)
        self.handles[handle] = (obj, instance)
        return {self.own_key: handle, "type": type(obj).__name__[:80],
                "callable": bool(callable(obj))}

    def clear_handles(self) -> None:
        self.handles.clear()
        self._raised.clear()

    def _own(self, marker) -> tuple[object, bool]:
        entry = self.handles.get(marker.get(self.own_key))
        if entry is None:   # e.g. kept from an earlier check: an error, not a broken channel
            raise ReferenceError("that object of the other process no longer exists")
        return entry

    def _ref(self, args=()):
        def ref(obj, early):
            if early:
                if isinstance(obj, Remote) and obj._peer is self:
                    return {self.peer_key: obj._handle}
                for i, arg in enumerate(args):
                    if obj is arg and not isinstance(arg, (int, float, str, type(None))):
                        return {"$arg": i}
                return None
            return self.export(obj)
        return ref

    def _deref(self, args=(), allow_remote=True):
        def deref(marker):
            if self.own_key in marker:
                return self._own(marker)[0]
            if "$arg" in marker:
                i = marker["$arg"]
                if type(i) is not int or not 0 <= i < len(args):
                    raise ProtocolError("bad argument reference")
                return args[i]
            if not allow_remote:
                raise TypeError("the grader's objects take plain data (numbers, lists, "
                                "arrays), not objects of the notebook")
            handle = marker.get(self.peer_key)
            if type(handle) is not int:
                raise ProtocolError("bad handle")
            cls = RemoteCallable if marker.get("callable") is True else Remote
            return cls(self, handle, str(marker.get("type", "?"))[:80])
        return deref

    # -- sending ----------------------------------------------------------------------------
    def event(self, name: str, **fields) -> None:
        tree, blobs = wire.encode(fields, self._ref())
        self.channel.send({"t": "ev", "ev": name, "data": tree}, blobs)

    def request(self, op: str, *, target=None, **fields):
        """Send a request and wait for its answer, serving the other side's requests."""
        rid = next(self._ids)
        if not self.strict and "args" in fields:   # the judge's objects take plain data:
            fields["args"] = [_plain(a) for a in fields["args"]]   # a deque goes as a list
        args = tuple(fields.get("args", ()))
        if target is not None:
            fields["target"] = target
        tree, blobs = wire.encode(fields, self._ref())
        header = {"t": "req", "id": rid, "op": op, "fields": tree}
        limit = _time_left()
        if limit:   # a case's time limit runs here: the other side stops with it
            header["limit"] = limit
        self.channel.send(header, blobs, deadline=self._deadline())
        while True:
            while self.queue and not self.busy:
                self.serve(*self.queue.pop(0))
            try:
                header, blobs = self.channel.recv(self._deadline())
            except TimeoutError:
                self.channel.close()
                raise ChannelClosed("the submission stopped answering") from None
            kind = header.get("t")
            if kind == "rep" and header.get("id") == rid:
                return self._answer(header, blobs, args)
            if kind == "req":
                if self.busy and not self.strict:
                    self.queue.append((header, blobs))   # judge's next call: after this one
                else:
                    self.serve(header, blobs)
            elif kind == "ev":
                self.on_event(header, blobs)
            # a reply to an older request (one a case time limit abandoned): dropped

    def _deadline(self):
        return None if self.call_timeout is None else time.monotonic() + self.call_timeout

    def _answer(self, header, blobs, args):
        if "exc" in header:
            raise self.exception(header["exc"], blobs)
        value = wire.decode(header.get("value"), blobs, self._deref(args))
        for key, tree in (header.get("back") or {}).items():
            i = int(key) if str(key).isdigit() else -1
            if 0 <= i < len(args):
                copy_back(args[i], wire.decode(tree, blobs, self._deref(args)))
        return value

    # -- serving ----------------------------------------------------------------------------
    def serve(self, header, blobs) -> None:
        """Answer one request of the other side."""
        rid = header.get("id")
        self.busy += 1
        try:
            value, back, args = self._handle(header, blobs)
            reply = {"t": "rep", "id": rid}
            tree, out = wire.encode(value, self._ref(args))
            reply["value"] = tree
            if back:
                reply["back"] = {}
                for i, before in back.items():
                    after, extra = wire.encode(args[i], self._ref())
                    if (after, extra) != before:   # only what the learner's code changed
                        shift = len(out)
                        out += extra
                        reply["back"][str(i)] = _shift_blobs(after, shift)
            self.channel.send(reply, out, deadline=self._deadline())
        except (ChannelClosed, ProtocolError):
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure is the answer
            if self.strict and isinstance(exc, (KeyboardInterrupt, self._registry["CaseTimeout"])):
                raise   # the judge's own time limit: the case ends here, not in the sandbox
            self.channel.send({"t": "rep", "id": rid, "exc": self.describe(exc)},
                              deadline=self._deadline())
        finally:
            self.busy -= 1

    def _handle(self, header, blobs):
        op = header.get("op")
        limit = header.get("limit")
        limit = float(limit) if type(limit) in (int, float) and limit > 0 else None
        if op in self.services:
            with self.guard(limit):
                return self.services[op](self, header, blobs), {}, ()
        if op not in ("getattr", "call", "special"):
            raise ProtocolError(f"unknown request {op!r}")
        fields = wire.decode(header.get("fields"), blobs,
                             self._deref(allow_remote=not self.strict))
        obj, instance = self._own(_target_marker(header, self.own_key))
        with self.guard(limit):
            return self._run(op, obj, instance, fields)

    def _run(self, op, obj, instance, fields):
        if op == "getattr":
            name = fields.get("name")
            if not isinstance(name, str) or (self.strict and (name.startswith("_")
                                                               or not instance)):
                raise AttributeError(f"the grader does not share the attribute {name!r}")
            return getattr(obj, name), {}, ()
        if op == "special":
            fn = SPECIALS.get(fields.get("name")) if not self.strict else None
            if fn is None:
                raise TypeError("that operation is not supported on the grader's objects")
            return fn(obj, *fields.get("args", [])), {}, ()
        args, kwargs = list(fields.get("args", [])), fields.get("kwargs", {})
        if not callable(obj) or not isinstance(kwargs, dict) or \
                not all(isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k)
                        for k in kwargs):
            raise TypeError("not callable with these arguments")
        back = {}
        if not self.strict:   # the learner may change a list or an array in place
            for i, arg in enumerate(args):
                if isinstance(arg, (list, dict, np.ndarray, types.SimpleNamespace)):
                    back[i] = wire.encode(arg, self._ref())
        return obj(*args, **kwargs), back, tuple(args)

    # -- exceptions -------------------------------------------------------------------------
    def describe(self, exc: BaseException) -> dict:
        attrs = {}
        for key, value in list(vars(exc).items())[:40] if hasattr(exc, "__dict__") else []:
            if key.startswith("_") or not key.isidentifier():
                continue
            try:
                tree, blobs = wire.encode(value, _no_handles)
            except (TypeError, ValueError, wire.ProtocolError):
                continue
            if not blobs:
                attrs[key] = tree
        token = getattr(exc, "_grader_token", None)
        if self.strict:
            token = id(exc)
            self._raised[token] = exc
        return {"type": type(exc).__name__[:80],
                "mro": [c.__name__[:80] for c in type(exc).__mro__][:24],
                "message": _text(exc), "attrs": attrs, "where": _where(exc),
                "token": token if type(token) is int else None}

    def exception(self, info, blobs=()) -> BaseException:
        """The exception a reply describes, as an object of this side."""
        if not isinstance(info, dict):
            raise ProtocolError("bad exception")
        if self.strict and info.get("token") in self._raised:
            return self._raised[info["token"]]
        name = str(info.get("type", "Exception"))
        names = [str(n) for n in info.get("mro", [])] if isinstance(info.get("mro"), list) else []
        cls = self._class(name, names)
        exc = cls.__new__(cls)
        BaseException.__init__(exc, _text(info.get("message", "")))
        exc.remote_frame = str(info.get("where") or "")[:400]   # see report._learner_frame
        attrs = info.get("attrs") if isinstance(info.get("attrs"), dict) else {}
        for key, tree in list(attrs.items())[:40]:
            if isinstance(key, str) and key.isidentifier() and not key.startswith("_"):
                try:
                    setattr(exc, key, wire.decode(tree, [], _no_deref))
                except (ProtocolError, AttributeError, TypeError):
                    pass
        if not self.strict and type(info.get("token")) is int:
            exc._grader_token = info["token"]
        return exc

    def _class(self, name: str, mro: list[str]) -> type:
        if name in self._registry:
            return self._registry[name]
        if not name.isidentifier():
            name = "RemoteError"
        if name not in self._classes:
            base = next((self._registry[n] for n in mro if n in self._registry), Exception)
            self._classes[name] = type(name, (base, RemoteError) if base is not Exception
                                       else (RemoteError,), {"__module__": "submission"})
        return self._classes[name]


def _plain(value):
    """A list of the items of an iterable that is not data (a deque, a generator...)."""
    if isinstance(value, (str, bytes, bytearray, list, tuple, dict, set, frozenset, range,
                          np.ndarray, np.generic, Remote, type)) or \
            not hasattr(value, "__iter__"):
        return value
    return list(value)


def _target_marker(header, own_key):
    fields = header.get("fields")
    pairs = fields.get("$dict") if isinstance(fields, dict) else None
    for pair in pairs or []:
        if isinstance(pair, list) and len(pair) == 2 and pair[0] == "target" and \
                isinstance(pair[1], dict) and own_key in pair[1]:
            return pair[1]
    raise ProtocolError("the request names no object of this side")


def _time_left() -> float | None:
    """Seconds before this thread's SIGALRM time limit (report.time_limit), if one runs."""
    if threading.current_thread() is not threading.main_thread():
        return None
    left = signal.getitimer(signal.ITIMER_REAL)[0]
    return left or None


def _no_handles(obj, early):
    if early:
        return None
    raise TypeError("not data")


def _no_deref(marker):
    raise ProtocolError("no handles here")


def _shift_blobs(tree, shift: int):
    if shift == 0:
        return tree
    if isinstance(tree, list):
        return [_shift_blobs(v, shift) for v in tree]
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out[k] = v + shift if k in ("$nd", "$np", "$bytes") and type(v) is int \
                else _shift_blobs(v, shift)
        return out
    return tree


def _where(exc: BaseException) -> str:
    """' (in your code, line N: text)' for the innermost frame outside this package."""
    import os  # noqa: PLC0415
    import traceback  # noqa: PLC0415
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if not os.path.abspath(frame.filename).startswith(package):
            where = "your code" if frame.filename.startswith("<") or \
                "ipykernel" in frame.filename else os.path.basename(frame.filename)
            return f" (in {where}, line {frame.lineno}: {(frame.line or '').strip()[:200]})"
    return ""
