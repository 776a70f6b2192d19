"""Which rows a wrong merge kernel (lesson 06, checks_decode_merge.py) read or wrote, seen
by launching it again on changed partition states: a row's merge stored in another row of
out, a row merged from another row's states."""
from __future__ import annotations

import numpy as np

from .decode_launch import DECODE_BUFFER_HINTS, launch_warp
from .decode_variants import merge_variant
from .kernel_runner import poisoned
from .report import probe, several_fit
from .seeds import case_rng


SLOT_0_HINT = ("every partition's values were read from partition 0's slot (the + p missing): "
               "row (b, h)'s partition p starts at part_out[((b * num_heads + h) * max_parts + "
               "p) * head_dim], so the merge came out as partition 0's o_p.")


def first_counts_and_slots(states, n_parts, max_parts):
    """(hint, the merge with that mistake) of two merges of a row's first slot only: every
    row counting sequence 0's partitions (only where sequence 0 is not the longest: else
    that is a read of all max_parts slots) and every partition reading slot 0's values.
    Where sequence 0 has one partition the two give the same rows, and its hint names both."""
    m, l, o = states
    count = int(n_parts[0, 0])
    seq0 = (f"every row merged sequence 0's {count} partition{'s' if count != 1 else ''}: the "
            "count is ceil(seq_lens[b] / part_len), from the row's own sequence b, not "
            "seq_lens[0].")
    return [
        (several_fit([seq0, SLOT_0_HINT]) if count == 1 else seq0,
         lambda: merge_variant(*states, np.full_like(n_parts, count), bug="none")
         if count < max_parts else None),
        (SLOT_0_HINT, lambda: merge_variant(m, l, np.broadcast_to(o[..., :1, :], o.shape),
                                            n_parts, bug="none")),
    ]


def with_states(args, part_ml, part_out):
    """The merge's launch arguments with other states and a fresh poisoned output (the
    executor writes the caller's arrays in place)."""
    return (part_out, part_ml, args[2], poisoned(args[3].shape)) + args[4:]


def rows_elsewhere(got, expected) -> str | None:
    """The hint where a wrong row of `got` holds another row's expected values: the merge was
    right, its store went to the wrong row of out."""
    batch, heads, _ = expected.shape
    flat_got, flat_expected = got.reshape(batch * heads, -1), expected.reshape(batch * heads, -1)
    for r in range(batch * heads):
        if np.allclose(flat_got[r], flat_expected[r], rtol=1e-4, atol=1e-5):
            continue
        found = [s for s in range(batch * heads)
                 if np.allclose(flat_got[r], flat_expected[s], rtol=1e-4, atol=1e-5)]
        if found:
            (b, h), (ob, oh) = divmod(r, heads), divmod(found[0], heads)
            return (f"out's row (sequence {b}, head {h}) holds the merge of (sequence {ob}, "
                    f"head {oh}): the merge is right, its store is in the wrong row. "
                    + DECODE_BUFFER_HINTS["out"])
    return None


def reads_other_rows(comp, args, part_ml, part_out, n_parts) -> str | None:
    """The hint where a row's output moves when only OTHER rows' partition states change.
    The slots that do not exist hold finite numbers (a NaN read there would hide any other
    read); then, for each half of the rows (a checkerboard of (sequence, head)), new states
    in that half's partitions 1 .. n_parts - 1, the other half's outputs compared. (Slot 0
    is left alone: a row reading one slot past its last reaches the next row's slot 0,
    which the over-read's own hint names.)"""
    batch, heads, max_parts = part_ml.shape[:3]
    slots = np.arange(max_parts)
    rng = case_rng(int(n_parts.sum()) + 3000)
    # (n_parts is [batch, 1])
    missing = np.broadcast_to(slots >= n_parts[..., None], part_ml.shape[:3])
    ml, o = part_ml.copy(), part_out.copy()
    ml[..., 0] = np.where(missing, np.nanmax(part_ml[..., 0]) - rng.uniform(0, 2, missing.shape),
                          ml[..., 0])
    ml[..., 1] = np.where(missing, rng.uniform(1, 2, missing.shape), ml[..., 1])
    o[missing] = rng.standard_normal(o[missing].shape)
    half = np.add.outer(np.arange(batch), np.arange(heads)) % 2
    outs = []
    for side in (None, 0, 1):
        if side is not None:
            change = (half == side)[..., None] & (slots >= 1) & ~missing
            ml[..., 1] = np.where(change, ml[..., 1] * rng.uniform(2, 4, change.shape),
                                  ml[..., 1])
            o[change] = rng.standard_normal(o[change].shape)
        launched = probe(launch_warp, comp, (heads, batch), with_states(args, ml, o), (3,))
        if launched is None:
            return None
        outs.append(launched[0][0])
    with np.errstate(invalid="ignore"):
        moved = [~((a == b) | (np.isnan(a) & np.isnan(b))).all(axis=-1) & (half != side)
                 for a, b, side in ((outs[0], outs[1], 0), (outs[1], outs[2], 1))]
    rows = np.argwhere(moved[0] | moved[1])
    if not rows.size:
        return None
    b, h = (int(i) for i in rows[0])
    return (f"row (sequence {b}, head {h}) changed when only other rows' partition states "
            "did: it reads another row's states. Row (b, h) has max_parts slots of its own, "
            "whatever its partition count: its m and l start at part_ml[(b * num_heads + h) "
            "* max_parts * 2], its values at part_out[(b * num_heads + h) * max_parts * "
            "head_dim].")


def _merged(part_ml, part_out, n):
    """A row's merge as the kernel computes it from its first n slots: the max over them
    skipping NaN (fmaxf), a NaN weight making the row NaN."""
    m, l = part_ml[:n, 0].astype(np.float64), part_ml[:n, 1].astype(np.float64)
    with np.errstate(all="ignore"):
        w = l * np.exp(m - np.fmax.reduce(m))
        return (w[:, None] * part_out[:n]).sum(axis=0) / w.sum()


def swapped_rows_hint(got, part_ml, part_out, n_parts) -> str | None:
    """The hint where every row of out is what a kernel with its row index h * stride + b
    (stride num_heads or batch: b and h swapped) reads and writes: the merge of that row's
    states over the partition count of one of the blocks that store there (whichever wrote
    last), NaN where none does. Fits only where every index stays inside the buffers."""
    batch, heads = got.shape[:2]
    flat_got = got.reshape(batch * heads, -1)
    states = part_ml.reshape(batch * heads, -1, 2), part_out.reshape(
        batch * heads, -1, got.shape[-1])
    for stride, name in ((heads, "num_heads"), (batch, "batch")):
        writers = {}
        for b in range(batch):
            for h in range(heads):
                writers.setdefault(h * stride + b, []).append(b)
        if max(writers) >= batch * heads:
            continue   # (an index past the rows faults before anything is compared)
        if all(np.isnan(flat_got[r]).all() if r not in writers else any(
                np.allclose(flat_got[r], _merged(states[0][r], states[1][r], int(n_parts[b, 0])),
                            rtol=1e-4, atol=1e-5, equal_nan=True) for b in writers[r])
               for r in range(batch * heads)):
            return (f"the row index is h * {name} + b: b and h are swapped. Row (b, h) of "
                    "part_ml, part_out and out is b * num_heads + h (out is [batch, "
                    "num_heads, head_dim]); yours merged another row's states and stored them "
                    "there" + (", and left some rows unwritten." if len(writers) < batch * heads
                               else "."))
    return None
