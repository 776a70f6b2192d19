"""One rank's share of a tensor-parallel decode step (runs inside a `launch`ed process).

    tp = TPDecode(num_heads=32, num_kv_heads=8, head_dim=128, page_size=16,
                  dtype="float16", max_batch=64, max_pages=256)
    tables, lens = tp.share_tables(tables, lens)   # rank 0 passes its allocator's; others None
    out = tp.step(q_local, k_shard, v_shard)       # [batch, num_heads, head_dim] on every rank

Per step, exactly two things cross the wire: the block tables and lengths (one broadcast of
one fixed-size int32 buffer from rank 0) and the attention output (one all_gather of each
rank's heads, each followed by its 16-byte status). The K/V pages never do: each rank reads
its own heads from its own memory.
A step refused on any rank still takes its collectives, so that no rank is left waiting in
one: tables rank 0 refuses (as the wrapper's plan would) cross in place of the tables; a rank
whose plan or attend fails (its own q/k/v refused), or whose output is not its share of the
step, joins the gather with zeros and a refusal as its status (the gather's size comes from
the shared tables, so every rank posts the same). Then one more broadcast carries the lowest
refusing rank's message, whole, and every rank raises that error. What a step costs for
this: the status words in the gather, a copy of the rank's output beside them, and one read
of every rank's status off the GPU after the gather (world x 16 bytes), which waits for the
gather to finish (prefill: and one read of qo_indptr's last offset, the gather's rows).
Once, when the ranks build their `TPDecode`, they compare the sizes each was given (`SIZES`):
every rank refuses a split whose ranks disagree, before any step.
Arrays stay NumPy (CPU, gloo) or CuPy (GPU, NCCL); torch sees them through zero-copy views
(`torch.from_numpy`, DLPack), as bytes, so every dtype crosses the same way.
"""
from __future__ import annotations

import time

import numpy as np

from ..attention_common import DTYPE_NAMES, array_dtypes, dtype_name
from ..backend import cupy_module, to_numpy
from ..validate import check_bool, check_int, check_plan_sizes
from ..validate_memory import check_memory
from ..wrappers import BatchDecodeWrapper
from .launch import require_torch
from .shard import (REFUSAL_WORDS, REFUSED, error_text, head_range, is_refusal, pack_tables,
                    reassemble, refusal_error, refusal_header, refusal_message, table_capacity,
                    unpack_tables)

PHASES = ("broadcast", "plan", "attend", "gather")
# What every rank must be given alike, compared once when the ranks build their TPDecode.
SIZES = ("step", "num_heads", "num_kv_heads", "head_dim", "page_size", "dtype", "max_batch",
         "max_pages", "num_splits")
_CODES = {"step": ("TPDecode", "TPPrefill"), "dtype": DTYPE_NAMES}   # sent as their index


class TPDecode:
    """Rank `dist.get_rank()`'s heads of a decode step: plan/run of the course's
    `BatchDecodeWrapper` on its KV heads, with the tables shared and the output gathered.
    (`TPPrefill` is the same with `BatchPrefillWrapper` and packed queries.)

    device: "cpu" (NumPy arrays, gloo) or "gpu" (CuPy arrays on this rank's GPU, NCCL).
    num_splits: passed to the wrapper's plan (None: chosen from this rank's work).
    timed: after each phase, `timings[phase]` holds its seconds, the device synchronised
    around each (so they add up to a step's time, not to a pipelined one); timed=False runs
    the phases back to back, as serving does.

    `step` never leaves a rank waiting: whatever a rank's step raises, every rank raises the
    lowest failing rank's error (its message whole; a ValueError or TypeError as such, another
    kind as a RuntimeError naming it) and the next step runs. A rank stopped by an interrupt
    (a KeyboardInterrupt, a SystemExit) takes the step's collectives all the same, then raises
    it; the other ranks raise a RuntimeError naming it and that rank. Called one by one, the
    phases guarantee as much only where every rank calls each collective phase: share_tables and
    gather are collectives (share_tables raises rank 0's refusal on every rank); plan and
    attend are this rank's alone, and a rank whose plan or attend raised must still call
    `gather(refused=its error)`, as step does. What no status can carry still ends one rank
    alone, the others waiting until the launcher's timeout: an interrupt inside a collective
    itself (or between the handler and it), a rank lost, a CUDA error that also breaks NCCL.
    """

    WRAPPER = BatchDecodeWrapper
    PREFILL = False    # whether the broadcast buffer carries qo_indptr

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, page_size: int,
                 dtype, max_batch: int, max_pages: int, *, device: str = "cpu",
                 num_splits=None, timed: bool = True):
        self.torch, self.dist = require_torch()
        self.rank, self.world = self.dist.get_rank(), self.dist.get_world_size()
        self.heads = head_range(self.rank, self.world, num_heads, num_kv_heads)
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device: expected 'cpu' or 'gpu', got {device!r}")
        # Checked here, as the wrapper's plan would check them, but before any collective:
        # a plan that refused them would do so after the first broadcast.
        num_heads, num_kv_heads, head_dim, page_size = check_plan_sizes(
            num_heads, num_kv_heads, head_dim, page_size)
        max_batch = check_int(max_batch, "max_batch", minimum=1)
        max_pages = check_int(max_pages, "max_pages", minimum=1)
        if num_splits is not None:
            num_splits = check_int(num_splits, "num_splits", minimum=1)
        timed = check_bool(timed, "timed")
        self.on_gpu = device == "gpu"
        self.xp = cupy_module() if self.on_gpu else np
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim, self.page_size, self.dtype = head_dim, page_size, self._dtype_of(dtype)
        self.max_batch, self.max_pages, self.num_splits = max_batch, max_pages, num_splits
        self._agree()
        capacity = table_capacity(max_batch, max_pages, self.PREFILL)
        # after _agree: every rank has these sizes, so every rank refuses them alike
        check_memory(4 * capacity, device, "max_batch, max_pages",
                     f"the broadcast buffer ({max_batch} rows of {max_pages} pages)")
        self._buf = self.xp.zeros(capacity, np.int32)
        self._buf_t = self.as_torch(self._buf)
        self._out_dtypes = array_dtypes(self.dtype, self.on_gpu)   # the output's
        self._itemsize = self._out_dtypes[0].itemsize
        self._shared = None    # this step's tables, as share_tables returned them
        self.wrapper = self.WRAPPER()
        self.timed = timed
        self.timings = dict.fromkeys(PHASES, 0.0)

    @staticmethod
    def _dtype_of(dtype) -> str:
        """The name of a `dtype` the wrapper takes (its DtypeError otherwise)."""
        return dtype_name(dtype)

    def _agree(self):
        """One all_gather of every rank's `SIZES` (a fixed-size buffer, whatever they are);
        every rank then raises the same error if any rank's differ from rank 0's. Unchecked,
        a rank with another page_size reads rank 0's tables with its own (wrong answers, no
        error), one with other buffer sizes posts a broadcast of another size (gloo aborts
        the process, NCCL may hang) and one with other heads gathers another byte count."""
        sizes = (_CODES["step"][self.PREFILL], self.num_heads, self.num_kv_heads,
                 self.head_dim, self.page_size, self.dtype, self.max_batch, self.max_pages,
                 self.num_splits)
        mine = np.array([_CODES[n].index(v) if n in _CODES else v or 0    # num_splits None: 0
                         for n, v in zip(SIZES, sizes)], np.int64)
        every = self.xp.zeros(mine.size * self.world, np.int64)
        self.dist.all_gather_into_tensor(self.as_torch(every),
                                         self.as_torch(self.xp.asarray(mine)))
        every = to_numpy(every).reshape(self.world, mine.size)
        differ = np.argwhere(every != every[0])    # the lowest rank, then the first size
        if differ.size:
            r, i = (int(x) for x in differ[0])
            name = SIZES[i]
            theirs, ours = (_CODES[name][int(x)] if name in _CODES else int(x) or None
                            for x in (every[r, i], every[0, i]))
            raise ValueError(f"{name}: rank {r} has {theirs!r}, rank 0 has {ours!r}; every rank "
                             f"of a split step must use the same {name} (each reads rank 0's "
                             f"block tables and gathers every rank's heads)")

    # ---- arrays as torch tensors, no copy ----------------------------------------------
    def as_torch(self, a):
        return self.torch.from_dlpack(a) if self.on_gpu else self.torch.from_numpy(a)

    def _sync(self):
        if self.on_gpu:
            self.xp.cuda.Device().synchronize()

    def _timed(self, phase, fn, *args, **kwargs):
        if not self.timed:
            return fn(*args, **kwargs)
        self._sync()
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        self._sync()
        self.timings[phase] = time.perf_counter() - t0
        return result

    # ---- the step ------------------------------------------------------------------------
    def share_tables(self, block_tables=None, seq_lens=None):
        """Rank 0 gives this step's (block_tables, seq_lens), made by its allocator; every
        rank returns them (views into the received buffer, where this rank computes)."""
        return self._timed("broadcast", self._broadcast, block_tables, seq_lens)

    def _broadcast(self, *given):
        """Rank 0 packs `given` (its arguments to share_tables), or its refusal of them; every
        rank receives the one buffer and returns the tables, or raises rank 0's error."""
        error = None
        if self.rank == 0:
            try:
                packed = self._pack(*given)
            except BaseException as refused:   # noqa: BLE001 - every kind crosses as a
                # refusal (an interrupt too, re-raised after it): raised here, before the
                # broadcast, it would leave the other ranks waiting
                error = refused
                packed = refusal_header(self._buf.size, self._crossing(refused))
            self._buf[...] = self.xp.asarray(packed)
        self.dist.broadcast(self._buf_t, src=0)
        words = to_numpy(self._buf[:REFUSAL_WORDS])   # one read off the GPU, refused or not
        if is_refusal(words):
            self._raise_refusal(0, words, error)
        self._shared = self._unpack()
        return self._shared

    def _pack(self, block_tables, seq_lens):
        return pack_tables(block_tables, seq_lens, self.max_batch, self.max_pages,
                           page_size=self.page_size)

    def _unpack(self):
        return unpack_tables(self._buf, self.max_batch)

    def _step_tables(self):
        """This step's tables, as share_tables returned them on every rank."""
        if self._shared is None:   # (on every rank alike: share_tables is a collective)
            raise RuntimeError("gather: no step's tables yet; call share_tables first (the "
                               "gathered rows are its sequences)")
        return self._shared

    def _rows(self) -> int:
        """Rows of this step's output: its sequences (prefill: its packed queries)."""
        return int(self._step_tables()[1].shape[0])

    def _raise_refusal(self, src: int, words, error):
        """Every rank: one more broadcast, of rank `src`'s message (as many bytes as its
        refusal's `words` say), then rank `src`'s error: its own on rank `src`, rebuilt on
        the others (from their own `error`, if they refused too). A rank stopped by an
        interrupt raises that interrupt, whichever rank's error the others raise."""
        size = int(words[2])
        message = self.xp.zeros(size, np.uint8)
        if self.rank == src:   # the bytes its words announced, were str(error) to say more now
            text = refusal_message(self._crossing(error))[:size]
            message[:text.size] = self.xp.asarray(text)
        if size:   # (an empty message crosses as its size alone)
            self.dist.broadcast(self.as_torch(message), src=src)
        interrupted = error is not None and not isinstance(error, Exception)
        if self.rank == src or interrupted:
            raise error
        raise refusal_error(words, to_numpy(message)) from error

    def _crossing(self, error: BaseException) -> Exception:
        """What crosses as this rank's refusal for `error`: itself, or, for a BaseException
        that is no Exception (a KeyboardInterrupt, a SystemExit, which this rank re-raises
        after the step's collectives), a RuntimeError naming it and this rank."""
        if isinstance(error, Exception):
            return error
        text = error_text(error)
        return RuntimeError(f"{type(error).__name__} on rank {self.rank} stopped this step on "
                            f"every rank" + (f": {text}" if text else ""))

    def plan(self, block_tables, seq_lens):
        """Plan the wrapper for this rank's heads (host work, once per step)."""
        h = self.heads
        return self._timed("plan", self.wrapper.plan, block_tables, seq_lens,
                           h.q_stop - h.q_start, h.kv_stop - h.kv_start, self.head_dim,
                           self.page_size, self.dtype, num_splits=self.num_splits)

    def attend(self, q_local, k_shard, v_shard, out=None):
        """This rank's heads: q_local [batch, H/R, D] over its cache shard."""
        self._check_heads(q_local, k_shard, v_shard)
        return self._timed("attend", self.wrapper.run, q_local, k_shard, v_shard, out)

    def _check_heads(self, q_local, k_shard, v_shard):
        """The rank's own heads, said in its terms: the wrapper, planned for H/R heads, would
        name `q` and "the plan's num_heads" for a q with every head."""
        h = self.heads
        for name, x, axis, start, stop, total, fix in (
                ("q_local", q_local, 1, h.q_start, h.q_stop, self.num_heads,
                 f"q[:, {h.q_start}:{h.q_stop}]"),
                ("k_shard", k_shard, 2, h.kv_start, h.kv_stop, self.num_kv_heads,
                 "shard_cache(k_cache, tp.heads)"),
                ("v_shard", v_shard, 2, h.kv_start, h.kv_stop, self.num_kv_heads,
                 "shard_cache(v_cache, tp.heads)")):
            got = getattr(x, "shape", ())
            if len(got) > axis and got[axis] != stop - start:
                kind = "query" if axis == 1 else "KV"
                raise ValueError(f"{name}: rank {self.rank} owns {kind} heads {start}..{stop - 1}"
                                 f" ({stop - start} of {total}), so axis {axis} holds "
                                 f"{stop - start}; got shape {tuple(got)}: pass {fix}")

    def gather(self, out_local=None, *, refused=None):
        """[batch, H, D] on every rank, from every rank's [batch, H/R, D] (out_local). A rank
        whose plan or attend raised passes its error as `refused` instead: it sends zeros and
        the refusal, and every rank raises the lowest refusing rank's error. An out_local
        that is not this step's share (its rows, heads, head_dim, dtype), or a call with
        neither or both, is this rank's refusal too: raised alone, it would leave the others
        waiting."""
        if (out_local is None) == (refused is None):
            out_local, refused = None, TypeError(
                "gather: expected out_local (this rank's output) or refused (the error its "
                "step raised), one of the two")
        elif refused is not None and not isinstance(refused, BaseException):
            refused = TypeError(f"refused: expected the exception this rank's step raised, "
                                f"got {type(refused).__name__}")
        return self._timed("gather", self._gather, out_local, refused)

    def _gather(self, out_local, refused):
        rows = self._rows()
        share = (rows, self.heads.q_stop - self.heads.q_start, self.head_dim)
        size = int(np.prod(share)) * self._itemsize
        mine = self.xp.empty(size + 4 * REFUSAL_WORDS, np.uint8)   # the output, then status
        if refused is None:
            try:
                mine[:size] = self._share_bytes(out_local, share)
                mine[size:] = 0
            except BaseException as error:   # noqa: BLE001 - crosses as this rank's refusal
                refused = error
        if refused is not None:
            mine[:size] = 0
            mine[size:] = self.xp.asarray(
                refusal_header(REFUSAL_WORDS, self._crossing(refused)).view(np.uint8))
        every = self.xp.empty(mine.size * self.world, np.uint8)
        self.dist.all_gather_into_tensor(self.as_torch(every), self.as_torch(mine))
        blocks = every.reshape(self.world, mine.size)
        # every rank's status: the step's second read off the GPU (after is_refusal's)
        words = np.ascontiguousarray(to_numpy(blocks[:, size:])).view(np.int32)
        refusing = np.flatnonzero(words[:, 0] == REFUSED)
        if refusing.size:
            self._raise_refusal(int(refusing[0]), words[refusing[0]], refused)
        outputs = every.view(out_local.dtype).reshape(self.world, -1)[:, :size // self._itemsize]
        return reassemble(outputs, self.world, rows, self.num_heads, self.head_dim)

    def _share_bytes(self, out_local, expected: tuple):
        """out_local's bytes, once it is this step's share: `expected`, [rows, H/R, D], of the
        step's dtype, in this rank's memory (NumPy or CuPy)."""
        dtypes = self._out_dtypes
        if not isinstance(out_local, self.xp.ndarray) or out_local.dtype not in dtypes or \
                tuple(out_local.shape) != expected:
            where = "CuPy" if self.on_gpu else "NumPy"
            raise ValueError(
                f"out_local: rank {self.rank}'s share of this step is a {where} array of shape "
                f"{expected} and dtype {' or '.join(str(d) for d in dtypes)}; got "
                f"{type(out_local).__name__} of shape {tuple(getattr(out_local, 'shape', ()))} "
                f"and dtype {getattr(out_local, 'dtype', None)}")
        return out_local.reshape(-1).view(np.uint8)

    def step(self, q_local, k_shard, v_shard, block_tables=None, seq_lens=None, out=None):
        """A whole decode step: tables shared, planned, attended (into `out`, this rank's
        [batch, H/R, D], when given), gathered; refused on any rank, raised on every rank."""
        shared = self.share_tables(block_tables, seq_lens)
        return self._plan_attend_gather(shared, q_local, k_shard, v_shard, out)

    def _plan_attend_gather(self, shared, q_local, k_shard, v_shard, out):
        try:
            self.plan(*shared)
            out_local = self.attend(q_local, k_shard, v_shard, out)
        except BaseException as refused:   # noqa: BLE001 - every kind crosses as a refusal
            # (an interrupt too, re-raised after it): raised here, it would leave the other
            # ranks waiting in the gather
            return self.gather(refused=refused)
        return self.gather(out_local)
