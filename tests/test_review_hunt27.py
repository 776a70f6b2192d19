"""From a review of the step roll-back, the kernel host and the dtype reader (hunt 27):
each test failed before its fix."""
import os
import socket
import threading

from pagedattn_lab.grading import kernel_host, remote, runner, wire
from pagedattn_lab.grading.channel import Channel
from pagedattn_lab.grading.judge import Judge
from tests.check_helpers import solution_source


def test_a_grader_that_stops_waiting_during_a_launch_is_not_a_crashed_kernel_host():
    """The sandbox ran out of time while the judge waited on the kernel host: the grader
    closes the judge's stdin (abort_fd, shared by both channels). The check was interrupted
    (the table says 'time limit ... during this task's check'); it is not a kernel that
    brought the kernel host down (it said 'kernel host ended ... crashed')."""
    abort_r, abort_w = os.pipe()
    judge_end, learner_end = socket.socketpair()
    judge_kernel_end, kernel_end = socket.socketpair()
    judge = Judge(remote.Peer(Channel(judge_end, abort_fd=abort_r), strict=True,
                              call_timeout=60), salt=None, tasks=["gather_kernel"],
                  kernels=remote.Peer(Channel(judge_kernel_end, abort_fd=abort_r),
                                      strict=True, call_timeout=60))
    launched, release = threading.Event(), threading.Event()

    def slow_build(peer, header, blobs):   # a build that outlasts the sandbox
        launched.set()
        release.wait(60)
        raise RuntimeError("never mind")

    host = remote.Peer(Channel(kernel_end), strict=False, services={"kernel": slow_build})
    threading.Thread(target=kernel_host.serve, args=(host,), daemon=True).start()
    learner = remote.Peer(Channel(learner_end), strict=False)
    source = solution_source("02_page_access.ipynb", "SOURCE_GATHER")

    def notebook():
        try:
            runner.forwarder(learner, "gather_kernel")(source, device="cpu")
        except (Exception, wire.ChannelClosed):   # noqa: BLE001 - its channel is cut
            pass

    threading.Thread(target=notebook, daemon=True).start()
    serving = threading.Thread(target=judge.serve, daemon=True)
    serving.start()
    try:
        assert launched.wait(60)
        learner_end.shutdown(socket.SHUT_RDWR)   # the sandbox is gone (its time limit)
        os.close(abort_w)                        # the grader closes the judge's stdin
        serving.join(60)
        assert not serving.is_alive()
        report = judge.report()
        assert report["running"] == "gather_kernel", report
        assert "gather_kernel" not in report["tasks"], report
    finally:
        release.set()
        os.close(abort_r)


def test_a_count_that_reads_the_pool_is_not_blamed_on_a_shift():
    """pages_for_next_token answering 0 when no page is free (the pool drained) got, at
    page_size 6, the shifts-and-masks hint: a shifted answer is wrong with pages free too,
    where this one answered right; the hint is the drained pool's, as at page_size 4 and 16."""
    import contextlib
    import io

    from pagedattn_lab import check

    def reads_the_pool(cache, seq_id):
        if cache.allocator.num_free == 0:
            return 0
        n, table = cache.seq_len(seq_id), cache.block_table(seq_id)
        return int(n % cache.page_size == 0 or cache.allocator.ref_count(table[-1]) > 1)

    with contextlib.redirect_stdout(io.StringIO()):
        result = check.pages_for_next_token(reads_the_pool)
    failed = [c for c in result.cases if c.status == "failed"]
    assert len(failed) == 3, result.cases
    for case in failed:
        assert "no page is free here" in case.hint, (case.params, case.hint)


def test_an_unscaled_score_hint_names_the_cases_scale():
    """A manager passing scale 1.0 fails every case with 'not scaled'; in the case of a
    manager made with scale 0.3 the hint said self.scale was 1 / sqrt(head_dim)."""
    from tests.check_helpers import run_check
    from tests.test_check_overfit_hunt25 import _manager

    result, printed = run_check("decode_step", _manager(lambda m: 1.0))
    hints = {c.params.get("scale"): c.hint for c in result.cases if not c.passed}
    assert 0.3 in hints, printed
    assert "not scaled" in hints[0.3] and "0.3" in hints[0.3], hints[0.3]
    assert "1 / sqrt(head_dim))" not in hints[0.3], hints[0.3]


def test_the_prefill_kernels_unscaled_hint_names_the_cases_scale():
    from pagedattn_lab.grading.cases import paged_problem
    from pagedattn_lab.grading.variants import attention_mistakes

    prob = paged_problem(59, mode="prefill", seq_lens=[20, 13], num_heads=6, num_kv_heads=2,
                         head_dim=24, page_size=6, max_len=21, scale=0.3)
    hint = next(h for h, _ in attention_mistakes(prob) if "not scaled" in h)
    assert "0.3" in hint and "(1/sqrt(head_dim))" not in hint, hint


def test_a_kernel_with_a_harmless_shift_gets_the_hint_its_output_shows():
    """The shift hint reads only the source (any << or >>): it spoke before the hints read
    off the output, so a kernel that shifts for a good reason (here a halving it never
    uses) and leaves dims 16.. unwritten where head_dim is 24 was told to stop shifting."""
    from tests.check_helpers import mutate, run_check

    source = mutate(solution_source("04_naive_kernel.ipynb", "SOURCE_NAIVE"), [
        ("    for (int d = 0; d < head_dim; ++d) out[row + d] = acc[d] / running_sum;",
         "    int half = head_dim >> 1;   // (unused)\n"
         "    int stored = head_dim < 16 ? head_dim : head_dim / 16 * 16;\n"
         "    for (int d = 0; d < stored; ++d) out[row + d] = acc[d] / running_sum;")])
    result, printed = run_check("naive_kernel", source, device="cpu")
    failed = [c for c in result.cases if not c.passed]
    assert [c.params.get("head_dim") for c in failed] == [24], printed
    assert "shifts or masks" not in failed[0].hint, failed[0].hint
    assert "only dims 0..15 of each row were written" in failed[0].hint, failed[0].hint
