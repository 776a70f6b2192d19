"""Frames over the socket between a graded submission and the grader's judge.

A frame is

    4 bytes   big-endian length of the header
    header    UTF-8 JSON object (wire.py); its "blobs" key lists the byte length of each blob
    blobs     the raw bytes the header refers to

and every size is checked (wire.MAX_HEADER, wire.MAX_FRAME) before anything is allocated.
"""
from __future__ import annotations

import json
import select
import struct
import time

from .time_limits import held
from .wire import MAX_FRAME, MAX_HEADER, ChannelClosed, ProtocolError


class Channel:
    """Frames over a connected stream socket.

    With `deadline`s and an `abort_fd` (readable or closed = stop waiting), as the judge
    uses it, a peer that stops reading or writing cannot block it; SIGALRM (a check's case
    time limit) may interrupt a wait, but never the middle of a frame (time_limits.held): bytes
    already read stay buffered, frames are handed over by `receive` (filed, or still in the
    buffer), and a frame is written by one sendall() (whole, or the channel is closed).
    """

    def __init__(self, sock, *, abort_fd: int | None = None):
        self.sock, self.abort_fd = sock, abort_fd
        self.buffer = bytearray()
        self.closed = False
        self.aborted = False   # closed by abort_fd (the grader), not by the other side
        sock.setblocking(False)

    def _wait(self, want_write: bool, deadline: float | None) -> None:
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            rl = [self.abort_fd] if self.abort_fd is not None else []
            wl = [self.sock] if want_write else []
            if not want_write:
                rl.append(self.sock)
            r, w, _ = select.select(rl, wl, [], timeout)
            if self.sock in r or w:   # what the other side sent still counts after an abort
                return
            if self.abort_fd is not None and self.abort_fd in r:
                self.aborted = True
                self.close()
                raise ChannelClosed("the grader stopped waiting for this submission")
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("no answer in time")

    def send(self, header: dict, blobs=(), deadline: float | None = None) -> None:
        if self.closed:
            raise ChannelClosed("the channel is closed")
        blobs = list(blobs)
        header = dict(header, blobs=[len(b) for b in blobs])
        data = json.dumps(header, separators=(",", ":")).encode()
        if len(data) > MAX_HEADER:
            raise ValueError("the message is too large to send")
        frame = b"".join([struct.pack(">I", len(data)), data, *blobs])
        # One C call, the time limit held: it ends the case before the frame or after it,
        # never between two parts of it.
        with held():
            try:
                self.sock.settimeout(None if deadline is None
                                     else max(0.001, deadline - time.monotonic()))
                self.sock.sendall(frame)
            except OSError as exc:   # the peer is gone, or stopped reading until the deadline
                self.close()
                raise ChannelClosed(f"the other side is gone or stopped reading ({exc})") \
                    from None
            finally:
                if not self.closed:
                    self.sock.setblocking(False)

    def _frame(self):
        if len(self.buffer) < 4:
            return None
        (hlen,) = struct.unpack(">I", self.buffer[:4])
        if hlen > MAX_HEADER:
            raise ProtocolError(f"header of {hlen} bytes is too large")
        if len(self.buffer) < 4 + hlen:
            return None
        try:
            header = json.loads(bytes(self.buffer[4:4 + hlen]).decode())
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"the header is not JSON: {exc}") from None
        sizes = header.get("blobs", []) if isinstance(header, dict) else None
        if not isinstance(sizes, list) or not all(type(n) is int and n >= 0 for n in sizes) \
                or sum(sizes) > MAX_FRAME:
            raise ProtocolError("bad blob sizes")
        end = 4 + hlen + sum(sizes)
        if len(self.buffer) < end:
            return None
        blobs, pos = [], 4 + hlen
        for n in sizes:
            blobs.append(bytes(self.buffer[pos:pos + n]))
            pos += n
        del self.buffer[:end]
        return header, blobs

    def receive(self, file, deadline: float | None = None, limit: int | None = None) -> None:
        """Wait for whole frames and hand each (up to `limit`) to file(header, blobs).

        Parsing and filing happen with the time limit held: it ends a wait before a frame
        leaves the buffer or after the frame is filed, never in between, so no
        request or reply is lost to it (the caller files them where they stay: remote.Peer).
        TimeoutError at the deadline, ChannelClosed at EOF or abort."""
        while True:
            with held():
                filed = 0
                while limit is None or filed < limit:
                    frame = self._frame()
                    if frame is None:
                        break
                    file(*frame)
                    filed += 1
                if filed:
                    return
                if self.closed:
                    raise ChannelClosed("the channel is closed")
            self._wait(False, deadline)
            with held():
                try:
                    data = self.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.close()
                    raise ChannelClosed("the other side closed the channel")
                self.buffer += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass
