"""Hunt 86: test_paging's `CacheMachine` (add / append / fork / free, failed transactions,
copy on write of a shared tail) over compressed pages: int8 and fp8 codes with per-token
scales (copied with the tail, put back by a failed transaction), int8 with static scales.
Every token reads back as the NumPy reference's quantize-dequantize of what was appended."""
import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from pagedattn_lab import quant
from pagedattn_lab.cache import PagedKVCache

from .test_paging import CacheMachine


class CompressedCacheMachine(CacheMachine):
    kv_dtype, scheme = "int8", "per_token"

    def __init__(self):
        super().__init__()
        static = np.array([5.0], np.float32) if self.scheme == "static" else None
        self.cache = PagedKVCache(12, 3, 1, 2, device="cpu", kv_dtype=self.kv_dtype,
                                  scale_scheme=self.scheme, k_scale=static, v_scale=static)

    def _fresh(self, n):
        """Values of both signs and many sizes (per-token scales differ row to row)."""
        rows = super()._fresh(n)
        return (rows - self.counter / 2) * (1 + rows % 3)

    def _round_trip(self, x):
        static = None if self.scheme == "per_token" else self.cache.k_scale
        codes, scales = quant.quantize_rows(x, self.kv_dtype, self.scheme, static)
        return quant.dequantize(codes, self.kv_dtype, scales)

    def _scales(self):
        if self.scheme != "per_token":
            return None
        return self.cache.k_scale.copy(), self.cache.v_scale.copy()

    @rule(data=st.data(), n_ops=st.integers(1, 4))
    def failed_transaction(self, data, n_ops):
        """(CacheMachine's, and the per-token scales put back too.)"""
        before = self._scales()
        super().failed_transaction(data, n_ops)
        after = self._scales()
        if before is not None:
            for a, b in zip(before, after):
                np.testing.assert_array_equal(a, b)

    @invariant()
    def every_token_reads_back_exactly(self):
        for seq, keys in self.expected.items():
            assert self.cache.seq_len(seq) == len(keys)
            got_k, got_v = self.cache.gather(seq)
            np.testing.assert_array_equal(got_k, self._round_trip(keys))
            np.testing.assert_array_equal(got_v, self._round_trip(-keys))


class Fp8CacheMachine(CompressedCacheMachine):
    kv_dtype = "fp8_e4m3"


class StaticInt8CacheMachine(CompressedCacheMachine):
    scheme = "static"


SETTINGS = settings(max_examples=40, stateful_step_count=30, deadline=None)
for machine in (CompressedCacheMachine, Fp8CacheMachine, StaticInt8CacheMachine):
    machine.TestCase.settings = SETTINGS
TestCompressedCacheMachine = CompressedCacheMachine.TestCase
TestFp8CacheMachine = Fp8CacheMachine.TestCase
TestStaticInt8CacheMachine = StaticInt8CacheMachine.TestCase
