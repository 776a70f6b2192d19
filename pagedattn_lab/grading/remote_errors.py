"""How exceptions cross the grader's channel (remote.py): as data, never as objects.

An exception travels as its type name, its classes' names, its message, its plain-data
attributes, where in the learner's code it was raised and, for a NotImplementedError,
whether that statement of the learner's names it (the workbook's stub). It comes back as
the same class when that is a builtin or one of the package's, else as a same-named
subclass of the nearest known one (of RemoteError); an exception the judge raised keeps
its identity across the round trip (a token only the judge can resolve).
"""
from __future__ import annotations

import builtins
import itertools
import linecache
import os

from . import wire
from .report import text_of
from .wire import ProtocolError

MAX_TEXT = 20_000
MAX_KEY = (1 << 63) - 1   # the largest int key a KeyError crosses as (an int64 id, say)
# (an exception group is built from its parts, and `exception` builds from no arguments: it
# crosses as a same-named stand-in, as a class only the sender knows does)
_BUILTIN_ERRORS = [c for c in vars(builtins).values()
                   if isinstance(c, type) and issubclass(c, Exception)
                   and c not in (StopIteration, StopAsyncIteration)
                   and not issubclass(c, BaseExceptionGroup)]


def _package_errors() -> list[type]:
    from ..cpu import errors  # noqa: PLC0415 - pure Python, no compiler involved
    from ..paging import OutOfPagesError  # noqa: PLC0415
    from .report import Mismatch, NotAttempted  # noqa: PLC0415
    from .time_limits import CaseTimeout  # noqa: PLC0415
    return [OutOfPagesError, CaseTimeout, Mismatch, NotAttempted,
            *(getattr(errors, name) for name in errors.__all__)]


# A check's verdicts on a case: the grader's code raises them (the kernel host's runner too)
VERDICTS = ("Mismatch", "NotAttempted")


class RemoteError(Exception):
    """Base of the same-named stand-ins for exception classes that only the sender knows."""


def _text(value) -> str:
    text = text_of(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + " [...]"


class _Shown(str):
    """A KeyError's str() as the sender showed it, made the rebuilt KeyError's one argument:
    KeyError's str() is its argument's repr, and this one's repr is the text itself."""

    def __repr__(self) -> str:
        return str.__str__(self)


def _message_of(exc: BaseException) -> tuple[str | int, bool]:
    """(what the exception is rebuilt from, whether that is a KeyError's str() as shown).
    A KeyError's str() is its key's repr, which a KeyError rebuilt from it quoted again
    (KeyError: "'seq 3'" under the grader, 'seq 3' in the notebook; '3' for 3, 'True' for
    True): a KeyError of one str or int key (a dict keyed by sequence id) sends the key
    itself, an int as an int; any other (None, True, a tuple, a float, bytes, no key, two, a
    class's own __str__) sends its str(), which `_key_of` rebuilds to read the same."""
    if not isinstance(exc, KeyError):
        return _text(exc), False
    if len(exc.args) == 1 and type(exc).__str__ is KeyError.__str__:
        key = exc.args[0]
        if type(key) is str:
            return _text(key), False
        if type(key) is int and abs(key) <= MAX_KEY:
            return key, False
    return _text(exc), True


def _key_of(cls: type, message, shown) -> str | int:
    """The argument an exception of `cls` is rebuilt with from a reply's `message`: for a
    KeyError, an int as the key (`_message_of`), bounded (a sent int of a million digits
    would not print), or its str() as shown; anything else as text."""
    if issubclass(cls, KeyError):
        if shown is True:
            return _Shown(_text(message))
        if type(message) is int and abs(message) <= MAX_KEY:
            return message
    return _text(message)


class ErrorTranslation:
    """The exception half of remote.Peer (which sets `strict`)."""

    strict: bool
    # False for the judge's end of the kernel host's channel, where no code of the learner's
    # runs: its exceptions carry no `remote_frame`, which says "raised in the learner's code"
    # (escaped_errors.describe_memory_error: a MemoryError mapping the check's arrays was theirs)
    learner_side = True

    def init_errors(self) -> None:
        self._raised: dict[int, BaseException] = {}
        self._classes: dict[str, type] = {}
        self._registry = {c.__name__: c for c in _BUILTIN_ERRORS + _package_errors()}

    def refuse_verdicts(self) -> None:
        """For a peer running only the learner's code (the judge's end of the sandbox): an
        exception it names like a check's verdict is the learner's own class, crossing as a
        same-named stand-in, as it is no verdict in the notebook either. Rebuilt as the
        check's, it lacked the fields the check reads: the check crashed ("could not run")."""
        for name in VERDICTS:
            self._registry.pop(name, None)   # (idempotent: a second call finds none)

    def describe(self, exc: BaseException) -> dict:
        attrs = {}
        for key, value in list(vars(exc).items())[:40] if hasattr(exc, "__dict__") else []:
            if key.startswith("_") or not key.isidentifier():
                continue
            try:
                tree, blobs = wire.encode(value, no_handles)
            except Exception:   # noqa: BLE001 - a learner's object raises what it likes when
                continue        # the wire asks what it is: that attribute stays behind
            if not blobs:
                attrs[key] = tree
        token = getattr(exc, "_grader_token", None)
        if self.strict:
            token = id(exc)
            self._raised[token] = exc
        message, shown = _message_of(exc)
        return {"type": type(exc).__name__[:80],
                "mro": [c.__name__[:80] for c in type(exc).__mro__][:24],
                "message": message, "shown": shown, "attrs": attrs, "where": learner_frame(exc),
                "stub": learner_stub(exc) if isinstance(exc, NotImplementedError) else None,
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
        BaseException.__init__(exc, _key_of(cls, info.get("message", ""), info.get("shown")))
        attrs = info.get("attrs") if isinstance(info.get("attrs"), dict) else {}
        for key, tree in list(attrs.items())[:40]:
            if isinstance(key, str) and key.isidentifier() and not key.startswith("_"):
                try:
                    setattr(exc, key, wire.decode(tree, [], no_deref))
                except (ProtocolError, AttributeError, TypeError):
                    pass
        # (set after the attributes, so that none of the learner's replaces them)
        if self.learner_side:
            exc.remote_frame = str(info.get("where") or "")[:400]   # escaped_errors.where_raised
            if type(info.get("stub")) is bool:
                exc.remote_stub = info["stub"]   # escaped_errors.raised_by_stub
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


def no_handles(obj, early):
    if early:
        return None
    raise TypeError("not data")


def no_deref(marker):
    raise ProtocolError("no handles here")


def _library_dirs() -> tuple[str, ...]:
    """The folders of Python's own and installed modules (NumPy's among them), each ending in
    a separator, as given and resolved (read once, before the sandbox closes anything)."""
    import site  # noqa: PLC0415
    import sysconfig  # noqa: PLC0415
    paths = sysconfig.get_paths()
    dirs = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    dirs.update(site.getsitepackages() + [site.getusersitepackages()])
    return tuple(sorted({os.path.join(way(d), "") for d in dirs if d
                         for way in (os.path.abspath, os.path.realpath)}))


_LIBRARY_DIRS = _library_dirs()


def _library(filename: str) -> bool:
    """A frame of a library's code (NumPy's np.ones, the stdlib's): no one's line to blame. A
    check's own call of np.ones that ran out of memory was put "in numeric.py" and laid on the
    learner's code (escaped_errors.describe_memory_error); the learner's call of it, on their
    line."""
    if filename.startswith("<"):   # a cell, exec's "<string>" (the learner's), a frozen module
        return filename.startswith("<frozen ")
    return filename.startswith(_LIBRARY_DIRS) or \
        os.path.realpath(filename).startswith(_LIBRARY_DIRS)   # (via a link: lib64 -> lib)


def learner_frame(exc: BaseException) -> str:
    """' (in your code, line N: text)' for the innermost frame that is neither the package's
    code (own_watch.package_code: a cell compiled under a package file's name is the
    learner's) nor a library's, the line cut to 200 characters: it crosses the channel, and
    a message quotes it."""
    tb = learner_traceback(exc)
    if tb is None:
        return ""
    frame, lineno = tb.tb_frame, tb.tb_lineno
    filename = frame.f_code.co_filename
    where = "your code" if filename.startswith("<") or "ipykernel" in filename \
        else os.path.basename(filename)
    line = linecache.getline(filename, lineno, frame.f_globals).strip()
    return f" (in {where}, line {lineno}: {line[:200]})"


def learner_stub(exc: BaseException) -> bool:
    """Whether the learner's code raised `exc` on a statement that names NotImplementedError
    (the workbook's stub, or the learner's own "not yet"); False where no frame of theirs is
    on the way (a library's or this package's error). Read where the traceback is: the
    notebook's process, or the grader's sandbox, which sends it (`describe`), as the judge
    has only learner_frame's first line, cut, of a raise written over several."""
    tb = learner_traceback(exc)
    return tb is not None and names_not_implemented(_statement(tb))


def names_not_implemented(text: str) -> bool:
    # (a learner's line whose text is unknown is taken for the stub)
    return not text.strip() or "NotImplementedError" in text


def _statement(tb) -> str:
    """The text of the statement traceback entry `tb` was running, every line of it: a raise
    written over several lines (`raise \\` then the error) names it on a later one."""
    frame, first = tb.tb_frame, tb.tb_lineno
    positions = getattr(frame.f_code, "co_positions", None)   # (Python 3.11+)
    last = first
    if positions is not None and tb.tb_lasti >= 0:
        start, end = next(itertools.islice(positions(), tb.tb_lasti // 2, None), (None, None))[:2]
        if start is not None and end is not None and start <= first <= end:
            first, last = start, end
    name = frame.f_code.co_filename
    return " ".join(linecache.getline(name, n, frame.f_globals).strip()
                    for n in range(first, last + 1))


def learner_traceback(exc: BaseException):
    """The traceback entry of `exc`'s innermost frame of the learner's code (see
    learner_frame), or None."""
    from .own_watch import package_code, trampoline  # noqa: PLC0415 - it imports the answers
    entries = []
    tb = exc.__traceback__
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    for tb in reversed(entries):
        code, names = tb.tb_frame.f_code, tb.tb_frame.f_globals
        if not package_code(code, names) and not trampoline(code, names) and \
                not _library(code.co_filename):
            return tb
    return None
