"""Workbook 09's mask_tile check fails the classic wrong answers, with a hint that names the
mistake, and passes a right mask written another way (the task's group_rows and tile-kernel
mistakes are in test_check_mistakes_tc_decode.py)."""
import numpy as np
import pytest

from tests.check_helpers import assert_several_fit
from tests.test_check_mistakes import assert_caught, run_check


def _cols(tile):
    return 16 * tile + np.arange(16)


def mask_no_scale(s, tile, n, scale):
    out = s.copy()
    out[:, _cols(tile) >= n] = -np.inf
    return out


def mask_with_zero(s, tile, n, scale):
    out = s * np.float32(scale)
    out[:, _cols(tile) >= n] = 0
    return out


def mask_strict(s, tile, n, scale):
    out = s * np.float32(scale)
    out[:, _cols(tile) > n] = -np.inf
    return out


def mask_without_tile_offset(s, tile, n, scale):
    out = s * np.float32(scale)
    out[:, np.arange(16) >= n] = -np.inf
    return out


def mask_rows(s, tile, n, scale):
    out = s * np.float32(scale)
    out[_cols(tile) >= n, :] = -np.inf
    return out


def mask_in_place(s, tile, n, scale):
    s *= np.float32(scale)
    s[:, _cols(tile) >= n] = -np.inf
    return s


def mask_float64(s, tile, n, scale):
    out = s.astype(np.float64) * scale
    out[:, _cols(tile) >= n] = -np.inf
    return out


def mask_nothing(s, tile, n, scale):
    return s * np.float32(scale)


def mask_from_negative_slice(s, tile, n, scale):   # n - 16 * tile < 0 counts from the end
    out = s * np.float32(scale)
    out[:, n - 16 * tile:] = -np.inf
    return out


def mask_last_tile_only(s, tile, n, scale):
    out = s * np.float32(scale)
    if tile == (n - 1) // 16:
        out[:, _cols(tile) >= n] = -np.inf
    return out


def mask_with_big_negative(s, tile, n, scale):
    out = s * np.float32(scale)
    out[:, _cols(tile) >= n] = -1e9
    return out


def mask_float16(s, tile, n, scale):
    out = (s * np.float32(scale)).astype(np.float16)
    out[:, _cols(tile) >= n] = -np.inf
    return out


MASK_MISTAKES = [
    ("no scale", mask_no_scale, "not scaled", ()),
    ("masked with 0", mask_with_zero, "masked with 0", ("not scaled",)),
    ("> instead of >=", mask_strict, ">=, not >", ()),
    ("tile offset forgotten", mask_without_tile_offset, "add the tile's start", ()),
    ("rows masked", mask_rows, "not rows", ()),
    ("s changed in place", mask_in_place, "changed its input s", ()),
    ("float64 logits", mask_float64, "keep them float32", ()),
    ("nothing masked", mask_nothing, "must come out -inf", ("not scaled",)),
    ("slice from a negative start", mask_from_negative_slice, "counts from the end", ()),
    ("only the last tile masked", mask_last_tile_only, "in every tile", ()),
    ("masked with -1e9", mask_with_big_negative, "a finite number", ("its K row was zeros",)),
    ("float16 logits", mask_float16, "keep them float32", ()),
]


@pytest.mark.parametrize("name, impl, phrase, not_phrases", MASK_MISTAKES,
                         ids=[m[0] for m in MASK_MISTAKES])
def test_mask_tile_mistake_is_caught(name, impl, phrase, not_phrases):
    assert_caught("mask_tile", impl, phrase, not_phrases=not_phrases)


def test_mask_tile_check_passes_a_correct_mask_written_differently():
    def with_where(s, tile, seq_len, scale):
        keep = (16 * tile + np.arange(16))[None, :] < seq_len
        return np.where(keep, s * np.float32(scale), np.float32(-np.inf)).astype(np.float32)
    result, printed = run_check("mask_tile", with_where)
    assert result.passed, printed


@pytest.mark.parametrize("impl, phrase", [(mask_without_tile_offset, "tile's start"),
                                          (mask_strict, ">=, not >")],
                         ids=["tile offset forgotten", "> instead of >="])
def test_mask_tile_every_failed_case_names_the_mistake(impl, phrase):
    # On the last tile of 63 tokens (tokens 48..63) both mistakes leave column 15 unmasked
    # and nothing else: that case's hint must not name only one of the two.
    result, printed = run_check("mask_tile", impl)
    failed = [c for c in result.cases if not c.passed]
    assert failed, printed
    for case in failed:
        assert phrase in " ".join(case.hint.split()), printed


@pytest.mark.parametrize("impl", [mask_strict, mask_without_tile_offset],
                         ids=["> instead of >=", "tile offset forgotten"])
def test_mask_tile_names_both_mistakes_that_give_the_tile_in_one_wording(impl):
    # tokens 48..63, seq_len 63: each mistake leaves column 15 alone unmasked
    assert_several_fit("mask_tile", impl, {"tile": 3, "seq_len": 63, "scale": 0.1}, "tile",
                       [">=, not >", "add the tile's start to c"])
