"""Checks for lesson 07: a decode step on a paged cache, and a serving loop that frees.

The decode step must append this step's key and value to each sequence *before*
attending (the new token attends to itself), build the block tables for exactly the
sequences of this step in their order, and leave the other sequences alone. The serving
loop must free every finished sequence: a cache that never gives pages back (the guide's
page counter) stalls as soon as the pool is used up.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..cache import PagedKVCache
from ..paging import OutOfPagesError
from .compare import describe_difference, diagnose
from .report import Case, CaseTimeout, Mismatch, run_cases, time_limit


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


def _next_page_case(fn, page_size: int) -> None:
    rng = np.random.default_rng(page_size)
    cache = PagedKVCache(40, page_size, 1, 4, device="cpu")

    def tokens(n):
        return rng.standard_normal((n, 1, 4)).astype(np.float32)

    lens = [1, page_size - 1, page_size, page_size + 1, 2 * page_size, 3 * page_size - 1]
    story = []
    for n in lens:
        sid = cache.add_sequence()
        cache.append(sid, tokens(n), tokens(n))
        story.append((sid, f"a sequence of {n} tokens"))
    parent = cache.add_sequence()
    cache.append(parent, tokens(page_size + 2), tokens(page_size + 2))
    child = cache.fork_sequence(parent)
    story += [(parent, f"a sequence of {page_size + 2} tokens whose pages a fork shares"),
              (child, f"its fork ({page_size + 2} tokens, last page shared and partly filled)")]
    full_parent = cache.add_sequence()
    cache.append(full_parent, tokens(2 * page_size), tokens(2 * page_size))
    full_child = cache.fork_sequence(full_parent)
    story.append((full_child, f"a fork of a {2 * page_size}-token sequence (last page shared, "
                              "full)"))
    for sid, what in story:
        n = cache.seq_len(sid)
        last_page = cache.block_table(sid)[-1]
        last_shared = n % page_size != 0 and cache.allocator.ref_count(last_page) > 1
        expected = 1 if (n % page_size == 0 or last_shared) else 0
        got = fn(cache, sid)
        if got is not None and int(got) == expected:
            continue
        if last_shared and got == 0:
            hint = ("the last page is shared with another sequence (ref_count > 1): writing into "
                    "it would change the other sequence's tokens, so the next token needs a "
                    "private copy of that page (copy on write): one new page.")
        elif n % page_size == 0:
            hint = ("the last page is full (seq_len % page_size == 0): the next token needs a "
                    "new page.")
        else:
            room = page_size - n % page_size
            hint = (f"the last page still has {room} free slot{'s' if room > 1 else ''}: no new "
                    "page (unless it is shared).")
        raise Mismatch(f"{what} (page_size {page_size})", hint, str(expected), repr(got))


def pages_for_next_token(fn) -> "CheckResult":  # noqa: F821
    """Check `fn(cache, seq_id)`: pages one more token of that sequence takes (0 or 1)."""
    cases = [Case("lengths around page boundaries, and forks", {"page_size": p},
                  lambda p=p: _next_page_case(fn, p)) for p in (4, 16)]
    return run_cases("pages_for_next_token", "pages_for_next_token: when a token takes a page",
                     cases)


def _manager(cls, num_pages, page_size, num_heads, num_kv_heads, head_dim):
    return cls(num_pages=num_pages, page_size=page_size, num_heads=num_heads,
               num_kv_heads=num_kv_heads, head_dim=head_dim)


def _decode_case(cls, seed: int, prompt_lens, page_size: int, num_heads: int,
                 num_kv_heads: int, head_dim: int, steps: int, order) -> None:
    rng = np.random.default_rng(seed)
    total = sum(prompt_lens) + steps * len(prompt_lens)
    mgr = _manager(cls, total // page_size + 2 * len(prompt_lens) + 2, page_size, num_heads,
                   num_kv_heads, head_dim)
    ids, keys, values = [], {}, {}
    for n in prompt_lens:
        k = rng.standard_normal((n, num_kv_heads, head_dim)).astype(np.float32)
        v = rng.standard_normal((n, num_kv_heads, head_dim)).astype(np.float32)
        sid = mgr.add_sequence(k, v).seq_id
        ids.append(sid)
        keys[sid], values[sid] = k, v
    scale = 1.0 / np.sqrt(head_dim)
    for step in range(steps):
        step_ids = [ids[i] for i in order(step)]
        batch = len(step_ids)
        q = rng.standard_normal((batch, num_heads, head_dim)).astype(np.float32)
        k_new = rng.standard_normal((batch, num_kv_heads, head_dim)).astype(np.float32)
        v_new = rng.standard_normal((batch, num_kv_heads, head_dim)).astype(np.float32)
        lens_before = {sid: mgr.seq_len(sid) for sid in ids}
        try:
            got = mgr.decode_step(list(step_ids), mgr.xp.asarray(q), mgr.xp.asarray(k_new),
                                  mgr.xp.asarray(v_new))
        except ValueError as exc:
            text = str(exc)
            if text.startswith("block_tables") or text.startswith("seq_lens"):
                raise Mismatch(f"step {step}: {text}", "build the block tables for exactly "
                               "this step's sequences, in the order of seq_ids: "
                               "self.cache.block_tables(seq_ids) (without arguments it lists "
                               "every live sequence).") from exc
            if text.startswith(("k:", "v:")) and "dimensions" in text:
                raise Mismatch(f"step {step}: {text}", "cache.append takes [n_tokens, "
                               "num_kv_heads, head_dim]: pass k[i:i+1] (one token, still 3-D), "
                               "not k[i].") from exc
            raise
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
        got = np.asarray(to_numpy(got), dtype=np.float64)
        expected = np.stack([_dense_decode(q[i], keys[s], values[s], scale)
                             for i, s in enumerate(step_ids)])
        if got.shape != expected.shape:
            raise Mismatch(f"step {step}: output shape", "[batch, num_heads, head_dim], one "
                           "row per entry of seq_ids.", str(expected.shape), str(got.shape))
        diff = describe_difference(got, expected, ("sequence", "head", "dim"))
        if diff is None:
            continue
        hint = diagnose(got, expected, [
            ("the new token must attend to itself: append k / v to the cache first, then "
             "build the block tables and attend.",
             lambda: np.stack([_dense_decode(q[i], keys[s][:-1], values[s][:-1], scale)
                               for i, s in enumerate(step_ids)])),
            ("build the block tables for this step's sequences in the order of seq_ids: "
             "self.cache.block_tables(seq_ids) (without arguments it lists every live "
             "sequence, in the order they were added).",
             lambda: np.stack([_dense_decode(q[i], keys[s], values[s], scale)
                               for i, s in enumerate(sorted(step_ids))])),
        ]) or "append, then attend with paged_attention_decode(q, self.cache.k_cache, " \
              "self.cache.v_cache, *self.cache.block_tables(seq_ids))."
        raise Mismatch(f"step {step} (seq_ids {step_ids}): " + diff.message(), hint)


def _decode_out_of_pages(cls) -> None:
    """Two sequences end exactly on a page boundary, one page is free: the step needs two."""
    rng = np.random.default_rng(23)
    mgr = _manager(cls, 5, 4, 2, 1, 8)
    ids = [mgr.add_sequence(*(rng.standard_normal((8, 1, 8)).astype(np.float32),) * 2).seq_id
           for _ in range(2)]
    assert mgr.cache.allocator.num_free == 1
    q = mgr.xp.asarray(rng.standard_normal((2, 2, 8)).astype(np.float32))
    kv = mgr.xp.asarray(rng.standard_normal((2, 1, 8)).astype(np.float32))
    try:
        mgr.decode_step(ids, q, kv, kv)
    except OutOfPagesError:
        pass
    else:
        raise Mismatch("both sequences' last pages are full and 1 page is free: the step needs "
                       "2 pages", "raise OutOfPagesError when the step cannot fit.",
                       "OutOfPagesError", "no error")
    lens = [mgr.seq_len(s) for s in ids]
    if lens != [8, 8] or mgr.cache.allocator.num_free != 1:
        raise Mismatch("a failed step changed the cache", "all or nothing: count the new pages "
                       "the step needs (one per sequence whose length is a multiple of "
                       "page_size) and raise OutOfPagesError before appending anything.",
                       "lengths [8, 8], 1 page free",
                       f"lengths {lens}, {mgr.cache.allocator.num_free} free")


def decode_step(cls) -> "CheckResult":  # noqa: F821
    """Check `cls` (a PagedAttentionManager subclass): decode_step(seq_ids, q, k, v)."""
    cases = [
        Case("three sequences, 5 steps", {"prompt_lens": [7, 8, 1], "page_size": 4,
                                           "num_heads": 4, "num_kv_heads": 2, "head_dim": 8},
             lambda: _decode_case(cls, 21, [7, 8, 1], 4, 4, 2, 8, 5, lambda s: [0, 1, 2])),
        Case("a reordered subset each step", {"prompt_lens": [5, 12, 3, 9], "page_size": 4,
                                              "num_heads": 2, "num_kv_heads": 1, "head_dim": 16},
             lambda: _decode_case(cls, 22, [5, 12, 3, 9], 4, 2, 1, 16, 4,
                                  lambda s: [[2, 0, 3], [3, 1], [1, 2, 0, 3], [0, 2]][s])),
        Case("the pool runs out mid-step", {"num_pages": 5, "page_size": 4},
             lambda: _decode_out_of_pages(cls)),
    ]
    return run_cases("decode_step", f"{getattr(cls, '__name__', cls)}.decode_step", cases)


# -- task: the serving loop --------------------------------------------------------------

class _StepBudget(Exception):
    pass


def _serve_case(fn, seed: int, requests, num_pages: int, page_size: int) -> None:
    num_kv_heads, head_dim = 2, 4
    cache = PagedKVCache(num_pages, page_size, num_kv_heads, head_dim, device="cpu")
    rng = np.random.default_rng(seed)
    tokens = [rng.standard_normal((p + n, num_kv_heads, head_dim)).astype(np.float32)
              for p, n in requests]
    calls = {"n": 0}
    freed: list[int] = []  # request indices, in the order they were freed
    owner: dict[int, int] = {}

    def kv_for(i: int, start: int, n: int):
        calls["n"] += 1
        if calls["n"] > 20 * sum(n_new for _, n_new in requests) + 100:
            raise _StepBudget()
        block = tokens[i][start:start + n]
        return block.copy(), (-block).copy()

    original_add, original_free = cache.add_sequence, cache.free_sequence

    def add_sequence():
        sid = original_add()
        owner[sid] = len(owner)
        return sid

    def free_sequence(sid):
        k, _ = cache.gather(sid)
        i = owner.get(sid)
        if i is not None:
            if k.shape[0] != len(tokens[i]):
                raise Mismatch(f"request {i} was freed with {k.shape[0]} cached tokens",
                               "free a sequence once it holds prompt_len + new_tokens tokens.",
                               str(len(tokens[i])), str(k.shape[0]))
            if not np.array_equal(k, tokens[i]):
                raise Mismatch(f"request {i} holds the wrong keys when it is freed",
                               "append each request's tokens to its own sequence, in order: "
                               "kv_for(i, start, n) gives tokens start..start+n-1.")
            freed.append(i)
        original_free(sid)

    cache.add_sequence, cache.free_sequence = add_sequence, free_sequence
    try:
        with time_limit(5):
            finished = fn(cache, list(requests), kv_for)
    except (_StepBudget, CaseTimeout):
        raise Mismatch(f"serve did not finish: {calls['n']} calls to kv_for and "
                       f"{cache.allocator.num_free} of {num_pages} pages free",
                       "the pool is too small for every request at once: finished sequences "
                       "must be freed (cache.free_sequence) so that waiting requests can be "
                       "admitted (the guide's page counter never frees).") from None
    except OutOfPagesError as exc:
        raise Mismatch(f"the cache ran out of pages: {exc}",
                       "admit a request only when the pool has room for all its tokens "
                       "(ceil((prompt_len + new_tokens) / page_size) pages free), and free "
                       "every finished sequence so the next ones fit.") from None
    if finished is None or sorted(finished) != list(range(len(requests))):
        raise Mismatch("serve must return the indices of the requests in the order they "
                       "finished", "append i to a list when request i is done; every request "
                       "must finish.", f"a permutation of 0..{len(requests) - 1}",
                       repr(finished))
    if cache.allocator.num_free != num_pages:
        leaked = num_pages - cache.allocator.num_free
        raise Mismatch(f"{leaked} pages still in use after every request finished",
                       "free each sequence when it finishes: cache.free_sequence(seq_id) "
                       "returns its pages (forgetting it leaks memory until the server stalls).",
                       f"{num_pages} free", f"{cache.allocator.num_free} free")
    if sorted(freed) != list(range(len(requests))):
        raise Mismatch("not every request's sequence was freed exactly once",
                       "free each finished sequence once.", "each request once", repr(freed))


def serve(fn) -> "CheckResult":  # noqa: F821
    """Check `fn(cache, requests, kv_for)` runs every (prompt_len, new_tokens) request."""
    small = [(5, 3), (9, 2), (2, 6), (4, 4), (7, 1)]
    cases = [
        Case("room for everyone", {"requests": small, "num_pages": 32, "page_size": 4},
             lambda: _serve_case(fn, 31, small, 32, 4)),
        Case("a pool too small for all at once", {"requests": small, "num_pages": 6,
                                                  "page_size": 4},
             lambda: _serve_case(fn, 32, small, 6, 4)),
        Case("page_size 2, long outputs", {"requests": [(3, 9), (1, 12), (6, 5)],
                                           "num_pages": 10, "page_size": 2},
             lambda: _serve_case(fn, 33, [(3, 9), (1, 12), (6, 5)], 10, 2)),
    ]
    return run_cases("serve", "serve: admit, decode, finish and free", cases)
