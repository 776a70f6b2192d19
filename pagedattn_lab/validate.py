"""Input checks shared by every public function.

CuPy's RawKernel checks nothing: a float64 array passed to a `float*` parameter, or a
page id past the end of the cache, silently produces garbage or corrupts memory. So every
public entry point calls these checks first (validate_out.py holds those of the arrays a
kernel writes, validate_values.py those of the values an array holds, validate_scale.py that
of the softmax scale, validate_memory.py the refusal of work past the device's memory,
backend.py the refusal of a strided array, check_contiguous). Each error names the argument,
what was expected and what came, and is raised before anything is launched or written.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .backend import check_contiguous, data_pointer, is_cupy_array, to_numpy_together
from .validate_kinds import dtype_label, integer_conversion, is_int, type_label
from .validate_values import real_values  # noqa: F401 - re-exported: a check, found here
from .words import counted

CACHE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
INT32_MAX = 2**31 - 1        # sizes the kernels take as int arguments
MAX_PAGES = INT32_MAX        # block tables hold page ids as int32
# Where bfloat16 is expected of a NumPy uint16 array: its integers are no bfloat16 on the CPU
BF16_BITS_HINT = (" (bfloat16 bits? uint16 holds them on CuPy only; on the CPU view them as "
                  "bfloat16: x.view(ml_dtypes.bfloat16))")


def bf16_bits_hint(x, bfloat16_expected: bool) -> str:
    """BF16_BITS_HINT where a NumPy uint16 array came for bfloat16, else "" (every entry
    point's refusal of a dtype adds it the same way)."""
    return BF16_BITS_HINT if bfloat16_expected and isinstance(x, np.ndarray) and \
        x.dtype == np.uint16 else ""


def check_array(x, name: str, *, ndim: int | None = None, dtypes=None,
                contiguous: bool = True):
    """Refuse anything that is not a NumPy/CuPy array of the given rank and dtype."""
    if not (isinstance(x, np.ndarray) or is_cupy_array(x)):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type_label(x)}")
    check_plain(x, name)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {counted(ndim, 'dimension')}, got shape "
                         f"{tuple(x.shape)} ({counted(x.ndim, 'dimension')})")
    if dtypes is not None:
        allowed = [np.dtype(d) for d in dtypes]
        if x.dtype not in allowed:
            names = [d.name for d in allowed]
            library = "cupy" if is_cupy_array(x) else "np"
            raise TypeError(f"{name}: expected dtype {' or '.join(names)}, got "
                            f"{dtype_label(x.dtype)}{bf16_bits_hint(x, 'bfloat16' in names)}"
                            f"{integer_conversion(x.dtype, allowed, name, library)}")
    if contiguous:
        check_contiguous(x, name)
    misaligned = element_misalignment(x)
    if misaligned:
        raise ValueError(f"{name}: expected data aligned to its {x.dtype.itemsize}-byte "
                         f"elements, got an address {counted(misaligned, 'byte')} past such a "
                         f"boundary (a view at a byte offset: the GPU faults on a misaligned "
                         f"load); pass a copy")
    return x


def check_plain(x, name: str) -> None:
    """Refuse the NumPy subclasses whose memory is not the array they stand for (a memmap's
    is): a masked array, whose mask no kernel or check sees, and np.matrix, 2-D under indexing
    (to_csr gave page id -1 from one, indices of shape [1, n] from the other)."""
    ma = sys.modules.get("numpy.ma")   # not imported: no masked array exists (nor its cost)
    if ma is not None and isinstance(x, ma.MaskedArray):
        raise TypeError(f"{name}: expected a plain NumPy array, got a masked array (its mask "
                        f"would be ignored and the values under it read); pass "
                        f"{name}.filled(value) to say what the masked entries hold")
    if isinstance(x, np.matrix):
        raise TypeError(f"{name}: expected a plain NumPy array, got a numpy.matrix (it stays "
                        f"2-D under indexing); pass np.asarray({name})")


def element_misalignment(x) -> int:
    """Bytes by which x's data address misses a multiple of its element size (0: aligned).
    A NumPy or CuPy view made at a byte offset (a uint8 buffer viewed as float32 from byte 1)
    has one; the GPU raises a sticky "misaligned address" fault on it, the CPU reads it."""
    if x.size == 0 or (isinstance(x, np.ndarray) and x.flags.aligned):   # NumPy's own flag
        return 0
    return data_pointer(x) % x.dtype.itemsize


def check_int(value, name: str, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """A Python or NumPy integer (not bool, not a float that happens to be whole), in range."""
    if not is_int(value):
        raise TypeError(f"{name}: expected an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected an int <= {maximum}, got {value}")
    return int(value)


def check_bool(value, name: str) -> bool:
    """True or False (a NumPy bool too): "no" or None would be read as a truth value."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_int_list(values, name: str, what: str = "id", minimum: int | None = None) -> list[int]:
    """A list, tuple, range or 1-D integer array of ints, as Python ints (each >= `minimum`,
    when given).

    A bare int, a string, None or a 0-d array is refused by name (iterating them fails naming
    no argument, or walks a string's characters); so are a set (token ids in hash order: a
    silently different prompt) and a mapping.
    """
    if isinstance(values, (set, frozenset, Mapping)):
        raise TypeError(f"{name}: expected a list of {what}s in order, got a "
                        f"{type(values).__name__} (not in the caller's order); pass a list")
    zero_d = getattr(values, "ndim", None) == 0
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or zero_d:
        one = values.item() if zero_d else values
        hint = f"; for one {what} write [{one!r}]" if is_int(one) else ""
        raise TypeError(f"{name}: expected a list of {what}s, got {values!r} "
                        f"({type(values).__name__}){hint}")
    ids = []
    for i, value in enumerate(values):
        if not is_int(value):
            raise TypeError(f"{name}[{i}]: expected an integer {what}, got {value!r} "
                            f"({type(value).__name__})")
        if minimum is not None and value < minimum:
            raise ValueError(f"{name}[{i}]: expected a {what} >= {minimum}, got {value}")
        ids.append(int(value))
    return ids


def refuse_repeats(seq_ids: list[int], name: str = "seq_ids") -> None:
    """Refuse a sequence listed twice in one decode step (it appends one token to each),
    naming the second entry and the first."""
    first: dict[int, int] = {}
    for j, s in enumerate(seq_ids):
        if s in first:
            raise ValueError(f"{name}[{j}]: sequence {s} appears twice (entries {first[s]} "
                             f"and {j}); a step appends one token to each")
        first[s] = j


def check_offsets(ptr: np.ndarray, name: str, end: int | None = None, end_what: str = "") -> None:
    """Offsets of a packed batch (qo_indptr, FlashInfer's indptr), a 1-D integer NumPy array:
    from 0, never decreasing, the last `end` when given (`end_what` says why). An error names
    the first entry that breaks the rule: printed whole, a batch of thousands hides it, and
    its first few entries are fine."""
    if ptr.ndim != 1 or ptr.size == 0:
        got = "an empty array" if ptr.size == 0 else f"shape {ptr.shape}"
        raise ValueError(f"{name}: expected [batch + 1] offsets from 0, got {got}")
    if ptr[0] != 0:
        raise ValueError(f"{name}[0]: expected 0 (offsets start at 0), got {int(ptr[0])}")
    down = np.flatnonzero(np.diff(ptr) < 0)
    if down.size:
        i = int(down[0]) + 1
        raise ValueError(f"{name}[{i}]: {int(ptr[i])} is less than {name}[{i - 1}] = "
                         f"{int(ptr[i - 1])} (offsets never decrease: sequence {i - 1} would "
                         f"have {int(ptr[i] - ptr[i - 1])} entries)")
    if end is not None and ptr[-1] != end:
        raise ValueError(f"{name}[{ptr.size - 1}]: expected {end} ({end_what}), got "
                         f"{int(ptr[-1])}")


@dataclass(frozen=True)
class PagedShapes:
    """The sizes every paged-attention call agrees on, read off validated inputs."""
    batch: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_pages: int
    page_size: int
    max_pages_per_seq: int
    max_len: int  # prefill: queries per sequence; decode: 1

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 for plain multi-head attention, >1 for GQA/MQA)."""
        return self.num_heads // self.num_kv_heads


def check_kv_cache(k_cache, v_cache, *, dtypes=CACHE_DTYPES):
    """k_cache and v_cache: same [num_pages, page_size, num_kv_heads, head_dim] shape and dtype."""
    check_array(k_cache, "k_cache", ndim=4, dtypes=dtypes)
    check_array(v_cache, "v_cache", ndim=4, dtypes=dtypes)
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"v_cache: expected the shape of k_cache {tuple(k_cache.shape)}, "
                         f"got {tuple(v_cache.shape)}")
    dims = ("num_pages", "page_size", "num_kv_heads", "head_dim")
    for axis, (dim, n) in enumerate(zip(dims, k_cache.shape)):
        if n == 0:
            raise ValueError(f"k_cache: expected shape [num_pages, page_size, num_kv_heads, "
                             f"head_dim] with every size >= 1, got {dim} = 0 (axis {axis}) in "
                             f"{tuple(k_cache.shape)}")
    if k_cache.dtype != v_cache.dtype:
        raise TypeError(f"v_cache: expected the dtype of k_cache ({k_cache.dtype.name}), "
                        f"got {v_cache.dtype.name}")


def check_block_tables(block_tables, seq_lens, *, num_pages: int | None, page_size: int,
                       batch: int, min_len: int,
                       names=("block_tables[{b}, {j}]", "seq_lens[{b}]"),
                       batch_of: str = "sequence in q"):
    """Check the page table against the cache; return (block_tables, seq_lens) as NumPy.

    Only the entries a sequence actually uses (its first ceil(len / page_size)) must be
    valid page ids: the rest are padding that no kernel reads. num_pages=None (a plan made
    before any cache is at hand): ids must be >= 0; the caller checks the largest later.
    Vectorised: one pass over the table, whatever the batch. names: how errors name an entry
    and a length (templates of sequence b, entry j): gather's ("block_table_row[{j}]", "seq_len").
    batch_of: what `batch` counts, as an error on a count names it: "sequence in q", or where
    the call has no q of one row per sequence, "block_tables row" (the decode plan, to_csr) or
    "sequence in qo_indptr" (a packed prefill).
    """
    entry, length = names
    check_array(block_tables, "block_tables", ndim=2, dtypes=[np.int32])
    check_array(seq_lens, "seq_lens", ndim=1, dtypes=[np.int32])
    if block_tables.shape[0] != batch:
        raise ValueError(f"block_tables: expected {counted(batch, 'row')} (one per "
                         f"{batch_of}), got shape {tuple(block_tables.shape)}")
    if seq_lens.shape[0] != batch:
        raise ValueError(f"seq_lens: expected {counted(batch, 'entry', 'entries')} (one per "
                         f"{batch_of}), got shape {tuple(seq_lens.shape)}")
    tables, lens = to_numpy_together(block_tables, seq_lens)   # one wait for both copies
    capacity = tables.shape[1] * page_size
    short = np.flatnonzero(lens < min_len)
    if short.size:
        b = int(short[0])
        raise ValueError(f"{length.format(b=b)}: expected a length >= {min_len}, got {lens[b]}")
    over = np.flatnonzero(lens > capacity)
    if over.size:
        b = int(over[0])
        fit = "does not fit" if lens[b] == 1 else "do not fit"
        raise ValueError(f"{length.format(b=b)}: {counted(lens[b], 'token')} {fit} in a block "
                         f"table row of {counted(tables.shape[1], 'page')} x "
                         f"{counted(page_size, 'token')} = {capacity}")
    pages = -(-lens.astype(np.int64) // page_size)
    used = np.arange(tables.shape[1])[None, :] < pages[:, None]
    out_of_range = tables < 0 if num_pages is None else (tables < 0) | (tables >= num_pages)
    bad = used & out_of_range
    if bad.any():
        b, j = (int(i) for i in np.argwhere(bad)[0])
        cache = ("(ids must be >= 0)" if num_pages is None
                 else f"for a cache of {counted(num_pages, 'page')}")
        read = f"{counted(int(pages[b]), 'entry', 'entries')} of its row " + \
            ("is" if pages[b] == 1 else "are")
        raise ValueError(f"{entry.format(b=b, j=j)}: page id {int(tables[b, j])} is out of "
                         f"range {cache} ({length.format(b=b)} is {counted(lens[b], 'token')}, "
                         f"so the first {read} read)")
    return tables, lens


def check_attention_inputs(q, k_cache, v_cache, block_tables, seq_lens, *, mode: str,
                           q_dtypes=None, cache_dtypes=CACHE_DTYPES) -> PagedShapes:
    """Validate a decode (q [batch, heads, dim]) or prefill (q [batch, len, heads, dim]) call."""
    if mode not in ("decode", "prefill"):
        raise ValueError(f"mode: expected 'decode' or 'prefill', got {mode!r}")
    check_kv_cache(k_cache, v_cache, dtypes=cache_dtypes)
    num_pages, page_size, num_kv_heads, head_dim = (int(n) for n in k_cache.shape)
    ndim = 3 if mode == "decode" else 4
    layout = ("[batch, num_heads, head_dim]" if mode == "decode"
              else "[batch, max_len, num_heads, head_dim]")
    if not (isinstance(q, np.ndarray) or is_cupy_array(q)):   # a TypeError, as for k_cache
        raise TypeError(f"q: expected a NumPy or CuPy array (a {mode} query of shape "
                        f"{layout}), got {type_label(q)}")
    if q.ndim != ndim:
        raise ValueError(f"q: expected a {mode} query of shape {layout}, got {tuple(q.shape)}")
    check_array(q, "q", ndim=ndim, dtypes=q_dtypes if q_dtypes is not None else [k_cache.dtype])
    if is_cupy_array(q) != is_cupy_array(k_cache) or is_cupy_array(q) != is_cupy_array(v_cache):
        raise TypeError("q, k_cache, v_cache: expected all on the CPU (NumPy) or all on the GPU "
                        "(CuPy), got a mix")
    num_heads, q_head_dim = check_query_heads(q), int(q.shape[-1])
    if q_head_dim != head_dim:
        raise ValueError(f"q: expected head_dim {head_dim} (the cache's last dimension), got "
                         f"{q_head_dim} in shape {tuple(q.shape)}")
    if num_heads % num_kv_heads:
        raise ValueError(f"q: num_heads {num_heads} is not a multiple of the cache's "
                         f"num_kv_heads {num_kv_heads} (GQA needs whole groups)")
    batch = int(q.shape[0])
    max_len = 1 if mode == "decode" else int(q.shape[1])
    tables, lens = check_block_tables(block_tables, seq_lens, num_pages=num_pages,
                                      page_size=page_size, batch=batch,
                                      min_len=1 if mode == "decode" else 0)
    if mode == "prefill" and lens.size and int(lens.max()) > max_len:
        b = int(lens.argmax())
        raise ValueError(f"seq_lens[{b}]: {counted(int(lens[b]), 'token')} but q holds only "
                         f"{counted(max_len, 'query row')} per sequence (q.shape[1])")
    return PagedShapes(batch, num_heads, num_kv_heads, head_dim, num_pages, page_size,
                       int(tables.shape[1]), max_len)


def check_query_heads(q) -> int:
    """q's number of heads (its next-to-last axis), refused when 0: every oracle and kernel
    agrees (an empty result would hide a query reshaped wrong)."""
    num_heads = int(q.shape[-2])
    if num_heads == 0:
        raise ValueError(f"q: expected at least one query head, got shape {tuple(q.shape)}")
    return num_heads


def check_gqa_heads(num_heads, num_kv_heads) -> tuple[int, int]:
    """Positive head counts in whole GQA groups (num_heads a multiple of num_kv_heads)."""
    num_heads = check_int(num_heads, "num_heads", minimum=1)
    num_kv_heads = check_int(num_kv_heads, "num_kv_heads", minimum=1)
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads: {num_heads} is not a multiple of num_kv_heads "
                         f"{num_kv_heads} (GQA needs whole groups)")
    return num_heads, num_kv_heads


def check_plan_sizes(num_heads, num_kv_heads, head_dim, page_size) -> tuple[int, int, int, int]:
    """The sizes a plan/run wrapper is planned for: positive ints, whole GQA groups."""
    num_heads, num_kv_heads = check_gqa_heads(num_heads, num_kv_heads)
    # The kernels take these sizes as int32 arguments: a larger one would fail halfway
    # through planning (NumPy's OverflowError), not here.
    check_int(num_heads, "num_heads", maximum=INT32_MAX)   # num_kv_heads divides it
    head_dim = check_int(head_dim, "head_dim", minimum=1, maximum=INT32_MAX)
    page_size = check_int(page_size, "page_size", minimum=1, maximum=INT32_MAX)
    return num_heads, num_kv_heads, head_dim, page_size
