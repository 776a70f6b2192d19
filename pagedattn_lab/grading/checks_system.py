"""Check for lesson 07: a decode step on a paged cache (its other two tasks: when a token
takes a page, checks_next_page.py; a serving loop that frees, checks_serve.py).

The decode step must append this step's key and value to each sequence *before*
attending (the new token attends to itself), build the block tables for exactly the
sequences of this step in their order, and leave the other sequences alone. The serving
loop (checked in checks_serve.py) must free every finished sequence: a cache that never
gives pages back (the guide's page counter) stalls as soon as the pool is used up.
The errors a step raises are read as the mistakes they show in checks_system_errors.py.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..paging import OutOfPagesError
from ..words import counted
from .checks_system_errors import (error_counts, other_error, raised_by_the_pool,
                                   refused_step)
from .compare import changed_input, describe_difference, diagnose
from .report import Case, CheckResult, Mismatch, run_cases, several_fit
from .seeds import case_rng


def _dense_decode(q, keys, values, scale):
    """q [heads, dim]; keys/values [n, kv_heads, dim] -> [heads, dim] (float64)."""
    heads, kv_heads = q.shape[0], keys.shape[1]
    out = np.zeros(q.shape)
    for h in range(heads):
        kvh = h // (heads // kv_heads)
        logits = keys[:, kvh].astype(np.float64) @ q[h].astype(np.float64) * scale
        w = np.exp(logits - logits.max())
        out[h] = (w / w.sum()) @ values[:, kvh].astype(np.float64)
    return out


def _manager(cls, num_pages, page_size, num_heads, num_kv_heads, head_dim, **scale):
    return cls(num_pages=num_pages, page_size=page_size, num_heads=num_heads,
               num_kv_heads=num_kv_heads, head_dim=head_dim, **scale)


def _decode_case(cls, seed: int, prompt_lens, page_size: int, num_heads: int,
                 num_kv_heads: int, head_dim: int, steps: int, order, scale=None) -> None:
    """`scale`: the manager's, given to its constructor (None: its default)."""
    rng = case_rng(seed)
    total = sum(prompt_lens) + steps * len(prompt_lens)
    own = 1.0 / np.sqrt(head_dim)   # the attention's default
    mgr = _manager(cls, total // page_size + 2 * len(prompt_lens) + 2, page_size, num_heads,
                   num_kv_heads, head_dim, **({} if scale is None else {"scale": scale}))
    ids, keys, values = [], {}, {}
    for n in prompt_lens:
        k = rng.standard_normal((n, num_kv_heads, head_dim)).astype(np.float32)
        v = rng.standard_normal((n, num_kv_heads, head_dim)).astype(np.float32)
        sid = mgr.add_sequence(k, v).seq_id
        ids.append(sid)
        keys[sid], values[sid] = k, v
    scale = own if scale is None else scale
    for step in range(steps):
        step_ids = [ids[i] for i in order(step)]
        batch = len(step_ids)
        q = rng.standard_normal((batch, num_heads, head_dim)).astype(np.float32)
        k_new = rng.standard_normal((batch, num_kv_heads, head_dim)).astype(np.float32)
        v_new = rng.standard_normal((batch, num_kv_heads, head_dim)).astype(np.float32)
        lens_before = {sid: mgr.seq_len(sid) for sid in ids}
        passed = _step_inputs(mgr, q, k_new, v_new)
        passed_ids = list(step_ids)
        try:
            got = mgr.decode_step(passed_ids, *passed)
        except ValueError as exc:
            raise refused_step(exc, f"step {step}") from exc
        _inputs_kept(f"step {step}", passed, (q, k_new, v_new), scale)
        changed = changed_input(f"step {step}: decode_step", {"seq_ids": step_ids},
                                {"seq_ids": passed_ids}, {"seq_ids": IDS_HINT})
        if changed:
            raise changed
        for i, sid in enumerate(step_ids):
            keys[sid] = np.concatenate([keys[sid], k_new[i:i + 1]])
            values[sid] = np.concatenate([values[sid], v_new[i:i + 1]])
        for sid in ids:
            want = lens_before[sid] + (sid in step_ids)
            if mgr.seq_len(sid) != want:
                raise Mismatch(f"step {step}: sequence {sid} has {mgr.seq_len(sid)} cached "
                               f"tokens", "append exactly one token (k[i:i+1], v[i:i+1]) to "
                               "each sequence of seq_ids, in their order; leave the others "
                               "alone.", str(want), str(mgr.seq_len(sid)))
        if got is None:
            raise Mismatch("decode_step returned None", "return the attention output "
                           "[batch, num_heads, head_dim].")
        got = np.asarray(to_numpy(got))
        kind = got.dtype   # a float16 result of a float32 cache: right up to its rounding
        narrow = kind.kind == "f" and kind.itemsize < np.dtype(mgr.cache.dtype).itemsize
        got = got.astype(np.float64)
        expected = np.stack([_dense_decode(q[i], keys[s], values[s], scale)
                             for i, s in enumerate(step_ids)])
        if got.shape != expected.shape:
            raise Mismatch(f"step {step}: output shape", "[batch, num_heads, head_dim], one "
                           "row per entry of seq_ids.", str(expected.shape), str(got.shape))
        diff = describe_difference(got, expected, ("sequence", "head", "dim"), unwritten=False)
        if diff is None:
            continue
        if narrow and np.allclose(got, expected, rtol=2e-3, atol=2e-3):
            raise Mismatch(f"step {step}: the output is {kind}; the cache is "
                           f"{np.dtype(mgr.cache.dtype)}: " + diff.message(), "return the "
                           "attention's output as it comes (in the cache's dtype): a cast to "
                           f"{kind} rounds every value.", str(np.dtype(mgr.cache.dtype)),
                           str(kind))
        hint = _other_row(mgr, step_ids, k_new) or diagnose(got, expected, [
            (LEFT_OUT_TOKEN_HINT,
             lambda: np.stack([_dense_decode(q[i], keys[s][:-1], values[s][:-1], scale)
                               for i, s in enumerate(step_ids)])),
            ("build the block tables for this step's sequences in the order of seq_ids: "
             "self.cache.block_tables(seq_ids) (without arguments it lists every live "
             "sequence, in the order they were added).",
             lambda: np.stack([_dense_decode(q[i], keys[s], values[s], scale)
                               for i, s in enumerate(sorted(step_ids))])),
            ("the new token's value went in as its key: append (k[i:i+1], v[i:i+1]), the "
             "value second.", lambda: _values_from_keys(q, keys, values, step_ids, scale)),
            ("the new token's key and value were swapped: append (k[i:i+1], v[i:i+1]), the "
             "key first.", lambda: _values_from_keys(q, keys, values, step_ids, scale,
                                                     swapped=True)),
            *[(text, lambda s=s: np.stack([_dense_decode(q[i], keys[sid], values[sid], s)
                                           for i, sid in enumerate(step_ids)]))
              for text, s in ((f"the scores are not scaled: pass self.scale ({scale:.4g} "
                               "here) to the attention.", 1.0),
                              ("the scale is applied twice (scores times scale squared): scale "
                               "q or pass self.scale, not both.", scale ** 2),
                              (f"pass self.scale to the attention: this manager was made with "
                               f"scale={scale:g}, and the attention's default (left out, or "
                               f"None) is 1/sqrt(head_dim) = {own:.4g}.", own))],
        ]) or "append, then attend with paged_attention_decode(q, self.cache.k_cache, " \
              "self.cache.v_cache, *self.cache.block_tables(seq_ids))."
        raise Mismatch(f"step {step} (seq_ids {step_ids}): " + diff.message(), hint)


# attending before the append and passing lens - 1 after it both leave out the step's own
# token: the outputs and the cache after the step are the same, so both are named
LEFT_OUT_TOKEN_HINT = several_fit([
    "the new token must attend to itself: append k / v to the cache first, then build the "
    "block tables and attend.",
    "the lengths given to the attention leave out the step's token: pass lens as "
    "self.cache.block_tables(seq_ids) returns them (they count the token just appended), "
    "not lens - 1.",
], "output")

IDS_HINT = ("the caller (the engine) reads its batch's seq_ids again after the step: loop over "
            "them, do not pop, remove, sort or clear them")


def _step_inputs(mgr, q, k, v) -> list:
    """Copies of a step's inputs on the manager's device, so that a step that writes into
    them leaves the check's own arrays (and so its expected output) as they were."""
    return [mgr.xp.asarray(a.copy()) for a in (q, k, v)]


def _inputs_kept(where: str, passed, given, scale: float) -> None:
    """A step that changed q, k or v in place fails here, before its output is compared: an
    output right for the changed q would otherwise read as a missing scale."""
    passed = {name: np.asarray(to_numpy(a)) for name, a in zip("qkv", passed)}
    given = dict(zip("qkv", given))
    hints = {name: "compute into new arrays (x = x * ..., not x *= ... or x[...] = ...)"
             for name in "qkv"}
    if np.allclose(passed["q"], given["q"] * np.float32(scale)):
        hints["q"] = ("q *= self.scale scales the caller's q; pass self.scale to the "
                      "attention instead (or scale a copy, q * self.scale)")
    changed = changed_input(f"{where}: decode_step", given, passed, hints)
    if changed:
        raise changed


def _other_row(mgr, step_ids, k_new) -> str:
    """The hint for a step that appended to some sequence another row of k than its own
    (k[0] to every one, or the row of its seq id), seen in the cache itself; else ""."""
    for i, sid in enumerate(step_ids):
        last = mgr.cache.gather(sid)[0][-1].astype(np.float32)
        rows = [j for j in range(len(k_new)) if np.allclose(last, k_new[j], atol=1e-3)]
        if rows and i not in rows:
            return (f"sequence {sid}, seq_ids[{i}], got row {rows[0]} of k as its new token: "
                    "append row i of k and v to seq_ids[i], k[i:i+1] and v[i:i+1], with i the "
                    "sequence's position in seq_ids, as enumerate(seq_ids) gives it.")
    return ""


def _values_from_keys(q, keys, values, step_ids, scale, swapped=False):
    """The output had the step's key been appended as its value too (swapped: and its value
    as its key, cache.append(seq_id, v, k))."""
    def cached(s):
        new_key = values[s][-1:] if swapped else keys[s][-1:]
        return (np.concatenate([keys[s][:-1], new_key]),
                np.concatenate([values[s][:-1], keys[s][-1:]]))
    return np.stack([_dense_decode(q[i], *cached(s), scale) for i, s in enumerate(step_ids)])


def _lengths(seq_ids, lens) -> str:
    """"sequence 0: 8 tokens, sequence 1: 9 tokens": a step's lengths, each named by its
    sequence (a bare list leaves the learner to guess which sequences it holds)."""
    return ", ".join(f"sequence {s}: {counted(n, 'token')}" for s, n in zip(seq_ids, lens))


def _decode_out_of_pages(cls) -> None:
    """Two sequences end exactly on a page boundary, one page is free: the step needs two."""
    rng = case_rng(23)
    mgr = _manager(cls, 5, 4, 2, 1, 8)
    ids = [mgr.add_sequence(*(rng.standard_normal((8, 1, 8)).astype(np.float32),) * 2).seq_id
           for _ in range(2)]
    assert mgr.cache.allocator.num_free == 1
    q = mgr.xp.asarray(rng.standard_normal((2, 2, 8)).astype(np.float32))
    kv = mgr.xp.asarray(rng.standard_normal((2, 1, 8)).astype(np.float32))
    try:
        mgr.decode_step(list(ids), q, kv, kv)
    except OutOfPagesError as exc:
        raised = exc
    except (RuntimeError, MemoryError) as exc:
        raise other_error(exc, "both sequences' last pages are full and 1 page is free: the "
                          "step needs 2 pages") from None
    else:
        raise Mismatch("both sequences' last pages are full and 1 page is free: the step needs "
                       "2 pages", "raise OutOfPagesError when the step cannot fit.",
                       "OutOfPagesError", "no error")
    lens = [mgr.seq_len(s) for s in ids]
    free = mgr.cache.allocator.num_free
    if lens != [8, 8] or free != 1:
        raise Mismatch("a failed step changed the cache", "all or nothing: count the new pages "
                       "the step needs (pages_for_next_token of Task 1, summed over seq_ids: "
                       "here both last pages are full, so 2) and raise OutOfPagesError before "
                       "appending anything.", f"{_lengths(ids, [8, 8])}; 1 page free",
                       f"{_lengths(ids, lens)}; {counted(free, 'page')} free")
    error_counts(raised, (2, 1, 5), "both sequences' last pages are full and 1 of 5 pages is "
                 "free: the step needs 2")


def _decode_exact_fit(cls) -> None:
    """One free page, and only one of three sequences needs a page (one has a free slot
    left, one several): the step fits."""
    rng = case_rng(24)
    mgr = _manager(cls, 7, 4, 2, 1, 8)

    def rows(n):
        return mgr.xp.asarray(rng.standard_normal((n, 1, 8)).astype(np.float32))

    ids = [mgr.add_sequence(rows(n), rows(n)).seq_id for n in (8, 7, 5)]
    q = mgr.xp.asarray(rng.standard_normal((3, 2, 8)).astype(np.float32))
    try:
        mgr.decode_step(list(ids), q, rows(3), rows(3))
    except OutOfPagesError as exc:
        asked = getattr(exc, "requested", None)
        hint = ("this step needs one new page, for the sequence of 8 tokens (its last page "
                "is full); the others still have room. Count pages_for_next_token over "
                "seq_ids" + (", not one page per sequence." if asked == 3 else "."))
        if asked == 2:
            hint = ("the sequence of 7 tokens has one free slot left (7 % 4 = 3): its token "
                    "fills that slot and takes no page. A token takes a new page when "
                    "seq_len % page_size == 0, not when it is page_size - 1.")
        elif asked == 1 and getattr(exc, "free", None) == 0:
            # (the free page was gone when it raised: appends ran before the comparison)
            hint = ("your count is right (1 page needed) and 1 page was free before the "
                    "step, but the error says 0 free: the step appended before it compared. "
                    "Compare needed with num_free once, before appending anything.")
        elif asked == 1:   # the count is right: the comparison is not
            hint = ("your count is right (1 page needed) and 1 page is free: the step fits. "
                    "Raise only when needed > num_free, not needed >= num_free.")
        raise Mismatch(f"a step that fits raised OutOfPagesError: {exc}", hint,
                       "the step runs (1 page free, 1 needed)", "OutOfPagesError") from None
    lens = [mgr.seq_len(s) for s in ids]
    if lens != [9, 8, 6] or mgr.cache.allocator.num_free != 0:
        raise Mismatch("after the step", "append one token to each sequence: the full one "
                       "takes the last free page, the others fill their own.",
                       "lengths [9, 8, 6], 0 pages free",
                       f"lengths {lens}, {mgr.cache.allocator.num_free} free")


def _decode_fork(cls) -> None:
    """A fork shares its parent's partly filled last page: its next token takes a page (the
    copy on write) although the page has room. No page free: the step must fail untouched;
    one page free: it runs, and the parent keeps its own keys."""
    rng = case_rng(25)
    mgr = _manager(cls, 5, 4, 2, 1, 8)

    def rows(n):
        return rng.standard_normal((n, 1, 8)).astype(np.float32)

    kv = {n: (rows(n), rows(n)) for n in (6, 5, 3)}
    parent, other, spare = (mgr.add_sequence(*kv[n]).seq_id for n in (6, 5, 3))
    fork = mgr.cache.fork_sequence(parent)
    q = rng.standard_normal((2, 2, 8)).astype(np.float32)
    k_new, v_new = rows(2), rows(2)
    step = [other, fork]
    try:
        mgr.decode_step(list(step), mgr.xp.asarray(q.copy()), mgr.xp.asarray(k_new.copy()),
                        mgr.xp.asarray(v_new.copy()))
    except OutOfPagesError as exc:
        raised = exc
    except (RuntimeError, MemoryError) as exc:
        raise other_error(exc, "the fork's next token needs a copy of its shared last page "
                          "and no page is free") from None
    else:
        raise Mismatch("the fork's next token needs a copy of its shared last page and no page "
                       "is free", "raise OutOfPagesError when the step cannot fit.",
                       "OutOfPagesError", "no error")
    lens = [mgr.seq_len(s) for s in (other, fork)]
    if lens != [5, 6]:
        own = raised_by_the_pool(raised) is False and lens[0] == 6
        first = (f"sequence {other} got its token before the step raised for the fork" if own
                 else f"sequence {other} got its token before the fork's append ran out of "
                 "pages" if lens[0] == 6 else "the step's sequences changed length")
        hint = (f"your step saw that the fork needs a page, but only after sequence {other} "
                "had its token: all or nothing, compare the whole step's count with "
                "num_free once, before appending anything." if own else
                f"sequence {fork} is a fork: its last page (2 of 4 slots used) is shared "
                f"with sequence {parent}, so its token needs a private copy of that page "
                "(copy on write), and no page is free. Count the step's pages with "
                "pages_for_next_token (it sees the copy), not seq_len % page_size alone, "
                "and raise before appending anything.")
        raise Mismatch(f"a failed step changed the cache: the step was seq_ids [{other}, "
                       f"{fork}], sequence {fork} a fork of sequence {parent}; {first}", hint,
                       _lengths((other, fork), [5, 6]) + " (both unchanged)",
                       _lengths((other, fork), lens))
    error_counts(raised, (1, 0, 5), "the fork's next token needs a copy of its shared last "
                 "page and none of the 5 pages is free", sequences=len(step))
    mgr.finish(spare)
    passed = _step_inputs(mgr, q, k_new, v_new)
    try:
        got = to_numpy(mgr.decode_step(list(step), *passed))
    except OutOfPagesError as exc:
        raise Mismatch(f"with one page free, the step raised OutOfPagesError: {exc}", "the step "
                       "needs one page (the fork's copy) and one is free: it fits (raise only "
                       "when needed > num_free).", "the step runs", "OutOfPagesError") from None
    except ValueError as exc:
        raise refused_step(exc, f"with one page free, seq_ids {step}") from exc
    _inputs_kept("with one page free", passed, (q, k_new, v_new), 1 / np.sqrt(8))
    keys = [np.concatenate([kv[n][0], k_new[i:i + 1]]) for i, n in enumerate((5, 6))]
    values = [np.concatenate([kv[n][1], v_new[i:i + 1]]) for i, n in enumerate((5, 6))]
    expected = np.stack([_dense_decode(q[i], keys[i], values[i], 1 / np.sqrt(8))
                         for i in range(2)])
    diff = describe_difference(np.asarray(got, np.float64), expected, ("sequence", "head", "dim"),
                               unwritten=False)
    if diff is not None:
        raise Mismatch("with one page free: " + diff.message(), _other_row(mgr, step, k_new)
                       or "append (the cache copies the fork's shared page itself), then "
                       "attend as in the other cases.")
    if not np.array_equal(mgr.cache.gather(parent)[0], kv[6][0]):
        raise Mismatch(f"the fork's token changed sequence {parent}'s keys", "append through "
                       "self.cache.append, which copies a shared page before writing.")


def decode_step(cls) -> CheckResult:
    """Check `cls` (a PagedAttentionManager subclass): decode_step(seq_ids, q, k, v)."""
    cases = [
        Case("three sequences, 5 steps", {"prompt_lens": [7, 8, 1], "page_size": 4,
                                           "num_heads": 4, "num_kv_heads": 2, "head_dim": 8},
             lambda: _decode_case(cls, 21, [7, 8, 1], 4, 4, 2, 8, 5, lambda s: [0, 1, 2])),
        Case("a reordered subset each step", {"prompt_lens": [5, 12, 3, 9], "page_size": 4,
                                              "num_heads": 2, "num_kv_heads": 1, "head_dim": 16},
             lambda: _decode_case(cls, 22, [5, 12, 3, 9], 4, 2, 1, 16, 4,
                                  lambda s: [[2, 0, 3], [3, 1], [1, 2, 0, 3], [0, 2]][s])),
        # (the cases above: page_size 4 and the default scale, which a mask for % page_size
        # or the attention's default scale would pass)
        Case("page_size 6, GQA 6/2, a manager made with scale 0.3",
             {"prompt_lens": [5, 13, 6], "page_size": 6, "num_heads": 6, "num_kv_heads": 2,
              "head_dim": 8, "scale": 0.3},
             lambda: _decode_case(cls, 23, [5, 13, 6], 6, 6, 2, 8, 4, lambda s: [1, 0, 2],
                                  scale=0.3)),
        Case("the pool runs out mid-step", {"num_pages": 5, "page_size": 4},
             lambda: _decode_out_of_pages(cls)),
        Case("the last free page is just enough", {"num_pages": 7, "page_size": 4,
                                                    "seq_lens": [8, 7, 5]},
             lambda: _decode_exact_fit(cls)),
        Case("a fork's shared, partly filled last page", {"num_pages": 5, "page_size": 4,
                                                          "seq_lens": [6, 5, 3]},
             lambda: _decode_fork(cls)),
    ]
    return run_cases("decode_step", f"{getattr(cls, '__name__', cls)}.decode_step", cases)
