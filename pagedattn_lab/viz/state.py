"""What the pictures draw: a plain snapshot of who owns which page, and replayable events.

The plots never reach into a live cache while drawing. They take a `PageMapState` (a copy
of the block tables, lengths and reference counts at one moment), made from a
`PagedKVCache`, anything holding one in `.cache` (such as the `PagedAttentionManager`), or
a replay of recorded allocation events.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from ..cache import PagedKVCache
from ..paging import OutOfPagesError
from ..validate import check_int


@dataclass(frozen=True)
class PageMapState:
    """A frozen picture of a paged KV cache's bookkeeping.

    tables:  {sequence label: its block table (physical pages, in virtual-page order)}
    lengths: {sequence label: tokens cached}
    ref_counts: owners per physical page (0 = free)
    """
    num_pages: int
    page_size: int
    tables: dict = field(default_factory=dict)
    lengths: dict = field(default_factory=dict)
    ref_counts: tuple = ()
    note: str = ""

    @property
    def pages_in_use(self) -> int:
        return sum(1 for c in self.ref_counts if c > 0)

    @property
    def free_pages(self) -> list[int]:
        return [p for p, c in enumerate(self.ref_counts) if c == 0]

    @property
    def shared_pages(self) -> list[int]:
        return [p for p, c in enumerate(self.ref_counts) if c > 1]

    def owners(self, page: int) -> list:
        """Sequence labels whose block table lists `page`."""
        return [s for s, pages in self.tables.items() if page in pages]

    def tokens_in_page(self, page: int) -> int:
        """Tokens stored in `page` (the fullest owner's view, for a shared page)."""
        best = 0
        for seq, pages in self.tables.items():
            for vpage, p in enumerate(pages):
                if p == page:
                    best = max(best, min(self.page_size, self.lengths[seq] - vpage * self.page_size))
        return best

    @property
    def tokens(self) -> int:
        return sum(self.lengths.values())

    @property
    def internal_waste_slots(self) -> int:
        """Empty slots inside pages in use (the unused tails of last pages)."""
        return sum(self.page_size - self.tokens_in_page(p)
                   for p, c in enumerate(self.ref_counts) if c > 0)


def as_state(obj, name: str = "obj") -> PageMapState:
    """A PageMapState from a PageMapState, a PagedKVCache, or an object with `.cache`.

    name: the caller's argument, for the error when obj is none of these."""
    if isinstance(obj, PageMapState):
        return obj
    cache = obj if isinstance(obj, PagedKVCache) else getattr(obj, "cache", None)
    if not isinstance(cache, PagedKVCache):
        raise TypeError(f"{name}: expected a PagedKVCache, a PageMapState or an object with a "
                        f".cache attribute, got {type(obj).__name__}")
    tables = {s: cache.block_table(s) for s in cache.seq_ids}
    lengths = {s: cache.seq_len(s) for s in cache.seq_ids}
    refs = tuple(cache.allocator.ref_count(p) for p in range(cache.num_pages))
    return PageMapState(cache.num_pages, cache.page_size, tables, lengths, refs)


# -- allocation events -------------------------------------------------------------------

EVENT_KINDS = ("add", "append", "fork", "free")


def replay(events, num_pages: int, page_size: int) -> list[PageMapState]:
    """Apply events to a fresh cache; the state before the first event and after each one.

    An event is a tuple: ("add", name, n_tokens), ("append", name, n_tokens),
    ("fork", new_name, parent_name) or ("free", name). Names are any hashable labels
    (for example "A", "B"); the state's tables are keyed by them. An event that cannot be
    done (the pool is out of pages) is recorded in the state's `note` and changes nothing.
    """
    cache = PagedKVCache(num_pages, page_size, num_kv_heads=1, head_dim=1, device="cpu")
    ids = {}

    def snapshot(note: str) -> PageMapState:
        inner = as_state(cache)
        names = {v: k for k, v in ids.items()}
        return PageMapState(num_pages, page_size,
                            {names[s]: t for s, t in inner.tables.items()},
                            {names[s]: n for s, n in inner.lengths.items()},
                            inner.ref_counts, note)

    def tokens(n: int):
        return np.zeros((n, 1, 1), np.float32)

    states = [snapshot("empty cache")]
    refused = set()   # names whose "add" found the pool full: their later events are moot
    for index, event in enumerate(events):
        _check_event(index, event, ids.keys(), ids.keys() | refused)
        kind, name = event[0], event[1]
        gone = [n for n in (name, event[2] if kind == "fork" else None)
                if n in refused and not (kind in ("add", "fork") and n == name)]
        if gone:
            if kind == "fork":
                refused.add(name)
            states.append(snapshot(f"{kind} {name} skipped: {gone[0]} was never added "
                                   f"(the pool was full)"))
            continue
        refused.discard(name)   # an "add" or "fork" of it starts it afresh
        try:
            if kind == "add":
                ids[name] = cache.add_sequence()
                cache.append(ids[name], tokens(event[2]), tokens(event[2]))
                note = f"add {name}: {event[2]} prompt tokens"
            elif kind == "append":
                cache.append(ids[name], tokens(event[2]), tokens(event[2]))
                note = f"append {event[2]} token(s) to {name}"
            elif kind == "fork":
                ids[name] = cache.fork_sequence(ids[event[2]])
                note = f"fork {name} from {event[2]} (pages shared)"
            else:
                cache.free_sequence(ids.pop(name))
                note = f"free {name}: its pages return to the pool"
        except OutOfPagesError as exc:  # nothing changed; show why
            if kind == "add" and name in ids and cache.seq_len(ids[name]) == 0:
                cache.free_sequence(ids.pop(name))
                refused.add(name)
            note = f"{kind} {name} failed: {type(exc).__name__}"
        states.append(snapshot(note))
    return states


_ARITY = {"add": 3, "append": 3, "fork": 3, "free": 2}


def _check_event(index: int, event, live, known) -> None:
    """Refuse a malformed event by its index: only a full pool is a story worth drawing;
    a typo in a name would otherwise show up as a quiet "failed" note."""
    where = f"events[{index}]"
    if not isinstance(event, (tuple, list)) or not event or event[0] not in EVENT_KINDS:
        raise ValueError(f"{where}: expected a tuple starting with one of {EVENT_KINDS}, "
                         f"got {event!r}")
    kind = event[0]
    if len(event) != _ARITY[kind]:
        raise ValueError(f"{where}: a {kind!r} event has {_ARITY[kind]} items, got {event!r}")
    name = event[1]
    if kind in ("add", "fork") and name in live:
        raise ValueError(f"{where}: {name!r} is already a live sequence; free it first")
    if kind in ("append", "free") and name not in known:
        raise ValueError(f"{where}: no live sequence {name!r} to {kind}")
    if kind == "fork" and event[2] not in known:
        raise ValueError(f"{where}: no live sequence {event[2]!r} to fork from")
    if kind in ("add", "append") and (isinstance(event[2], bool)
                                      or not isinstance(event[2], numbers.Integral)
                                      or event[2] < 0):
        raise ValueError(f"{where}: expected a token count (an int >= 0), got {event[2]!r}")


def demo_events(seed: int = 0, num_sequences: int = 5, steps: int = 24, page_size: int = 4,
                max_prompt: int = 10):
    """A small, seeded serving story: sequences arrive, grow token by token, fork and finish.
    Sequences are named "A", "B", ... (so at most 26); a prompt has 2..max_prompt tokens."""
    rng = np.random.default_rng(check_int(seed, "seed", minimum=0))
    num_sequences = check_int(num_sequences, "num_sequences", minimum=1, maximum=26)
    steps = check_int(steps, "steps", minimum=0)
    page_size = check_int(page_size, "page_size", minimum=1)
    max_prompt = check_int(max_prompt, "max_prompt", minimum=2)
    names = [chr(ord("A") + i) for i in range(num_sequences)]
    events, live, waiting = [], [], list(names)
    for step in range(steps):
        roll = rng.random()
        if waiting and (not live or roll < 0.3):
            name = waiting.pop(0)
            events.append(("add", name, int(rng.integers(2, max_prompt + 1))))
            live.append(name)
        elif live and roll > 0.9 and len(live) > 1:
            name = live.pop(int(rng.integers(len(live))))
            events.append(("free", name))
        else:
            name = live[int(rng.integers(len(live)))]
            events.append(("append", name, int(rng.integers(1, page_size + 1))))
    return events
