"""The course's tensor-core kernels under the CPU executor's shared-memory race check.

Within a warp only __syncwarp() orders shared memory (as compute-sanitizer's racecheck holds
on a GPU): an ldmatrix or WMMA load of a tile other lanes copied, or a read of what another
lane stored, needs a barrier first. Each source runs once here, race-checked, on a small
problem that takes its split-K merge and a GQA group: decode_tc.cu (WMMA), decode_mma.cu,
decode_mma_rows.cu over 16-bit pages and over codes (static and per-token scales; the
8-bit-mma path for S), prefill_tc.cu (WMMA) and prefill_mma.cu. Outputs are checked against
the float64 reference too, so a run that raced and came out right still fails only on the
race.
"""
import numpy as np
import pytest

from pagedattn_lab import decode_plan as dp

from .decode_cases import check_close, cpu_executor_has, decode_problem, poisoned, reference
from .test_decode_tc_quant import launch, planned, quantized
from .test_prefill_mma import plant
from .test_prefill_wrapper import check_wrapper

pytestmark = pytest.mark.skipif(not cpu_executor_has("mma.h"),
                                reason="the CPU executor's shim has no WMMA (mma.h) yet")


@pytest.fixture(autouse=True)
def racecheck(monkeypatch):
    monkeypatch.setenv("PAGEDATTN_LAB_CPU_RACECHECK", "1")


DECODE = [   # impl, kv_dtype, scheme, options of tc_config
    ("wmma", None, None, {}),
    ("mma", None, None, {}),
    ("mma", None, None, {"separate_merge": True}),
    ("rows", None, None, {}),
    ("rows", "fp8_e4m3", "static", {}),
    ("rows", "int8", "per_token", {}),
    ("rows", "int8", "static", {"qk_mma8": True}),
    ("mma", "fp8_e4m3", "per_token", {}),
]


@pytest.mark.parametrize("impl, kv_dtype, scheme, options", DECODE,
                         ids=[f"{d[0]}-{d[1] or 'fp16'}-{d[2] or ''}-{'-'.join(d[3])}"
                              for d in DECODE])
def test_decode_kernels_are_race_free(rng, impl, kv_dtype, scheme, options):
    heads, kv, head_dim, page, splits = 8, 2, 128, 16, 2
    args = decode_problem(rng, [1, 17, 150], page_size=page, num_heads=heads, num_kv_heads=kv,
                          head_dim=head_dim, dtype="float16")
    q, k, v, tables, lens = args
    quant = dp.KV_QUANT_IDS[kv_dtype] if kv_dtype else 0
    cfg = dp.tc_config("float16", head_dim, heads // kv, quant, scheme == "per_token",
                       impl=impl, **options)
    assert cfg.impl == impl
    w = planned(args, heads, kv, head_dim, page, "float16", splits, cfg)
    if kv_dtype is None:
        out = launch(w, q, k, v, None, None, poisoned(q.shape, "float16"))
    else:
        kc, vc, ks, vs, kd, vd = quantized(rng, args, kv_dtype, scheme)
        out = launch(w, q, kc, vc, ks, vs, poisoned(q.shape, "float16"))
        args = (q, kd, vd, tables, lens)
    check_close(out, reference(args), "float16")


@pytest.mark.parametrize("variant", ["w4r2k64u2", "mw4r2k64q", "mw2r1k32p4"])
def test_prefill_kernels_are_race_free(rng, variant):
    """A prompt past one tile, a chunk over a cached prefix and a decode token; GQA 4/2."""
    check_wrapper(np, rng, [70, 40, 23], [70, 5, 1], 16, 4, 2, 64, variant=variant)


PLANTED = [   # (what is left out of prefill_mma.cu, the line that goes, what it goes for)
    ("the barrier after the Q tile's wait",
     "copy_wait<STAGES - 1>();          // the Q tile has landed\n    __syncthreads();",
     "copy_wait<STAGES - 1>();"),
    ("the barrier after a K/V tile's wait",
     "__syncthreads();              // ... and everyone else's", ""),
    ("a K/V tile's wait",
     "copy_wait<STAGES - 2>();      // this thread's copies of this tile have landed", ""),
]
# Without the wait the copies never land before they are read: no race (no write comes
# after the reads), but the tile holds the executor's NaN poison: the outputs show it.
CAUGHT_BY = {"a K/V tile's wait": (AssertionError, "some outputs were not written")}


@pytest.mark.parametrize("what, line, replacement", PLANTED, ids=[p[0] for p in PLANTED])
def test_a_planted_race_is_caught(rng, monkeypatch, what, line, replacement):
    """The tests can fail: a copy of prefill_mma.cu without a barrier or a wait of its copy
    pipeline is caught. With the copies landing at their waits (cpu/shim_async.h), as late as
    a GPU may land them, a missing barrier is a race here, as on a GPU, and a missing wait
    leaves the tile unwritten; with synchronous copies the first and the last went unseen."""
    from pagedattn_lab.cpu import SharedMemoryRace
    plant(monkeypatch, line, replacement)
    error, match = CAUGHT_BY.get(what, (SharedMemoryRace, None))
    with pytest.raises(error, match=match):
        check_wrapper(np, rng, [70], [70], 16, 2, 1, 64, variant="mw4r2k64q")
