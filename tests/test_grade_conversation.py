"""The grader's conversation stays in step when a time limit cuts a request short.

The bug these tests pin down (issue 14's closing note): the judge's case time limit ends a
request while the submission, whose own limit rings a little later (it started later; a
loaded machine), is still inside a nested request of its own. The judge finishes the check
and answers it; the submission, still in the inner wait, took that answer for a stale one
and dropped it, then waited for ever for the answer it had thrown away, while the judge
waited for the next check: both sides blocked on a socket read. Now every request names
the request it is part of, a reply waits for its request however deep the current wait,
every request is answered (a cancelled one with CaseTimeout), a time limit cannot take a
frame between the socket and its wait, nested time limits keep the outer one, and every
wait has a deadline that ends in a verdict, not a hang.
"""
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pagedattn_lab.grading import remote, report, runner, wire
from pagedattn_lab.grading.channel import Channel
from pagedattn_lab.grading.judge import Judge

REPO = Path(__file__).resolve().parents[1]

# The submission's side in its own process (its time limits need the main thread), with its
# alarm ringing one second after the judge's, as on a loaded machine: `serve` never ends and
# asks the judge's cache something at every step, so it is inside a nested request of its
# own when the judge's 2 s limit ends the case. Then a second check runs in the same
# conversation: the two sides must still be in step.
LATE_LEARNER = """
import sys
from pagedattn_lab.grading import report, runner
peer = runner.learner_peer(int(sys.argv[1]))
peer.idle_timeout = 20   # the test's bound on a wait for the judge (the grader's: 300 s)
peer.guard = lambda limit: report.time_limit((limit or report.CASE_TIME_LIMIT) + 1.0)

def serve(cache, requests, kv_for):
    while True:
        cache.seq_ids

runner.forwarder(peer, "serve")(serve)
runner.forwarder(peer, "pages_needed")(lambda num_tokens, page_size: 0)
print("both checks returned", flush=True)
"""


def test_a_late_time_limit_in_a_nested_request_ends_in_a_verdict_not_a_hang():
    judge_end, learner_end = socket.socketpair()
    learner = subprocess.Popen([sys.executable, "-c", LATE_LEARNER, str(learner_end.fileno())],
                               cwd=REPO, pass_fds=[learner_end.fileno()],
                               stdout=subprocess.PIPE, text=True)
    learner_end.close()
    judge = Judge(remote.Peer(Channel(judge_end), strict=True, call_timeout=60), salt=None,
                  tasks=["serve", "pages_needed"])
    started = time.monotonic()
    try:
        judge.serve(idle_timeout=60)   # the old code blocked here for ever
        out, _ = learner.communicate(timeout=60)
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait()
    assert learner.returncode == 0 and "both checks returned" in out
    assert time.monotonic() - started < 60
    serve, pages = judge.report()["tasks"]["serve"], judge.report()["tasks"]["pages_needed"]
    assert serve["status"] == "failed" and "serve did not finish" in serve["summary"]
    assert pages["status"] == "failed" and pages["cases"] >= 1


class Raw:
    """The other end of a channel, written frame by frame by the test."""

    def __init__(self, sock):
        self.channel = Channel(sock)

    def send(self, **header):
        self.channel.send(header)

    def recv(self):
        frames = []
        self.channel.receive(lambda header, blobs: frames.append(header), time.monotonic() + 10,
                             limit=1)
        return frames[0]


def _pair(**peer_options):
    a, b = socket.socketpair()
    return remote.Peer(Channel(a), **peer_options), Raw(b)


def _in_thread(fn):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_a_reply_to_an_outer_request_is_kept_while_an_inner_request_waits():
    peer, other = _pair(strict=False)
    peer.services["work"] = lambda p, header, blobs: p.request("ask")   # a nested request
    thread, box = _in_thread(lambda: peer.request("check"))
    check = other.recv()
    other.send(t="req", id=7, op="work", **{"in": check["id"]})
    ask = other.recv()
    assert ask["op"] == "ask"
    # The other side ends the check first (its time limit gave up on request 7), then
    # answers the nested request: the check's answer must not be lost in the inner wait.
    other.send(t="rep", id=check["id"], value="verdict recorded")
    other.send(t="rep", id=ask["id"], value=1)
    assert other.recv() == {"t": "rep", "id": 7, "value": 1, "blobs": []}
    thread.join(10)
    assert box == {"value": "verdict recorded"}, "the outer reply was dropped: a hang"
    assert ask["in"] == 7   # the nested request names the request it is part of
    assert peer.pending == [] and peer.replies == {} and peer.inbox == []


def test_requests_of_an_ended_call_are_cancelled_and_outer_ones_wait_their_turn():
    peer, other = _pair(strict=False)
    order = []
    peer.services["work"] = lambda p, header, blobs: order.append("work") or p.request("ask")
    peer.services["next"] = lambda p, header, blobs: order.append("next") or 2
    thread, box = _in_thread(lambda: peer.request("check"))
    check = other.recv()
    other.send(t="req", id=7, op="work", **{"in": check["id"]})
    ask = other.recv()
    other.send(t="req", id=8, op="next", **{"in": check["id"]})   # the outer wait's turn
    other.send(t="req", id=9, op="next", **{"in": 12345})         # a call that has ended
    cancelled = other.recv()
    assert cancelled["id"] == 9 and cancelled["exc"]["type"] == "CaseTimeout"
    assert order == ["work"], "a request of the outer wait ran inside the inner one"
    other.send(t="rep", id=ask["id"], value=1)
    assert [other.recv()["id"] for _ in range(2)] == [7, 8] and order == ["work", "next"]
    other.send(t="rep", id=check["id"], value="done")
    thread.join(10)
    assert box == {"value": "done"}


def test_the_judge_answers_a_request_its_own_time_limit_cut_short():
    peer, other = _pair(strict=True, call_timeout=5)

    def slow(p, header, blobs):
        time.sleep(5)

    peer.services["slow"] = slow
    peer.pending.append(99)   # as inside a request of the judge's own case
    other.send(t="req", id=3, op="slow")
    with pytest.raises(report.CaseTimeout), report.time_limit(0.2):
        for _ in range(3):   # receive the request, then run it
            peer._next(99, None)
    answer = other.recv()
    assert answer["id"] == 3 and answer["exc"]["type"] == "CaseTimeout"


def test_a_submission_that_stops_answering_gets_a_time_limit_verdict():
    """The learner's side in a thread (no time limit there) sleeps in its code: the judge's
    deadline ends the wait, the task fails with "time limit" and the judge stops."""
    judge_end, learner_end = socket.socketpair()
    judge = Judge(remote.Peer(Channel(judge_end), strict=True, call_timeout=1.0), salt=None,
                  tasks=["pages_needed"])
    learner = runner.learner_peer(learner_end.detach())
    learner.idle_timeout = 10
    thread, box = _in_thread(lambda: runner.forwarder(learner, "pages_needed")(
        lambda num_tokens, page_size: time.sleep(3)))
    started = time.monotonic()
    judge.serve(idle_timeout=10)
    assert time.monotonic() - started < 8
    task = judge.report()["tasks"]["pages_needed"]
    assert task["status"] == "failed" and task["summary"].startswith("time limit: ")
    thread.join(10)
    assert isinstance(box.get("error"), wire.ChannelClosed)


def test_a_judge_with_nothing_to_do_stops_waiting_at_its_idle_deadline():
    judge_end, learner_end = socket.socketpair()
    judge = Judge(remote.Peer(Channel(judge_end), strict=True, call_timeout=1.0), salt=None,
                  tasks=[])
    started = time.monotonic()
    judge.serve(idle_timeout=0.3)
    assert 0.25 < time.monotonic() - started < 5
    learner_end.close()


def test_a_time_limit_expiring_between_socket_and_wait_loses_no_frame():
    """The time limit's handler runs just after a frame left the channel's buffer (where a
    signal would run it, whichever thread the kernel gave the signal to): the frame still
    reaches its wait, and the case still ends, right after."""
    a, b = socket.socketpair()
    Channel(b).send({"t": "rep", "id": 1, "value": "kept"})
    filed = []

    def strike(frame, event, arg):   # as SIGALRM would, once _frame has taken the frame
        if event == "return" and frame.f_code.co_name == "_frame" and arg is not None:
            sys.setprofile(None)
            signal.getsignal(signal.SIGALRM)(signal.SIGALRM, frame)

    with pytest.raises(report.CaseTimeout, match="100 s"), report.time_limit(100):
        sys.setprofile(strike)
        try:
            Channel(a).receive(lambda header, blobs: filed.append(header["value"]),
                               time.monotonic() + 5)
        finally:
            sys.setprofile(None)
    assert filed == ["kept"]


def spin(seconds: float) -> None:
    """Python code that never returns by itself, as an endless loop in a learner's code
    (a sleep could miss the signal when another thread of the process takes it)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_nested_time_limit_keeps_the_outer_one():
    started = time.monotonic()
    with pytest.raises(report.CaseTimeout, match="0.3 s"), report.time_limit(0.3):
        with report.time_limit(5):   # e.g. checks_serve's 2 s inside a case's 30 s
            pass
        spin(3)
    assert time.monotonic() - started < 2
    with pytest.raises(report.CaseTimeout, match="0.2 s"), report.time_limit(5):
        with report.time_limit(0.2):
            spin(3)
