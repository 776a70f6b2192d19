"""Compare a learner's array with the expected one and say *where* they differ.

`describe_difference` names the first wrong element by its axes (sequence, token, head,
dim), counts the wrong ones, and lists which sequences / tokens / heads are affected,
because the pattern is usually the clue: "only head 0 is right" points at the head stride,
"only sequence 0 is right" at a block table shared by the batch.

`diagnose` compares the learner's output with the outputs of known-wrong variants of the
reference ("what you would get if the scale were missing") and returns the hint of the
first one that matches. A variant shows only where it is wrong on elements the learner
wrote: one wrong only where a kernel left the check's poison (a NaN variant there "matches"
the check's own fill) is skipped; `describe_difference` names those as never written.
"""
from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass

import numpy as np

from ..words import ranges
from .kernel_runner import unwritten
from .report import Mismatch

ATOL = 2e-4
RTOL = 2e-4

POW2_HINT = ("shifts and masks (<< or >> log2(n), & (n - 1)) stand for * n, // n and % n "
             "only when n is a power of two, and {name} = {n} here is not: use *, // and % "
             "(ceil: -(-a // n)).")
FIXED_PAGE_HINT = ("that is the answer for pages of 16 tokens: use the page_size argument "
                   "({n} here), not a page size written into the code.")
# the tile sizes a kernel's own constants would have (a tensor-core tile is 16 rows high)
WRITTEN_TILE_SIZES = (16, 32, 64, 128)


def kv_head_rule(div: str = "/") -> str:
    """The GQA rule, worded alike by every hint that states it; `div`: the integer division
    of the learner's language (CUDA C's /, Python's //)."""
    return f"query head h reads KV head h {div} (num_heads {div} num_kv_heads)"


def pow2_div(a, n):
    """a // n as a shift by log2(n) computes it: right only for a power of two n."""
    return a >> (int(n).bit_length() - 1)


def pow2_mod(a, n):
    """a % n as a mask with n - 1 computes it: right only for a power of two n."""
    return a & (int(n) - 1)


def pow2_mixes(n) -> list[tuple]:
    """(div, mul, mod, join) for a // n, a * n, a % n and a + b with some of them written as
    >> log2(n), << log2(n), & (n - 1) and |, every mix but the all-right one: an answer that
    shifts in one place and divides in another is right only for a power-of-two n as well."""
    shift = int(n).bit_length() - 1
    forms = ((lambda a: a // n, lambda a: a >> shift), (lambda a: a * n, lambda a: a << shift),
             (lambda a: a % n, lambda a: a & (int(n) - 1)), (operator.add, operator.or_))
    return list(itertools.product(*forms))[1:]


def pow2_ceil_forms(n) -> list[tuple]:
    """(ceil, mul): ceil(a / n) as the mixes of pow2_mixes write it (a + n - 1 divided, a
    divided plus 1 where a % n is not 0, or -(-a divided)) and the product by n the same mix
    writes; right only for a power-of-two n, for an int or an array `a`."""
    return [(ceil, mul) for div, mul, mod, _ in pow2_mixes(n)
            for ceil in (lambda a, div=div: div(a + n - 1),
                         lambda a, div=div, mod=mod: div(a) + (mod(a) != 0),
                         lambda a, div=div: -div(-a))]


def pow2_ceils(a, n) -> list:
    """(pages, pages times n) for every form of pow2_ceil_forms."""
    return [(ceil(a), mul(ceil(a))) for ceil, mul in pow2_ceil_forms(n)]


def one_of(name: str, value, allowed: tuple) -> None:
    """Refuse a mistake's switch that names no mistake (a typo would model the right answer,
    and its hint would never fire)."""
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")


def fmt(x) -> str:
    """A number in 4 significant digits (nan and inf spelled out)."""
    x = float(x)
    if np.isnan(x):
        return "nan"
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.4g}"


def _plural(axis: str) -> str:
    return _singular_axis(axis) + "s"   # ("kv_head": "kv heads")


def _singular_axis(axis: str) -> str:
    return axis.replace("_", " ")   # "kv head 2", as the plural says "kv heads 1-2"


def _singular(what: str) -> str:
    """'values' -> 'value', 'entries' -> 'entry' (what a message counts, one of it)."""
    return {"entries": "entry", "indices": "index"}.get(what, what.removesuffix("s"))


@dataclass
class Difference:
    """Where `got` differs from `expected` (only over entries where `mask` is True)."""
    bad: np.ndarray          # bool, same shape as expected
    unwritten: np.ndarray    # bool: wrong, and never written (the kernel checks' poison)
    axes: tuple[str, ...]
    got: np.ndarray
    expected: np.ndarray
    certain: bool = True     # False: `unwritten` is a guess from NaN (a plain-NaN poison)
    compared: np.ndarray | None = None   # bool: the entries compared (None: all of them)

    @property
    def count(self) -> int:
        return int(self.bad.sum())

    def first(self) -> tuple[int, ...]:
        return tuple(int(i) for i in np.argwhere(self.bad)[0])

    def where(self, index) -> str:
        return ", ".join(f"{a} {i}" for a, i in zip(self.axes, index))

    def _along(self, axis: str, where: np.ndarray) -> list[int]:
        """The indices along `axis` with some True entry of `where`."""
        k = self.axes.index(axis)
        other = tuple(i for i in range(where.ndim) if i != k)
        return [int(i) for i in np.flatnonzero(where.any(axis=other) if other else where)]

    def affected(self, axis: str) -> tuple[list[int], int]:
        """(indices along `axis` holding a wrong value, the axis length)."""
        return self._along(axis, self.bad), self.bad.shape[self.axes.index(axis)]

    def pattern(self) -> str:
        """'wrong in sequences 1-2 (right in 0); every head' style summary."""
        parts = []
        for axis in self.axes:
            if axis == "dim":
                continue
            idx, n = self.affected(axis)
            if n <= 1:
                continue
            # an index the check never compared (past seq_len, a padding row) is not "right"
            seen = range(n) if self.compared is None else self._along(axis, self.compared)
            right = sorted(set(seen) - set(idx))
            noun = _singular_axis(axis) if len(idx) == 1 else _plural(axis)   # "sequence 1"
            if len(idx) == n:
                parts.append(f"every {_singular_axis(axis)}")
            elif not right:
                parts.append(f"{noun} {ranges(idx)} (the only {noun} compared)")
            else:
                parts.append(f"{noun} {ranges(idx)} (right: {ranges(right)})")
        return "; ".join(parts)

    def message(self, what: str = "values") -> str:
        index = self.first()
        total = int(self.bad.size)
        want, got = fmt(self.expected[index]), fmt(self.got[index])
        if want == got:   # close, yet past the tolerance: show the digits where they differ
            want, got = f"{float(self.expected[index]):.7g}", f"{float(self.got[index]):.7g}"
        noun = _singular(what) if total == 1 else what   # "1 of 1 value"
        lines = [f"{self.count} of {total} {noun} differ{'s' if self.count == 1 else ''}; the "
                 f"first at {self.where(index)}: expected {want}, got {got}."]
        n_unwritten = int(self.unwritten.sum())
        if n_unwritten and not self.certain:
            lines.append(f"{n_unwritten} of them are still NaN: the NaN the check filled the "
                         "output with was never overwritten (or your code made a NaN).")
        elif n_unwritten:
            lines.append(f"{n_unwritten} of them were never written: they still hold the NaN "
                         "the check filled the output with.")
        n_made = int((np.isnan(self.got) & self.bad & ~self.unwritten).sum())
        if n_made:
            lines.append(f"{n_made} of them are a NaN your code computed (0/0, inf - inf or "
                         "inf * 0) or read (a NaN input it should not use, or memory never "
                         "written).")
        pattern = self.pattern()
        if pattern:
            lines.append(f"Wrong in: {pattern}.")
        return "\n".join(lines)


def as_float64(x) -> np.ndarray:
    """x as a float64 array, without NumPy's "invalid value encountered in cast": a kernel's
    output holds the check's poison, a signalling NaN (kernel_runner.POISON_BITS), wherever
    it wrote nothing (rightly so outside the mask), and its cast is a quiet NaN, which every
    comparison here reads as a NaN and reports where it is compared."""
    with np.errstate(invalid="ignore"):
        return np.asarray(x, dtype=np.float64)


def describe_difference(got, expected, axes, *, atol=ATOL, rtol=RTOL, mask=None,
                        unwritten=None):
    """None when `got` matches `expected` (within tolerance, on `mask`), else a Difference.

    unwritten: where the output was never written. A bool array: the kernel checks know it
    from their poison's bit pattern (kernel_runner.unwritten). False: a Python result, which
    has no poison. None: taken to be the NaN where a number was expected, for outputs
    poisoned with a plain NaN (a NaN the code computed looks the same there, and the message
    says so)."""
    got = as_float64(got)
    expected = as_float64(expected)
    if got.shape != expected.shape:
        raise ValueError(f"shape {got.shape} differs from the expected {expected.shape}")
    close = np.isclose(got, expected, atol=atol, rtol=rtol, equal_nan=True)
    if mask is not None:
        close |= ~np.broadcast_to(mask, close.shape)
    if close.all():
        return None
    if unwritten is None:
        never = np.isnan(got) & ~np.isnan(expected)
    else:
        never = np.broadcast_to(np.asarray(unwritten, bool), got.shape)
    compared = None if mask is None else np.broadcast_to(mask, got.shape)
    return Difference(~close, never & ~close, tuple(axes), got, expected,
                      certain=unwritten is not None, compared=compared)


def matches(got, candidate, *, atol=ATOL, rtol=RTOL, mask=None) -> bool:
    if np.shape(got) != np.shape(candidate):
        return False
    return not _wrong(got, candidate, atol, rtol, mask).any()


def diagnose(got, expected, variants, *, atol=ATOL, rtol=RTOL, mask=None,
             nan_is_evidence: bool = True) -> str | None:
    """The hint of the first known-wrong variant that `got` reproduces, if any.

    `variants` is an iterable of (hint, array or zero-argument callable returning one). A
    variant that happens to equal the right answer on this case is skipped. With
    `nan_is_evidence=False` (a kernel whose NaN may also come from memory it read before
    anyone wrote it), a variant that is NaN wherever it is wrong proves nothing and is skipped.
    """
    return next(fitting_hints(got, expected, variants, atol=atol, rtol=rtol, mask=mask,
                              nan_is_evidence=nan_is_evidence), None)


def fitting_hints(got, expected, variants, *, atol=ATOL, rtol=RTOL, mask=None,
                  nan_is_evidence: bool = True):
    """The hints of every known-wrong variant that `got` reproduces, in order, each computed
    only when asked for (as `diagnose`, which takes the first)."""
    got = np.asarray(got)
    never = unwritten(got) if got.dtype == np.float32 else np.zeros(got.shape, bool)
    for hint, candidate in variants:
        try:
            candidate = candidate() if callable(candidate) else candidate
        except (IndexError, ValueError, FloatingPointError):
            continue  # this mistake would have read out of bounds here: it cannot match
        if candidate is None or np.shape(candidate) != got.shape:
            continue
        if np.shape(candidate) == np.shape(expected):   # (else wrong wherever it is)
            wrong = _wrong(candidate, expected, atol, rtol, mask)
            if not (wrong & ~never).any():
                continue   # right wherever the learner wrote: nothing it computed shows it
            if not nan_is_evidence and np.isnan(as_float64(candidate)[wrong]).all():
                continue
        if matches(got, candidate, atol=atol, rtol=rtol, mask=mask):
            yield hint


def _wrong(candidate, expected, atol, rtol, mask) -> np.ndarray:
    """Where `candidate` differs from `expected` (among the compared elements)."""
    wrong = ~np.isclose(as_float64(candidate), as_float64(expected), atol=atol, rtol=rtol,
                        equal_nan=True)
    return wrong if mask is None else wrong & np.broadcast_to(mask, wrong.shape)


def changed_input(what: str, given: dict, passed: dict, hints: dict | None = None):
    """A Mismatch for the first of the learner's inputs it wrote into, else None. `given`:
    the check's arrays and lists; `passed`: the copies the learner got, by argument name. A
    write into an input is a bug even when the answer is right: the caller reads it again.
    A list is compared item by item (sort, append, pop, del or item assignment)."""
    for name, array in given.items():
        if isinstance(array, list):
            changed = _changed_list(what, name, array, passed[name], hints)
            if changed:
                return changed
            continue
        got = np.asarray(passed[name])   # (a counted array's own indexing left uncounted)
        if got.shape != array.shape:
            return Mismatch(f"{what} changed the shape of its input {name}",
                            f"leave {name} as it was: setting {name}.shape (or "
                            f"{name}.resize) reshapes the caller's array; use "
                            f"{name}.reshape(...), which returns a new view.",
                            expected=str(array.shape), got=str(got.shape))
        changed = ~((got == array) | (np.isnan(got) & np.isnan(array)))
        if changed.any():
            first = tuple(int(i) for i in np.argwhere(changed)[0])
            return Mismatch(f"{what} changed its input {name}: {int(changed.sum())} of "
                            f"{array.size} values, the first at index {first}",
                            f"leave {name} as it was: " + (hints or {}).get(
                                name, f"an in-place operation on it ({name} *= ..., "
                                f"{name}[...] = ..., out={name}) writes into the caller's "
                                "array; compute a new array instead") + ".",
                            expected=fmt(array[first]), got=fmt(got[first]))
    return None


def _changed_list(what: str, name: str, items: list, got, hints: dict | None):
    """A Mismatch when the learner's copy `got` of the list `items` no longer equals it."""
    got = list(got)
    wrong = [i for i, (a, b) in enumerate(zip(items, got)) if not _same_item(a, b)]
    if len(got) != len(items):
        detail = f"its {len(items)} items became {len(got)}"
    elif wrong:
        detail = f"{len(wrong)} of {len(items)} items, the first at index {wrong[0]}"
    else:
        return None
    return Mismatch(f"{what} changed its input {name}: {detail}",
                    f"leave {name} as it was: " + (hints or {}).get(
                        name, f"{name}.sort(), .append, .pop, .remove, del {name}[...] or "
                        f"{name}[i] = ... change the caller's list; work on a copy "
                        f"(sorted({name}), list({name})) or just read it") + ".",
                    expected=repr(items)[:80], got=repr(got)[:80])


def _same_item(a, b) -> bool:
    """Whether an item of a list the learner got is still the check's: the same object, or
    (after the grader's channel, a copy) an equal one of the same type, NaN equal to NaN.
    Whatever else the learner put there (an array where an int was, an object whose == fails)
    counts as a change."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        if isinstance(a, np.ndarray):
            return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind
                                                              in "fc"))
        if isinstance(a, float) and a != a:
            return b != b
        return bool(a == b)
    except Exception:  # noqa: BLE001 - a learner's object compared: not the same item
        return False


def call_on_copies(what: str, fn, given: dict, *more, hints: dict | None = None):
    """fn(*copies of given's arrays or lists, *more): what it returns, or the Mismatch of
    `changed_input` when it wrote into one of them."""
    passed = {name: array.copy() for name, array in given.items()}
    got = fn(*passed.values(), *more)
    changed = changed_input(what, given, passed, hints)
    if changed:
        raise changed
    return got


def on_copies(fn, what: str, *names: str):
    """`fn`, called on copies of its first len(names) arguments (arrays or lists), named
    `names`: see call_on_copies."""
    def call(*args):
        return call_on_copies(what, fn, dict(zip(names, args)), *args[len(names):])
    return call


def positive_factor(got, ref, *, rtol: float, atol: float = 0.0) -> float | None:
    """The factor f > 0 for which `got` is `ref` * f (least squares, then checked within
    rtol / atol), or None: values of 0 fit f = 0 and a negated copy f < 0, which no scale
    (pre-applied, or one of the learner's own) explains."""
    g, r = as_float64(got), as_float64(ref)
    if not g.size or not np.isfinite(g).all() or not np.any(r):
        return None
    factor = float(np.sum(g * r) / np.sum(r * r))
    if factor <= 0 or not np.allclose(g, r * factor, rtol=rtol, atol=atol):
        return None
    return factor
