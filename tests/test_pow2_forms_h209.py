"""Helper 209: the serve, schedule_step, wire_bytes and block_hashes checks name a page count
written with shifts and masks in ANY of their mixes (compare.pow2_mixes), not the one
`(n + p - 1) >> log2(p)` alone: a learner who shifts for // and keeps % (or masks for % and
keeps //) is as wrong at page_size 6 or 12 as one who shifts both. An answer that shifts
only where page_size is a power of two is right, and passes.
"""
import numpy as np
import pytest

from pagedattn_lab.engine.prefix_cache import hash_block
from tests.check_helpers import beyond_held, run_check, schedule_step_answer
from tests.serve_loops import serve_loop, spec_admission

POW2 = "only when n is a power of two"
STEP_POW2 = "only when page_size is a power of two"


def _lg(n):
    return int(n).bit_length() - 1


def _pow2(n):
    return n & (n - 1) == 0


def _shifted_div_kept_mod(n, p):
    return (n >> _lg(p)) + (n % p != 0)


def _shifted_div_masked_mod(n, p):
    return (n >> _lg(p)) + (n & (p - 1) != 0)


def _masked_mod(n, p):
    return n // p + (n & (p - 1) != 0)


def _negated_shift(n, p):
    return -((-n) >> _lg(p))


def _ceil_shifting_at_powers_of_two(n, p):   # right: a shift only where it stands for //
    return (n + p - 1) >> _lg(p) if _pow2(p) else -(-n // p)


# -- serve (workbook 07) ---------------------------------------------------------------------

def _serve(ceil):
    return serve_loop(spec_admission, pages_for=ceil)


# -- schedule_step (workbook 12, task 3) -----------------------------------------------------

def _schedule_step(ceil):
    """schedule_step with every page count by `ceil`."""
    return schedule_step_answer(beyond_held(ceil), ceil)


# -- wire_bytes (workbook 13, task 3) --------------------------------------------------------

def _wire_bytes(ceil):
    def wire_bytes(seq_lens, num_heads, num_kv_heads, head_dim, page_size, world_size,
                   itemsize):
        batch = len(seq_lens)
        pages = ceil(int(max(seq_lens)), page_size)
        tables = 4 * (2 + batch + batch * pages)
        output_share = batch * (num_heads // world_size) * head_dim * itemsize
        kv_read = int(np.sum(seq_lens)) * 2 * (num_kv_heads // world_size) * head_dim * itemsize
        return tables, output_share, kv_read
    return wire_bytes


# -- block_hashes (workbook 12, task 1): a floor, the full blocks ---------------------------

def _hashes_from_starts(token_ids, page_size, starts):
    hashes, parent = [], None
    for start in starts:
        parent = hash_block(parent, token_ids[start:start + page_size])
        hashes.append(parent)
    return hashes


def block_hashes_end_shifted(token_ids, page_size):
    """The full blocks' tokens end at (n // p) << log2(p)."""
    end = (len(token_ids) // page_size) << _lg(page_size)
    return _hashes_from_starts(token_ids, page_size, range(0, end, page_size))


def block_hashes_starts_shifted(token_ids, page_size):
    """Block i starts at i << log2(p)."""
    starts = [i << _lg(page_size) for i in range(len(token_ids) // page_size)]
    return _hashes_from_starts(token_ids, page_size, starts)


def block_hashes_shifting_at_powers_of_two(token_ids, page_size):   # right
    count = len(token_ids) >> _lg(page_size) if _pow2(page_size) else \
        len(token_ids) // page_size
    starts = [i << _lg(page_size) if _pow2(page_size) else i * page_size
              for i in range(count)]
    return _hashes_from_starts(token_ids, page_size, starts)


# (task, answer, how it is written, whether at some case whose page_size is not a power of
# two no other mistake gives its answer: the hint there is the shifts' alone; else they are
# one of several mistakes named)
MIXED = [
    ("serve", _serve(_shifted_div_kept_mod), "shift for //, % kept", True),
    ("serve", _serve(_masked_mod), "mask for %", True),
    ("serve", _serve(_negated_shift), "-((-n) >> log2 p)", True),
    ("schedule_step", _schedule_step(_negated_shift), "-((-n) >> log2 p)", True),
    ("schedule_step", _schedule_step(_masked_mod), "mask for %", False),
    ("wire_bytes", _wire_bytes(_shifted_div_masked_mod), "shift for //, mask for %", True),
    ("wire_bytes", _wire_bytes(_masked_mod), "mask for %", False),   # (a floor too, at 52)
    ("block_hashes", block_hashes_end_shifted, "shift for * in the end", True),
    ("block_hashes", block_hashes_starts_shifted, "shift for * in the starts", True),
]


def _hints_where_page_size_is_not_a_power_of_two(task, impl):
    """The failed cases' hints; they are the cases whose page_size is not a power of two
    (the mix is right at the others)."""
    result, printed = run_check(task, impl)
    failed = [c for c in result.cases if not c.passed]
    assert failed and not any(_pow2(c.params.get("page_size", 1)) for c in failed), printed
    return [c.hint for c in failed], printed


@pytest.mark.parametrize("task, impl, how, alone", MIXED,
                         ids=[f"{t}-{h}" for t, _, h, _ in MIXED])
def test_a_page_count_with_any_mix_of_shifts_and_masks_is_named(task, impl, how, alone):
    hints, printed = _hints_where_page_size_is_not_a_power_of_two(task, impl)
    phrase = STEP_POW2 if task == "schedule_step" else POW2
    assert all(phrase in h for h in hints), printed
    several = [h.startswith("these mistakes give the same") for h in hints]
    assert not all(several) if alone else all(several), printed


RIGHT = [
    ("serve", _serve(_ceil_shifting_at_powers_of_two)),
    ("schedule_step", _schedule_step(_ceil_shifting_at_powers_of_two)),
    ("wire_bytes", _wire_bytes(_ceil_shifting_at_powers_of_two)),
    ("block_hashes", block_hashes_shifting_at_powers_of_two),
]


@pytest.mark.parametrize("task, impl", RIGHT, ids=[t for t, _ in RIGHT])
def test_shifts_where_page_size_is_a_power_of_two_pass(task, impl):
    result, printed = run_check(task, impl)
    assert result.passed, printed
