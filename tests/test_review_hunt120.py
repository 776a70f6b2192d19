"""Review of hunts 115, 116 and 118 (hunt 120): serve's cache hooks take the cache's own
parameter names, leave malformed rows to the cache, and count an admission only once its
prompt is in; a strided torch block table, seq_lens or slot_mapping is told torch's fix."""
from collections import deque

import numpy as np
import pytest

from pagedattn_lab.paging import OutOfPagesError


def _pages(n, page_size):
    return -(-n // page_size)


def _spec_serve(cache, requests, kv_for):
    """The spec's loop, passing every cache argument by keyword."""
    waiting, running, finished = deque(range(len(requests))), {}, []
    while waiting or running:
        while waiting:
            i = waiting[0]
            promised = sum(_pages(sum(requests[j]), cache.page_size) -
                           _pages(cache.seq_len(s), cache.page_size) for j, s in running.items())
            if _pages(sum(requests[i]), cache.page_size) > cache.allocator.num_free - promised:
                break
            waiting.popleft()
            running[i] = cache.add_sequence()
            k, v = kv_for(i, 0, requests[i][0])
            cache.append(seq_id=running[i], k=k, v=v)
        for i, s in list(running.items()):
            if cache.seq_len(s) < sum(requests[i]):
                k, v = kv_for(i, cache.seq_len(s), 1)
                cache.append(seq_id=s, k=k, v=v)
            if cache.seq_len(s) == sum(requests[i]):
                cache.free_sequence(seq_id=s)
                del running[i]
                finished.append(i)
    return finished


def test_serve_check_passes_a_loop_that_passes_the_cache_arguments_by_keyword():
    # the grader's hooks took (sid, k, v) and (sid): a right loop failed with "append() got
    # an unexpected keyword argument 'seq_id'" from the grader's own code
    from tests.check_helpers import run_check
    result, printed = run_check("serve", _spec_serve)
    assert result.passed, printed


def test_serve_check_leaves_a_0d_key_to_the_cache_error():
    # the append hook took len() of a 0-d array: "TypeError: len() of unsized object" from
    # the grader, in place of the cache's error naming k
    from tests.check_helpers import run_check

    def scalar_rows(cache, requests, kv_for):
        s = cache.add_sequence()
        cache.append(s, np.array(1.0, np.float32), np.array(1.0, np.float32))
    result, printed = run_check("serve", scalar_rows)
    assert not result.passed
    first = next(c for c in result.cases if not c.passed)
    text = " ".join(printed.split())
    assert "k: expected 3 dimensions" in text, printed
    assert "unsized" not in text and first.name


def _admits_by_trying(cache, requests, kv_for):
    """Admits while the prompt's append succeeds (catching the cache's refusal and waiting),
    and returns the finish order reversed (a mistake no known finish order names)."""
    waiting, running, finished = deque(range(len(requests))), {}, []
    while waiting or running:
        while waiting:
            i, s = waiting[0], cache.add_sequence()
            try:
                cache.append(s, *kv_for(i, 0, requests[i][0]))
            except OutOfPagesError:
                cache.free_sequence(s)
                break
            waiting.popleft()
            running[i] = s
        for i, s in list(running.items()):
            if cache.seq_len(s) < sum(requests[i]):
                cache.append(s, *kv_for(i, cache.seq_len(s), 1))
            if cache.seq_len(s) == sum(requests[i]):
                cache.free_sequence(s)
                del running[i]
                finished.append(i)
    return finished[::-1]


def test_serve_refused_prompt_append_is_no_admission():
    # request 1's prompt (4 pages, 3 free) is refused and the loop waits on it; the hook had
    # counted it admitted, so request 2 was named the head of the queue, "waiting" though it
    # fit, with two admission mistakes this loop does not make
    from pagedattn_lab.grading.checks_serve import _serve_case
    from pagedattn_lab.grading.report import Mismatch
    with pytest.raises(Mismatch) as caught:
        _serve_case(_admits_by_trying, 1, [(4, 8), (16, 0), (1, 1), (1, 1)], 4, 4)
    assert caught.value.message == "the order the requests finished in"
    assert "request 2 waited" not in caught.value.hint, caught.value.hint
    assert "counts their whole totals" not in caught.value.hint


def test_hash_block_checks_a_uint64_array_at_array_speed(monkeypatch):
    # hunt 118 sent every uint64 array through a Python loop, token by token (15-30 us a
    # block of 16, from 1.3): its range is checked as one array now, its refusal unchanged
    from pagedattn_lab.engine import prefix_cache
    ids = np.arange(1000, 1016, dtype=np.uint64)
    expected = prefix_cache.hash_block(None, ids.astype(np.int64))
    calls = []
    original = prefix_cache.int64_token
    monkeypatch.setattr(prefix_cache, "int64_token",
                        lambda t, where: calls.append(where) or original(t, where))
    assert prefix_cache.hash_block(None, ids) == expected
    assert calls == []
    ids[3] = 2**63
    with pytest.raises(ValueError, match=r"^token_ids\[3\]: .*got 9223372036854775808$"):
        prefix_cache.hash_block(None, ids)


def test_offset_hint_says_where_the_missing_head_stride_lands():
    # hunt 115's hint said every slot from 1 on lands in an earlier slot's values: slot 1's
    # last head lands in slot 1 itself (its head 0), the one exception
    from pagedattn_lab.addressing import element_offset
    from pagedattn_lab.grading.offset_hints import offset_variants
    for heads in (2, 3, 4):
        hint, _ = offset_variants(1, heads - 1, 0, heads, 8)[0]
        for slot in range(1, 6):
            for h in range(heads):
                wrong = offset_variants(slot, h, 0, heads, 8)[0][1]
                assert wrong < element_offset(slot, h, 0, heads, 8)   # "falls short"
                lands = wrong // (heads * 8)
                assert lands < slot or (slot, h, wrong % (heads * 8)) == (1, heads - 1, 0)
        assert "slot 1's last head: in its own head 0" in hint, hint


torch = pytest.importorskip("torch")


def _strided_ints(values):
    """A torch int32 view with stride 2 holding `values`."""
    return torch.tensor([v for x in values for v in (x, -1)], dtype=torch.int32)[::2]


@pytest.mark.parametrize("entry", ["decode", "prefill"])
@pytest.mark.parametrize("which", ["block_tables", "seq_lens"])
def test_attention_names_torch_contiguous_for_a_strided_int_tensor(entry, which):
    # hunt 118 told q and the caches torch's .contiguous(); block_tables and seq_lens were
    # still told np.ascontiguousarray, a NumPy fix for a torch tensor
    from pagedattn_lab.attention_decode import paged_attention_decode
    from pagedattn_lab.attention_prefill import paged_attention_prefill
    k_cache = torch.zeros(4, 4, 2, 64)
    args = {"block_tables": torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
            "seq_lens": torch.tensor([3, 5], dtype=torch.int32)}
    if which == "block_tables":
        args[which] = torch.tensor([[0, -1, 1, -1], [2, -1, 3, -1]], dtype=torch.int32)[:, ::2]
    else:
        args[which] = _strided_ints([3, 5])
    assert not args[which].is_contiguous()
    if entry == "decode":
        call = lambda: paged_attention_decode(torch.zeros(2, 4, 64), k_cache, k_cache,  # noqa: E731
                                              args["block_tables"], args["seq_lens"])
    else:
        call = lambda: paged_attention_prefill(torch.zeros(2, 5, 4, 64), k_cache,  # noqa: E731
                                               k_cache, args["block_tables"], args["seq_lens"])
    with pytest.raises(ValueError, match=rf"^{which}: .*call {which}\.contiguous\(\) first"):
        call()


def test_write_kv_names_torch_contiguous_for_a_strided_slot_mapping():
    from pagedattn_lab.cache_write import write_kv
    k_cache, v_cache = torch.zeros(4, 4, 2, 8), torch.zeros(4, 4, 2, 8)
    k = torch.ones(3, 2, 8)
    slots = torch.arange(6, dtype=torch.int64)[::2]
    with pytest.raises(ValueError, match=r"^slot_mapping: .*slot_mapping\.contiguous\(\)"):
        write_kv(k, k, k_cache, v_cache, slots)
    assert not k_cache.any() and not v_cache.any()   # refused before anything is written
