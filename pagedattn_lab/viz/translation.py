"""Address translation drawn: token position -> virtual page -> physical page -> slot -> element."""
from __future__ import annotations

from collections.abc import Hashable
from numbers import Number

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from ..addressing import (Translation, element_offset, page_offset, translate,
                          virtual_page)
from ..cache import PagedKVCache
from ..validate import check_int
from ..validate_kinds import is_int
from .page_table import color_map, draw_physical, grid_shape
from .state import as_state


def _head_shape(obj, num_kv_heads, head_dim):
    cache = obj if isinstance(obj, PagedKVCache) else getattr(obj, "cache", None)
    if isinstance(cache, PagedKVCache):
        return num_kv_heads or cache.num_kv_heads, head_dim or cache.head_dim
    if num_kv_heads is None or head_dim is None:
        raise ValueError("num_kv_heads, head_dim: needed when drawing a PageMapState "
                         "(a PagedKVCache knows them)")
    return num_kv_heads, head_dim


def translation_of(obj, seq, token: int, *, kv_head: int = 0, dim: int = 0,
                   num_kv_heads: int | None = None, head_dim: int | None = None) -> Translation:
    """`pagedattn_lab.translate` for sequence `seq` of a cache (or state)."""
    state = as_state(obj)
    num_kv_heads, head_dim = _head_shape(obj, num_kv_heads, head_dim)
    _check_label(seq)
    if seq not in state.tables:
        raise KeyError(f"seq: no live sequence {seq!r} (live: {list(state.tables)})")
    token = check_int(token, "token")
    if not 0 <= token < state.lengths[seq]:
        raise ValueError(f"token: sequence {seq!r} holds tokens 0..{state.lengths[seq] - 1}, "
                         f"got {token}")
    return translate(state.tables[seq], token, state.page_size, num_kv_heads, head_dim,
                     kv_head=kv_head, dim=dim)


def _check_label(seq) -> None:
    """Refuse a `seq` that is no sequence label before looking it up: True, 1.0 and 1 + 0j
    equal 1 and hash alike (they found sequence 1, or a KeyError naming no type), and a list
    cannot be looked up at all."""
    number = isinstance(seq, (Number, np.bool_))
    if (number and not is_int(seq)) or not isinstance(seq, Hashable):
        raise TypeError(f"seq: expected a sequence id (an int; a replayed state's label), got "
                        f"{seq!r} ({type(seq).__name__})")


def describe_translation(t: Translation, page_size: int, num_kv_heads: int, head_dim: int,
                         kv_head: int = 0, dim: int = 0) -> str:
    """The four steps of one translation as text, with the numbers filled in. The sizes and
    head must be those `t` was translated with: other ones (page_size -4) wrote arithmetic
    that does not add up ("0 // -4 = 0"), so they are refused by name."""
    if not isinstance(t, Translation):
        raise TypeError(f"t: expected a Translation (translation_of's answer), got "
                        f"{type(t).__name__}")
    # t again from these sizes, by the steps of addressing (each checks its arguments by
    # name): the same exactly when they are the sizes t was translated with
    offset = page_offset(t.token, page_size)
    slot = t.physical_page * page_size + offset
    again = Translation(t.token, virtual_page(t.token, page_size), offset, t.physical_page,
                        slot, element_offset(slot, kv_head, dim, num_kv_heads, head_dim))
    if again != t:
        raise ValueError(_not_the_sizes_of(t, again, page_size, {
            "num_kv_heads": num_kv_heads, "head_dim": head_dim, "kv_head": kv_head, "dim": dim}))
    return (f"token {t.token}: virtual page = {t.token} // {page_size} = {t.virtual_page}, "
            f"offset = {t.token} % {page_size} = {t.offset}\n"
            f"physical page = block_table[{t.virtual_page}] = {t.physical_page}\n"
            f"slot = {t.physical_page} * {page_size} + {t.offset} = {t.slot}\n"
            f"element offset = ({t.slot} * {num_kv_heads} + {kv_head}) * {head_dim} + {dim} "
            f"= {t.element_offset}")


def _not_the_sizes_of(t: Translation, again: Translation, page_size: int, sizes: dict) -> str:
    """Why these sizes are not the ones t was translated with, naming the argument the
    evidence shows: page_size when the page steps differ (they use nothing else), else each
    head size whose change alone gives t's element offset (all four when none does)."""
    if again[:5] != t[:5]:
        return (f"page_size: expected {_page_size_of(t)}, got {page_size}, which puts token "
                f"{t.token} at virtual page {again.virtual_page}, offset {again.offset}, slot "
                f"{again.slot} (t has {t.virtual_page}, {t.offset}, {t.slot})")
    fixes = _single_fixes(t.slot, t.element_offset, sizes)
    given = (f"{', '.join(f'{k} {v}' for k, v in sizes.items())} give element offset "
             f"{again.element_offset} for slot {t.slot}; t has {t.element_offset}")
    if not fixes:
        return f"{', '.join(sizes)}: {given}, which no one of them alone explains"
    if len(fixes) == 1:
        [(name, value)] = fixes.items()
        return f"{name}: expected {value}, got {sizes[name]} ({given})"
    return (f"{' or '.join(fixes)}: expected {' or '.join(f'{k} {v}' for k, v in fixes.items())}"
            f" (either alone explains t), got {', '.join(f'{k} {sizes[k]}' for k in fixes)} "
            f"({given})")


def _page_size_of(t: Translation) -> str:
    """The page size t's page steps were taken with, as far as t shows it."""
    pages = [(t.token, t.virtual_page), (t.slot, t.physical_page)]
    for size in {(at - t.offset) // page for at, page in pages if page > 0}:
        if size > max(t.offset, 0) and all(at == page * size + t.offset for at, page in pages):
            return str(size)
    return (f"a page size > {t.token}" if t.virtual_page == 0 and t.token == t.offset
            else "a page size that gives t's pages (none does: t is no translation)")


def _single_fixes(slot: int, offset: int, sizes: dict) -> dict:
    """{head size: value} for each of `sizes` whose change alone gives element `offset` of
    `slot` = (slot * num_kv_heads + kv_head) * head_dim + dim, each value in its range."""
    n, hd, kh, d = (sizes[k] for k in ("num_kv_heads", "head_dim", "kv_head", "dim"))
    row = slot * n + kh
    guesses = {"num_kv_heads": ((offset - d) // hd - kh) // slot if slot else None,
               "head_dim": (offset - d) // row if row else None,
               "kv_head": (offset - d) // hd - slot * n,
               "dim": offset - row * hd}
    fixes = {}
    for name, guess in guesses.items():
        trial = dict(sizes, **{name: guess})
        try:
            fits = guess is not None and element_offset(slot, **trial) == offset
        except ValueError:   # the guess is out of its range (kv_head >= num_kv_heads, ...)
            fits = False
        if fits:
            fixes[name] = guess
    return fixes


def plot_translation(obj, seq, token: int, *, kv_head: int = 0, dim: int = 0,
                     num_kv_heads: int | None = None, head_dim: int | None = None,
                     ncols: int | None = None):
    """Draw one translation: the sequence's tokens, its block table, and the physical page.

    Returns the Figure. The highlighted cells carry gids "token:<t>", "entry:<vpage>" and
    "highlight:<page>" / "slot:<page>:<offset>".
    """
    state = as_state(obj)
    num_kv_heads, head_dim = _head_shape(obj, num_kv_heads, head_dim)
    t = translation_of(obj, seq, token, kv_head=kv_head, dim=dim, num_kv_heads=num_kv_heads,
                       head_dim=head_dim)
    ps, table, length = state.page_size, state.tables[seq], state.lengths[seq]
    color = color_map(state)[seq]
    rows, _ = grid_shape(state.num_pages, ncols)
    fig = plt.figure(figsize=(9, 2.6 + 0.45 * rows))
    grid = fig.add_gridspec(3, 1, height_ratios=[1.0, 0.8, 0.6 * rows + 0.4], hspace=0.5)

    # 1. the sequence's own view: token positions grouped into virtual pages
    ax = fig.add_subplot(grid[0])
    n_virtual = len(table)
    for vpage in range(n_virtual):
        for off in range(ps):
            pos = vpage * ps + off
            x = vpage * (ps + 1) + off
            filled = pos < length
            hit = pos == t.token
            ax.add_patch(Rectangle((x, 0), 0.9, 0.9, facecolor="red" if hit else (color if filled else "white"),
                                   alpha=1.0 if hit or not filled else 0.6, edgecolor="#777", lw=0.5,
                                   gid=f"token:{pos}" if hit else None))
        ax.text(vpage * (ps + 1) + ps / 2, 1.15, f"virtual page {vpage}", ha="center",
                fontsize=7, color="red" if vpage == t.virtual_page else "black")
    ax.set_xlim(-0.5, n_virtual * (ps + 1))
    ax.set_ylim(-0.2, 1.6)
    ax.axis("off")
    ax.set_title(f"sequence {seq}: {length} tokens as the sequence sees them "
                 f"(token {t.token} in red)", fontsize=9)

    # 2. the block table row
    ax = fig.add_subplot(grid[1])
    for vpage, page in enumerate(table):
        hit = vpage == t.virtual_page
        ax.add_patch(Rectangle((vpage, 0), 0.95, 0.9, facecolor="#ffd0d0" if hit else "white",
                               edgecolor="red" if hit else "black", lw=2 if hit else 0.7,
                               gid=f"entry:{vpage}" if hit else None))
        ax.text(vpage + 0.475, 0.45, str(page), ha="center", va="center", fontsize=9)
        ax.text(vpage + 0.475, -0.3, f"[{vpage}]", ha="center", va="center", fontsize=7)
    ax.set_xlim(-0.2, max(n_virtual, 8))
    ax.set_ylim(-0.6, 1.0)
    ax.axis("off")
    ax.set_title(f"block table of sequence {seq}: virtual page {t.virtual_page} -> "
                 f"physical page {t.physical_page}", fontsize=9)

    # 3. the physical pages, with the page and the slot marked, and the arithmetic
    sub = grid[2].subgridspec(1, 2, width_ratios=[3, 2])
    ax = fig.add_subplot(sub[0])
    draw_physical(ax, state, ncols=ncols, highlight=(t.physical_page, t.offset))
    ax.set_title(f"physical page {t.physical_page}, offset {t.offset} -> slot {t.slot}",
                 fontsize=9)
    ax_text = fig.add_subplot(sub[1])
    ax_text.axis("off")
    ax_text.text(0, 0.5, describe_translation(t, ps, num_kv_heads, head_dim, kv_head, dim)
                 .replace(", offset", "\noffset"), fontsize=8.5, family="monospace",
                 va="center", wrap=True)
    return fig
