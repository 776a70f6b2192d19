"""One end of the grader's channel: requests to the other process, answers to its requests.

Under the grader, a check runs in the judge (the grader's own process) and the learner's
code runs in the submission's sandbox. The check holds `Remote` stand-ins (proxies.py) for
the learner's class, function or instance; using one sends a request that the sandbox's
`Peer` answers by running the learner's code there, with plain data (wire.py) or a handle
when the answer is not data. When a check hands the learner one of its own objects (a
BlockAllocator, a PagedKVCache, the `kv_for` callback), the learner gets a stand-in, and
its calls come back to the judge, which shares only what `proxies.shareable` allows
(`Peer(strict=True)`). Lists, dicts, records and arrays (NumPy or CuPy) passed to a learner's
function are copied there and, if the learner changed them in place, copied back,
so `table.extend(...)` works as in the notebook: also when the function then raises (a
table grown before an OutOfPagesError is grown in the notebook too).
Exceptions travel as data (remote_errors.py).

Either side may be running a request of the other when a case's time limit (SIGALRM)
ends a wait of its own, so requests nest and get cut short: `Peer.request` says how every
message still reaches the wait it belongs to, and how every wait ends (an answer, a
cancelled call's CaseTimeout, or a deadline's wire.Unresponsive), never in a hang.
"""
from __future__ import annotations

import contextlib
import itertools
import keyword
import signal
import threading
import time
import types

import numpy as np

from ..backend import is_cupy_array
from . import wire
from .proxies import SPECIALS, Remote, RemoteCallable, copy_back, shareable
from .remote_errors import ErrorTranslation
from .time_limits import CaseTimeout
from .wire import ChannelClosed, ProtocolError

MAX_HANDLES = 200_000
MAX_INBOX = 1000      # requests or events received and not yet handled
class Peer(ErrorTranslation):
    """One end of the conversation: answers the other end's requests, sends its own."""

    def __init__(self, channel, *, strict: bool, call_timeout: float | None = None,
                 idle_timeout: float | None = None, services: dict | None = None):
        """call_timeout: the longest one request of ours waits for its answer (the judge);
        idle_timeout: the longest any wait of ours lasts without a frame from the other side
        (the learner). Past either, the channel closes with wire.Unresponsive."""
        self.channel, self.strict = channel, strict
        self.call_timeout, self.idle_timeout = call_timeout, idle_timeout
        self.own_key, self.peer_key = ("$g", "$s") if strict else ("$s", "$g")
        self.handles: dict[int, tuple[object, bool]] = {}   # handle -> (object, instance?)
        self.services = dict(services or {})   # op -> fn(peer, header, blobs) -> value
        # around running the other side's request: guard(seconds the requester still waits)
        self.guard = lambda limit: contextlib.nullcontext()
        self.on_event = lambda header, blobs: None
        # The conversation (see `request`): our requests still waiting for an answer,
        # innermost last; the other side's requests we are running, innermost last; what
        # has arrived and waits for its turn.
        self.pending: list[int] = []
        self.serving: list[int] = []
        self.replies: dict[int, tuple] = {}   # id of a pending request -> its answer
        self.inbox: list[tuple] = []          # the other side's requests not yet run
        self.events: list[tuple] = []
        self._ids = itertools.count(1)
        self._handle_ids = itertools.count(1)
        self.init_errors()

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
        """Send a request and wait for its answer, running the other side's requests that
        belong to it meanwhile.

        Every request carries an id and "in": the id of the other side's request it is
        part of (the one we are running), so each side knows which of its waits a request
        belongs to. A request runs in the wait it belongs to; one that belongs to an outer
        wait stays in the inbox until that wait is innermost again; one that belongs to a
        request no longer waited for (a time limit ended it) is answered at once with
        CaseTimeout, so code still running for an ended case stops at its next call. A
        reply is kept for its request while that request waits, however deep the current
        wait, and dropped once its request has ended: a time limit never leaves the two
        sides waiting for each other.
        """
        rid = next(self._ids)
        if not self.strict and "args" in fields:   # the judge's objects take plain data:
            fields["args"] = [_plain(a) for a in fields["args"]]   # a deque goes as a list
        args = tuple(fields.get("args", ()))
        if target is not None:
            fields["target"] = target
        tree, blobs = wire.encode(fields, self._ref())
        header = {"t": "req", "id": rid, "op": op, "fields": tree}
        if self.serving:
            header["in"] = self.serving[-1]
        limit = _time_left()
        if limit:   # a case's time limit runs here: the other side stops with it
            header["limit"] = limit
        deadline = None if self.call_timeout is None else time.monotonic() + self.call_timeout
        depth = len(self.pending)
        self.pending.append(rid)
        try:
            self._send(header, blobs, deadline)
            while rid not in self.replies:
                self._next(rid, deadline)
            return self._answer(*self.replies.pop(rid), args)
        finally:   # also drops what an inner wait cut short by a signal left behind
            for ended in self.pending[depth:]:
                self.replies.pop(ended, None)
            del self.pending[depth:]

    def listen(self, idle_timeout: float | None = None) -> None:
        """Run the other side's requests until the channel closes (the judge's main loop);
        wire.Unresponsive after `idle_timeout` seconds without a frame."""
        while True:
            self._next(None, None, idle_timeout)

    def _next(self, rid, deadline, idle=None) -> None:
        """One step of a wait: run an event or a request whose turn it is, else receive."""
        if self.events:
            self.on_event(*self.events.pop(0))
            return
        for item in self.inbox:
            parent = item[0].get("in")
            if parent is None or parent == rid:
                self.serve(*item, queued=item)
                return
            if parent not in self.pending:   # part of a call that has ended
                self.inbox.remove(item)
                self._send({"t": "rep", "id": item[0].get("id"), "exc": self.describe(
                    CaseTimeout("the call this request belongs to has ended (a time limit "
                                "passed)"))})
                return
        idle = self.idle_timeout if idle is None else idle
        until = deadline if idle is None else time.monotonic() + idle if deadline is None \
            else min(deadline, time.monotonic() + idle)
        try:
            self.channel.receive(self._file, until)
        except TimeoutError:
            self.channel.close()
            waited = self.call_timeout if until == deadline else idle
            raise wire.Unresponsive(f"the other side did not answer within {waited:g} s") \
                from None

    def _file(self, header, blobs) -> None:
        """Put an arriving frame where its wait finds it (called with SIGALRM blocked)."""
        kind, rid = header.get("t"), header.get("id")
        if kind == "rep":
            if type(rid) is int and rid in self.pending:
                self.replies[rid] = (header, blobs)
            # else: the answer to a request a time limit ended: dropped
        elif kind == "req":
            if len(self.inbox) >= MAX_INBOX:
                raise ProtocolError("too many requests at once")
            self.inbox.append((header, blobs))
        elif kind == "ev" and len(self.events) < MAX_INBOX:
            self.events.append((header, blobs))

    def _send(self, header, blobs=(), deadline=None) -> None:
        """Send a frame; a peer that stops reading gets at most our timeout."""
        wait = self.call_timeout if self.call_timeout is not None else self.idle_timeout
        if deadline is None and wait is not None:
            deadline = time.monotonic() + wait
        self.channel.send(header, blobs, deadline=deadline)

    def _answer(self, header, blobs, args):
        if "exc" in header:
            self._copy_back(header, blobs, args)
            raise self.exception(header["exc"], blobs)
        value = wire.decode(header.get("value"), blobs, self._deref(args))
        self._copy_back(header, blobs, args)
        return value

    def _copy_back(self, header, blobs, args) -> None:
        for key, tree in (header.get("back") or {}).items():
            i = int(key) if str(key).isdigit() else -1
            if 0 <= i < len(args):
                copy_back(args[i], wire.decode(tree, blobs, self._deref(args)))

    def _changed(self, reply: dict, back: dict, args, out: list) -> list:
        """Put into `reply` the arguments of `back` (index -> their encoding before the
        call) that the call changed; `out`, the reply's blobs, with theirs added."""
        for i, before in back.items():
            after, extra = wire.encode(args[i], self._ref())
            if (after, extra) != before:   # only what the learner's code changed
                reply.setdefault("back", {})[str(i)] = _shift_blobs(after, len(out))
                out = out + extra
        return out

    # -- serving ----------------------------------------------------------------------------
    def serve(self, header, blobs, queued=None) -> None:
        """Answer one request of the other side (taking `queued` out of the inbox first):
        with its value, or with the exception it raised. Every request is answered, even
        one a time limit cut short; the judge's own time limit then goes on ending its case
        (when a request of the judge is waiting)."""
        rid = header.get("id")
        depth = len(self.serving)
        call = {}   # the arguments a call may change in place, set before it runs
        try:
            if queued is not None:   # inside the try: a signal now still gets an answer
                self.inbox.remove(queued)
            self.serving.append(rid)
            value, back, args = self._handle(header, blobs, call)
            reply = {"t": "rep", "id": rid}
            tree, out = wire.encode(value, self._ref(args))
            reply["value"] = tree
            self._send(reply, self._changed(reply, back, args, out))
        except (ChannelClosed, ProtocolError):
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure is the answer
            reply = {"t": "rep", "id": rid, "exc": self.describe(exc)}
            try:   # what the call changed before it raised, as the notebook sees it
                out = self._changed(reply, call.get("back", {}), call.get("args", ()), [])
            except Exception:  # noqa: BLE001 - arguments left unencodable: the error stands
                reply.pop("back", None)
                out = []
            self._send(reply, out)
            if self.strict and (isinstance(exc, KeyboardInterrupt) or
                                isinstance(exc, CaseTimeout) and self.pending):
                raise   # the judge's own time limit: its case ends here, not in the sandbox
        finally:
            del self.serving[depth:]

    def _handle(self, header, blobs, call: dict):
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
            return self._run(op, obj, instance, fields, call)

    def _run(self, op, obj, instance, fields, call: dict):
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
                if isinstance(arg, (list, dict, np.ndarray, types.SimpleNamespace)) or \
                        is_cupy_array(arg):
                    back[i] = wire.encode(arg, self._ref())
        call.update(back=back, args=tuple(args))
        with _call_context(obj, args) if not self.strict else contextlib.nullcontext():
            return obj(*args, **kwargs), back, tuple(args)


@contextlib.contextmanager
def _call_context(fn, args):
    """The context a learner's function `fn` runs in here as in the notebook: that of each
    class of the check's instrumented arrays among its arguments that has one (`during_call`:
    the gather's cache keeps its watch through np.asarray)."""
    with contextlib.ExitStack() as stack:
        for cls in dict.fromkeys(type(arg) for arg in args if isinstance(arg, np.ndarray)):
            during_call = getattr(cls, "during_call", None)
            if during_call is not None:
                stack.enter_context(during_call(fn))
        yield


def _plain(value):
    """A list of the items of an iterable that is not data (a deque, a generator...)."""
    if isinstance(value, (str, bytes, bytearray, list, tuple, dict, set, frozenset, range,
                          np.ndarray, np.generic, Remote, type)) or \
            not hasattr(value, "__iter__") or is_cupy_array(value):
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
    """Seconds before this thread's SIGALRM time limit (time_limits.time_limit), if one runs."""
    if threading.current_thread() is not threading.main_thread():
        return None
    left = signal.getitimer(signal.ITIMER_REAL)[0]
    return left or None


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
