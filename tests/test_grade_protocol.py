"""The grader's judge and its channel to a submission, without the sandbox around them.

A learner-side peer runs in a thread, the judge in the test's main thread, connected by a
socket pair, exactly as runner.py and judge.py are under the grader. The classic wrong
implementations of test_check_mistakes.py get the same verdict and message remotely as in
the notebook; what a submission could try through the channel (reaching the grader's
modules from a shared object, forged handles, frames that are not frames, object arrays)
gets nowhere; and the checks' seeds are salted under the judge only.
"""
import contextlib
import importlib
import io
import json
import re
import socket
import struct
import subprocess
import sys
import threading
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab import check, lessons
from pagedattn_lab.cpu import compiler
from pagedattn_lab.grading import (cases, kernel_host, proxies, remote, remote_errors, runner,
                                   sandbox, seeds, table, wire)
from pagedattn_lab.grading.channel import Channel
from pagedattn_lab.grading.judge import Judge
from tests.check_helpers import mutate, solution_source
from tests.test_check_mistakes_kernels import KERNEL_MISTAKES

REPO = Path(__file__).resolve().parents[1]


def remotely(task, *args, salt=None, learner=None, **kwargs) -> dict:
    """The judge's record of `check.<task>(*args, **kwargs)` called in a learner thread."""
    judge_end, learner_end = socket.socketpair()
    judge_kernel_end, kernel_end = socket.socketpair()
    peer = remote.Peer(Channel(judge_end), strict=True, call_timeout=60)
    judge = Judge(peer, salt=salt, tasks=[task],
                  kernels=remote.Peer(Channel(judge_kernel_end), strict=True, call_timeout=60))
    learner_peer = remote.Peer(Channel(learner_end), strict=False)
    # the kernel host, as grade.py starts it beside the sandbox (no time limit: a thread)
    kernels = remote.Peer(Channel(kernel_end), strict=False,
                          services={"kernel": kernel_host._kernel})
    host = threading.Thread(target=kernel_host.serve, args=(kernels,), daemon=True)
    host.start()
    failures = []

    def run():
        try:
            if learner is not None:
                learner(learner_peer)
            else:
                runner.forwarder(learner_peer, task)(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            failures.append(exc)
        finally:
            learner_peer.channel.close()

    thread = threading.Thread(target=run)
    thread.start()
    judge.serve()
    thread.join(60)
    judge.kernels.channel.close()
    host.join(60)
    report = judge.report()
    report["learner_errors"] = failures
    return report


def in_notebook(task, impl, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return getattr(check, task)(impl, **kwargs)


# Each round trip of the channel costs ~1 ms on CI's two busy cores and a check makes up to
# hundreds: all ~350 mistakes took 150 s there. Each task's first, last and two between: every
# task's check crosses the channel with wrong answers (tests/test_check_mistakes*.py run them
# all in the notebook's way).
PER_TASK = 4


def python_mistakes() -> list[tuple[str, object]]:
    """(task, wrong implementation) from every list of tests/test_check_mistakes*.py whose
    entries name a graded task and hold a callable, in a fixed order: up to PER_TASK of each
    task's, spread over its lists."""
    tasks = set(runner.graded_tasks())
    found, seen = [], set()
    for path in sorted((REPO / "tests").glob("test_check_mistakes*.py")):
        module = importlib.import_module(f"tests.{path.stem}")
        for value in vars(module).values():
            if not isinstance(value, (list, tuple)):
                continue
            for entry in value:
                if not isinstance(entry, tuple):
                    continue
                task = next((v for v in entry if isinstance(v, str) and v in tasks), None)
                impl = next((v for v in entry if callable(v) and not isinstance(v, str)), None)
                if task and impl is not None and (task, id(impl)) not in seen:
                    seen.add((task, id(impl)))
                    found.append((task, impl))
    by_task: dict[str, list] = {}
    for task, impl in found:
        by_task.setdefault(task, []).append(impl)
    kept = set()
    for task, impls in by_task.items():
        spread = sorted({round(i * (len(impls) - 1) / (PER_TASK - 1)) for i in range(PER_TASK)})
        kept |= {(task, id(impls[i])) for i in (spread if len(impls) > PER_TASK
                                                 else range(len(impls)))}
    return [(task, impl) for task, impl in found if (task, id(impl)) in kept]


LEARNER = """
import sys
from pagedattn_lab.grading import runner
from tests.test_grade_protocol import python_mistakes
peer = runner.learner_peer(int(sys.argv[1]))
for task, impl in python_mistakes():
    runner.forwarder(peer, task)(impl)
"""


def test_every_classic_mistake_gets_the_same_verdict_from_the_judge():
    """The learner's side in its own process, as under the grader (with its time limits)."""
    log = []

    class Recording(Judge):
        def record(self, task, status, summary, cases):
            super().record(task, status, summary, cases)
            log.append((task, status, summary))

    mistakes = python_mistakes()
    assert len({task for task, _ in mistakes}) >= 20, mistakes

    judge_end, learner_end = socket.socketpair()
    learner = subprocess.Popen([sys.executable, "-c", LEARNER, str(learner_end.fileno())],
                               cwd=REPO, pass_fds=[learner_end.fileno()])
    learner_end.close()
    judge = Recording(remote.Peer(Channel(judge_end), strict=True, call_timeout=60),
                      salt=None, tasks=[task for task, _ in mistakes])
    try:
        judge.serve(idle_timeout=120)   # a silent learner fails the test, never hangs it
        assert learner.wait(60) == 0, (log[-2:], judge.report())
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait()
    here = [(task, r.status, r.summary) for task, impl in mistakes
            for r in [in_notebook(task, impl)]]
    assert log == here
    assert all(status == "failed" for _, status, _ in log)


SOLUTIONS = [("01", "MyAllocator", "allocator"), ("01", "append_tokens", "append_tokens"),
             ("07", "serve", "serve"), ("12", "schedule_step", "schedule_step")]


@pytest.mark.parametrize("number, name, task", SOLUTIONS)
def test_solutions_pass_with_a_salt_and_untouched_stubs_are_not_attempted(number, name, task):
    notebook = lessons.lesson(number).name
    scope = {}
    for folder in ("solutions", "exercises"):
        cells = json.loads((REPO / folder / notebook).read_text())["cells"]
        for cell in cells:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and "check." not in source:
                exec(source, scope)  # noqa: S102 - the course's own notebooks
        report = remotely(task, scope[name], salt=12345)["tasks"][task]
        want = "passed" if folder == "solutions" else "not attempted"
        assert report["status"] == want, report
        assert report["cases"] >= 1


@pytest.mark.parametrize("mistake", [m for i, m in enumerate(KERNEL_MISTAKES) if i in (0, 5)],
                         ids=lambda m: f"{m[0]}-{m[3]}")
def test_kernels_are_built_and_launched_by_the_kernel_host(mistake):
    task, notebook, variable, _name, edits = mistake[:5]
    source = mutate(solution_source(notebook, variable), edits)
    here = in_notebook(task, source, device="cpu")
    there = remotely(task, source, device="cpu")["tasks"][task]
    assert (there["status"], there["summary"]) == (here.status, here.summary)


def test_shared_objects_do_not_lead_to_the_graders_modules():
    reached = []

    def pages_for_next_token(cache, seq_id):
        assert isinstance(cache, proxies.Remote)   # a stand-in: the cache stays in the judge
        ask = cache._peer.request   # bypass the stand-in's own refusals, as an attacker would
        for target, name in ((cache, "xp"), (cache, "_sequences"), (cache, "__class__"),
                             (cache, "__dict__"), (cache.seq_len, "__globals__"),
                             (cache.append, "__self__"), (cache.allocator, "__init__")):
            try:
                reached.append((name, ask("getattr", target=target, name=name)))
            except (AttributeError, TypeError):
                pass
        n = cache.seq_len(seq_id)
        if n % cache.page_size == 0:
            return 1
        return 1 if cache.allocator.ref_count(cache.block_table(seq_id)[-1]) > 1 else 0

    report = remotely("pages_for_next_token", pages_for_next_token)
    assert reached == []
    assert report["tasks"]["pages_for_next_token"]["status"] == "passed"


def test_forged_handles_and_frames_get_no_verdict():
    def forge(peer):
        with pytest.raises(ReferenceError):   # a grader object that was never shared
            peer.request("call", target=proxies.RemoteCallable(peer, 424242, "x"), args=[])
        with pytest.raises(ValueError, match="no graded task"):
            peer.request("check", task="__import__", args=[], kwargs={})
        peer.channel.send({"t": "rep", "id": 1, "value": {"$dict": [["status", "passed"]]}})
        peer.channel.send({"t": "ev", "ev": "result", "data": {"$dict": [["task", "serve"]]}})
        peer.channel.sock.sendall(struct.pack(">I", 9) + b"not json!")

    report = remotely("serve", learner=forge)
    assert report["tasks"] == {} and not report["learner_errors"], report
    assert "protocol" in report["broken"]


def test_the_wire_carries_data_and_refuses_the_rest():
    Point = namedtuple("Point", "x y")
    value = [None, True, 3, 2.5, float("nan"), "s", b"\x00\x01", (1, [2]), {1: "a"}, {3},
             frozenset({4}), range(2, 9, 3), slice(1, None), 1j, np.float32(1.5),
             np.arange(6, dtype=np.int32).reshape(2, 3), np.dtype("float16"), np.float32,
             Point(1, 2)]
    tree, blobs = wire.encode(value, remote_errors.no_handles)
    back = wire.decode(json.loads(json.dumps(tree)), blobs, remote_errors.no_deref)
    assert back[5:] [:4] == ["s", b"\x00\x01", (1, [2]), {1: "a"}]
    assert np.isnan(back[4]) and back[11] == range(2, 9, 3) and back[13] == 1j
    assert back[14] == np.float32(1.5) and type(back[14]) is np.float32
    assert back[15].dtype == np.int32 and back[15].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert back[16] == np.float16 and back[17] is np.float32
    assert back[18] == (1, 2) and back[18].y == 2
    for bad in (np.array([object()]), object(), lambda: 0):
        with pytest.raises((TypeError, wire.ProtocolError)):
            wire.encode(bad, remote_errors.no_handles)
    for tree in ({"$nd": 0, "dtype": "|O", "shape": [1]}, {"$nd": 0, "dtype": "<f4",
                                                              "shape": [1000]},
                 {"$ntuple": [1], "type": "__class__", "fields": ["x"]}, {"$evil": 1},
                 # an axis of 0 beside huge ones, or sizes that wrap int64: refused, not a
                 # ValueError or OverflowError out of reshape in the judge
                 {"$nd": 0, "dtype": "<f4", "shape": [0, 2 ** 62, 2 ** 62]},
                 {"$nd": 0, "dtype": "<f4", "shape": [0, 10 ** 30]},
                 {"$nd": 0, "dtype": "<f4", "shape": [2 ** 27, 2 ** 27, 2 ** 10]}):
        with pytest.raises(wire.ProtocolError):
            wire.decode(tree, [b"\x00" * 8], remote_errors.no_deref)


def test_numpy_never_asks_a_remote_object_for_memory_addresses():
    class Peer:   # answers anything, as a hostile sandbox would
        asked = []

        def request(self, op, **fields):
            self.asked.append((op, fields.get("name")))
            if fields.get("name") == "array":
                return np.zeros(3)
            return {"data": (8, False), "shape": (4,), "typestr": "<f8", "version": 3}

    proxy = proxies.RemoteCallable(Peer(), 1, "Lies")
    assert np.asarray(proxy, dtype=np.float64).tolist() == [0.0, 0.0, 0.0]
    np.isclose(proxy, 0.0)
    assert {op for op, _ in Peer.asked} == {"special"}, Peer.asked
    assert {name for _, name in Peer.asked} == {"array"}


def test_every_check_draws_its_cases_through_case_rng():
    grading = REPO / "pagedattn_lab" / "grading"
    offenders = [p.name for p in grading.glob("*.py") if p.name != "seeds.py"
                 and re.search(r"random\.default_rng\(|random\.seed\(|RandomState\(",
                               p.read_text())]
    assert offenders == []
    plain = cases.paged_problem(3, mode="decode", seq_lens=[5], num_heads=2, num_kv_heads=1,
                                head_dim=4, page_size=4)
    with seeds.salted(99):
        salted = cases.paged_problem(3, mode="decode", seq_lens=[5], num_heads=2,
                                     num_kv_heads=1, head_dim=4, page_size=4)
    again = cases.paged_problem(3, mode="decode", seq_lens=[5], num_heads=2, num_kv_heads=1,
                                head_dim=4, page_size=4)
    assert not np.array_equal(plain.q, salted.q) and np.array_equal(plain.q, again.q)


def test_the_graded_compiler_ignores_cxx_and_include_paths(monkeypatch):
    monkeypatch.setenv("CXX", "gcc -wrapper /bin/sh,-c,touch /tmp/pwned")
    monkeypatch.setenv(compiler.GRADING_CXX, "c++")
    assert "-wrapper" not in compiler.compiler()[0]
    allowed = ["/usr/bin/c++"]
    roots = ["/box"]
    ok = ["/usr/bin/c++", "-std=c++17", "-O2", "-DX=1", "-c", "/box/a.cpp", "-o", "/box/a.o"]
    assert sandbox.compiler_call_allowed(ok, allowed, roots)
    for bad in (["/usr/bin/c++", "-wrapper", "/bin/sh,-c,id", "/box/a.cpp"],
                ["/usr/bin/c++", "-B/box/evil", "/box/a.cpp"], ["/usr/bin/c++", "@/box/args"],
                ["/usr/bin/c++", "-fplugin=/box/p.so"], ["/usr/bin/gcc", "/box/a.c"],
                ["/bin/sh", "-c", "id"], ["/usr/bin/c++", "/etc/passwd"]):
        assert not sandbox.compiler_call_allowed(bad, allowed, roots), bad


def test_table_rows_and_escaping():
    report = {"tasks": {"online_softmax": {"status": "passed", "summary": "all 6 cases passed",
                                           "cases": 6, "calls": 2}},
              "running": "attend_one", "cell_errors": [
                  {"cell": 4, "ename": "ValueError", "evalue": "=HYPERLINK(x) | <b>"}],
              "finished": False, "broken": None}
    rows = table.rows("x/03_naive_kernel.ipynb", ["online_softmax", "attend_one",
                                                  "naive_kernel"], {"timeout": True}, report, 60)
    assert [(r.task, r.result) for r in rows] == [
        ("online_softmax", "pass"), ("attend_one", "not run"), ("naive_kernel", "not run"),
        ("(notebook)", "error")]
    assert "the last check counts" in rows[0].message
    assert "during this task's check" in rows[1].message and "60 s limit" in rows[2].message
    md, csv_text = table.to_markdown(rows), table.to_csv(rows)
    assert "\\| &lt;b&gt;" in md
    assert table.to_csv([table.Row("=cmd()", "t", "fail", "-1")]).splitlines()[1] == \
        "'=cmd(),t,fail,'-1"
    assert "cell 5 raised ValueError" in csv_text
    never = table.rows("y.ipynb", ["a"], {"exit": 0}, {"tasks": {}, "finished": True}, 60)
    assert [(r.result, "never called" in r.message) for r in never] == [("not run", True)]
