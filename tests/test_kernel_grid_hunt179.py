"""Hunt 179: an outside team's numeric grid over the kernels on the CPU executor (decode simt
and tensor cores, prefill, compressed pages, cache writes) against its own float64 attention:
lengths 1, page-1, page, page+1, several pages + 1; pages 1, 3, 16, 64; GQA 1, 2, 5, 8, 32;
head sizes 4-256; fp16, bf16, fp32; shared and shuffled pages, poison in unused slots and
pages; overflowing, equal and -inf-like scores; out= poisoned. All within the dtype's bound
(the packed-fp16 compressed SIMT path within its stated one) but for the test below."""
import numpy as np

from pagedattn_lab import BatchDecodeWrapper


def test_describe_counts_one_of_a_thing_in_the_singular():
    """describe() of a tensor-core plan with one sequence and one query head per block read
    "1 sequences, ... 1 query heads per block as the rows of Q": each count is the noun's
    singular at 1 (as the simt plan's "up to 1 query head per block" already was)."""
    w = BatchDecodeWrapper().plan(np.array([[0]], np.int32), np.array([1], np.int32), 2, 2, 64,
                                  16, "float16", kernel="tensor_core")
    text = w.describe()
    assert text.startswith("tensor_core: 1 sequence, 2 query heads over 2 KV heads (group 1), "
                           "1 query head per block as the rows of Q (1 tile of 16, "), text
    assert "partitions of 1 token (at most 1 per sequence)" in text, text
