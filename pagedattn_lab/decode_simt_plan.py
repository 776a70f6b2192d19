"""The SIMT decode kernel's (`kernels/decode.cu`) host-side plan: how many query heads a
compiled block takes, how the sequences are cut into partitions (split-K), its shared memory.
decode_plan.py re-exports these names (`decode_plan.choose_partitions` is what lessons call)."""
from __future__ import annotations

import numpy as np

from .attention_common import THREADS
from .validate import INT32_MAX


def cut_longest(max_len: int, num_splits: int) -> int:
    """Partition length that cuts the longest sequence into `num_splits` parts."""
    return -(-max_len // min(num_splits, max_len))


SIMT_GROUPS = (1, 2, 4, 8)   # query heads per block (GMAX): one compiled kernel each
PART_LEN = 512               # tokens per partition when splitting (a multiple of page sizes)
MIN_PART_LEN = 128           # automatic splitting never goes below this
BLOCKS_PER_SM = 4            # automatic splitting aims for this many blocks per SM
# Tokens decode.cu may count past a sequence's last one, in int32: a step of its loads
# beyond the partition's end (ngroups x U tokens: at most THREADS x 4 with the unrolls of
# kernels/decode_params.cuh), with room to spare
TOKEN_MARGIN = THREADS * 16
SIMT_MAX_TOKENS = INT32_MAX + 1 - TOKEN_MARGIN   # the longest sequence decode.cu counts


def group_kernel_size(group: int) -> int:
    """The smallest compiled group size (GMAX) that holds `group` query heads, or 8."""
    return next((g for g in SIMT_GROUPS if group <= g), SIMT_GROUPS[-1])


def choose_partitions(seq_lens, blocks_per_partition: int, num_sms: int,
                      num_splits: int | None = None, longest: int = PART_LEN) -> tuple[int, int]:
    """SIMT: (part_len, max_parts), how to cut the sequences into partitions.

    num_splits=None (automatic): partitions of `longest` (PART_LEN) tokens; halved (down to
    MIN_PART_LEN) while the grid would have fewer than BLOCKS_PER_SM blocks per SM;
    no split at all when the longest sequence fits in one partition.
    num_splits=n: the longest sequence is cut into n partitions (1 = never split).
    max_parts is the number of partitions of the longest sequence. (A pure helper that
    lessons call: the plan checks the kernel's int32 counts of them, check_token_range.)
    """
    lens = np.asarray(seq_lens, dtype=np.int64)
    max_len = int(lens.max())
    if num_splits is not None:
        part_len = cut_longest(max_len, num_splits)
    else:
        part_len = longest
        while (part_len > MIN_PART_LEN and
               int((-(-lens // part_len)).sum()) * blocks_per_partition < BLOCKS_PER_SM * num_sms):
            part_len //= 2
        part_len = min(part_len, max_len)
    return part_len, -(-max_len // part_len)


def check_token_range(lens: np.ndarray, part_len: int) -> None:
    """decode.cu counts a sequence's tokens in int32: a split one's partition ends (start +
    part_len) and merge count (seq_len + part_len - 1), and the load step past the last
    token. Refuse lengths that take them past 2^31 - 1, where they wrap (2^31 - 1 tokens in
    two partitions merged to NaN: no partition counted). (The tensor-core kernels' own
    bounds: decode_work.check_tc_int32.)"""
    b = int(lens.argmax())
    n = int(lens[b])
    split = part_len < n
    by_partition = split and part_len > TOKEN_MARGIN   # (else the loads' step sets the reach)
    reach = part_len if by_partition else TOKEN_MARGIN
    if n - 1 + reach > INT32_MAX:
        where = (f"in partitions of {part_len}: the simt kernel counts a sequence's tokens in "
                 f"int32, and a partition's end passes 2^31 - 1 (at most "
                 f"{INT32_MAX + 1 - reach} tokens with these partitions; num_splits cuts them "
                 f"shorter)" if by_partition else
                 f"{f'in partitions of {part_len}' if split else 'in one partition'}: the simt "
                 f"kernel counts a sequence's tokens in int32, and its last load step's end "
                 f"passes 2^31 - 1 (at most {SIMT_MAX_TOKENS} tokens)")
        raise ValueError(f"seq_lens[{b}]: {n} tokens {where}")


def simt_shared_bytes(gmax: int, head_dim: int) -> int:
    """The SIMT block's shared memory: per warp and head, a max, a sum and a head of floats."""
    return THREADS // 32 * gmax * (2 + head_dim) * 4
