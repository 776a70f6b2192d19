"""Per-launch access counts of the CPU executor (`pagedattn_lab.cpu.count_accesses`).

Each kernel in tests/kernels/counts.cu has counts that can be worked out by hand; every
number below is that hand count, so a miscounted thread, sector or request fails a test.
"""
import functools
from pathlib import Path

import numpy as np
import pytest

from pagedattn_lab import RawKernel as AnyRawKernel
from pagedattn_lab.cpu import AccessCounts, RawKernel, count_accesses

KERNELS = Path(__file__).parent / "kernels"


@functools.lru_cache(maxsize=None)
def kern(filename: str, name: str) -> RawKernel:
    return RawKernel((KERNELS / filename).read_text(), name, filename=filename)


def vector_add_counts(n, workers=None):
    a, b = np.arange(n, dtype=np.float32), np.ones(n, np.float32)
    c = np.full(n, np.nan, np.float32)
    counts = count_accesses(kern("vector_add.cu", "vector_add"), ((n + 127) // 128,), (128,),
                            (a, b, c, np.int32(n)), workers=workers)
    np.testing.assert_array_equal(c, a + b)   # the launch ran as a normal one
    return counts


def test_vector_add_per_thread_and_per_array():
    n = 300
    c = vector_add_counts(n)
    assert isinstance(c, AccessCounts)
    assert c.global_reads.shape == (3, 128)
    active = (np.arange(3 * 128) < n).reshape(3, 128)
    np.testing.assert_array_equal(c.global_reads, 2 * active)
    np.testing.assert_array_equal(c.global_writes, active)
    np.testing.assert_array_equal(c.global_read_bytes, 8 * active)
    assert c.shared_reads.sum() == c.shared_writes.sum() == 0
    a, out = c.by_buffer["a"], c.by_buffer["c"]
    assert (a.reads, a.writes, a.read_bytes, a.itemsize) == (300, 0, 1200, 4)
    assert (out.reads, out.writes, out.write_bytes) == (0, 300, 1200)
    # 9 full warps of 4 sectors and one warp of 12 lanes (48 bytes: 2 sectors), per array
    assert (a.read_requests, a.read_sectors) == (10, 38)
    assert (out.write_requests, out.write_sectors) == (10, 38)
    assert (c.requests, c.sectors) == (30, 114)
    assert c.bytes_requested == 3600 and c.sector_bytes == 3648
    assert c.thread_counts(block=2, thread=43) == dict(global_reads=2, global_writes=1,
                                                       shared_reads=0, shared_writes=0)
    assert c.thread_counts(block=2, thread=44)["global_reads"] == 0   # 2*128+44 = 300


def test_counts_do_not_depend_on_the_number_of_workers():
    one, two = vector_add_counts(1000, workers=1), vector_add_counts(1000, workers=2)
    np.testing.assert_array_equal(one.global_reads, two.global_reads)
    assert (one.requests, one.sectors) == (two.requests, two.sectors)


@pytest.mark.parametrize("stride, sectors", [(0, 1), (1, 4), (2, 8), (8, 32)])
def test_sectors_per_warp_request(stride, sectors):
    a, out = np.ones(32 * 8, np.float32), np.zeros(64, np.float32)
    c = count_accesses(kern("counts.cu", "strided_read"), 2, 32, (a, out, np.int32(stride)))
    r = c.by_buffer["a"]
    assert (r.read_requests, r.read_sectors) == (2, 2 * sectors)
    assert c.by_buffer["out"].write_sectors == 2 * 4


def test_a_float4_load_is_one_access_of_16_bytes():
    a, b = np.arange(256, dtype=np.float32), np.zeros(256, np.float32)
    c = count_accesses(kern("counts.cu", "copy_float4"), 2, 32, (a, b))
    np.testing.assert_array_equal(b, a)
    assert (c.global_reads == 1).all() and (c.global_read_bytes == 16).all()
    r = c.by_buffer["a"]
    assert (r.reads, r.read_requests, r.read_sectors) == (256, 2, 32)   # 512 bytes a warp


@pytest.mark.parametrize("stride, ways", [(1, 1), (2, 2), (32, 32), (33, 1)])
def test_shared_memory_bank_conflicts(stride, ways):
    out = np.zeros(32, np.float32)
    c = count_accesses(kern("counts.cu", "shared_stride"), 1, 32, (out, np.int32(stride)))
    np.testing.assert_array_equal(out, np.arange(32))
    assert (c.shared_reads == 1).all() and (c.shared_writes == 1).all()
    assert c.shared_requests == 2 and c.shared_wavefronts == 2 * ways


def test_an_atomic_is_one_read_and_one_write():
    counter = np.zeros(1, np.int32)
    c = count_accesses(kern("counts.cu", "count_atomic"), 3, 64, (counter,))
    assert counter[0] == 192
    assert (c.global_reads == 1).all() and (c.global_writes == 1).all()
    r = c.by_buffer["counter"]
    assert (r.write_requests, r.write_sectors) == (6, 6)


def test_2d_grid_shape_and_thread_lookup():
    a, out = np.ones(8, np.float32), np.zeros((4 * 2, 8 * 3), np.float32)
    c = count_accesses(kern("counts.cu", "triangle"), (3, 2), (8, 4), (a, out, np.int32(24)))
    assert c.global_reads.shape == (6, 32)
    for by in range(2):
        for ty in range(4):
            got = c.thread_counts(block=(2, by), thread=(5, ty))
            assert got["global_reads"] == ty + 1 and got["global_writes"] == 1
    np.testing.assert_array_equal(out, np.repeat(np.tile(np.arange(1, 5), 2), 24).reshape(8, 24))


def test_summary_is_a_readable_table():
    text = str(vector_add_counts(300))
    for needle in ("kernel 'vector_add'", "global reads", "600", "sectors/req", "3.80",
                   "30 warp requests", "114"):
        assert needle in text, needle
    assert "shared:" not in text   # no shared memory used, no shared line


def test_takes_the_device_independent_rawkernel():
    src = (KERNELS / "vector_add.cu").read_text()
    a, b, c = np.ones(64, np.float32), np.ones(64, np.float32), np.zeros(64, np.float32)
    counts = count_accesses(AnyRawKernel(src, "vector_add"), 2, 32, (a, b, c, np.int32(64)))
    assert counts.global_reads.sum() == 128 and (c == 2).all()
    with pytest.raises(TypeError, match="kernel"):
        count_accesses(src, 2, 32, (a, b, c, np.int32(64)))


def test_bad_launch_arguments_are_refused_before_counting():
    a = np.ones(64, np.float64)   # float64 for a float*
    with pytest.raises(TypeError, match="'a'"):
        count_accesses(kern("vector_add.cu", "vector_add"), 2, 32,
                       (a, a, a, np.int32(64)))
